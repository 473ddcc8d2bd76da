//! Resumable runs. A Run that names a client-chosen `run_id` keeps its
//! events, as they go on the wire, in a bounded journal held by the lease;
//! a client whose stream broke calls Attach with the last sequence number
//! it has and gets what it missed, then the live events. The run does not
//! stop when its stream drops (it ends at its timeout, by Cancel or with
//! the lease), and a Run repeating the id attaches instead of running
//! again.
//!
//! Bounds: each journal keeps at most its pool's `run_buffer_bytes`
//! (payload plus `EVENT_COST` per event), all journals together at most
//! the server's `max_run_buffer_bytes`. While a client reads the run, the
//! journal never drops what that reader has not been sent: the run waits
//! for its reader instead (as a plain Run waits for its client). While no
//! client reads, the oldest events are dropped and a later Attach gets a
//! gap event saying how many bytes of each kind were lost. The exit is
//! never dropped: every Attach ends with it (or with the run's failure).

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use futures::Stream;
use sandpool_proto::v1 as pb;
use tokio::sync::{mpsc, watch};
use tonic::Status;

use super::convert;
use crate::{
    error::Error,
    identity::QuotaGuard,
    pool::{LeaseGuard, lease::RunId, stats::Meters},
    run::RunEvent,
    sync::lock,
};

/// What an event costs a journal beyond its payload (the message, its
/// place in the queue): keeps a flood of empty events bounded too.
const EVENT_COST: u64 = 64;
/// Journals a lease keeps; beyond it, the oldest ended ones are forgotten
/// (a Run repeating a forgotten id runs again).
const MAX_JOURNALS: usize = 1_000;
/// Dropped events whose byte counts are remembered, so that a gap says
/// exactly how much was lost. Older ones only bound it from below.
const MAX_GAP_INDEX: usize = 16_384;
/// How long the events of a run stay after its exit was sent: a client
/// whose stream broke just then can still Attach for them. Then only the
/// exit is kept.
const KEEP_AFTER_EXIT: Duration = Duration::from_secs(60);

/// Bytes of stdout, stderr and artifact content.
type Bytes3 = [u64; 3];

/// What all journals together keep, against the server-wide cap.
#[derive(Debug)]
pub struct Budget {
    used: AtomicU64,
    cap: u64,
}

impl Budget {
    pub fn new(cap: u64) -> Arc<Self> {
        Arc::new(Self {
            used: AtomicU64::new(0),
            cap,
        })
    }

    /// Bytes kept by all journals now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    fn charge(&self, n: u64) {
        self.used.fetch_add(n, Ordering::Relaxed);
    }

    fn refund(&self, n: u64) {
        self.used.fetch_sub(n, Ordering::Relaxed);
    }

    fn over(&self) -> bool {
        self.used() > self.cap
    }
}

/// The journals of a lease's resumable runs (a lease attachment: they go
/// with the lease).
#[derive(Default)]
pub struct Journals {
    inner: Mutex<JournalMap>,
}

#[derive(Default)]
struct JournalMap {
    by_id: HashMap<String, Arc<Journal>>,
    /// Ids in the order their runs started.
    order: VecDeque<String>,
}

/// What a Run with a run id gets.
pub enum Claim {
    /// The id is new: start the run and record it here.
    New(Arc<Journal>),
    /// The same run was asked for before: attach to it.
    Existing(Arc<Journal>),
}

impl Journals {
    pub fn of(lease: &LeaseGuard) -> Arc<Self> {
        lease.attachment::<Journals>()
    }

