package sandpool

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"

	pb "github.com/sandpool/sandpool/clients/go/sandpoolv1"
)

const (
	// The TTL of a lease whose Acquire answer names none.
	defaultTTL = 30 * time.Second
	// Added to a run's timeout for its call's deadline.
	runDeadlineSlack = 30 * time.Second
	// A run's call deadline when no timeout is given: max_run_timeout's
	// default plus slack.
	runDefaultDeadline = time.Hour + runDeadlineSlack
	// Upload chunk size.
	uploadChunk = 1 << 20
)

// Lease is the lease a session holds.
type Lease struct {
	// ID is 128-bit random: the capability to use the container.
	ID          string
	Pool        string
	ContainerID string
	TTL         time.Duration
	ExpireTime  time.Time
	// Temporary: a container outside the pool (TEMPORARY strategy),
	// destroyed on release.
	Temporary bool
	Language  string
}

// Session is a lease on a warm container, kept alive in the background.
// Close releases it; so does the end of the context given to Acquire. Once
// the lease is lost every call fails with a *LeaseLostError. A Session is
// safe for concurrent use.
type Session struct {
	client *Client
	lease  Lease
	keeper *keeper
	// cut ends the calls in flight when the lease is lost.
	cut       context.Context
	cutCancel context.CancelFunc

	releaseOnce sync.Once
	releaseErr  error
	released    chan struct{}
}

func newSession(ctx context.Context, c *Client, l *pb.Lease, started time.Time, keepAlive bool) *Session {
	s := &Session{
		client: c,
		lease: Lease{
			ID: l.GetId(), Pool: l.GetPool(), ContainerID: l.GetContainerId(), TTL: l.GetTtl().AsDuration(),
			Temporary: l.GetTemporary(), Language: l.GetLanguage(),
		},
		released: make(chan struct{}),
	}
	if l.GetExpireTime() != nil {
		s.lease.ExpireTime = l.GetExpireTime().AsTime()
	}
	ttl := s.lease.TTL
	if ttl <= 0 {
		ttl = defaultTTL
	}
	s.cut, s.cutCancel = context.WithCancel(context.Background())
	s.keeper = newKeeper(c.sessions, leaseTarget{s}, ttl, started, keepAlive, true, s.cutCancel)
	// The session ends with the caller's context.
	go func() {
		select {
		case <-ctx.Done():
			_ = s.Close()
		case <-s.released:
		}
	}()
	return s
}

// Lease describes the lease.
func (s *Session) Lease() Lease { return s.lease }

// LeaseID is the lease's id.
func (s *Session) LeaseID() string { return s.lease.ID }

// Lost is the loss once the lease is lost (a *LeaseLostError); nil while it
// is usable.
func (s *Session) Lost() error { return s.keeper.loss() }

// Renewals is how many keepalives the server confirmed so far.
func (s *Session) Renewals() int { return s.keeper.renewalCount() }

// leaseTarget is the keepalive target of a session's lease.
type leaseTarget struct{ s *Session }

var leaseStateWords = map[pb.LeaseState]string{
	pb.LeaseState_LEASE_STATE_EXPIRED:           "its TTL ran out on the server",
	pb.LeaseState_LEASE_STATE_RELEASED:          "it was released",
	pb.LeaseState_LEASE_STATE_NOT_FOUND:         "the server does not know it",
	pb.LeaseState_LEASE_STATE_REVOKED:           "the server revoked it (it is stopping)",
	pb.LeaseState_LEASE_STATE_LIFETIME_EXCEEDED: "it reached its pool's max_lease_lifetime",
	pb.LeaseState_LEASE_STATE_CONTAINER_LOST:    "its container died or was removed",
	pb.LeaseState_LEASE_STATE_POOL_DELETED:      "its pool was deleted",
	pb.LeaseState_LEASE_STATE_REPLICA_GONE:      "the server replica that owned it is gone (acquire a new one)",
}

func (t leaseTarget) request() *pb.KeepAliveRequest {
	return &pb.KeepAliveRequest{LeaseId: t.s.lease.ID}
}

func (t leaseTarget) expired(ttl time.Duration) error {
	return newLeaseLost(t.s.lease.ID, fmt.Sprintf("keepalive failed for longer than the TTL (%s)", ttl),
		codes.Unavailable, pb.LeaseState_LEASE_STATE_UNSPECIFIED, nil)
}

func (t leaseTarget) answered(state pb.LeaseState) error {
	return newLeaseLost(t.s.lease.ID, answerReason(state, leaseStateWords), codes.FailedPrecondition, state, nil)
}

func (t leaseTarget) gone(err error) error {
	var lost *LeaseLostError
	if errors.As(mapLeaseError(err, t.s.lease.ID), &lost) {
		return lost
	}
	return nil
}

