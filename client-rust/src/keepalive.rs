//! What a session knows about its lease (or an owned pool about itself),
//! and the keepalive that renews it.
//!
//! The keepalive contract, the same in the Python and TypeScript clients:
//!
//! - a renewal goes out a third of the TTL after the last confirmed one was
//!   sent (the first, a third of the TTL after Acquire or CreatePool was
//!   sent, plus the time Acquire's answer says it waited for a container),
//!   on one KeepAlive stream that is reopened when it breaks;
//! - an ACTIVE answer confirms the lease (or pool) until that renewal's send
//!   time plus the TTL the server answers;
//! - no wait (opening the stream, sending, the answer) outlasts that time:
//!   when it passes unconfirmed the target is lost ("keepalive failed for
//!   longer than the TTL"), calls in flight on it end with `LeaseLost` (or
//!   `PoolLost`), and the server is told with a best-effort Release (or
//!   DeletePool);
//! - an answer in another state (EXPIRED, RELEASED, REVOKED, NOT_FOUND...),
//!   or an error saying the target is gone, loses it with that state; a
//!   NOT_FOUND answer to a renewal sent before the target was known to exist
//!   (an owned pool whose CreatePool has not answered yet) only means "not
//!   yet": the renewal is tried again;
//! - the clock decides too: once the time has passed, [`Held::lost`] says so
//!   and every call fails without a round trip, even before the task has
//!   run.

use std::{
    future::Future,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use sandpool_proto::v1::{self as pb, LeaseState};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status, Streaming};

use crate::{Client, Error, client::with_deadline};

/// Shortest keepalive period, whatever the TTL.
const MIN_KEEPALIVE: Duration = Duration::from_millis(100);
/// Pause before a renewal is tried again on a new stream after the last one
/// broke.
const KEEPALIVE_RETRY: Duration = Duration::from_millis(500);
/// A KeepAlive stream is reopened after this long (it has a deadline too).
const KEEPALIVE_STREAM_LIFETIME: Duration = Duration::from_secs(600);

/// What a keepalive renews.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    /// A lease, by its id.
    Lease(String),
    /// A pool created with an owner TTL, by its name.
    Pool(String),
}

impl Target {
    fn id(&self) -> &str {
        match self {
            Target::Lease(id) | Target::Pool(id) => id,
        }
    }

    fn request(&self) -> pb::KeepAliveRequest {
        match self {
            Target::Lease(id) => pb::KeepAliveRequest {
                lease_id: id.clone(),
                ..Default::default()
            },
            Target::Pool(name) => pb::KeepAliveRequest {
                pool: name.clone(),
                ..Default::default()
            },
        }
    }

    /// The error of a loss.
    fn error(&self, loss: Loss, status: Option<Box<Status>>) -> Error {
        match self {
            Target::Lease(id) => Error::LeaseLost {
                lease_id: id.clone(),
                reason: loss.reason,
                status,
                state: loss.state,
            },
            Target::Pool(name) => Error::PoolLost {
                pool: name.clone(),
                reason: loss.reason,
                status,
                state: loss.state,
            },
        }
    }

    /// The error of a failed call about the target: the server saying that
    /// it is gone becomes `LeaseLost` / `PoolLost`.
    fn on_error(&self, status: Status) -> Error {
        match self {
            Target::Lease(id) => Error::on_lease(id, status),
            Target::Pool(name) => Error::on_pool(name, status),
        }
    }

    fn expired(&self, ttl: Duration) -> String {
        match self {
            Target::Lease(_) => format!(
                "keepalive failed for longer than the {}s TTL: the lease counts as expired",
                ttl.as_secs_f64()
            ),
            Target::Pool(_) => format!(
                "keepalive failed for longer than the {}s owner TTL: the server deletes the pool by itself",
                ttl.as_secs_f64()
            ),
        }
    }

    fn answered(&self, state: LeaseState) -> String {
        match self {
            Target::Lease(_) => state_reason(state),
            Target::Pool(_) => pool_state_reason(state),
        }
    }