    /// Claims `run_id` for a run whose request has `fingerprint`.
    pub fn claim(
        &self,
        lease: &LeaseGuard,
        run_id: &RunId,
        fingerprint: u64,
        budget: &Arc<Budget>,
    ) -> Result<Claim, Error> {
        let taken = |why| Error::RunIdTaken {
            lease_id: lease.id().to_string(),
            run_id: run_id.to_string(),
            why,
        };
        let mut map = lock(&self.inner);
        if let Some(journal) = map.by_id.get(run_id.as_str()) {
            if journal.fingerprint != fingerprint {
                return Err(taken(
                    "it named a different program, stdin, env or working_dir",
                ));
            }
            return Ok(Claim::Existing(Arc::clone(journal)));
        }
        if lease.has_run(run_id) {
            return Err(taken("a run that is not resumable has it"));
        }
        let journal = Arc::new(Journal::new(
            run_id.to_string(),
            fingerprint,
            lease.spec().run_buffer_bytes,
            Arc::clone(budget),
            lease.meters_handle(),
        ));
        map.by_id.insert(run_id.to_string(), Arc::clone(&journal));
        map.order.push_back(run_id.to_string());
        if map.order.len() > MAX_JOURNALS {
            // The oldest ended one goes; runs still going are kept.
            let JournalMap { by_id, order } = &mut *map;
            if let Some(at) = order
                .iter()
                .position(|id| by_id.get(id).is_none_or(|j| j.ended()))
                && let Some(id) = order.remove(at)
            {
                by_id.remove(&id);
            }
        }
        Ok(Claim::New(journal))
    }

    /// Forgets a run that did not start (its id may be used again).
    pub fn forget(&self, run_id: &RunId) {
        let mut map = lock(&self.inner);
        map.by_id.remove(run_id.as_str());
        map.order.retain(|id| id != run_id.as_str());
    }

    /// The journal of `run_id`, if the lease keeps one.
    pub fn get(&self, lease: &LeaseGuard, run_id: &str) -> Result<Arc<Journal>, Error> {
        lock(&self.inner)
            .by_id
            .get(run_id)
            .cloned()
            .ok_or_else(|| Error::NotResumable {
                lease_id: lease.id().to_string(),
                run_id: run_id.to_string(),
            })
    }
}

/// One resumable run's events.
pub struct Journal {
    run_id: String,
    fingerprint: u64,
    /// The pool's `run_buffer_bytes`.
    limit: u64,
    budget: Arc<Budget>,
    /// The pool's: output dropped unsent is counted there.
    meters: Arc<Meters>,
    state: Mutex<State>,
    /// Bumped on every change a reader or the recorder may wait for.
    changed: watch::Sender<()>,
}

struct Kept {
    response: pb::RunResponse,
    cost: u64,
    /// Bytes of each kind through this event.
    totals: Bytes3,
    exit: bool,
}

#[derive(Default)]
struct State {
    kept: VecDeque<Kept>,
    next_seq: u64,
    /// Cost of `kept`.
    cost: u64,
    /// Bytes of each kind through the last pushed event.
    totals: Bytes3,
    /// (seq, totals through it) of dropped events, oldest first.
    dropped: VecDeque<(u64, Bytes3)>,
    /// Totals through the last dropped event.
    dropped_totals: Bytes3,
    /// The run's exit was pushed (`Ok`) or it failed (`Err`).
    ended: Option<Result<(), Status>>,
    /// Generation of the current reader; older readers end.
    reader: u64,
    attached: bool,
    /// Last seq the current reader sent.
    cursor: u64,
    /// Cost of the kept events the current reader has not sent yet.
    unsent: u64,
    /// The highest seq any reader sent: a dropped event beyond it was lost.
    sent_max: u64,
}

impl Journal {
    fn new(
        run_id: String,
        fingerprint: u64,
        limit: u64,
        budget: Arc<Budget>,
        meters: Arc<Meters>,
    ) -> Self {
        Self {
            run_id,
            fingerprint,
            limit,
            budget,
            meters,
            state: Mutex::new(State {
                next_seq: 1,
                ..State::default()
            }),
            changed: watch::Sender::new(()),
        }
    }

    fn ended(&self) -> bool {
        lock(&self.state).ended.is_some()
    }

