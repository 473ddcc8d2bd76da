package sandpool

import (
	"context"
	"fmt"
	"sync"
	"time"

	"google.golang.org/grpc/codes"

	pb "github.com/sandpool/sandpool/clients/go/sandpoolv1"
)

const (
	// Shortest keepalive period, whatever the TTL.
	minKeepAlivePeriod = 100 * time.Millisecond
	// Pause before a renewal is tried again on a new stream after the last
	// one broke.
	keepAliveRetry = 500 * time.Millisecond
	// A keepalive stream is reopened at least this often (it has a deadline
	// too, so that a stream a proxy silently forgot does not live forever).
	keepAliveStreamDeadline = 10 * time.Minute
)

// keepTarget is what a keeper renews (a lease, an owned pool) and the loss
// it reports once that is gone.
type keepTarget interface {
	// The request that renews it.
	request() *pb.KeepAliveRequest
	// The loss when no renewal was confirmed within the TTL.
	expired(ttl time.Duration) error
	// The loss when a keepalive is answered with state.
	answered(state pb.LeaseState) error
	// The loss when an error of the stream says the target is gone, else nil.
	gone(err error) error
	// Tells the server, best effort, that this client gave the target up
	// (Release, DeletePool).
	abandon()
}

// keeper is the keepalive of one lease or owned pool, under the contract
// shared with the Python, TypeScript and Rust clients:
//   - a renewal goes out a third of the TTL after the last confirmed one was
//     sent (the first, a third of the TTL after Acquire or CreatePool was
//     sent, plus the time Acquire's answer says it waited for a container),
//     on one KeepAlive stream that is reopened when it breaks;
//   - an ACTIVE answer confirms the target until that renewal's send time
//     plus the TTL the server answers;
//   - no wait (opening the stream, sending, the answer) outlasts that time:
//     when it passes unconfirmed the target is lost, the calls in flight end
//     with the loss (onLoss), and the server is told with a best-effort
//     Release or DeletePool;
//   - an answer in another state, or an error saying the target is gone,
//     loses it with that state; a NOT_FOUND answer to a renewal sent before
//     the target was known to exist (an owned pool whose CreatePool has not
//     answered yet) is tried again;
//   - the clock decides too: once the time has passed, loss() says so and
//     every call fails without a round trip, even before the loop runs.
type keeper struct {
	sessions pb.SessionServiceClient
	target   keepTarget
	// Called once when the target is lost, whatever the way (cuts the calls
	// in flight).
	onLoss func()

	mu   sync.Mutex
	lost error
	ttl  time.Duration
	// Until when the last confirmed renewal holds the target; judged only
	// while judging (not after the client itself ended the target).
	confirmedUntil time.Time
	judging        bool
	// Since when the target is known to exist (zero: not yet).
	existsSince time.Time
	renewals    int
	lossOnce    sync.Once

	stop     chan struct{}
	stopOnce sync.Once
	done     chan struct{}
}

func newKeeper(sessions pb.SessionServiceClient, target keepTarget, ttl time.Duration, startedAt time.Time,
	run, exists bool, onLoss func()) *keeper {
	k := &keeper{
		sessions: sessions, target: target, onLoss: onLoss, ttl: ttl,
		stop: make(chan struct{}), done: make(chan struct{}),
	}
	if exists {
		k.existsSince = startedAt
	}
	if !run {
		close(k.done)
		return k
	}
	k.judging = true
	k.confirmedUntil = startedAt.Add(ttl)
	go k.loop(startedAt)
	return k
}

// loss is the loss, once the target is lost (by the clock too); nil while
// it holds.
func (k *keeper) loss() error {
	k.mu.Lock()
	if k.lost == nil && k.judging && time.Now().After(k.confirmedUntil) {
		k.lost = k.target.expired(k.ttl)
	}
	lost := k.lost
	k.mu.Unlock()
	if lost != nil {
		k.lossOnce.Do(k.onLoss)
	}
	return lost
}

// markLost records the loss (the first stays the reason) and ends the loop.
func (k *keeper) markLost(lost error) {
	k.mu.Lock()
	if k.lost == nil {
		k.lost = lost
	}
	k.mu.Unlock()
	k.lossOnce.Do(k.onLoss)
	k.stopOnce.Do(func() { close(k.stop) })
}

// markExists says the target exists from now on (its CreatePool answered).
func (k *keeper) markExists() {
	k.mu.Lock()
	k.existsSince = time.Now()
	k.mu.Unlock()
}

// end stops the keepalive because this client ended the target (released,
// deleted): a loss before stays the reason, none comes after it.
func (k *keeper) end() {
	k.loss()
	k.mu.Lock()
	k.judging = false
	k.mu.Unlock()
	k.stopOnce.Do(func() { close(k.stop) })
	<-k.done
}

func (k *keeper) renewalCount() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.renewals
}

