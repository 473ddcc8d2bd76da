//! What a session knows about its lease, and the keepalive that renews it.
//!
//! The keepalive contract, the same in the Python and TypeScript clients:
//!
//! - a renewal goes out a third of the TTL after the last confirmed one was
//!   sent (the first, a third of the TTL after Acquire), on one KeepAlive
//!   stream that is reopened when it breaks;
//! - an ACTIVE answer confirms the lease until that renewal's send time plus
//!   the TTL the server answers;
//! - no wait (opening the stream, sending, the answer) outlasts that time:
//!   when it passes unconfirmed the lease is lost ("keepalive failed for
//!   longer than the TTL"), calls in flight on the session end with
//!   `LeaseLost`, and the server is told with a best-effort Release;
//! - an answer in another state (EXPIRED, RELEASED, REVOKED, NOT_FOUND), or
//!   an error saying the lease is gone, loses it with that state;
//! - the clock decides too: once the time has passed, [`Held::lost`] says so
//!   and every call fails with `LeaseLost` without a round trip, even before
//!   the task has run.

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

/// How a lease was lost.
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
    renewals: u64,
}

/// What a session, its run streams and its keepalive share about the lease.
#[derive(Debug)]
pub(crate) struct Held {
    lease_id: String,
    state: Mutex<State>,
    /// Set when the keepalive gives up: calls in flight end with the loss.
    cut: watch::Sender<bool>,
}

impl Held {
    /// A lease granted with `ttl` by an Acquire sent at `started`.
    pub(crate) fn new(lease_id: String, ttl: Duration, started: Instant) -> Arc<Self> {
        Arc::new(Self {
            lease_id,
            state: Mutex::new(State {
                loss: None,
                ttl,
                confirmed_until: Some(started + ttl),
                renewals: 0,
            }),
            cut: watch::Sender::new(false),
        })
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
                reason: format!(
                    "keepalive failed for longer than the {}s TTL: the lease counts as expired",
                    state.ttl.as_secs_f64()
                ),
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

    /// `LeaseLost` for the loss (the client's own knowledge: no status).
    fn error(&self, loss: Loss) -> Error {
        Error::LeaseLost {
            lease_id: self.lease_id.clone(),
            reason: loss.reason,
            status: None,
            state: loss.state,
        }
    }

    /// `Err(LeaseLost)` once the lease is lost.
    pub(crate) fn check(&self) -> Result<(), Error> {
        match self.loss() {
            Some(loss) => Err(self.error(loss)),
            None => Ok(()),
        }
    }

    /// Maps a failed call on the lease; one that says the lease is gone
    /// marks it lost.
    pub(crate) fn fail(&self, status: Status) -> Error {
        let err = Error::on_lease(&self.lease_id, status);
        if let Error::LeaseLost { reason, state, .. } = &err {
            self.mark_lost(reason.clone(), *state);
        }
        err
    }

    /// Runs a call on the lease: checked first, its error mapped, and cut
    /// with the loss when the keepalive gives up.
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

    /// Resolves, with the loss, when the keepalive gives up on the lease.
    pub(crate) async fn cut(&self) -> Error {
        let mut cut = self.cut.subscribe();
        // The sender lives as long as `self`: this waits for the flag.
        let _ = cut.wait_for(|given_up| *given_up).await;
        let loss = self.loss().unwrap_or_else(|| Loss {
            reason: "the keepalive gave up on the lease".into(),
            state: None,
        });
        self.error(loss)
    }

    /// Stops judging the lease by the clock (it was released).
    pub(crate) fn released(&self) {
        let mut state = self.state();
        if state.loss.is_none() {
            state.confirmed_until = None;
        }
    }

    /// How long the lease is confirmed for from now; `None` when it is lost
    /// or its time is up.
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
    lease_id: &str,
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
    let ask = pb::KeepAliveRequest {
        lease_id: lease_id.to_string(),
        ..Default::default()
    };
    if requests.send(ask).await.is_err() {
        return Ok(None);
    }
    answers.message().await
}

/// The keepalive task of a lease granted by an Acquire sent at `started`.
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
        match tokio::time::timeout(left, renew(&client, &held.lease_id, &mut stream, lifetime))
            .await
        {
            Err(_) => {
                stream = None;
                next_at = sent + left; // the lease's time is up: give up then
            }
            Ok(Err(status)) => {
                stream = None;
                let code = status.code();
                if let err @ Error::LeaseLost { .. } = held.fail(status) {
                    tracing::debug!(lease = %held.lease_id, "keepalive: {err}");
                    return;
                }
                if code == Code::DeadlineExceeded {
                    next_at = sent; // the stream's own deadline ended it: reopen now
                }
            }
            Ok(Ok(None)) => stream = None, // the server ended the stream: reopen
            Ok(Ok(Some(answer))) => {
                let state = LeaseState::try_from(answer.state).unwrap_or(LeaseState::Unspecified);
                if state != LeaseState::Active {
                    held.mark_lost(state_reason(state), Some(state));
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
    let _ = client
        .sessions()
        .release(with_deadline(
            pb::ReleaseRequest {
                lease_id: held.lease_id.clone(),
            },
            client.timeout(),
        ))
        .await;
}