    /// Records the next event; its sequence number is the journal's.
    fn push(&self, event: pb::run_response::Event) {
        use pb::run_response::Event;
        let (size, kind) = match &event {
            Event::Stdout(c) => (c.data.len(), Some(0)),
            Event::Stderr(c) => (c.data.len(), Some(1)),
            Event::Artifact(a) => (a.data.len(), Some(2)),
            _ => (0, None),
        };
        let exit = matches!(event, Event::Exit(_));
        let cost = size as u64 + EVENT_COST;
        let mut st = lock(&self.state);
        let seq = st.next_seq;
        st.next_seq += 1;
        if let Some(kind) = kind {
            st.totals[kind] += size as u64;
        }
        let totals = st.totals;
        st.kept.push_back(Kept {
            response: pb::RunResponse {
                seq,
                event: Some(event),
            },
            cost,
            totals,
            exit,
        });
        st.cost += cost;
        if st.attached {
            st.unsent += cost;
        }
        if exit {
            st.ended = Some(Ok(()));
        }
        self.budget.charge(cost);
        self.shrink(&mut st, false);
        drop(st);
        self.changed.send_replace(());
    }

    /// Ends the journal with the run's failure (it has no exit).
    pub fn fail(&self, status: Status) {
        let mut st = lock(&self.state);
        if st.ended.is_none() {
            st.ended = Some(Err(status));
        }
        drop(st);
        self.changed.send_replace(());
    }

    /// Drops the oldest events while over a bound (`all`: every event but
    /// the exit), never one the current reader has yet to send.
    fn shrink(&self, st: &mut State, all: bool) {
        while all || st.cost > self.limit || self.budget.over() {
            let Some(front) = st.kept.front() else { break };
            if front.exit || (st.attached && front.response.seq > st.cursor) {
                break;
            }
            let Some(gone) = st.kept.pop_front() else {
                break;
            };
            st.cost -= gone.cost;
            self.budget.refund(gone.cost);
            st.dropped.push_back((gone.response.seq, gone.totals));
            if st.dropped.len() > MAX_GAP_INDEX {
                st.dropped.pop_front();
            }
            if gone.response.seq > st.sent_max {
                // Drops go in order: the totals so far end just before it.
                let lost: u64 = (0..3)
                    .map(|i| gone.totals[i].saturating_sub(st.dropped_totals[i]))
                    .sum();
                self.meters.buffer_dropped(lost);
            }
            st.dropped_totals = gone.totals;
        }
    }

    /// Waits until the run may produce its next event: while a reader is
    /// attached, no further ahead of it than the journal's limit.
    async fn room(&self) {
        let mut changed = self.changed.subscribe();
        loop {
            {
                let st = lock(&self.state);
                if !(st.attached && st.unsent >= self.limit) {
                    return;
                }
            }
            if changed.changed().await.is_err() {
                return;
            }
        }
    }