func (t leaseTarget) abandon() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, _ = t.s.client.sessions.Release(ctx, &pb.ReleaseRequest{LeaseId: t.s.lease.ID})
}

// check fails at once when the session was released or its lease is lost.
func (s *Session) check() error {
	select {
	case <-s.released:
		return newLeaseLost(s.lease.ID, "the lease was released by this session", codes.FailedPrecondition,
			pb.LeaseState_LEASE_STATE_RELEASED, nil)
	default:
	}
	return s.keeper.loss()
}

// fail maps a call's error; an error about the lease marks it lost. A call
// cut because the lease was lost fails with that loss.
func (s *Session) fail(err error) error {
	if lost := s.keeper.loss(); lost != nil && s.cut.Err() != nil {
		return lost
	}
	mapped := mapLeaseError(err, s.lease.ID)
	var lost *LeaseLostError
	if errors.As(mapped, &lost) {
		s.keeper.markLost(lost)
	}
	return mapped
}

// callCtx is ctx bounded by the default timeout (when it has none) and cut
// when the lease is lost.
func (s *Session) callCtx(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	ctx, cancel := s.client.withTimeout(ctx, d)
	stop := make(chan struct{})
	go func() {
		select {
		case <-s.cut.Done():
			cancel()
		case <-ctx.Done():
		case <-stop:
		}
	}()
	var once sync.Once
	return ctx, func() { once.Do(func() { close(stop); cancel() }) }
}

// ------------------------------------------------------------ runs

// Run starts a program and returns its stream of events. The run survives
// broken connections (see RunStream). Close the stream (or end ctx) to
// cancel the run early.
func (s *Session) Run(ctx context.Context, p Program, opts *RunOptions) (*RunStream, error) {
	return s.run(ctx, p, opts, "")
}

func (s *Session) run(ctx context.Context, p Program, opts *RunOptions, contextID string) (*RunStream, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	req, deadline := s.runRequest(p, opts, contextID)
	// Resumable: a run id of its own unless the caller chose one.
	if opts != nil && opts.RunID != "" {
		req.RunId = opts.RunID
	} else {
		req.RunId = newRunID()
	}
	runCtx, cancel := s.callCtx(ctx, deadline)
	return startRun(s, runCtx, cancel, req)
}

// runRequest is the request of a run and the deadline of its call.
func (s *Session) runRequest(p Program, opts *RunOptions, contextID string) (*pb.RunRequest, time.Duration) {
	if opts == nil {
		opts = &RunOptions{}
	}
	req := &pb.RunRequest{
		LeaseId: s.lease.ID, Stdin: opts.Stdin, Env: opts.Env, WorkingDir: opts.WorkingDir,
		PlotFormat: opts.PlotFormat, ContextId: contextID,
	}
	switch {
	case p.code != nil:
		req.Program = &pb.RunRequest_Code{Code: p.code}
	case p.isShell:
		req.Program = &pb.RunRequest_Command{Command: &pb.Command{Shell: p.shell}}
	default:
		req.Program = &pb.RunRequest_Command{Command: &pb.Command{Argv: p.argv}}
	}
	deadline := runDefaultDeadline
	if opts.Timeout > 0 {
		req.Timeout = durationpb.New(opts.Timeout)
		deadline = opts.Timeout + runDeadlineSlack
	}
	if opts.OutputLimitBytes > 0 {
		limit := opts.OutputLimitBytes
		req.OutputLimitBytes = &limit
	}
	return req, deadline
}

// RunCollect runs a program and collects its output, exit code, end reason
// and artifacts.
func (s *Session) RunCollect(ctx context.Context, p Program, opts *RunOptions) (*Result, error) {
	stream, err := s.Run(ctx, p, opts)
	if err != nil {
		return nil, err
	}
	return stream.Collect()
}

// Cancel kills a running run by the id of its Started event; false when it
// had already ended.
func (s *Session) Cancel(ctx context.Context, runID string) (bool, error) {
	if err := s.check(); err != nil {
		return false, err
	}
	ctx, cancel := s.callCtx(ctx, 0)
	defer cancel()
	resp, err := s.client.sessions.Cancel(ctx, &pb.CancelRequest{LeaseId: s.lease.ID, RunId: runID})
	if err != nil {
		return false, s.fail(err)
	}
	return resp.GetCancelled(), nil
}

// InstallLibraries installs libraries for this lease only (gone after the
// reset): package names need the pool's lease_installs; paths of package
// files already in the container always work. It returns the installer's
// log.
func (s *Session) InstallLibraries(ctx context.Context, libraries []string) (string, error) {
	if err := s.check(); err != nil {
		return "", err
	}
	ctx, cancel := s.callCtx(ctx, 10*time.Minute)
	defer cancel()
	resp, err := s.client.sessions.InstallLibraries(ctx, &pb.InstallLibrariesRequest{LeaseId: s.lease.ID, Libraries: libraries})
	if err != nil {
		return "", s.fail(err)
	}
	return resp.GetLog(), nil
}

