package sandpool_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	sandpool "github.com/sandpool/sandpool/clients/go"
)

// cutProxy is a TCP proxy from 127.0.0.1 to a target whose connections
// can be broken: cut() closes every open one (both sides), and while
// refusing it closes new ones at once.
type cutProxy struct {
	ln        net.Listener
	target    string
	mu        sync.Mutex
	conns     map[net.Conn]struct{}
	refusing  bool
	forwarded int
	closed    bool
}

func startCutProxy(t *testing.T, target string) *cutProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	go p.accept()
	t.Cleanup(p.close)
	return p
}

func (p *cutProxy) addr() string { return p.ln.Addr().String() }

func (p *cutProxy) accept() {
	for {
		conn, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		refuse := p.refusing || p.closed
		p.mu.Unlock()
		if refuse {
			conn.Close()
			continue
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			conn.Close()
			continue
		}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			conn.Close()
			up.Close()
			return
		}
		p.conns[conn], p.conns[up] = struct{}{}, struct{}{}
		p.forwarded++
		p.mu.Unlock()
		go p.pump(conn, up)
		go p.pump(up, conn)
	}
}

// pump copies src to dst; when either side ends, both are closed.
func (p *cutProxy) pump(src, dst net.Conn) {
	_, _ = io.Copy(dst, src)
	src.Close()
	dst.Close()
	p.mu.Lock()
	delete(p.conns, src)
	delete(p.conns, dst)
	p.mu.Unlock()
}

// cut closes every open connection.
func (p *cutProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		c.Close()
	}
}

func (p *cutProxy) setRefusing(refusing bool) {
	p.mu.Lock()
	p.refusing = refusing
	p.mu.Unlock()
}

// connections is how many connections were forwarded so far.
func (p *cutProxy) connections() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.forwarded
}

func (p *cutProxy) close() {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	p.ln.Close()
	p.cut()
}