    /// A new reader of the events after `after_seq`; an older one ends.
    pub fn attach(
        self: &Arc<Self>,
        after_seq: u64,
        held: Option<QuotaGuard>,
    ) -> Result<impl Stream<Item = Result<pb::RunResponse, Status>> + Send + 'static, Error> {
        let mut st = lock(&self.state);
        let last = st.next_seq - 1;
        if after_seq > last {
            return Err(Error::invalid(
                "after_seq",
                format!(
                    "{after_seq} is beyond the last event of run {} so far ({last})",
                    self.run_id
                ),
            ));
        }
        st.reader += 1;
        st.attached = true;
        st.cursor = after_seq;
        st.unsent = st
            .kept
            .iter()
            .filter(|k| k.response.seq > after_seq)
            .map(|k| k.cost)
            .sum();
        let reader = Reader {
            journal: Arc::clone(self),
            generation: st.reader,
            cursor: after_seq,
            done: false,
            _held: held,
        };
        drop(st);
        self.changed.send_replace(());
        Ok(futures::stream::unfold(reader, |mut reader| async move {
            let item = reader.next().await?;
            Some((item, reader))
        }))
    }

    /// Bytes of each kind through `seq` (0: none), for a gap that starts
    /// after it: exact while `seq` is kept or in the gap index, a lower
    /// bound of the loss beyond.
    fn totals_through(st: &State, seq: u64) -> Bytes3 {
        if seq == 0 {
            return [0; 3];
        }
        if let Some(front) = st.kept.front()
            && seq >= front.response.seq
        {
            let at = (seq - front.response.seq) as usize;
            if let Some(kept) = st.kept.get(at) {
                return kept.totals;
            }
        }
        match st.dropped.binary_search_by_key(&seq, |(s, _)| *s) {
            Ok(at) => st.dropped[at].1,
            // Older than the index: count from its oldest entry.
            Err(_) => st.dropped.front().map(|(_, t)| *t).unwrap_or([0; 3]),
        }
    }

    /// Keeps only the exit (its events were sent a while ago).
    fn trim(&self) {
        let mut st = lock(&self.state);
        self.shrink(&mut st, true);
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        let cost = lock(&self.state).cost;
        self.budget.refund(cost);
    }
}

/// One Attach (or Run) stream of a journal.
struct Reader {
    journal: Arc<Journal>,
    generation: u64,
    cursor: u64,
    done: bool,
    /// The caller's stream slot, held while the stream lasts.
    _held: Option<QuotaGuard>,
}

impl Reader {
    async fn next(&mut self) -> Option<Result<pb::RunResponse, Status>> {
        if self.done {
            return None;
        }
        let journal = Arc::clone(&self.journal);
        let mut changed = journal.changed.subscribe();
        loop {
            if let Some(item) = self.step(&journal) {
                return Some(item);
            }
            if self.done {
                return None;
            }
            if changed.changed().await.is_err() {
                self.done = true;
                return None;
            }
        }
    }

