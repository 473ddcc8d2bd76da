package sandpool

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"sort"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/sandpool/sandpool/clients/go/sandpoolv1"
)

// Program is what a run executes: code in a language, or a command. Make
// one with Code, CodeIn, CodeBytes, Argv or Shell.
type Program struct {
	code    *pb.Code
	argv    []string
	shell   string
	isShell bool
}

// Code is source text in the pool's language.
func Code(text string) Program { return CodeIn("", text) }

// CodeIn is source text in the given language ("" for the pool's).
func CodeIn(language, text string) Program {
	return Program{code: &pb.Code{Source: &pb.Code_Text{Text: text}, Language: language}}
}

// CodeBytes is source as bytes, passed on unchanged ("" for the pool's
// language).
func CodeBytes(language string, data []byte) Program {
	return Program{code: &pb.Code{Source: &pb.Code_Data{Data: data}, Language: language}}
}

// Argv is a program and its arguments, executed without a shell.
func Argv(argv ...string) Program { return Program{argv: argv} }

// Shell is a command line run by /bin/sh -c.
func Shell(line string) Program { return Program{shell: line, isShell: true} }

// PlotFormat is the format of captured figures.
type PlotFormat = pb.PlotFormat

// The plot formats.
const (
	PlotPNG = pb.PlotFormat_PLOT_FORMAT_PNG
	PlotSVG = pb.PlotFormat_PLOT_FORMAT_SVG
	PlotPDF = pb.PlotFormat_PLOT_FORMAT_PDF
)

// RunOptions are the optional settings of a run. The zero value takes the
// pool's defaults.
type RunOptions struct {
	// Stdin is fed to standard input, then end of file.
	Stdin []byte
	// Env holds extra environment variables.
	Env map[string]string
	// WorkingDir defaults to /sandbox.
	WorkingDir string
	// Timeout kills the run after this long (0: the pool's default_run_timeout).
	Timeout time.Duration
	// OutputLimitBytes caps each stream (0: the pool's output_limit_bytes).
	OutputLimitBytes uint64
	// PlotFormat of captured figures (0: PNG).
	PlotFormat PlotFormat
	// RunID is the run's id (1 to 64 letters, digits, '-' or '_'), unique
	// within the lease; empty: a random one. A run with an id survives a
	// broken connection (see RunStream). Interactive runs have none (Interact
	// ignores it).
	RunID string
}

// EndReason says why a run ended.
type EndReason = pb.EndReason

// The end reasons.
const (
	EndExited       = pb.EndReason_END_REASON_EXITED
	EndSignaled     = pb.EndReason_END_REASON_SIGNALED
	EndTimeout      = pb.EndReason_END_REASON_TIMEOUT
	EndCancelled    = pb.EndReason_END_REASON_CANCELLED
	EndOutputLimit  = pb.EndReason_END_REASON_OUTPUT_LIMIT
	EndLeaseExpired = pb.EndReason_END_REASON_LEASE_EXPIRED
	// EndRunnerLost: the container's resident runner broke its protocol
	// mid-run; the server killed the run.
	EndRunnerLost = pb.EndReason_END_REASON_RUNNER_LOST
)

// Event is one event of a run, in order: *Started first, then *Stdout,
// *Stderr, *ArtifactChunk (and *Gap, after a broken connection) as they
// come, *Exit last. Switch on its type.
type Event interface {
	// Seq is the event's position in the run, from 1.
	Seq() uint64
}

type seqOf uint64

func (s seqOf) Seq() uint64 { return uint64(s) }

// Started is the first event of a run.
type Started struct {
	seqOf
	// RunID is for Session.Cancel.
	RunID     string
	StartTime time.Time
}

// Stdout is bytes the program wrote to standard output.
type Stdout struct {
	seqOf
	Data []byte
}

// Stderr is bytes the program wrote to standard error.
type Stderr struct {
	seqOf
	Data []byte
}

// ArtifactInfo describes a file a run produced (or that ListArtifacts found).
type ArtifactInfo struct {
	// Name is the path relative to the output directory.
	Name string
	// Path is the absolute path in the container.
	Path     string
	MimeType string
	Size     uint64
	// SHA256 is hex; empty when the server did not compute it.
	SHA256     string
	RunID      string
	ModifyTime time.Time
	// Plot is a figure captured from a plotting library (under plots/).
	Plot bool
}