// ------------------------------------------------------------ contexts

// Context is a persistent interpreter in the session's container:
// variables, imports and functions survive between its runs, like cells of
// a notebook. Private to its lease; Delete ends it.
type Context struct {
	session *Session
	ID      string
	// Language of the context.
	Language string
	once     sync.Once
	err      error
}

// CreateContext opens a persistent interpreter ("" for the pool's language).
func (s *Session) CreateContext(ctx context.Context, language string) (*Context, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	ctx, cancel := s.callCtx(ctx, maxDuration(s.client.timeout, time.Minute))
	defer cancel()
	resp, err := s.client.sessions.CreateContext(ctx, &pb.CreateContextRequest{LeaseId: s.lease.ID, Language: language})
	if err != nil {
		return nil, s.fail(err)
	}
	if language == "" {
		language = s.lease.Language
	}
	return &Context{session: s, ID: resp.GetContextId(), Language: language}, nil
}

// Run runs code in the context; only Timeout, OutputLimitBytes, PlotFormat
// and RunID of opts apply. Like a session's run, it survives broken
// connections.
func (c *Context) Run(ctx context.Context, code string, opts *RunOptions) (*RunStream, error) {
	return c.session.run(ctx, CodeIn(c.Language, code), contextOptions(opts), c.ID)
}

// RunCollect runs code in the context and collects its output.
func (c *Context) RunCollect(ctx context.Context, code string, opts *RunOptions) (*Result, error) {
	stream, err := c.Run(ctx, code, opts)
	if err != nil {
		return nil, err
	}
	return stream.Collect()
}

func contextOptions(opts *RunOptions) *RunOptions {
	if opts == nil {
		return nil
	}
	return &RunOptions{Timeout: opts.Timeout, OutputLimitBytes: opts.OutputLimitBytes, PlotFormat: opts.PlotFormat, RunID: opts.RunID}
}

// Delete ends the context and its interpreter (idempotent; the lease's end
// takes its contexts along).
func (c *Context) Delete(ctx context.Context) error {
	c.once.Do(func() {
		s := c.session
		if s.check() != nil {
			return
		}
		callCtx, cancel := s.callCtx(ctx, 0)
		defer cancel()
		_, err := s.client.sessions.DeleteContext(callCtx, &pb.DeleteContextRequest{LeaseId: s.lease.ID, ContextId: c.ID})
		if err != nil {
			err = s.fail(err)
			if errors.Is(err, ErrLeaseLost) || errors.Is(err, ErrNotFound) {
				err = nil
			}
		}
		c.err = err
	})
	return c.err
}

// ------------------------------------------------------------ files

// UploadOptions are the optional settings of an upload.
type UploadOptions struct {
	// Mode defaults to 0644.
	Mode uint32
	// Tar: the data is a tar archive to unpack into the directory path.
	Tar bool
}

// UploadResult is what the server received.
type UploadResult struct {
	Path string
	Size uint64
	// SHA256 is the hex SHA-256 of the bytes received.
	SHA256 string
}

// Upload writes data to the absolute path in the container (parents are
// created).
func (s *Session) Upload(ctx context.Context, path string, data []byte, opts *UploadOptions) (*UploadResult, error) {
	return s.UploadFrom(ctx, path, bytes.NewReader(data), opts)
}

// UploadFile streams the local file localPath to path in the container.
func (s *Session) UploadFile(ctx context.Context, path, localPath string, opts *UploadOptions) (*UploadResult, error) {
	f, err := os.Open(localPath)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return s.UploadFrom(ctx, path, f, opts)
}

// UploadFrom streams r to path in the container, in chunks.
func (s *Session) UploadFrom(ctx context.Context, path string, r io.Reader, opts *UploadOptions) (*UploadResult, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	if opts == nil {
		opts = &UploadOptions{}
	}
	header := &pb.UploadHeader{LeaseId: s.lease.ID, Path: path, Tar: opts.Tar}
	if opts.Mode != 0 {
		mode := opts.Mode
		header.Mode = &mode
	}
	ctx, cancel := s.callCtx(ctx, 0)
	defer cancel()
	stream, err := s.client.artifacts.Upload(ctx)
	if err != nil {
		return nil, s.fail(err)
	}
	send := func(m *pb.UploadRequest) error {
		// io.EOF from Send means the server ended the call: its status
		// comes from CloseAndRecv.
		if err := stream.Send(m); err != nil && err != io.EOF {
			return s.fail(err)
		}
		return nil
	}
	if err := send(&pb.UploadRequest{Part: &pb.UploadRequest_Header{Header: header}}); err != nil {
		return nil, err
	}
	buf := make([]byte, uploadChunk)
	for {
		n, rerr := io.ReadFull(r, buf)
		if n > 0 {
			chunk := append([]byte(nil), buf[:n]...)
			if err := send(&pb.UploadRequest{Part: &pb.UploadRequest_Chunk{Chunk: chunk}}); err != nil {
				return nil, err
			}
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			return nil, rerr
		}
	}
	resp, err := stream.CloseAndRecv()
	if err != nil {
		return nil, s.fail(err)
	}
	return &UploadResult{Path: resp.GetPath(), Size: resp.GetSize(), SHA256: resp.GetSha256()}, nil
}

