package sandpool_test

import (
	"context"
	"errors"
	"strings"
	"syscall"
	"testing"
	"time"

	sandpool "github.com/sandpool/sandpool/clients/go"
)

// readUntil reads the run's events until its stdout (with a terminal, the
// one stream) holds needle. Stderr is kept apart: without a terminal the
// two are separate pipes, and how their pieces interleave is up to the
// engine (a REPL's prompts on stderr can land inside a line of stdout).
func readUntil(t *testing.T, it *sandpool.Interaction, seen *strings.Builder, needle string) {
	t.Helper()
	var stderr strings.Builder
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(seen.String(), needle) {
		if time.Now().After(deadline) {
			t.Fatalf("%q did not come; the run printed %q (stderr %q)", needle, seen.String(), stderr.String())
		}
		ev, err := it.Recv()
		if err != nil {
			t.Fatalf("before %q: %v; the run printed %q (stderr %q)", needle, err, seen.String(), stderr.String())
		}
		switch e := ev.(type) {
		case *sandpool.Stdout:
			seen.Write(e.Data)
		case *sandpool.Stderr:
			stderr.Write(e.Data)
		case *sandpool.Exit:
			t.Fatalf("the run ended (%+v) before %q: %q (stderr %q)", e, needle, seen.String(), stderr.String())
		}
	}
}

func exitOf(t *testing.T, it *sandpool.Interaction) *sandpool.Exit {
	t.Helper()
	for {
		ev, err := it.Recv()
		if err != nil {
			t.Fatalf("no exit: %v", err)
		}
		if e, ok := ev.(*sandpool.Exit); ok {
			return e
		}
	}
}

func TestInteractiveRuns(t *testing.T) {
	c := shared.client(t, nil)
	s := acquire(t, c, nil)
	ctx := context.Background()

	// A REPL answers while its input is open, and ends at end of input.
	it, err := s.Interact(ctx, sandpool.Argv("python3", "-u", "-i", "-q"), &sandpool.InteractOptions{RunOptions: sandpool.RunOptions{Timeout: time.Minute}})
	if err != nil {
		t.Fatalf("interact: %v", err)
	}
	var seen strings.Builder
	if err := it.Write([]byte("x = 21\nprint('answer', x * 2)\n")); err != nil {
		t.Fatal(err)
	}
	readUntil(t, it, &seen, "answer 42")
	if err := it.CloseStdin(); err != nil {
		t.Fatal(err)
	}
	if e := exitOf(t, it); e.ExitCode != 0 || e.EndReason != sandpool.EndExited {
		t.Fatalf("exit %+v", e)
	}

	// A terminal: its size, a resize, Ctrl-C on the foreground job.
	it, err = s.Interact(ctx, sandpool.Argv("bash", "--norc", "--noprofile", "-i"), &sandpool.InteractOptions{
		RunOptions: sandpool.RunOptions{Timeout: time.Minute},
		Terminal:   &sandpool.TerminalSize{Rows: 24, Columns: 80},
	})
	if err != nil {
		t.Fatalf("interact: %v", err)
	}
	seen.Reset()
	_ = it.Write([]byte("stty size\r"))
	readUntil(t, it, &seen, "24 80")
	_ = it.Resize(30, 100)
	_ = it.Write([]byte("stty size\r"))
	readUntil(t, it, &seen, "30 100")
	_ = it.Write([]byte("sleep 50; echo slept\r"))
	time.Sleep(500 * time.Millisecond)
	_ = it.Write([]byte{3})
	_ = it.Write([]byte("echo after-$((6 * 7))\r"))
	readUntil(t, it, &seen, "after-42")
	if strings.Contains(seen.String(), "\nslept\r\n") {
		t.Fatalf("the sleep was not interrupted: %q", seen.String())
	}
	_ = it.Write([]byte("exit 6\r"))
	if e := exitOf(t, it); e.ExitCode != 6 || e.EndReason != sandpool.EndExited {
		t.Fatalf("exit %+v", e)
	}

	// A signal to the run; then a bad one ends the call with INVALID_ARGUMENT.
	it, err = s.Interact(ctx, sandpool.Argv("cat"), nil)
	if err != nil {
		t.Fatalf("interact: %v", err)
	}
	seen.Reset()
	_ = it.Write([]byte("ping\n"))
	readUntil(t, it, &seen, "ping\n")
	_ = it.Signal(syscall.SIGTERM)
	if e := exitOf(t, it); e.EndReason != sandpool.EndSignaled || e.ExitCode != 143 {
		t.Fatalf("exit %+v", e)
	}
	it, err = s.Interact(ctx, sandpool.Argv("cat"), nil)
	if err != nil {
		t.Fatalf("interact: %v", err)
	}
	_ = it.Signal(syscall.Signal(99))
	_, err = it.Collect()
	if !errors.Is(err, sandpool.ErrInvalidArgument) || !strings.Contains(err.Error(), "signal") {
		t.Fatalf("a bad signal: %v", err)
	}
	if r := collect(t, s, sandpool.Code("print('still')"), nil); r.StdoutText() != "still\n" {
		t.Fatalf("after: %+v", r)
	}
}