    /// The next item if there is one now.
    fn step(&mut self, journal: &Arc<Journal>) -> Option<Result<pb::RunResponse, Status>> {
        let mut st = lock(&journal.state);
        if st.reader != self.generation {
            self.done = true;
            return Some(Err(Error::StreamSuperseded {
                run_id: journal.run_id.clone(),
            }
            .into()));
        }
        let first = st.kept.front().map_or(st.next_seq, |k| k.response.seq);
        if self.cursor + 1 < first {
            // What this reader wanted next was dropped.
            let before = Journal::totals_through(&st, self.cursor);
            let through = st.dropped_totals;
            let lost = |i: usize| through[i].saturating_sub(before[i]);
            let gap = pb::RunGap {
                from_seq: self.cursor + 1,
                to_seq: first - 1,
                stdout_bytes: lost(0),
                stderr_bytes: lost(1),
                artifact_bytes: lost(2),
            };
            self.cursor = first - 1;
            st.cursor = self.cursor;
            return Some(Ok(pb::RunResponse {
                seq: first - 1,
                event: Some(pb::run_response::Event::Gap(gap)),
            }));
        }
        let at = (self.cursor + 1 - first) as usize;
        if let Some(kept) = st.kept.get(at) {
            let response = kept.response.clone();
            let (cost, exit) = (kept.cost, kept.exit);
            self.cursor += 1;
            st.cursor = self.cursor;
            st.sent_max = st.sent_max.max(self.cursor);
            st.unsent = st.unsent.saturating_sub(cost);
            drop(st);
            journal.changed.send_replace(());
            if exit {
                self.done = true;
                let journal = Arc::clone(journal);
                tokio::spawn(async move {
                    tokio::time::sleep(KEEP_AFTER_EXIT).await;
                    journal.trim();
                });
            }
            return Some(Ok(response));
        }
        match &st.ended {
            Some(Err(status)) => {
                self.done = true;
                Some(Err(status.clone()))
            }
            // The exit is never dropped: an ended journal without more
            // events has nothing left to send.
            Some(Ok(())) => {
                self.done = true;
                None
            }
            None => None,
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        let mut st = lock(&self.journal.state);
        if st.reader == self.generation {
            // The run goes on without a reader: it no longer waits.
            st.attached = false;
            st.unsent = 0;
            drop(st);
            self.journal.changed.send_replace(());
        }
    }
}

/// Records a run's events into its journal until the run is over.
/// `on_event` sees each event first (the audit of the run's end).
pub async fn record(
    journal: Arc<Journal>,
    mut events: mpsc::Receiver<RunEvent>,
    mut on_event: impl FnMut(&RunEvent) + Send,
) {
    loop {
        journal.room().await;
        let Some(event) = events.recv().await else {
            break;
        };
        on_event(&event);
        let exit = matches!(event, RunEvent::Exit(_));
        // The journal numbers events itself.
        match convert::run_event_to_pb(0, event) {
            Ok(response) => {
                if let Some(event) = response.event {
                    journal.push(event);
                }
                if exit {
                    return;
                }
            }
            Err(status) => {
                journal.fail(status);
                return;
            }
        }
    }
    journal.fail(Status::internal("the run's events ended without its exit"));
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::run_response::Event;

    fn stdout(n: usize) -> Event {
        Event::Stdout(pb::OutputChunk {
            data: vec![b'x'; n].into(),
        })
    }

    fn exit() -> Event {
        Event::Exit(pb::RunExit::default())
    }

    fn journal(limit: u64, budget: &Arc<Budget>) -> Arc<Journal> {
        Arc::new(Journal::new(
            "r".into(),
            0,
            limit,
            Arc::clone(budget),
            Arc::default(),
        ))
    }

    /// Everything a reader gets from `after_seq` on, until the stream ends.
    async fn read_all(journal: &Arc<Journal>, after_seq: u64) -> Vec<pb::RunResponse> {
        use futures::StreamExt;
        let stream = journal.attach(after_seq, None).expect("attach");
        let items: Vec<_> = stream.collect().await;
        items.into_iter().map(|i| i.expect("event")).collect()
    }

    #[tokio::test]
    async fn a_detached_run_drops_its_oldest_events_and_reports_them_as_a_gap() {
        let budget = Budget::new(1 << 30);
        let meters = Arc::new(Meters::default());
        let j = Arc::new(Journal::new(
            "r".into(),
            0,
            1000,
            Arc::clone(&budget),
            Arc::clone(&meters),
        ));
        for _ in 0..20 {
            j.push(stdout(100));
        }
        j.push(exit());
        let got = read_all(&j, 0).await;
        let Some(Event::Gap(gap)) = &got[0].event else {
            panic!("first: {:?}", got[0])
        };
        assert_eq!(gap.from_seq, 1);
        // 164 bytes per event: six fit in 1000 (the exit costs 64).
        let kept = got.len() - 1;
        assert_eq!(gap.to_seq as usize, 21 - kept);
        assert_eq!(got[0].seq, gap.to_seq);
        assert_eq!(gap.stdout_bytes, 100 * gap.to_seq);
        assert_eq!(
            meters.snapshot().buffer_dropped,
            gap.stdout_bytes,
            "the pool counts what was dropped unsent"
        );
        let seqs: Vec<u64> = got[1..].iter().map(|r| r.seq).collect();
        let want: Vec<u64> = (gap.to_seq + 1..=21).collect();
        assert_eq!(seqs, want, "the rest in order, ending with the exit");
        assert!(matches!(
            got.last().and_then(|r| r.event.as_ref()),
            Some(Event::Exit(_))
        ));
        assert!(budget.used() <= 1000, "{}", budget.used());
    }

    #[tokio::test]
    async fn a_gap_counts_only_what_the_reader_missed() {
        let budget = Budget::new(1 << 30);
        let j = journal(500, &budget);
        for _ in 0..10 {
            j.push(stdout(100));
        }
        j.push(exit());
        // The reader had events up to 3; 3 was dropped too.
        let got = read_all(&j, 3).await;
        let Some(Event::Gap(gap)) = &got[0].event else {
            panic!("first: {:?}", got[0])
        };
        assert_eq!(gap.from_seq, 4);
        assert_eq!(gap.stdout_bytes, 100 * (gap.to_seq - 3));
    }

    #[tokio::test]
    async fn an_attached_reader_loses_nothing_and_holds_the_run_back() {
        let budget = Budget::new(1 << 30);
        let j = journal(1000, &budget);
        let (tx, rx) = mpsc::channel(4);
        // Attached before the first event: nothing may be dropped.
        let stream = j.attach(0, None).expect("attach");
        let reader = tokio::spawn(async move {
            use futures::StreamExt;
            let items: Vec<_> = stream.collect().await;
            items
                .into_iter()
                .map(|i| i.expect("event"))
                .collect::<Vec<_>>()
        });
        let recorder = tokio::spawn(record(Arc::clone(&j), rx, |_| {}));
        for _ in 0..100 {
            tx.send(RunEvent::Stdout(vec![b'y'; 100].into()))
                .await
                .expect("send");
        }
        tx.send(RunEvent::Exit(crate::run::RunExit {
            exit_code: 0,
            reason: crate::run::EndReason::Exited,
            signal: 0,
            duration: Duration::ZERO,
            stdout_bytes: 10_000,
            stderr_bytes: 0,
            truncated: false,
            message: String::new(),
            context_restarted: false,
        }))
        .await
        .expect("send exit");
        let got = reader.await.expect("reader");
        recorder.await.expect("recorder");
        assert_eq!(got.len(), 101, "every event, no gap");
        assert!(got.iter().all(|r| !matches!(r.event, Some(Event::Gap(_)))));
    }

    #[tokio::test]
    async fn a_new_attach_supersedes_the_old_one() {
        use futures::StreamExt;
        let budget = Budget::new(1 << 30);
        let j = journal(1000, &budget);
        j.push(stdout(1));
        let mut old = Box::pin(j.attach(0, None).expect("attach"));
        assert_eq!(old.next().await.expect("first").expect("ok").seq, 1);
        let _new = j.attach(1, None).expect("attach again");
        let err = old.next().await.expect("an end").expect_err("superseded");
        assert_eq!(err.code(), tonic::Code::Aborted);
        assert!(old.next().await.is_none());
    }

    #[tokio::test]
    async fn attaching_beyond_the_last_event_is_refused() {
        let budget = Budget::new(1 << 30);
        let j = journal(1000, &budget);
        j.push(stdout(1));
        let Err(err) = j.attach(5, None) else {
            panic!("attached beyond the end")
        };
        assert!(err.to_string().contains("after_seq"), "{err}");
    }

    #[tokio::test]
    async fn the_server_wide_cap_drops_from_detached_runs_and_drop_refunds() {
        let budget = Budget::new(2000);
        let a = journal(1 << 20, &budget);
        let b = journal(1 << 20, &budget);
        for _ in 0..20 {
            a.push(stdout(100));
            b.push(stdout(100));
        }
        assert!(budget.used() <= 2000, "{}", budget.used());
        drop(a);
        drop(b);
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test]
    async fn a_failed_run_ends_every_attach_with_its_status() {
        let budget = Budget::new(1 << 30);
        let j = journal(1000, &budget);
        j.push(stdout(1));
        j.fail(Status::unavailable("engine gone"));
        use futures::StreamExt;
        let items: Vec<_> = j.attach(0, None).expect("attach").collect().await;
        assert_eq!(items.len(), 2);
        assert_eq!(
            items[1].as_ref().expect_err("failure").code(),
            tonic::Code::Unavailable
        );
    }
}