func (k *keeper) currentTTL() time.Duration {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.ttl
}

// kaStream is one open KeepAlive stream: requests go in through reqs,
// answers and the stream's end come out through answers and errs. Its
// goroutines end when cancel is called.
type kaStream struct {
	cancel  context.CancelFunc
	reqs    chan *pb.KeepAliveRequest
	answers chan *pb.KeepAliveResponse
	errs    chan error
}

func (k *keeper) open(deadline time.Duration) *kaStream {
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	s := &kaStream{
		cancel:  cancel,
		reqs:    make(chan *pb.KeepAliveRequest, 1),
		answers: make(chan *pb.KeepAliveResponse, 1),
		errs:    make(chan error, 1),
	}
	// Opening may block on a dead connection: it happens here, so that the
	// loop's wait for an answer bounds it as well.
	go func() {
		stream, err := k.sessions.KeepAlive(ctx)
		if err != nil {
			s.errs <- err
			return
		}
		go func() {
			for {
				r, err := stream.Recv()
				if err != nil {
					select {
					case s.errs <- err:
					default:
					}
					return
				}
				select {
				case s.answers <- r:
				case <-ctx.Done():
					return
				}
			}
		}()
		for {
			select {
			case req := <-s.reqs:
				// A failed send shows up as Recv's error.
				if stream.Send(req) != nil {
					return
				}
			case <-ctx.Done():
				return
			}
		}
	}()
	return s
}

func (k *keeper) loop(startedAt time.Time) {
	defer close(k.done)
	period := maxDuration(k.currentTTL()/3, minKeepAlivePeriod)
	nextAt := startedAt.Add(period)
	var st *kaStream
	closeStream := func() {
		if st != nil {
			st.cancel()
			st = nil
		}
	}
	defer closeStream()
	timer := time.NewTimer(0)
	defer timer.Stop()
	wait := func(d time.Duration) bool { // false when stopped
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		timer.Reset(maxDuration(d, 0))
		select {
		case <-timer.C:
			return true
		case <-k.stop:
			return false
		}
	}
	for {
		if !wait(time.Until(nextAt)) {
			return
		}
		k.mu.Lock()
		left := time.Until(k.confirmedUntil)
		ttl := k.ttl
		k.mu.Unlock()
		if left <= 0 {
			break
		}
		sent := time.Now()
		nextAt = sent.Add(keepAliveRetry)
		if st == nil {
			st = k.open(maxDuration(keepAliveStreamDeadline, 10*ttl))
		}
		select {
		case st.reqs <- k.target.request():
		default: // one is still on its way: its answer does as well
		}
		timer.Reset(left)
		var answer *pb.KeepAliveResponse
		var err error
		timedOut := false
		select {
		case answer = <-st.answers:
		case err = <-st.errs:
		case <-timer.C:
			timedOut = true
		case <-k.stop:
			return
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		if timedOut {
			closeStream()
			nextAt = sent.Add(left) // the target's time is up: give up then
			continue
		}
		if err != nil {
			closeStream()
			if lost := k.target.gone(err); lost != nil {
				k.markLost(lost)
				return
			}
			if e := toError(err); e.Code == codes.DeadlineExceeded {
				nextAt = sent // the stream's own deadline ended it: reopen now
			}
			continue
		}
		k.mu.Lock()
		notYet := answer.GetState() == pb.LeaseState_LEASE_STATE_NOT_FOUND &&
			(k.existsSince.IsZero() || sent.Before(k.existsSince))
		if notYet {
			// Not there yet (its CreatePool is on its way): a target made
			// after this answer lives at least a TTL.
			if until := sent.Add(k.ttl); until.After(k.confirmedUntil) {
				k.confirmedUntil = until
			}
			k.mu.Unlock()
			continue
		}
		if answer.GetState() != pb.LeaseState_LEASE_STATE_ACTIVE {
			k.mu.Unlock()
			k.markLost(k.target.answered(answer.GetState()))
			return
		}
		if d := answer.GetTtl().AsDuration(); answer.GetTtl() != nil && d > 0 {
			k.ttl = d
			period = maxDuration(d/3, minKeepAlivePeriod)
		}
		k.confirmedUntil = sent.Add(k.ttl)
		k.renewals++
		k.mu.Unlock()
		nextAt = sent.Add(period)
	}
	// No renewal was confirmed within the TTL.
	closeStream()
	k.loss()
	go k.target.abandon()
}

// answerReason is "the server answered the keepalive with STATE[: why]".
func answerReason(state pb.LeaseState, why map[pb.LeaseState]string) string {
	r := fmt.Sprintf("the server answered the keepalive with %s", state)
	if w, ok := why[state]; ok {
		r += ": " + w
	}
	return r
}

func maxDuration(a, b time.Duration) time.Duration {
	if a > b {
		return a
	}
	return b
}
