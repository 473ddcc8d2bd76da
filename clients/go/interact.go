package sandpool

import (
	"context"
	"sync"
	"syscall"

	pb "github.com/sandpool/sandpool/clients/go/sandpoolv1"
)

// TerminalSize is a terminal's size in characters.
type TerminalSize struct {
	Rows, Columns uint32
}

// InteractOptions are those of a run (its Stdin must be empty: input is
// written while the program runs; its RunID is ignored: an interactive run
// is not resumable), and a terminal.
type InteractOptions struct {
	RunOptions
	// Terminal, when set, gives the program a terminal of that size: its
	// output then comes as one stdout stream, shaped by the terminal (echo,
	// CR LF), and a "\x03" written interrupts its foreground job as Ctrl-C
	// does.
	Terminal *TerminalSize
}

// Interaction is an interactive run: read its events with Recv (it is a
// RunStream), and send it input, end of input, signals and terminal sizes
// from any goroutine while it runs.
type Interaction struct {
	*RunStream
	mu   sync.Mutex
	call pb.SessionService_InteractClient
}

// Interact starts an interactive run of p. Errors about the request (an
// unknown lease, a bad terminal size) come from the first Recv.
func (s *Session) Interact(ctx context.Context, p Program, opts *InteractOptions) (*Interaction, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	if opts == nil {
		opts = &InteractOptions{}
	}
	req, deadline := s.runRequest(p, &opts.RunOptions, "")
	start := &pb.InteractStart{Run: req}
	if t := opts.Terminal; t != nil {
		start.Terminal = &pb.TerminalSize{Rows: t.Rows, Columns: t.Columns}
	}
	callCtx, cancel := s.callCtx(ctx, deadline)
	call, err := s.client.sessions.Interact(callCtx)
	if err != nil {
		cancel()
		return nil, s.fail(err)
	}
	// Not resumable: the run ends when its stream drops.
	it := &Interaction{RunStream: &RunStream{session: s, ctx: callCtx, cancel: cancel, stream: call}, call: call}
	if err := it.send(&pb.InteractRequest{Action: &pb.InteractRequest_Start{Start: start}}); err != nil {
		cancel()
		return nil, err
	}
	return it, nil
}

// send sends one request; grpc-go allows one sender at a time. A send on a
// call that ended fails with io.EOF, and Recv tells how it ended.
func (it *Interaction) send(r *pb.InteractRequest) error {
	it.mu.Lock()
	defer it.mu.Unlock()
	if err := it.call.Send(r); err != nil {
		return &Error{Kind: KindFailedPrecondition, Message: "the interactive run is over; Recv says how it ended: " + err.Error()}
	}
	return nil
}

// Write writes to the program's standard input; it blocks while the
// program does not read (flow control).
func (it *Interaction) Write(data []byte) error {
	return it.send(&pb.InteractRequest{Action: &pb.InteractRequest_Stdin{Stdin: data}})
}

// CloseStdin closes the program's standard input: it reads end of file.
func (it *Interaction) CloseStdin() error {
	return it.send(&pb.InteractRequest{Action: &pb.InteractRequest_CloseStdin{CloseStdin: &pb.CloseStdin{}}})
}

// Signal sends sig to every process of the run.
func (it *Interaction) Signal(sig syscall.Signal) error {
	return it.send(&pb.InteractRequest{Action: &pb.InteractRequest_Signal{Signal: int32(sig)}})
}

// Resize resizes the run's terminal (a run started with one).
func (it *Interaction) Resize(rows, columns uint32) error {
	return it.send(&pb.InteractRequest{Action: &pb.InteractRequest_Resize{Resize: &pb.TerminalSize{Rows: rows, Columns: columns}}})
}