// Download is a file, or a directory as a tar archive, read from the
// container.
type Download struct {
	Path string
	// Tar: Data is a tar archive of a directory's contents, else a file's bytes.
	Tar  bool
	Mode uint32
	// Size of a file (0 for a directory).
	Size uint64
	Data []byte
}

// Download reads a file (or a directory, as a tar archive) from the container.
func (s *Session) Download(ctx context.Context, path string) (*Download, error) {
	var buf bytes.Buffer
	d, err := s.DownloadTo(ctx, path, &buf)
	if err != nil {
		return nil, err
	}
	d.Data = buf.Bytes()
	return d, nil
}

// DownloadFile downloads path into the local file localPath.
func (s *Session) DownloadFile(ctx context.Context, path, localPath string) (*Download, error) {
	f, err := os.Create(localPath)
	if err != nil {
		return nil, err
	}
	d, err := s.DownloadTo(ctx, path, f)
	if cerr := f.Close(); err == nil && cerr != nil {
		err = cerr
	}
	return d, err
}

// DownloadTo streams path into w and returns its header (Data empty).
func (s *Session) DownloadTo(ctx context.Context, path string, w io.Writer) (*Download, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	ctx, cancel := s.callCtx(ctx, 0)
	defer cancel()
	stream, err := s.client.artifacts.Download(ctx, &pb.DownloadRequest{LeaseId: s.lease.ID, Path: path})
	if err != nil {
		return nil, s.fail(err)
	}
	var d *Download
	for {
		m, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, s.fail(err)
		}
		switch p := m.GetPart().(type) {
		case *pb.DownloadResponse_Header:
			h := p.Header
			d = &Download{Path: h.GetPath(), Tar: h.GetKind() == pb.DownloadKind_DOWNLOAD_KIND_TAR, Mode: h.GetMode(), Size: h.GetSize()}
		case *pb.DownloadResponse_Chunk:
			if _, err := w.Write(p.Chunk); err != nil {
				return nil, err
			}
		}
	}
	if d == nil {
		return nil, &Error{Kind: KindOther, Code: codes.Internal, Message: "the download of " + path + " came without a header"}
	}
	return d, nil
}

// ListArtifacts lists the files the lease's runs left in the pool's output
// directory, oldest first ("" for every run's).
func (s *Session) ListArtifacts(ctx context.Context, runID string) ([]ArtifactInfo, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	ctx, cancel := s.callCtx(ctx, 0)
	defer cancel()
	resp, err := s.client.artifacts.ListArtifacts(ctx, &pb.ListArtifactsRequest{LeaseId: s.lease.ID, RunId: runID})
	if err != nil {
		return nil, s.fail(err)
	}
	out := make([]ArtifactInfo, 0, len(resp.GetArtifacts()))
	for _, a := range resp.GetArtifacts() {
		out = append(out, artifactInfo(a))
	}
	return out, nil
}

// ------------------------------------------------------------ end

// Close releases the lease now; the server resets the container for the
// next client. Safe to call more than once and on a lost lease. It fails
// only when the server could not be told (the lease then expires at its
// TTL).
func (s *Session) Close() error {
	s.releaseOnce.Do(func() {
		// A loss before the release stays the reason; none comes after it.
		s.keeper.end()
		ctx, cancel := context.WithTimeout(context.Background(), s.client.timeout)
		defer cancel()
		_, err := s.client.sessions.Release(ctx, &pb.ReleaseRequest{LeaseId: s.lease.ID})
		if err != nil {
			e := toError(err)
			// Gone already: releasing is idempotent from the caller's view.
			if e.Code != codes.NotFound && e.Code != codes.FailedPrecondition {
				s.releaseErr = e
			}
		}
		s.cutCancel()
		close(s.released)
	})
	return s.releaseErr
}

// Released is closed once Close has released the lease (or tried to).
func (s *Session) Released() <-chan struct{} { return s.released }
