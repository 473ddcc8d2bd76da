// Package sandpool is the Go client of sandpool, a gRPC service that keeps
// warm pools of sandbox containers and leases them to clients that run
// untrusted code.
//
//	client, err := sandpool.Dial("127.0.0.1:50051", sandpool.Options{})
//	session, err := client.Acquire(ctx, "python", nil) // kept alive in the background
//	defer session.Close()                              // releases the lease
//	res, err := session.RunCollect(ctx, sandpool.Code("print(6 * 7)"), nil)
//
// A Session keeps its lease alive at a third of its TTL over the KeepAlive
// stream and releases it on Close, or when the context given to Acquire
// ends. A lease that is lost is reported as a *LeaseLostError. Failures are
// *Error values whose Kind (errors.Is(err, sandpool.ErrNotFound)) comes from
// the server's reason. The generated stubs are in package sandpoolv1.
package sandpool

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/types/known/durationpb"

	pb "github.com/sandpool/sandpool/clients/go/sandpoolv1"
)

// DefaultAddr is the address used when neither Dial nor $SANDPOOL_ADDR names one.
const DefaultAddr = "127.0.0.1:50051"

// Options configure a Client.
type Options struct {
	// Token is sent as "authorization: Bearer <token>"; default $SANDPOOL_TOKEN.
	Token string
	// TLS, when set, encrypts the connection (a Config with RootCAs for your
	// own CA, Certificates for mutual TLS); nil means plaintext.
	TLS *tls.Config
	// Timeout is the deadline of unary calls whose context has none; default 30 s.
	Timeout time.Duration
	// DialOptions are added to the client's own.
	DialOptions []grpc.DialOption
}

// TLSConfig is a TLS configuration that trusts the CA certificates in
// caPEM (nil: the system roots) and, when certPEM and keyPEM are given,
// presents that client certificate (mutual TLS: the certificate is then the
// caller's identity).
func TLSConfig(caPEM, certPEM, keyPEM []byte) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if caPEM != nil {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(caPEM) {
			return nil, errors.New("sandpool: no certificate in the CA PEM")
		}
		cfg.RootCAs = pool
	}
	if certPEM != nil || keyPEM != nil {
		cert, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			return nil, err
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

// Client is a connection to a sandpool server. It is safe for concurrent use.
type Client struct {
	conn      *grpc.ClientConn
	sessions  pb.SessionServiceClient
	pools     pb.PoolServiceClient
	artifacts pb.ArtifactServiceClient
	timeout   time.Duration
}

type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}

// RequireTransportSecurity is false: a server on loopback may take tokens
// over plaintext, as the other clients allow.
func (bearer) RequireTransportSecurity() bool { return false }

// Dial connects to addr (default $SANDPOOL_ADDR, else DefaultAddr). The
// connection is made lazily: a server that cannot be reached shows up as
// ErrUnavailable on the first call.
func Dial(addr string, opts Options) (*Client, error) {
	if addr == "" {
		addr = os.Getenv("SANDPOOL_ADDR")
	}
	if addr == "" {
		addr = DefaultAddr
	}
	if opts.Token == "" {
		opts.Token = os.Getenv("SANDPOOL_TOKEN")
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 30 * time.Second
	}
	dial := []grpc.DialOption{}
	if opts.TLS != nil {
		dial = append(dial, grpc.WithTransportCredentials(credentials.NewTLS(opts.TLS)))
	} else {
		// insecure.NewCredentials() would be the newer spelling, but it
		// appeared in grpc-go 1.34; this builds against 1.33 as well.
		dial = append(dial, grpc.WithInsecure())
	}
	if opts.Token != "" {
		dial = append(dial, grpc.WithPerRPCCredentials(bearer(opts.Token)))
	}
	dial = append(dial, opts.DialOptions...)
	conn, err := grpc.Dial(addr, dial...)
	if err != nil {
		return nil, mapError(err)
	}
	return &Client{
		conn:      conn,
		sessions:  pb.NewSessionServiceClient(conn),
		pools:     pb.NewPoolServiceClient(conn),
		artifacts: pb.NewArtifactServiceClient(conn),
		timeout:   opts.Timeout,
	}, nil
}

