package sandpool_test

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	sandpool "github.com/sandpool/sandpool/clients/go"
	pb "github.com/sandpool/sandpool/clients/go/sandpoolv1"
)

// blackholeProxy is a TCP proxy from 127.0.0.1 to a target. After
// blackhole() it forwards nothing more in either direction and accepts new
// connections without forwarding them, yet closes nothing (no FIN, no RST):
// a network that silently drops everything, which only the keepalive's own
// clock can detect.
type blackholeProxy struct {
	ln     net.Listener
	target string
	done   chan struct{}
	mu     sync.Mutex
	silent bool
	conns  []net.Conn
}

func startProxy(t *testing.T, target string) *blackholeProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &blackholeProxy{ln: ln, target: target, done: make(chan struct{})}
	go p.accept()
	t.Cleanup(p.close)
	return p
}

func (p *blackholeProxy) addr() string { return p.ln.Addr().String() }

func (p *blackholeProxy) isSilent() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.silent
}

func (p *blackholeProxy) blackhole() {
	p.mu.Lock()
	p.silent = true
	p.mu.Unlock()
}

func (p *blackholeProxy) keep(c net.Conn) {
	p.mu.Lock()
	p.conns = append(p.conns, c)
	p.mu.Unlock()
}

func (p *blackholeProxy) accept() {
	for {
		conn, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.keep(conn)
		if p.isSilent() {
			continue // held open, never forwarded
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			conn.Close()
			continue
		}
		p.keep(up)
		go p.pump(conn, up)
		go p.pump(up, conn)
	}
}

func (p *blackholeProxy) pump(src, dst net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if p.isSilent() {
			<-p.done // hold the data and the connection
			return
		}
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (p *blackholeProxy) close() {
	select {
	case <-p.done:
		return
	default:
	}
	close(p.done)
	p.ln.Close()
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
}

func TestKeepAliveGivesUpOnASilentConnectionWithinTheTTL(t *testing.T) {
	proxy := startProxy(t, shared.addr)
	c := shared.client(t, nil)
	viaProxy, err := sandpool.Dial(proxy.addr(), sandpool.Options{Timeout: 15 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer viaProxy.Close()
	const ttl = 2 * time.Second
	before := expirations(t, c)
	s := acquire(t, viaProxy, &sandpool.AcquireOptions{TTL: ttl})
	stream, err := s.Run(context.Background(), sandpool.Code("import time\ntime.sleep(30)"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil { // Started: the run is going
		t.Fatal(err)
	}
	proxy.blackhole()
	t0 := time.Now()
	// The run in flight ends with the loss, once no renewal was confirmed
	// within the TTL (at most a TTL after the blackhole).
	_, err = stream.Collect()
	took := time.Since(t0)
	var lost *sandpool.LeaseLostError
	if !errors.As(err, &lost) || lost.State != pb.LeaseState_LEASE_STATE_UNSPECIFIED || !strings.Contains(lost.Why, "keepalive failed") {
		t.Fatalf("run in flight: %T %v", err, err)
	}
	if took > ttl+time.Second {
		t.Fatalf("the loss came %s after the connection went silent (TTL %s)", took, ttl)
	}
	if !errors.Is(s.Lost(), sandpool.ErrLeaseLost) {
		t.Fatalf("Lost() = %v", s.Lost())
	}
	// The server, which heard nothing either (the client's best-effort
	// release is lost in the blackhole), revokes the lease by itself.
	if err := waitFor(10*time.Second, func() (bool, error) { return expirations(t, c) > before, nil }); err != nil {
		t.Fatal("the server kept the abandoned lease")
	}
}