    /// Tells the server, best effort, that this client gave the target up.
    async fn abandon(&self, client: &Client) {
        match self {
            Target::Lease(id) => {
                let _ = client
                    .sessions()
                    .release(with_deadline(
                        pb::ReleaseRequest {
                            lease_id: id.clone(),
                        },
                        client.timeout(),
                    ))
                    .await;
            }
            Target::Pool(name) => {
                let _ = client
                    .pools()
                    .delete_pool(with_deadline(
                        pb::DeletePoolRequest {
                            name: name.clone(),
                            wait: false,
                        },
                        client.timeout(),
                    ))
                    .await;
            }
        }
    }
}

/// How a lease (or pool) was lost.
#[derive(Debug, Clone)]
struct Loss {
    reason: String,
    state: Option<LeaseState>,
}

#[derive(Debug)]
struct State {
    loss: Option<Loss>,
    ttl: Duration,
    /// Until when the last confirmed renewal holds the lease (`None`: no
    /// keepalive runs, the client does not judge).
    confirmed_until: Option<Instant>,
    /// Since when the target is known to exist on the server (`None`: not
    /// yet, its CreatePool has not answered).
    exists_since: Option<Instant>,
    renewals: u64,
}

/// What a session (or owned pool), its calls and its keepalive share about
/// the lease (or pool).
#[derive(Debug)]
pub(crate) struct Held {
    target: Target,
    state: Mutex<State>,
    /// Set when the keepalive gives up: calls in flight end with the loss.
    cut: watch::Sender<bool>,
}

impl Held {
    /// A lease granted with `ttl` by an Acquire sent at `started`.
    pub(crate) fn new(lease_id: String, ttl: Duration, started: Instant) -> Arc<Self> {
        Self::with(Target::Lease(lease_id), ttl, started, Some(started))
    }

    /// A pool asked for with owner TTL `ttl` by a CreatePool sent at
    /// `started` that has not answered yet (see [`Held::exists`]).
    pub(crate) fn pending_pool(name: String, ttl: Duration, started: Instant) -> Arc<Self> {
        Self::with(Target::Pool(name), ttl, started, None)
    }

    fn with(
        target: Target,
        ttl: Duration,
        started: Instant,
        exists_since: Option<Instant>,
    ) -> Arc<Self> {
        Arc::new(Self {
            target,
            state: Mutex::new(State {
                loss: None,
                ttl,
                confirmed_until: Some(started + ttl),
                exists_since,
                renewals: 0,
            }),
            cut: watch::Sender::new(false),
        })
    }

    /// The target is known to exist from now on (its CreatePool answered).
    pub(crate) fn exists(&self) {
        self.state().exists_since = Some(Instant::now());
    }