// Close closes the connection. Sessions still open lose their lease at its
// TTL; Close them first.
func (c *Client) Close() error { return c.conn.Close() }

// Conn is the underlying connection, for the generated stubs of package
// sandpoolv1.
func (c *Client) Conn() *grpc.ClientConn { return c.conn }

// withTimeout gives ctx the client's default deadline when it has none.
func (c *Client) withTimeout(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	if d <= 0 {
		d = c.timeout
	}
	return context.WithTimeout(ctx, d)
}

// ---------------------------------------------------------------- leases

// LeaseFile is a file placed in the warm container before the lease is
// handed out.
type LeaseFile struct {
	Path    string
	Content []byte
	// Mode defaults to 0644.
	Mode uint32
}

// AcquireOptions are the optional settings of Acquire.
type AcquireOptions struct {
	// TTL of the lease (0: the pool's default_lease_ttl; at least 1 s).
	TTL time.Duration
	// Wait bounds how long Acquire may wait for a container (the server also
	// stops at the pool's acquisition_timeout); default the client's Timeout.
	Wait time.Duration
	// Env holds environment variables for every run of the lease.
	Env map[string]string
	// Files are placed in the container before the lease is handed out.
	Files []LeaseFile
	// NoKeepAlive leaves the lease to expire at its TTL (for tests of expiry).
	NoKeepAlive bool
}

// Acquire leases a warm container of pool. The session lives until Close,
// or until ctx ends, whichever comes first: both release the lease. Use a
// context that lasts as long as the work (not one with a short deadline);
// AcquireOptions.Wait bounds the wait for a container.
func (c *Client) Acquire(ctx context.Context, pool string, opts *AcquireOptions) (*Session, error) {
	if opts == nil {
		opts = &AcquireOptions{}
	}
	req := &pb.AcquireRequest{Pool: pool, Env: opts.Env}
	if opts.TTL > 0 {
		req.Ttl = durationpb.New(opts.TTL)
	}
	for _, f := range opts.Files {
		lf := &pb.LeaseFile{Path: f.Path, Content: f.Content}
		if f.Mode != 0 {
			mode := f.Mode
			lf.Mode = &mode
		}
		req.Files = append(req.Files, lf)
	}
	// Wait bounds the call even when ctx has a later deadline (the earlier
	// of the two wins); without it, the client's default applies.
	callCtx, cancel := c.withTimeout(ctx, 0)
	if opts.Wait > 0 {
		callCtx, cancel = context.WithTimeout(ctx, opts.Wait)
	}
	defer cancel()
	// The lease's TTL counts from its grant: no earlier than the moment
	// Acquire is sent plus the time the server says it waited.
	sent := time.Now()
	resp, err := c.sessions.Acquire(callCtx, req)
	if err != nil {
		return nil, mapError(err)
	}
	return newSession(ctx, c, resp.GetLease(), grantedFrom(sent, resp), !opts.NoKeepAlive), nil
}

// grantedFrom is the earliest the lease of an Acquire sent at sent can have
// been granted, its TTL counting from then: the server says how long the
// request waited for a container (a lease that waited longer than its TTL
// is not lost on arrival). Never later than the answer.
func grantedFrom(sent time.Time, resp *pb.AcquireResponse) time.Time {
	queued := resp.GetQueued().AsDuration()
	if queued < 0 {
		queued = 0
	}
	granted := sent.Add(queued)
	if now := time.Now(); granted.After(now) {
		return now
	}
	return granted
}

// ---------------------------------------------------------------- pools

// CreatePoolOptions are the optional settings of CreatePool.
type CreatePoolOptions struct {
	// WaitReady answers only once min_pool_size containers are warm (bounded
	// by ctx's deadline, or the client's Timeout).
	WaitReady bool
}