func artifactInfo(a *pb.ArtifactInfo) ArtifactInfo {
	info := ArtifactInfo{
		Name: a.GetName(), Path: a.GetPath(), MimeType: a.GetMimeType(), Size: a.GetSize(),
		SHA256: a.GetSha256(), RunID: a.GetRunId(), Plot: a.GetPlot(),
	}
	if a.GetModifyTime() != nil {
		info.ModifyTime = a.GetModifyTime().AsTime()
	}
	return info
}

// ArtifactChunk is a piece of a file the run produced under the pool's
// output directory, or of a captured figure: same name, increasing offset,
// Last on the final piece.
type ArtifactChunk struct {
	seqOf
	Info   ArtifactInfo
	Offset uint64
	Data   []byte
	Last   bool
	// Omitted: the bytes are not in the stream (over the server's cap);
	// Session.Download(Info.Path) fetches them.
	Omitted bool
}

// Exit is the last event of a run.
type Exit struct {
	seqOf
	// ExitCode is 128 + the signal number when killed by a signal.
	ExitCode  int32
	EndReason EndReason
	Signal    int32
	Duration  time.Duration
	// Bytes written, including any beyond the cap.
	StdoutBytes uint64
	StderrBytes uint64
	// Truncated: output was cut at the cap.
	Truncated bool
	// Message explains the end, e.g. "killed after the 2s timeout".
	Message string
	// ContextRestarted: the run's context had to be restarted to stop it.
	ContextRestarted bool
}

// Gap stands for events of the run that the server no longer had when the
// stream was resumed after a broken connection (its buffer for the run, the
// pool's run_buffer_bytes, overflowed meanwhile): events FromSeq to ToSeq
// (its Seq) are lost, and this many bytes of each kind with them.
type Gap struct {
	seqOf
	FromSeq     uint64
	ToSeq       uint64
	StdoutBytes uint64
	StderrBytes uint64
	// ArtifactBytes lost from the stream (Session.Download still has the
	// files).
	ArtifactBytes uint64
}

// decodeEvent converts a wire event; nil for an event kind newer than this
// client (skipped).
func decodeEvent(r *pb.RunResponse) Event {
	seq := seqOf(r.GetSeq())
	switch e := r.GetEvent().(type) {
	case *pb.RunResponse_Started:
		s := &Started{seqOf: seq, RunID: e.Started.GetRunId()}
		if e.Started.GetStartTime() != nil {
			s.StartTime = e.Started.GetStartTime().AsTime()
		}
		return s
	case *pb.RunResponse_Stdout:
		return &Stdout{seqOf: seq, Data: e.Stdout.GetData()}
	case *pb.RunResponse_Stderr:
		return &Stderr{seqOf: seq, Data: e.Stderr.GetData()}
	case *pb.RunResponse_Artifact:
		a := e.Artifact
		return &ArtifactChunk{seqOf: seq, Info: artifactInfo(a.GetInfo()), Offset: a.GetOffset(), Data: a.GetData(),
			Last: a.GetLast(), Omitted: a.GetOmitted()}
	case *pb.RunResponse_Exit:
		x := e.Exit
		return &Exit{seqOf: seq, ExitCode: x.GetExitCode(), EndReason: x.GetEndReason(), Signal: x.GetSignal(),
			Duration: x.GetDuration().AsDuration(), StdoutBytes: x.GetStdoutBytes(), StderrBytes: x.GetStderrBytes(),
			Truncated: x.GetTruncated(), Message: x.GetMessage(), ContextRestarted: x.GetContextRestarted()}
	case *pb.RunResponse_Gap:
		g := e.Gap
		return &Gap{seqOf: seq, FromSeq: g.GetFromSeq(), ToSeq: g.GetToSeq(), StdoutBytes: g.GetStdoutBytes(),
			StderrBytes: g.GetStderrBytes(), ArtifactBytes: g.GetArtifactBytes()}
	}
	return nil
}

// Artifact is a produced file with its bytes, reassembled from its chunks.
type Artifact struct {
	ArtifactInfo
	// Data is empty when Omitted.
	Data    []byte
	Omitted bool
}