    /// The TTL, as the server last answered it.
    pub(crate) fn ttl(&self) -> Duration {
        self.state().ttl
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state stays consistent whatever panicked while holding it.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn renewals(&self) -> u64 {
        self.state().renewals
    }

    fn loss(&self) -> Option<Loss> {
        let mut state = self.state();
        if state.loss.is_none()
            && state
                .confirmed_until
                .is_some_and(|until| Instant::now() > until)
        {
            state.loss = Some(Loss {
                reason: self.target.expired(state.ttl),
                state: None,
            });
        }
        state.loss.clone()
    }

    /// Why the lease is lost, once it is (by the clock, too).
    pub(crate) fn lost(&self) -> Option<String> {
        self.loss().map(|l| l.reason)
    }

    fn mark_lost(&self, reason: String, state: Option<LeaseState>) {
        self.state().loss.get_or_insert(Loss { reason, state });
    }

    /// `LeaseLost` (`PoolLost`) for the loss (the client's own knowledge:
    /// no status).
    fn error(&self, loss: Loss) -> Error {
        self.target.error(loss, None)
    }

    /// `Err(LeaseLost)` (`Err(PoolLost)`) once the target is lost.
    pub(crate) fn check(&self) -> Result<(), Error> {
        match self.loss() {
            Some(loss) => Err(self.error(loss)),
            None => Ok(()),
        }
    }

    /// Maps a failed call about the target; one that says it is gone marks
    /// it lost.
    pub(crate) fn fail(&self, status: Status) -> Error {
        let err = self.target.on_error(status);
        if let Error::LeaseLost { reason, state, .. } | Error::PoolLost { reason, state, .. } = &err
        {
            self.mark_lost(reason.clone(), *state);
        }
        err
    }

    /// Runs a call about the target: checked first, its error mapped, and
    /// cut with the loss when the keepalive gives up.
    pub(crate) async fn call<T>(
        &self,
        call: impl Future<Output = Result<T, Status>>,
    ) -> Result<T, Error> {
        self.check()?;
        tokio::select! {
            result = call => result.map_err(|s| self.fail(s)),
            lost = self.cut() => Err(lost),
        }
    }

    /// Resolves, with the loss, when the keepalive gives up on the target,
    /// or when the clock says it is lost (its confirmed time passed): the
    /// moment [`Held::lost`] says so, whether or not the keepalive task has
    /// run since (on a busy machine it may run late).
    pub(crate) async fn cut(&self) -> Error {
        let mut cut = self.cut.subscribe();
        loop {
            let until = self.state().confirmed_until;
            tokio::select! {
                // The sender lives as long as `self`: this waits for the flag.
                _ = cut.wait_for(|given_up| *given_up) => break,
                _ = tokio::time::sleep_until(until.unwrap_or_else(Instant::now).into()), if until.is_some() => {
                    // A renewal may have moved the time on meanwhile.
                    if self.loss().is_some() {
                        break;
                    }
                }
            }
        }
        let loss = self.loss().unwrap_or_else(|| Loss {
            reason: "the keepalive gave up".into(),
            state: None,
        });
        self.error(loss)
    }

    /// Stops judging the target by the clock (it was released, deleted).
    pub(crate) fn released(&self) {
        let mut state = self.state();
        if state.loss.is_none() {
            state.confirmed_until = None;
        }
    }

    /// How long the target is confirmed for from now; `None` when it is
    /// lost or its time is up.
    fn left(&self) -> Option<Duration> {
        let state = self.state();
        if state.loss.is_some() {
            return None;
        }
        state
            .confirmed_until
            .and_then(|until| until.checked_duration_since(Instant::now()))
            .filter(|left| !left.is_zero())
    }

    fn confirm(&self, sent: Instant, ttl: Option<Duration>) -> Duration {
        let mut state = self.state();
        if let Some(ttl) = ttl.filter(|t| !t.is_zero()) {
            state.ttl = ttl;
        }
        state.confirmed_until = Some(sent + state.ttl);
        state.renewals += 1;
        state.ttl
    }

    /// A NOT_FOUND answer to a renewal sent at `sent` before the target was
    /// known to exist: not a loss; a target made after that answer lives at
    /// least a TTL from `sent`.
    fn not_yet(&self, sent: Instant) -> bool {
        let mut state = self.state();
        if state.exists_since.is_some_and(|since| since <= sent) {
            return false;
        }
        let until = sent + state.ttl;
        state.confirmed_until = Some(state.confirmed_until.map_or(until, |u| u.max(until)));
        true
    }

    fn give_up(&self) {
        self.loss();
        self.cut.send_replace(true);
    }
}

/// Why a lease is lost, by the state a keepalive answer gives.
fn state_reason(state: LeaseState) -> String {
    let name = state.as_str_name().trim_start_matches("LEASE_STATE_");
    let words = match state {
        LeaseState::Expired => {
            ": the lease expired on the server (no keepalive arrived within its TTL)"
        }
        LeaseState::Released => ": the lease was released",
        LeaseState::Revoked => {
            ": the server revoked the lease (its pool was deleted or the server is stopping)"
        }
        LeaseState::NotFound => ": the server does not know the lease",
        LeaseState::ContainerLost => {
            ": the lease's container died or was removed outside sandpool (acquire a new one)"
        }
        LeaseState::PoolDeleted => {
            ": the lease's pool was deleted because its owner stopped keeping it alive"
        }
        LeaseState::LifetimeExceeded => {
            ": the lease reached its pool's max_lease_lifetime (acquire a new one)"
        }
        LeaseState::ReplicaGone => {
            ": the server replica that owned the lease is gone (acquire a new one)"
        }
        _ => "",
    };
    format!("the server answered the keepalive with {name}{words}")
}

/// Why an owned pool is lost, by the state a keepalive answer gives.
fn pool_state_reason(state: LeaseState) -> String {
    let name = state.as_str_name().trim_start_matches("LEASE_STATE_");
    let words = match state {
        LeaseState::NotFound => {
            ": the server has no such pool owned by this caller (deleted, or lapsed: no keepalive arrived within its owner TTL)"
        }
        _ => "",
    };
    format!("the server answered the keepalive with {name}{words}")
}

/// An open KeepAlive stream.
type Stream = (
    mpsc::Sender<pb::KeepAliveRequest>,
    Streaming<pb::KeepAliveResponse>,
);

/// One renewal on the stream (opened when there is none): the answer, or
/// `None` when the server ended the stream.
async fn renew(
    client: &Client,
    target: &Target,
    stream: &mut Option<Stream>,
    lifetime: Duration,
) -> Result<Option<pb::KeepAliveResponse>, Status> {
    let (requests, answers) = match stream {
        Some(open) => open,
        None => {
            let (tx, rx) = mpsc::channel(1);
            let answers = client
                .sessions()
                .keep_alive(with_deadline(ReceiverStream::new(rx), lifetime))
                .await?
                .into_inner();
            stream.insert((tx, answers))
        }
    };
    if requests.send(target.request()).await.is_err() {
        return Ok(None);
    }
    answers.message().await
}

/// The keepalive task of a lease granted by an Acquire sent at `started`
/// (or of a pool asked for by a CreatePool sent then).
pub(crate) async fn keep_alive(client: Client, held: Arc<Held>, started: Instant) {
    let ttl = held.state().ttl;
    let mut period = (ttl / 3).max(MIN_KEEPALIVE);
    let lifetime = KEEPALIVE_STREAM_LIFETIME.max(ttl * 10);
    let mut next_at = started + period;
    let mut stream: Option<Stream> = None;
    loop {
        tokio::time::sleep_until(next_at.into()).await;
        if held.state().loss.is_some() {
            return;
        }
        let Some(left) = held.left() else { break };
        let sent = Instant::now();
        next_at = sent + KEEPALIVE_RETRY;
        match tokio::time::timeout(left, renew(&client, &held.target, &mut stream, lifetime)).await
        {
            Err(_) => {
                stream = None;
                next_at = sent + left; // the lease's time is up: give up then
            }
            Ok(Err(status)) => {
                stream = None;
                let code = status.code();
                if let err @ (Error::LeaseLost { .. } | Error::PoolLost { .. }) = held.fail(status)
                {
                    tracing::debug!(target = %held.target.id(), "keepalive: {err}");
                    return;
                }
                if code == Code::DeadlineExceeded {
                    next_at = sent; // the stream's own deadline ended it: reopen now
                }
            }
            Ok(Ok(None)) => stream = None, // the server ended the stream: reopen
            Ok(Ok(Some(answer))) => {
                let state = LeaseState::try_from(answer.state).unwrap_or(LeaseState::Unspecified);
                if state == LeaseState::NotFound && held.not_yet(sent) {
                    continue; // its CreatePool is on its way: try again
                }
                if state != LeaseState::Active {
                    held.mark_lost(held.target.answered(state), Some(state));
                    return;
                }
                let ttl = answer.ttl.and_then(|d| Duration::try_from(d).ok());
                period = (held.confirm(sent, ttl) / 3).max(MIN_KEEPALIVE);
                next_at = sent + period;
            }
        }
    }
    // No renewal was confirmed within the TTL.
    drop(stream);
    held.give_up();
    held.target.abandon(&client).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gone_replica_is_named_in_the_loss() {
        let reason = state_reason(LeaseState::ReplicaGone);
        assert!(
            reason.contains("REPLICA_GONE: the server replica that owned the lease is gone"),
            "{reason}"
        );
    }
}