// CreatePool creates a pool that lives until DeletePool.
func (c *Client) CreatePool(ctx context.Context, spec *pb.PoolSpec, opts *CreatePoolOptions) (*pb.Pool, error) {
	req := &pb.CreatePoolRequest{Spec: spec, WaitReady: opts != nil && opts.WaitReady}
	ctx, cancel := c.withTimeout(ctx, 0)
	defer cancel()
	resp, err := c.pools.CreatePool(ctx, req)
	if err != nil {
		return nil, mapError(err)
	}
	return resp.GetPool(), nil
}

// GetPool returns a pool's effective spec, phase and stats.
func (c *Client) GetPool(ctx context.Context, name string) (*pb.Pool, error) {
	ctx, cancel := c.withTimeout(ctx, 0)
	defer cancel()
	resp, err := c.pools.GetPool(ctx, &pb.GetPoolRequest{Name: name})
	if err != nil {
		return nil, mapError(err)
	}
	return resp.GetPool(), nil
}

// ListPools returns every pool, sorted by name.
func (c *Client) ListPools(ctx context.Context) ([]*pb.Pool, error) {
	ctx, cancel := c.withTimeout(ctx, 0)
	defer cancel()
	resp, err := c.pools.ListPools(ctx, &pb.ListPoolsRequest{})
	if err != nil {
		return nil, mapError(err)
	}
	return resp.GetPools(), nil
}

// DeletePool drains a pool; with wait it answers once every container is
// removed. It returns the containers still busy (0 with wait).
func (c *Client) DeletePool(ctx context.Context, name string, wait bool) (uint32, error) {
	ctx, cancel := c.withTimeout(ctx, 0)
	defer cancel()
	resp, err := c.pools.DeletePool(ctx, &pb.DeletePoolRequest{Name: name, Wait: wait})
	if err != nil {
		return 0, mapError(err)
	}
	return resp.GetBusyRemaining(), nil
}

// Stats returns a pool's statistics (llm-sandbox's get_stats, plus counters).
// With several replicas behind the address, a config pool's are summed over
// them (ReplicaStats asks for one replica's own).
func (c *Client) Stats(ctx context.Context, name string) (*pb.PoolStats, error) {
	return c.ReplicaStats(ctx, name, "")
}

// ReplicaStats returns one replica's own statistics of a pool (replica: its
// name, as lease ids carry it; empty: as Stats).
func (c *Client) ReplicaStats(ctx context.Context, name, replica string) (*pb.PoolStats, error) {
	ctx, cancel := c.withTimeout(ctx, 0)
	defer cancel()
	resp, err := c.pools.GetPoolStats(ctx, &pb.GetPoolStatsRequest{Name: name, Replica: replica})
	if err != nil {
		return nil, mapError(err)
	}
	return resp.GetStats(), nil
}

// StatsWatch is a stream of a pool's statistics (Client.WatchStats).
type StatsWatch struct {
	stream pb.PoolService_WatchPoolStatsClient
	cancel context.CancelFunc
}

// WatchStats streams a pool's statistics: at once, then on every change (at
// most every 100 ms). The stream ends (io.EOF) after a message with Closed
// set when the pool is deleted; Close ends it earlier.
func (c *Client) WatchStats(ctx context.Context, name string) (*StatsWatch, error) {
	ctx, cancel := context.WithCancel(ctx)
	stream, err := c.pools.WatchPoolStats(ctx, &pb.WatchPoolStatsRequest{Name: name})
	if err != nil {
		cancel()
		return nil, mapError(err)
	}
	return &StatsWatch{stream: stream, cancel: cancel}, nil
}

// Recv returns the next statistics; io.EOF once the stream ended.
func (w *StatsWatch) Recv() (*pb.PoolStats, error) {
	m, err := w.stream.Recv()
	if err == io.EOF {
		w.cancel()
		return nil, io.EOF
	}
	if err != nil {
		w.cancel()
		return nil, mapError(err)
	}
	return m.GetStats(), nil
}

// Close ends the stream.
func (w *StatsWatch) Close() { w.cancel() }