// Result is a finished run's output, collected.
type Result struct {
	RunID     string
	Stdout    []byte
	Stderr    []byte
	ExitCode  int32
	EndReason EndReason
	Signal    int32
	Duration  time.Duration
	Truncated bool
	Message   string
	// Artifacts are every file the run produced, whole, in order.
	Artifacts []Artifact
	// Plots are the captured figures among Artifacts.
	Plots            []Artifact
	ContextRestarted bool
	// Gaps are the events lost after a broken connection (see Gap); Stdout
	// and Stderr lack their bytes. Empty when nothing was lost.
	Gaps []Gap
}

// StdoutText is Stdout as a string.
func (r *Result) StdoutText() string { return string(r.Stdout) }

// StderrText is Stderr as a string.
func (r *Result) StderrText() string { return string(r.Stderr) }

const (
	// First wait before calling again after a run's connection broke; it
	// doubles up to reconnectMaxDelay while calls keep failing. The lease
	// (lost when its keepalive gives up) and the run's deadline bound the
	// retry.
	reconnectFirstDelay = 50 * time.Millisecond
	reconnectMaxDelay   = time.Second
	// A background Cancel of an abandoned run is tried again this often,
	// this many times, while the server does not know the run yet (its Run
	// may still be on the way) or cannot be reached.
	cancelRetryDelay = 100 * time.Millisecond
	cancelRetries    = 20
)

// RunStream is a run in progress: Recv gives its events as they arrive
// (call it from one goroutine at a time); a stream read to its end needs no
// Close.
//
// A session's runs (Session.Run, Context.Run) are resumable: each has a run
// id (RunOptions.RunID, else a random one), and when the connection breaks
// Recv picks the run up again transparently (Run again with the same id,
// which never runs it twice, until the first event came; then Attach after
// the last event), retrying until the lease is lost or the run's context
// ends. Events the server could no longer keep meanwhile come as one *Gap.
// The server does not stop a resumable run when its stream drops: Close (or
// the run's context ending) before the exit also sends Cancel for the run,
// in the background. Interactive runs are not resumable: their stream
// dropping kills them.
type RunStream struct {
	session *Session
	// ctx is the run's: Close, the caller's context, the run's deadline and
	// the lease's loss end it, and every call of the run with it.
	ctx    context.Context
	cancel context.CancelFunc
	// stream is the current call's events; nil while there is none.
	stream interface {
		Recv() (*pb.RunResponse, error)
	}
	// callCancel ends the current call of a resumable run.
	callCancel context.CancelFunc
	// request of a resumable run (nil: an interactive run).
	request *pb.RunRequest
	runID   string
	lastSeq uint64
	delay   time.Duration
	done    bool
	// settled: the run needs no Cancel once its stream is dropped (its exit
	// came, or the server answered the call with an error of its own).
	settled atomic.Bool
}

// startRun starts the resumable run of req (its run id set) under runCtx.
func startRun(s *Session, runCtx context.Context, cancel context.CancelFunc, req *pb.RunRequest) (*RunStream, error) {
	r := &RunStream{session: s, ctx: runCtx, cancel: cancel, request: req, runID: req.GetRunId()}
	go r.cancelWhenAbandoned()
	if err := r.connect(); err != nil {
		return nil, r.finish(err)
	}
	return r, nil
}

// RunID is the run's id: a resumable run's from the start, an interactive
// run's once the Started event was received.
func (r *RunStream) RunID() string { return r.runID }

// Recv returns the next event; io.EOF after the Exit event. A broken
// connection of a resumable run is resumed (see RunStream); Recv fails with
// a *LeaseLostError once the lease is lost.
func (r *RunStream) Recv() (Event, error) {
	for {
		if r.done {
			return nil, io.EOF
		}
		if r.stream == nil {
			if err := r.connect(); err != nil {
				return nil, r.finish(err)
			}
		}
		resp, err := r.stream.Recv()
		if err != nil {
			if r.resumes(err) {
				r.dropCall()
				if err := r.pause(); err != nil {
					return nil, r.finish(err)
				}
				continue
			}
			if err == io.EOF {
				// The stream ended without an exit event: the server
				// stopped without saying how the run ended.
				return nil, r.finish(&Error{Kind: KindUnavailable, Code: codes.Unavailable, Message: "the run's stream ended without an exit event"})
			}
			r.settleOn(err)
			return nil, r.finish(r.session.fail(err))
		}
		if err := r.accept(resp); err != nil {
			return nil, r.finish(err)
		}
		r.delay = 0
		ev := decodeEvent(resp)
		switch e := ev.(type) {
		case nil:
			continue
		case *Started:
			r.runID = e.RunID
		case *Exit:
			r.settled.Store(true)
			_ = r.finish(nil)
			if e.EndReason == EndLeaseExpired {
				// The server killed the run because the lease ended under it.
				r.session.keeper.markLost(newLeaseLost(r.session.lease.ID,
					"the lease ended during a run: "+e.Message, codes.FailedPrecondition, pb.LeaseState_LEASE_STATE_UNSPECIFIED, nil))
			}
		}
		return ev, nil
	}
}