func dialVia(t *testing.T, p *cutProxy) *sandpool.Client {
	t.Helper()
	c, err := sandpool.Dial(p.addr(), sandpool.Options{Timeout: 15 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestRunSurvivesBrokenConnections(t *testing.T) {
	proxy := startCutProxy(t, shared.addr)
	c := dialVia(t, proxy)
	s := acquire(t, c, &sandpool.AcquireOptions{TTL: 20 * time.Second})
	stream, err := s.Run(context.Background(), sandpool.Code(
		"import time\nfor i in range(30):\n    print(f'line {i}', flush=True)\n    time.sleep(0.05)"),
		&sandpool.RunOptions{Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	var gaps []*sandpool.Gap
	var exit *sandpool.Exit
	cuts := []string{"line 5\n", "line 15\n"}
	for {
		ev, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("after %q: %v", out.String(), err)
		}
		switch e := ev.(type) {
		case *sandpool.Stdout:
			out.Write(e.Data)
			if len(cuts) > 0 && strings.Contains(out.String(), cuts[0]) {
				cuts = cuts[1:]
				proxy.cut()
			}
		case *sandpool.Gap:
			gaps = append(gaps, e)
		case *sandpool.Exit:
			exit = e
		}
	}
	var want strings.Builder
	for i := 0; i < 30; i++ {
		fmt.Fprintf(&want, "line %d\n", i)
	}
	if out.String() != want.String() {
		t.Fatalf("output %q", out.String())
	}
	if len(gaps) != 0 {
		t.Fatalf("gaps %+v", gaps)
	}
	if len(cuts) != 0 {
		t.Fatalf("cuts not made: %q", cuts)
	}
	if exit == nil || exit.EndReason != sandpool.EndExited || exit.ExitCode != 0 {
		t.Fatalf("exit %+v", exit)
	}
	if n := proxy.connections(); n < 3 {
		t.Fatalf("only %d connections were forwarded: the cuts did not break anything", n)
	}
	if r := collect(t, s, sandpool.Code("print('after')"), nil); r.StdoutText() != "after\n" {
		t.Fatalf("after: %q %q", r.Stdout, r.Stderr)
	}
}

func TestResumedRunReportsWhatItsBufferLost(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	admin := shared.client(t, func(o *sandpool.Options) { o.Timeout = 2 * time.Minute })
	name := pool + "-gap"
	spec := pythonSpec(name, 1, 1)
	buffer := uint64(4096)
	spec.RunBufferBytes = &buffer
	if _, err := admin.CreatePool(ctx, spec, &sandpool.CreatePoolOptions{WaitReady: true}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = admin.DeletePool(context.Background(), name, true) })

	proxy := startCutProxy(t, shared.addr)
	c := dialVia(t, proxy)
	s, err := c.Acquire(ctx, name, &sandpool.AcquireOptions{TTL: 20 * time.Second, Wait: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	stream, err := s.Run(ctx, sandpool.Code(strings.Join([]string{
		"import sys, time",
		"print('start', flush=True)",
		"time.sleep(1)",
		"for i in range(200):",
		"    sys.stdout.write('%099d\\n' % i)",
		"    sys.stdout.flush()",
		"time.sleep(0.5)",
		"print('end', flush=True)",
	}, "\n")), &sandpool.RunOptions{Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	var gaps []*sandpool.Gap
	var exit *sandpool.Exit
	broken := false
	for {
		ev, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("after %d bytes: %v", out.Len(), err)
		}
		switch e := ev.(type) {
		case *sandpool.Stdout:
			out.Write(e.Data)
			if !broken && out.String() == "start\n" {
				broken = true
				proxy.setRefusing(true)
				proxy.cut()
				time.Sleep(3 * time.Second)
				proxy.setRefusing(false)
			}
		case *sandpool.Gap:
			gaps = append(gaps, e)
		case *sandpool.Exit:
			exit = e
		}
	}
	if !broken {
		t.Fatalf("no 'start' first: %q", out.String())
	}
	if exit == nil || exit.EndReason != sandpool.EndExited {
		t.Fatalf("exit %+v", exit)
	}
	if len(gaps) != 1 || gaps[0].StdoutBytes == 0 {
		t.Fatalf("gaps %+v (received %d bytes of %d)", gaps, out.Len(), exit.StdoutBytes)
	}
	if uint64(out.Len())+gaps[0].StdoutBytes != exit.StdoutBytes {
		t.Fatalf("received %d bytes + a gap of %d != %d written", out.Len(), gaps[0].StdoutBytes, exit.StdoutBytes)
	}
	if !strings.HasPrefix(out.String(), "start\n") || !strings.HasSuffix(out.String(), "end\n") {
		t.Fatalf("output %q", out.String())
	}
	if g := gaps[0]; g.FromSeq < 3 || g.ToSeq < g.FromSeq || g.Seq() != g.ToSeq {
		t.Fatalf("gap %+v", g)
	}
}

// beatSize is the size of the file a beating program appends to.
func beatSize(t *testing.T, s *sandpool.Session, path string) uint64 {
	t.Helper()
	d, err := s.Download(context.Background(), path)
	if err != nil {
		t.Fatalf("download %s: %v", path, err)
	}
	return uint64(len(d.Data))
}

// stopsBeating checks that the file at path stops growing within a
// couple of seconds.
func stopsBeating(t *testing.T, s *sandpool.Session, path string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	last := beatSize(t, s, path)
	for {
		time.Sleep(time.Second)
		size := beatSize(t, s, path)
		if size == last {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s still grows (%d bytes): the run was not cancelled", path, size)
		}
		last = size
	}
}

func TestDroppingAResumableRunCancelsIt(t *testing.T) {
	c := shared.client(t, nil)
	s := acquire(t, c, nil)
	beat := func(path string) sandpool.Program {
		return sandpool.Code("import time\nwhile True:\n    with open('" + path + "', 'a') as f:\n        f.write('x')\n    time.sleep(0.05)")
	}
	started := func(stream *sandpool.RunStream, path string) {
		t.Helper()
		if ev, err := stream.Recv(); err != nil {
			t.Fatal(err)
		} else if _, ok := ev.(*sandpool.Started); !ok {
			t.Fatalf("first event %T", ev)
		}
		if err := waitFor(10*time.Second, func() (bool, error) {
			d, err := s.Download(context.Background(), path)
			return err == nil && len(d.Data) > 2, nil
		}); err != nil {
			t.Fatalf("%s does not grow", path)
		}
	}

	// Closing the stream.
	stream, err := s.Run(context.Background(), beat("/tmp/beat"), &sandpool.RunOptions{Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(stream.RunID(), "g") {
		t.Fatalf("run id %q", stream.RunID())
	}
	started(stream, "/tmp/beat")
	stream.Close()
	stopsBeating(t, s, "/tmp/beat")

	// Ending the run's context.
	ctx, cancel := context.WithCancel(context.Background())
	stream, err = s.Run(ctx, beat("/tmp/beat2"), &sandpool.RunOptions{Timeout: time.Minute, RunID: "go-beat-2"})
	if err != nil {
		t.Fatal(err)
	}
	if stream.RunID() != "go-beat-2" {
		t.Fatalf("run id %q", stream.RunID())
	}
	started(stream, "/tmp/beat2")
	cancel()
	if _, err := stream.Recv(); err == nil {
		t.Fatal("Recv after the context ended")
	}
	stopsBeating(t, s, "/tmp/beat2")
	if cancelled, err := s.Cancel(context.Background(), "go-beat-2"); err != nil || cancelled {
		t.Fatalf("the run was still going: %v %v", cancelled, err)
	}

	if err := s.Lost(); err != nil {
		t.Fatalf("the lease was lost: %v", err)
	}
	if r := collect(t, s, sandpool.Code("print('next')"), nil); r.StdoutText() != "next\n" {
		t.Fatalf("after: %q %q", r.Stdout, r.Stderr)
	}
}
