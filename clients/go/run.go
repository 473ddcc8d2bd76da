package sandpool

import (
	"bytes"
	"context"
	"io"
	"sort"
	"time"

	"google.golang.org/grpc/codes"

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
)

// Event is one event of a run, in order: *Started first, then *Stdout,
// *Stderr and *ArtifactChunk as they come, *Exit last. Switch on its type.
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
}

// StdoutText is Stdout as a string.
func (r *Result) StdoutText() string { return string(r.Stdout) }

// StderrText is Stderr as a string.
func (r *Result) StderrText() string { return string(r.Stderr) }

// RunStream is a run in progress: Recv gives its events as they arrive
// (call it from one goroutine at a time). Close (or the run's context
// ending) drops the stream, and the server kills the run; a stream read to
// its end needs no Close.
type RunStream struct {
	session *Session
	stream  interface {
		Recv() (*pb.RunResponse, error)
	}
	cancel context.CancelFunc
	runID  string
	done   bool
}

// RunID is the run's id, known once the Started event was received.
func (r *RunStream) RunID() string { return r.runID }

// Recv returns the next event; io.EOF after the Exit event.
func (r *RunStream) Recv() (Event, error) {
	for {
		if r.done {
			return nil, io.EOF
		}
		resp, err := r.stream.Recv()
		if err != nil {
			r.done = true
			r.cancel()
			if err == io.EOF {
				// The stream ended without an exit event: the server
				// stopped without saying how the run ended.
				return nil, &Error{Kind: KindUnavailable, Code: codes.Unavailable, Message: "the run's stream ended without an exit event"}
			}
			return nil, r.session.fail(err)
		}
		ev := decodeEvent(resp)
		switch e := ev.(type) {
		case nil:
			continue
		case *Started:
			r.runID = e.RunID
		case *Exit:
			r.done = true
			r.cancel()
			if e.EndReason == EndLeaseExpired {
				// The server killed the run because the lease ended under it.
				r.session.keeper.markLost(newLeaseLost(r.session.lease.ID,
					"the lease ended during a run: "+e.Message, codes.FailedPrecondition, pb.LeaseState_LEASE_STATE_UNSPECIFIED, nil))
			}
		}
		return ev, nil
	}
}

// Close drops the stream; a run still going is killed by the server. It
// may be called from another goroutine than Recv's (a Recv waiting then
// fails with ErrCancelled), and more than once.
func (r *RunStream) Close() { r.cancel() }

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