// accept checks the event's sequence number: the one after the last, or a
// gap starting there and ending at its own.
func (r *RunStream) accept(resp *pb.RunResponse) error {
	seq := resp.GetSeq()
	var ok bool
	switch e := resp.GetEvent().(type) {
	case *pb.RunResponse_Gap:
		ok = e.Gap.GetFromSeq() == r.lastSeq+1 && e.Gap.GetToSeq() == seq
	case nil:
		// An event kind newer than this client (skipped).
		ok = seq > r.lastSeq
	default:
		ok = seq == r.lastSeq+1
	}
	if !ok {
		return &Error{Kind: KindOther, Code: codes.Internal,
			Message: fmt.Sprintf("event %d of the run arrived after event %d", seq, r.lastSeq)}
	}
	r.lastSeq = seq
	return nil
}

// connect calls again until the run's stream is back: Run (same run id:
// it never runs twice) until an event came, then Attach after the last
// one. It gives up when the lease is lost, the run's context ends, or on an
// answer that is not a broken connection.
func (r *RunStream) connect() error {
	s := r.session
	for {
		if err := s.check(); err != nil {
			return err
		}
		if err := r.ctx.Err(); err != nil {
			return s.fail(err)
		}
		callCtx, cancel := context.WithCancel(r.ctx)
		var stream interface {
			Recv() (*pb.RunResponse, error)
		}
		var err error
		if r.lastSeq == 0 {
			stream, err = s.client.sessions.Run(callCtx, r.request)
		} else {
			stream, err = s.client.sessions.Attach(callCtx, &pb.AttachRequest{
				LeaseId: r.request.GetLeaseId(), RunId: r.request.GetRunId(), AfterSeq: r.lastSeq,
			})
		}
		if err == nil {
			r.stream, r.callCancel = stream, cancel
			return nil
		}
		cancel()
		if !r.resumes(err) {
			r.settleOn(err)
			return s.fail(err)
		}
		if err := r.pause(); err != nil {
			return err
		}
	}
}

// resumes says whether a failed call of the run is picked up again: a
// resumable run whose call broke (or ended without the exit) while its
// context lasts.
func (r *RunStream) resumes(err error) bool {
	return r.request != nil && r.ctx.Err() == nil && (err == io.EOF || transportFailure(err))
}

// pause waits before the next call (longer while calls keep failing).
func (r *RunStream) pause() error {
	if r.delay == 0 {
		r.delay = reconnectFirstDelay
	}
	t := time.NewTimer(r.delay)
	defer t.Stop()
	select {
	case <-t.C:
	case <-r.ctx.Done():
		return r.session.fail(r.ctx.Err())
	}
	r.delay *= 2
	if r.delay > reconnectMaxDelay {
		r.delay = reconnectMaxDelay
	}
	return nil
}

// settleOn marks the run settled when err is the server's own answer (a
// status with a sandpool ErrorInfo: a run id taken, another stream took
// over, the lease is gone...), not the caller or the connection ending it.
func (r *RunStream) settleOn(err error) {
	if r.ctx.Err() != nil {
		return
	}
	if st, ok := status.FromError(err); ok {
		if info := decodeDetails(st).ErrorInfo; info != nil && info.Domain == ErrorDomain {
			r.settled.Store(true)
		}
	}
}

func (r *RunStream) dropCall() {
	if r.callCancel != nil {
		r.callCancel()
		r.callCancel = nil
	}
	if r.request != nil {
		r.stream = nil
	}
}

// finish ends the stream for good and returns err.
func (r *RunStream) finish(err error) error {
	r.done = true
	r.dropCall()
	r.cancel()
	return err
}

