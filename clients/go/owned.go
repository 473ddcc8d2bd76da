package sandpool

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"

	pb "github.com/sandpool/sandpool/clients/go/sandpoolv1"
)

// OwnedPool is a pool that belongs to this process: the client keeps it
// alive in the background (on the KeepAlive stream, at a third of its owner
// TTL, as it does a lease), deletes it on Close, and when the process dies
// the server deletes it within the owner TTL, ending its leases with
// LEASE_STATE_POOL_DELETED. Once it is lost every call fails with a
// *PoolLostError.
type OwnedPool struct {
	client *Client
	name   string
	// Pool is the pool as CreatePool answered it.
	Pool   *pb.Pool
	keeper *keeper
	// cut ends the calls in flight when the pool is lost.
	cut       context.Context
	cutCancel context.CancelFunc

	closeOnce sync.Once
	closeErr  error
}

// CreateOwnedPool creates a pool owned by this client (see OwnedPool).
// ownerTTL is at least 1 s and at most the pool's max_lease_ttl (0: 30 s).
// With waitReady it answers once min_pool_size containers are warm; the
// keepalive runs meanwhile, so a wait longer than the owner TTL is safe.
func (c *Client) CreateOwnedPool(ctx context.Context, spec *pb.PoolSpec, ownerTTL time.Duration, waitReady bool) (*OwnedPool, error) {
	if ownerTTL <= 0 {
		ownerTTL = 30 * time.Second
	}
	p := &OwnedPool{client: c, name: spec.GetName()}
	p.cut, p.cutCancel = context.WithCancel(context.Background())
	// The owner TTL counts from CreatePool's arrival: the keepalive starts
	// now, and a NOT_FOUND answer before CreatePool answers means "not yet".
	p.keeper = newKeeper(c.sessions, poolTarget{p}, ownerTTL, time.Now(), true, false, p.cutCancel)
	callCtx, cancel := c.withTimeout(ctx, 0)
	defer cancel()
	resp, err := c.pools.CreatePool(callCtx, &pb.CreatePoolRequest{Spec: spec, WaitReady: waitReady, OwnerTtl: durationpb.New(ownerTTL)})
	if err != nil {
		p.keeper.end()
		p.cutCancel()
		return nil, mapError(err)
	}
	p.keeper.markExists()
	p.Pool = resp.GetPool()
	return p, nil
}

// Name is the pool's name.
func (p *OwnedPool) Name() string { return p.name }

// Lost is the loss once the pool is lost (a *PoolLostError); nil while it
// holds.
func (p *OwnedPool) Lost() error { return p.keeper.loss() }

type poolTarget struct{ p *OwnedPool }

var poolStateWords = map[pb.LeaseState]string{
	pb.LeaseState_LEASE_STATE_NOT_FOUND: "the server has no such pool of this owner",
}

func (t poolTarget) request() *pb.KeepAliveRequest { return &pb.KeepAliveRequest{Pool: t.p.name} }

func (t poolTarget) expired(ttl time.Duration) error {
	return newPoolLost(t.p.name, fmt.Sprintf("keepalive failed for longer than the owner TTL (%s)", ttl),
		codes.Unavailable, pb.LeaseState_LEASE_STATE_UNSPECIFIED, nil)
}

func (t poolTarget) answered(state pb.LeaseState) error {
	return newPoolLost(t.p.name, answerReason(state, poolStateWords), codes.FailedPrecondition, state, nil)
}

func (t poolTarget) gone(err error) error {
	var lost *PoolLostError
	if errors.As(mapPoolError(err, t.p.name), &lost) {
		return lost
	}
	return nil
}

func (t poolTarget) abandon() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, _ = t.p.client.pools.DeletePool(ctx, &pb.DeletePoolRequest{Name: t.p.name})
}

func (p *OwnedPool) check() error { return p.keeper.loss() }

func (p *OwnedPool) fail(err error) error {
	if lost := p.keeper.loss(); lost != nil && p.cut.Err() != nil {
		return lost
	}
	mapped := mapPoolError(err, p.name)
	var lost *PoolLostError
	if errors.As(mapped, &lost) {
		p.keeper.markLost(lost)
	}
	return mapped
}

// Acquire leases a container of the pool (see Client.Acquire).
func (p *OwnedPool) Acquire(ctx context.Context, opts *AcquireOptions) (*Session, error) {
	if err := p.check(); err != nil {
		return nil, err
	}
	s, err := p.client.Acquire(ctx, p.name, opts)
	if err != nil {
		return nil, p.fail(err)
	}
	return s, nil
}

// Stats returns the pool's statistics.
func (p *OwnedPool) Stats(ctx context.Context) (*pb.PoolStats, error) {
	if err := p.check(); err != nil {
		return nil, err
	}
	st, err := p.client.Stats(ctx, p.name)
	if err != nil {
		return nil, p.fail(err)
	}
	return st, nil
}

// Close deletes the pool now (idempotent). Busy containers go when their
// leases end. A lost pool is not deleted again.
func (p *OwnedPool) Close() error {
	p.closeOnce.Do(func() {
		lost := p.keeper.loss()
		p.keeper.end()
		defer p.cutCancel()
		if lost != nil {
			return
		}
		// The server deletes the pool within the owner TTL anyway: wait no
		// longer than that.
		ttl := p.keeper.currentTTL()
		ctx, cancel := context.WithTimeout(context.Background(), maxDuration(ttl, time.Second))
		defer cancel()
		_, err := p.client.pools.DeletePool(ctx, &pb.DeletePoolRequest{Name: p.name})
		if err != nil && toError(err).Code != codes.NotFound {
			p.closeErr = mapError(err)
		}
	})
	return p.closeErr
}
