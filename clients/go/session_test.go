package sandpool_test

import (
	"archive/tar"
	"archive/zip"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	sandpool "github.com/sandpool/sandpool/clients/go"
	pb "github.com/sandpool/sandpool/clients/go/sandpoolv1"
)

// acquire leases a container of the shared pool, closed at the end of the test.
func acquire(t *testing.T, c *sandpool.Client, opts *sandpool.AcquireOptions) *sandpool.Session {
	t.Helper()
	s, err := c.Acquire(context.Background(), pool, opts)
	if err != nil {
		t.Fatalf("acquire: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// heldPoolOfOne creates a warm pool of one container with the given
// exhaustion strategy and leases that container. The lease is closed, then
// the pool deleted, at the end of the test (cleanups run last first).
func heldPoolOfOne(t *testing.T, c *sandpool.Client, name string, strategy pb.ExhaustionStrategy) *sandpool.Session {
	t.Helper()
	ctx := context.Background()
	spec := pythonSpec(name, 1, 1)
	spec.Config.ExhaustionStrategy = strategy
	if _, err := c.CreatePool(ctx, spec, &sandpool.CreatePoolOptions{WaitReady: true}); err != nil {
		t.Fatalf("create %s: %v", name, err)
	}
	t.Cleanup(func() { _, _ = c.DeletePool(ctx, name, true) })
	holder, err := c.Acquire(ctx, name, nil)
	if err != nil {
		t.Fatalf("acquire %s: %v", name, err)
	}
	t.Cleanup(func() { _ = holder.Close() })
	return holder
}

func collect(t *testing.T, s *sandpool.Session, p sandpool.Program, opts *sandpool.RunOptions) *sandpool.Result {
	t.Helper()
	r, err := s.RunCollect(context.Background(), p, opts)
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	return r
}

func TestRoundTripAndExitCodes(t *testing.T) {
	c := shared.client(t, nil)
	s := acquire(t, c, nil)
	l := s.Lease()
	if !regexp.MustCompile(`^[0-9a-f]{32}$`).MatchString(l.ID) || l.Pool != pool || l.Language != "python" || l.ContainerID == "" {
		t.Fatalf("lease %+v", l)
	}
	r := collect(t, s, sandpool.Code("print(6 * 7)"), nil)
	if r.StdoutText() != "42\n" || r.ExitCode != 0 || r.EndReason != sandpool.EndExited || r.RunID == "" {
		t.Fatalf("result %+v", r)
	}
	r = collect(t, s, sandpool.Code("import sys\nprint('oops', file=sys.stderr)\nsys.exit(3)"), nil)
	if r.ExitCode != 3 || r.EndReason != sandpool.EndExited || r.StderrText() != "oops\n" || len(r.Stdout) != 0 {
		t.Fatalf("result %+v", r)
	}
}

func TestOutputStreamsAsItIsProduced(t *testing.T) {
	c := shared.client(t, nil)
	s := acquire(t, c, nil)
	stream, err := s.Run(context.Background(),
		sandpool.Code("import time\nprint('a', flush=True)\ntime.sleep(1.5)\nprint('b', flush=True)"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	var kinds []string
	var out strings.Builder
	var firstLineAt, exitAt time.Time
	var lastSeq uint64
	for {
		ev, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if ev.Seq() <= lastSeq {
			t.Fatalf("seq %d after %d", ev.Seq(), lastSeq)
		}
		lastSeq = ev.Seq()
		switch e := ev.(type) {
		case *sandpool.Started:
			kinds = append(kinds, "started")
			if e.RunID == "" || stream.RunID() != e.RunID {
				t.Fatalf("started %+v, stream run id %q", e, stream.RunID())
			}
		case *sandpool.Stdout:
			kinds = append(kinds, "stdout")
			out.Write(e.Data)
			if firstLineAt.IsZero() && out.String() == "a\n" {
				firstLineAt = time.Now()
			}
		case *sandpool.Exit:
			kinds = append(kinds, "exit")
			exitAt = time.Now()
		}
	}
	if out.String() != "a\nb\n" || kinds[0] != "started" || kinds[len(kinds)-1] != "exit" {
		t.Fatalf("events %v, stdout %q", kinds, out.String())
	}
	// 'a' arrives while the program sleeps, not with the exit.
	if firstLineAt.IsZero() || exitAt.Sub(firstLineAt) < time.Second {
		t.Fatalf("the first line came only %s before the exit", exitAt.Sub(firstLineAt))
	}
}

func TestTimeoutKillsTheRunAndTheContainerStaysUsable(t *testing.T) {
	c := shared.client(t, nil)
	s := acquire(t, c, nil)
	t0 := time.Now()
	r := collect(t, s, sandpool.Code("import time\nprint('go', flush=True)\ntime.sleep(60)"), &sandpool.RunOptions{Timeout: time.Second})
	if r.EndReason != sandpool.EndTimeout || r.StdoutText() != "go\n" || r.ExitCode == 0 {
		t.Fatalf("result %+v", r)
	}
	if took := time.Since(t0); took > 15*time.Second {
		t.Fatalf("the 1 s timeout took %s", took)
	}
	if r := collect(t, s, sandpool.Code("print('still here')"), nil); r.StdoutText() != "still here\n" {
		t.Fatalf("after the timeout: %+v", r)
	}
}

func TestStdinEnvCommandsAndCancel(t *testing.T) {
	c := shared.client(t, nil)
	s := acquire(t, c, &sandpool.AcquireOptions{Env: map[string]string{"LEASE_VAR": "L"}})
	r := collect(t, s, sandpool.Code("import os, sys\nprint(sys.stdin.read().upper(), os.environ['LEASE_VAR'], os.environ['RUN_VAR'])"),
		&sandpool.RunOptions{Stdin: []byte("hello"), Env: map[string]string{"RUN_VAR": "R"}})
	if r.StdoutText() != "HELLO L R\n" {
		t.Fatalf("stdin/env: %q %q", r.Stdout, r.Stderr)
	}
	if r := collect(t, s, sandpool.Argv("echo", "a  b", "$HOME"), nil); r.StdoutText() != "a  b $HOME\n" {
		t.Fatalf("argv runs without a shell: %q", r.Stdout)
	}
	if r := collect(t, s, sandpool.Shell("cd /tmp && pwd; echo $((6*7)) | tr 4 x"), nil); r.StdoutText() != "/tmp\nx2\n" {
		t.Fatalf("shell: %q %q", r.Stdout, r.Stderr)
	}

	stream, err := s.Run(context.Background(), sandpool.Code("import time\ntime.sleep(60)"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if ev, err := stream.Recv(); err != nil {
		t.Fatal(err)
	} else if _, ok := ev.(*sandpool.Started); !ok {
		t.Fatalf("first event %T", ev)
	}
	cancelled, err := s.Cancel(context.Background(), stream.RunID())
	if err != nil || !cancelled {
		t.Fatalf("cancel: %v %v", cancelled, err)
	}
	r, err = stream.Collect()
	if err != nil || r.EndReason != sandpool.EndCancelled {
		t.Fatalf("cancelled run: %+v %v", r, err)
	}
	if cancelled, err := s.Cancel(context.Background(), stream.RunID()); err == nil && cancelled {
		t.Fatal("a finished run was cancelled again")
	}

	// Closing the stream from another goroutine ends the Recv waiting on it;
	// the lease is not lost for that.
	stream, err = s.Run(context.Background(), sandpool.Code("import time\ntime.sleep(60)"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	go func() {
		time.Sleep(200 * time.Millisecond)
		stream.Close()
	}()
	if _, err := stream.Recv(); !errors.Is(err, sandpool.ErrCancelled) {
		t.Fatalf("Recv on a closed stream: %v", err)
	}
	if err := s.Lost(); err != nil {
		t.Fatalf("a dropped stream lost the lease: %v", err)
	}
	if r := collect(t, s, sandpool.Code("print('next')"), nil); r.StdoutText() != "next\n" {
		t.Fatalf("after a dropped stream: %q", r.Stdout)
	}
}

func TestFilesUpAndDown(t *testing.T) {
	c := shared.client(t, nil)
	s := acquire(t, c, &sandpool.AcquireOptions{Files: []sandpool.LeaseFile{{Path: "/sandbox/given.txt", Content: []byte("from acquire")}}})
	ctx := context.Background()
	script := []byte("#!/bin/sh\necho uploaded script\n")
	up, err := s.Upload(ctx, "/sandbox/data/run.sh", script, &sandpool.UploadOptions{Mode: 0o755})
	if err != nil {
		t.Fatal(err)
	}
	if up.Size != uint64(len(script)) || len(up.SHA256) != 64 {
		t.Fatalf("upload %+v", up)
	}
	if r := collect(t, s, sandpool.Argv("/sandbox/data/run.sh"), nil); r.StdoutText() != "uploaded script\n" {
		t.Fatalf("run the uploaded script: %q %q", r.Stdout, r.Stderr)
	}
	d, err := s.Download(ctx, "/sandbox/given.txt")
	if err != nil || string(d.Data) != "from acquire" || d.Tar || d.Size != 12 {
		t.Fatalf("download %+v %v", d, err)
	}

	// Local files both ways, and a directory as a tar.
	dir := t.TempDir()
	big := bytes.Repeat([]byte("0123456789abcdef"), 200_000) // 3.2 MB: several chunks
	if err := os.WriteFile(filepath.Join(dir, "big.bin"), big, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := s.UploadFile(ctx, "/sandbox/data/big.bin", filepath.Join(dir, "big.bin"), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := s.DownloadFile(ctx, "/sandbox/data/big.bin", filepath.Join(dir, "back.bin")); err != nil {
		t.Fatal(err)
	}
	if back, _ := os.ReadFile(filepath.Join(dir, "back.bin")); !bytes.Equal(back, big) {
		t.Fatalf("big file came back as %d bytes", len(back))
	}
	d, err = s.Download(ctx, "/sandbox/data")
	if err != nil || !d.Tar {
		t.Fatalf("directory download %+v %v", d, err)
	}
	names := map[string]bool{}
	tr := tar.NewReader(bytes.NewReader(d.Data))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names[strings.TrimPrefix(h.Name, "./")] = true
	}
	if !names["run.sh"] || !names["big.bin"] {
		t.Fatalf("tar holds %v", names)
	}

	_, err = s.Download(ctx, "/sandbox/nope.txt")
	var e *sandpool.Error
	if !errors.Is(err, sandpool.ErrNotFound) || !errors.As(err, &e) {
		t.Fatalf("missing path: %v", err)
	}
	if reason, ok := e.Reason(); !ok || reason != pb.ErrorReason_PATH_NOT_FOUND {
		t.Fatalf("missing path reason %v %v", reason, ok)
	}
	if s.Lost() != nil {
		t.Fatal("a missing path lost the lease")
	}
}

func TestArtifactsAndPlots(t *testing.T) {
	c := shared.client(t, nil)
	s := acquire(t, c, nil)
	r := collect(t, s, sandpool.Code(`
import os
os.makedirs('/sandbox/outputs', exist_ok=True)
open('/sandbox/outputs/out.txt', 'w').write('done')
import matplotlib.pyplot as plt
plt.plot([1, 4, 9])
plt.show()
`), nil)
	if r.ExitCode != 0 {
		t.Fatalf("run: %q", r.Stderr)
	}
	var out *sandpool.Artifact
	for i := range r.Artifacts {
		if r.Artifacts[i].Name == "out.txt" {
			out = &r.Artifacts[i]
		}
	}
	if out == nil || string(out.Data) != "done" || out.MimeType != "text/plain" || out.Path != "/sandbox/outputs/out.txt" {
		t.Fatalf("artifacts %+v", r.Artifacts)
	}
	if len(r.Plots) != 1 || !bytes.HasPrefix(r.Plots[0].Data, []byte("\x89PNG")) || r.Plots[0].MimeType != "image/png" {
		t.Fatalf("plots %+v", r.Plots)
	}
	listed, err := s.ListArtifacts(context.Background(), r.RunID)
	if err != nil || len(listed) != len(r.Artifacts) {
		t.Fatalf("list artifacts: %+v %v", listed, err)
	}
	for _, a := range listed {
		if a.RunID != r.RunID {
			t.Fatalf("listed %+v", a)
		}
	}
}

func TestContextKeepsState(t *testing.T) {
	c := shared.client(t, nil)
	s := acquire(t, c, nil)
	ctx := context.Background()
	kernel, err := s.CreateContext(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	if r, err := kernel.RunCollect(ctx, "import math\nx = 41", nil); err != nil || r.ExitCode != 0 {
		t.Fatalf("first cell: %+v %v", r, err)
	}
	if r, err := kernel.RunCollect(ctx, "1 / 0", nil); err != nil || r.ExitCode != 1 || !strings.Contains(r.StderrText(), "ZeroDivisionError") {
		t.Fatalf("failing cell: %+v %v", r, err)
	}
	if r, err := kernel.RunCollect(ctx, "print(x + 1)", nil); err != nil || r.StdoutText() != "42\n" {
		t.Fatalf("state kept: %+v %v", r, err)
	}
	// A plain run does not see the context's variables.
	if r := collect(t, s, sandpool.Code("print('x' in globals())"), nil); r.StdoutText() != "False\n" {
		t.Fatalf("plain run: %q", r.Stdout)
	}
	if err := kernel.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	_, err = kernel.RunCollect(ctx, "print(x)", nil)
	var e *sandpool.Error
	if !errors.Is(err, sandpool.ErrNotFound) || !errors.As(err, &e) {
		t.Fatalf("run in a deleted context: %v", err)
	}
	if reason, _ := e.Reason(); reason != pb.ErrorReason_CONTEXT_NOT_FOUND {
		t.Fatalf("reason %v", reason)
	}
}

func TestKeepAliveHoldsTheLeasePastItsTTL(t *testing.T) {
	c := shared.client(t, nil)
	s := acquire(t, c, &sandpool.AcquireOptions{TTL: 2 * time.Second})
	if s.Lease().TTL != 2*time.Second {
		t.Fatalf("ttl %s", s.Lease().TTL)
	}
	time.Sleep(5 * time.Second)
	if err := s.Lost(); err != nil {
		t.Fatal(err)
	}
	if n := s.Renewals(); n < 4 {
		t.Fatalf("%d renewals in 5 s at a 2 s TTL", n)
	}
	if r := collect(t, s, sandpool.Code("print('alive')"), nil); r.StdoutText() != "alive\n" {
		t.Fatalf("%q", r.Stdout)
	}
}

func TestALeaseThatWaitedLongerThanItsTTLForAContainerIsHeldOnArrival(t *testing.T) {
	c := shared.client(t, nil)
	ctx := context.Background()
	name := pool + "-wait"
	holder := heldPoolOfOne(t, c, name, pb.ExhaustionStrategy_EXHAUSTION_STRATEGY_WAIT)
	// The only container is held: this Acquire waits 2.5 TTLs (the pool's
	// acquisition timeout is the default 30 s).
	const ttl = time.Second
	type acquired struct {
		s   *sandpool.Session
		err error
	}
	behind := make(chan acquired, 1)
	go func() {
		s, err := c.Acquire(ctx, name, &sandpool.AcquireOptions{TTL: ttl, Wait: 20 * time.Second})
		behind <- acquired{s, err}
	}()
	time.Sleep(ttl * 5 / 2)
	if err := holder.Close(); err != nil {
		t.Fatal(err)
	}
	got := <-behind
	if got.err != nil {
		t.Fatal(got.err)
	}
	s := got.s
	defer s.Close()
	// Its TTL runs from the grant, not from the Acquire sent 2.5 TTLs ago.
	if err := s.Lost(); err != nil {
		t.Fatalf("lost on arrival: %v", err)
	}
	if r := collect(t, s, sandpool.Code("print('held')"), nil); r.StdoutText() != "held\n" {
		t.Fatalf("%q", r.Stdout)
	}
	time.Sleep(2 * ttl)
	if err := s.Lost(); err != nil {
		t.Fatal(err)
	}
	if n := s.Renewals(); n < 3 {
		t.Fatalf("%d renewals in 2 TTLs", n)
	}
}

// expirations is the pool's count of leases revoked because their TTL ran out.
func expirations(t *testing.T, c *sandpool.Client) uint64 {
	t.Helper()
	st, err := c.Stats(context.Background(), pool)
	if err != nil {
		t.Fatal(err)
	}
	return st.GetCounters().GetLeaseExpirations()
}

func TestLeaseLostWhenNotKeptAlive(t *testing.T) {
	c := shared.client(t, nil)
	before := expirations(t, c)
	s := acquire(t, c, &sandpool.AcquireOptions{TTL: time.Second, NoKeepAlive: true})
	// The server revokes the lease once its TTL passes without a keepalive.
	if err := waitFor(10*time.Second, func() (bool, error) { return expirations(t, c) > before, nil }); err != nil {
		t.Fatal("the lease outlived its TTL without keepalives")
	}
	_, err := s.RunCollect(context.Background(), sandpool.Code("print(1)"), nil)
	var lost *sandpool.LeaseLostError
	if !errors.Is(err, sandpool.ErrLeaseLost) || !errors.As(err, &lost) {
		t.Fatalf("%T %v", err, err)
	}
	if lost.LeaseID != s.LeaseID() || lost.State != pb.LeaseState_LEASE_STATE_EXPIRED || lost.Base.Code != codes.FailedPrecondition {
		t.Fatalf("lost %+v (%v)", lost, lost.Base)
	}
	if reason, ok := lost.Base.Reason(); !ok || reason != pb.ErrorReason_LEASE_ENDED {
		t.Fatalf("reason %v", reason)
	}
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("status.Code of the loss: %v", status.Code(err))
	}
	// The session remembers: the next call fails without a round trip.
	if err := s.Lost(); !errors.Is(err, sandpool.ErrLeaseLost) {
		t.Fatalf("Lost() = %v", err)
	}
	if _, err := s.Upload(context.Background(), "/sandbox/x", []byte("x"), nil); !errors.Is(err, sandpool.ErrLeaseLost) {
		t.Fatalf("upload on a lost lease: %v", err)
	}

	// A run going when the lease ends is killed, and says so.
	s2 := acquire(t, c, &sandpool.AcquireOptions{TTL: time.Second, NoKeepAlive: true})
	r := collect(t, s2, sandpool.Code("import time\ntime.sleep(30)"), nil)
	if r.EndReason != sandpool.EndLeaseExpired || !errors.Is(s2.Lost(), sandpool.ErrLeaseLost) {
		t.Fatalf("run over the lease's end: %+v, lost %v", r, s2.Lost())
	}
}

func TestKeepAliveReportsALeaseReleasedBehindItsBack(t *testing.T) {
	c := shared.client(t, nil)
	s := acquire(t, c, &sandpool.AcquireOptions{TTL: 3 * time.Second})
	raw := pb.NewSessionServiceClient(c.Conn())
	if _, err := raw.Release(context.Background(), &pb.ReleaseRequest{LeaseId: s.LeaseID()}); err != nil {
		t.Fatal(err)
	}
	// The next keepalive (at TTL/3) hears RELEASED.
	if err := waitFor(5*time.Second, func() (bool, error) { return s.Lost() != nil, nil }); err != nil {
		t.Fatal("the session did not notice")
	}
	var lost *sandpool.LeaseLostError
	if !errors.As(s.Lost(), &lost) || lost.State != pb.LeaseState_LEASE_STATE_RELEASED {
		t.Fatalf("lost: %v", s.Lost())
	}
	if _, err := s.RunCollect(context.Background(), sandpool.Code("print(1)"), nil); !errors.Is(err, sandpool.ErrLeaseLost) {
		t.Fatalf("run after the loss: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("closing a lost session: %v", err)
	}
}

// releases is the pool's count of leases released by their client.
func releases(t *testing.T, c *sandpool.Client) uint64 {
	t.Helper()
	st, err := c.Stats(context.Background(), pool)
	if err != nil {
		t.Fatal(err)
	}
	return st.GetCounters().GetReleases()
}

func TestCloseAndContextEndReleaseTheLease(t *testing.T) {
	c := shared.client(t, nil)
	raw := pb.NewSessionServiceClient(c.Conn())
	before := releases(t, c)
	s, err := c.Acquire(context.Background(), pool, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}
	if got := releases(t, c); got != before+1 {
		t.Fatalf("releases %d -> %d", before, got)
	}
	// Released already: a second Release says so.
	if r, err := raw.Release(context.Background(), &pb.ReleaseRequest{LeaseId: s.LeaseID()}); err != nil ||
		r.GetPreviousState() != pb.LeaseState_LEASE_STATE_RELEASED {
		t.Fatalf("release again: %v %v", r, err)
	}
	var lost *sandpool.LeaseLostError
	if _, err := s.RunCollect(context.Background(), sandpool.Code("1"), nil); !errors.As(err, &lost) ||
		lost.State != pb.LeaseState_LEASE_STATE_RELEASED {
		t.Fatalf("run after close: %v", err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	s2, err := c.Acquire(ctx, pool, nil)
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	select {
	case <-s2.Released():
	case <-time.After(10 * time.Second):
		t.Fatal("the lease outlived its context")
	}
	if r, err := raw.Release(context.Background(), &pb.ReleaseRequest{LeaseId: s2.LeaseID()}); err != nil ||
		r.GetPreviousState() != pb.LeaseState_LEASE_STATE_RELEASED {
		t.Fatalf("release after the context ended: %v %v", r, err)
	}
}

func TestErrorsAreTyped(t *testing.T) {
	c := shared.client(t, nil)
	ctx := context.Background()
	_, err := c.Acquire(ctx, "no-such-pool", nil)
	var e *sandpool.Error
	if !errors.Is(err, sandpool.ErrNotFound) || errors.Is(err, sandpool.ErrLeaseLost) || !errors.As(err, &e) {
		t.Fatalf("unknown pool: %T %v", err, err)
	}
	if reason, ok := e.Reason(); !ok || reason != pb.ErrorReason_POOL_NOT_FOUND || e.Code != codes.NotFound ||
		e.Details.ErrorInfo.Domain != sandpool.ErrorDomain || status.Code(err) != codes.NotFound {
		t.Fatalf("unknown pool: %+v", e)
	}

	bad := pythonSpec("go-bad", 3, 2)
	_, err = c.CreatePool(ctx, bad, nil)
	if !errors.Is(err, sandpool.ErrInvalidArgument) || !errors.As(err, &e) || e.Field() != "config.min_pool_size" {
		t.Fatalf("min > max: %v (field %q)", err, e.Field())
	}
	_, err = c.CreatePool(ctx, pythonSpec(pool, 0, 1), nil)
	if !errors.Is(err, sandpool.ErrAlreadyExists) {
		t.Fatalf("taken name: %v", err)
	}

	// A FAIL_FAST pool of one: the second acquire is refused at once.
	name := pool + "-ff"
	heldPoolOfOne(t, c, name, pb.ExhaustionStrategy_EXHAUSTION_STRATEGY_FAIL_FAST)
	t0 := time.Now()
	_, err = c.Acquire(ctx, name, nil)
	if !errors.Is(err, sandpool.ErrPoolExhausted) || time.Since(t0) > 5*time.Second {
		t.Fatalf("exhausted: %v after %s", err, time.Since(t0))
	}
}

func TestOwnedPoolIsKeptAliveAndDeletedOnClose(t *testing.T) {
	c := shared.client(t, nil)
	ctx := context.Background()
	name := pool + "-owned"
	p, err := c.CreateOwnedPool(ctx, pythonSpec(name, 1, 2), 2*time.Second, true)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if p.Pool.GetOwnerExpireTime() == nil {
		t.Fatalf("pool %+v has no owner deadline", p.Pool)
	}
	// Past its owner TTL it lives on: the client keeps it alive.
	time.Sleep(3 * time.Second)
	if err := p.Lost(); err != nil {
		t.Fatal(err)
	}
	s, err := p.Acquire(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if r := collect(t, s, sandpool.Code("print('owned')"), nil); r.StdoutText() != "owned\n" {
		t.Fatalf("%q", r.Stdout)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := waitFor(20*time.Second, func() (bool, error) {
		_, err := c.GetPool(ctx, name)
		return errors.Is(err, sandpool.ErrNotFound), nil
	}); err != nil {
		t.Fatal("the owned pool outlived its Close")
	}

	// Deleted behind its owner's back: the keepalive hears NOT_FOUND.
	other := pool + "-owned2"
	p2, err := c.CreateOwnedPool(ctx, pythonSpec(other, 0, 1), 3*time.Second, false)
	if err != nil {
		t.Fatal(err)
	}
	defer p2.Close()
	if _, err := c.DeletePool(ctx, other, true); err != nil {
		t.Fatal(err)
	}
	if err := waitFor(5*time.Second, func() (bool, error) { return p2.Lost() != nil, nil }); err != nil {
		t.Fatal("the owner did not notice")
	}
	var lost *sandpool.PoolLostError
	if !errors.As(p2.Lost(), &lost) || lost.Pool != other || lost.State != pb.LeaseState_LEASE_STATE_NOT_FOUND {
		t.Fatalf("lost: %v", p2.Lost())
	}
	if _, err := p2.Acquire(ctx, nil); !errors.Is(err, sandpool.ErrPoolLost) {
		t.Fatalf("acquire on a lost pool: %v", err)
	}
}

// demoWheel is a tiny pure-Python wheel of package sandpooldemo (VALUE =
// 42), built with archive/zip: no build tools, no index.
func demoWheel(t *testing.T) []byte {
	t.Helper()
	files := []struct{ name, data string }{
		{"sandpooldemo/__init__.py", "VALUE = 42\n"},
		{"sandpooldemo-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: sandpooldemo\nVersion: 1.0\n"},
		{"sandpooldemo-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: sandpool-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"},
	}
	var record strings.Builder
	for _, f := range files {
		sum := sha256.Sum256([]byte(f.data))
		fmt.Fprintf(&record, "%s,sha256=%s,%d\n", f.name, base64.RawURLEncoding.EncodeToString(sum[:]), len(f.data))
	}
	record.WriteString("sandpooldemo-1.0.dist-info/RECORD,,\n")
	files = append(files, struct{ name, data string }{"sandpooldemo-1.0.dist-info/RECORD", record.String()})
	var buf bytes.Buffer
	z := zip.NewWriter(&buf)
	for _, f := range files {
		w, err := z.Create(f.name)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(w, f.data); err != nil {
			t.Fatal(err)
		}
	}
	if err := z.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestInstallLibrariesForTheLease(t *testing.T) {
	c := shared.client(t, nil)
	s := acquire(t, c, nil)
	ctx := context.Background()
	const wheel = "/sandbox/pkgs/sandpooldemo-1.0-py3-none-any.whl"
	if _, err := s.Upload(ctx, wheel, demoWheel(t), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := s.InstallLibraries(ctx, []string{wheel}); err != nil {
		t.Fatal(err)
	}
	if r := collect(t, s, sandpool.Code("import sandpooldemo; print(sandpooldemo.VALUE)"), nil); r.StdoutText() != "42\n" {
		t.Fatalf("import after install: %q %q", r.Stdout, r.Stderr)
	}
	// Names need the pool's lease_installs; options and shell are refused.
	_, err := s.InstallLibraries(ctx, []string{"requests"})
	var e *sandpool.Error
	if !errors.Is(err, sandpool.ErrFailedPrecondition) || !errors.As(err, &e) {
		t.Fatalf("install by name: %v", err)
	}
	if reason, _ := e.Reason(); reason != pb.ErrorReason_NOT_ALLOWED {
		t.Fatalf("reason %v", reason)
	}
	if _, err := s.InstallLibraries(ctx, []string{"numpy; rm -rf /"}); !errors.Is(err, sandpool.ErrInvalidArgument) {
		t.Fatalf("a requirement with a shell in it: %v", err)
	}
}

func TestWatchStatsFollowsThePool(t *testing.T) {
	c := shared.client(t, nil)
	ctx := context.Background()
	name := pool + "-watch"
	if _, err := c.CreatePool(ctx, pythonSpec(name, 0, 1), nil); err != nil {
		t.Fatal(err)
	}
	w, err := c.WatchStats(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	first, err := w.Recv()
	if err != nil || first.GetPool() != name || first.GetCounters().GetAcquisitions() != 0 {
		t.Fatalf("first stats %v %v", first, err)
	}
	s, err := c.Acquire(ctx, name, &sandpool.AcquireOptions{Wait: 60 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	for {
		st, err := w.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if st.GetStateCounts().GetBusy() == 1 && st.GetCounters().GetAcquisitions() == 1 {
			break
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.DeletePool(ctx, name, true); err != nil {
		t.Fatal(err)
	}
	var last *pb.PoolStats
	for {
		st, err := w.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		last = st
	}
	if !last.GetClosed() {
		t.Fatalf("the last stats before the end: %v", last)
	}
}