// cancelWhenAbandoned cancels a resumable run on the server once its stream
// is dropped before the exit (the server keeps such a run going without a
// stream), unless the session ended (the lease takes its runs along).
func (r *RunStream) cancelWhenAbandoned() {
	<-r.ctx.Done()
	s := r.session
	if r.settled.Load() || s.cut.Err() != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.client.timeout)
	defer cancel()
	req := &pb.CancelRequest{LeaseId: r.request.GetLeaseId(), RunId: r.request.GetRunId()}
	for i := 0; ; i++ {
		_, err := s.client.sessions.Cancel(ctx, req)
		if err == nil || i >= cancelRetries || s.cut.Err() != nil ||
			(status.Code(err) != codes.NotFound && !transportFailure(err)) {
			return
		}
		t := time.NewTimer(cancelRetryDelay)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return
		}
	}
}

// Close drops the stream; a run still going is cancelled. It may be called
// from another goroutine than Recv's (a Recv waiting then fails with
// ErrCancelled), and more than once.
func (r *RunStream) Close() { r.cancel() }

// transportFailure says whether a failed call says the connection broke
// rather than anything about the run: UNAVAILABLE, or UNKNOWN or INTERNAL
// that the transport made up (the server's own errors carry a sandpool
// ErrorInfo).
func transportFailure(err error) bool {
	st, ok := status.FromError(err)
	if !ok {
		return false
	}
	switch st.Code() {
	// The server's own UNAVAILABLE (the engine is down, the server is
	// stopping) carries its ErrorInfo and is final for the run.
	case codes.Unavailable, codes.Unknown, codes.Internal:
		info := decodeDetails(st).ErrorInfo
		return info == nil || info.Domain != ErrorDomain
	}
	return false
}

var runIDCounter uint64

// newRunID is a random run id: "g" and 32 hex digits.
func newRunID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		// No randomness: unique within the process, and most likely
		// across processes.
		return fmt.Sprintf("g%016x%08x%08x", time.Now().UnixNano(), os.Getpid(), atomic.AddUint64(&runIDCounter, 1))
	}
	return "g" + hex.EncodeToString(b[:])
}

// Collect reads the rest of the run and collects it.
func (r *RunStream) Collect() (*Result, error) {
	defer r.Close()
	type file struct {
		info    ArtifactInfo
		chunks  map[uint64][]byte
		omitted bool
	}
	res := &Result{}
	var out, errb bytes.Buffer
	files := map[string]*file{}
	var order []string
	for {
		ev, err := r.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		switch e := ev.(type) {
		case *Started:
			res.RunID = e.RunID
		case *Stdout:
			out.Write(e.Data)
		case *Stderr:
			errb.Write(e.Data)
		case *ArtifactChunk:
			f, ok := files[e.Info.Name]
			if !ok {
				f = &file{chunks: map[uint64][]byte{}}
				files[e.Info.Name] = f
				order = append(order, e.Info.Name)
			}
			f.info = e.Info // the last chunk's info carries the sha256
			f.omitted = f.omitted || e.Omitted
			if len(e.Data) > 0 {
				f.chunks[e.Offset] = e.Data
			}
		case *Gap:
			res.Gaps = append(res.Gaps, *e)
		case *Exit:
			res.ExitCode, res.EndReason, res.Signal = e.ExitCode, e.EndReason, e.Signal
			res.Duration, res.Truncated, res.Message = e.Duration, e.Truncated, e.Message
			res.ContextRestarted = e.ContextRestarted
		}
	}
	res.Stdout, res.Stderr = out.Bytes(), errb.Bytes()
	for _, name := range order {
		f := files[name]
		offsets := make([]uint64, 0, len(f.chunks))
		for o := range f.chunks {
			offsets = append(offsets, o)
		}
		sort.Slice(offsets, func(i, j int) bool { return offsets[i] < offsets[j] })
		var data []byte
		for _, o := range offsets {
			data = append(data, f.chunks[o]...)
		}
		a := Artifact{ArtifactInfo: f.info, Data: data, Omitted: f.omitted}
		res.Artifacts = append(res.Artifacts, a)
		if a.Plot {
			res.Plots = append(res.Plots, a)
		}
	}
	return res, nil
}
