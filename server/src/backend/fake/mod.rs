//! An in-memory, deterministic engine for unit tests (compiled for tests
//! only). It keeps containers (created, listed by label, removed), runs
//! execs as scripted programs (`Program`), plays the warden's line protocol
//! and the artifact wrapper, so that a real `Pool` warms, leases, resets,
//! kills and health-checks its containers on it. Tests trigger the engine's
//! events (a container dies or is removed behind the pool's back), switch
//! the engine off and on, and inject failures. Every delay is a tokio
//! sleep: under `tokio::time::pause` the test's clock drives them. It adds
//! to the real-engine suites (tests/), never replaces them.

mod engine;
mod program;
mod warden;

/// An argv from words (for the fake's own tests).
fn argv(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).collect()
}

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use program::Program;

use super::{BackendKind, ContainerEvent, ContainerEventKind, Error, Result};
use crate::lang::Language;

/// One exec the fake started, for assertions.
#[derive(Debug, Clone)]
pub struct ExecRecord {
    pub container: String,
    pub argv: Vec<String>,
    pub user: String,
    pub privileged: bool,
    pub stdin: bool,
}

/// One command a warden answered.
#[derive(Debug, Clone)]
pub struct WardenRecord {
    pub container: String,
    pub command: String,
}

/// What the fake did, for assertions.
#[derive(Debug, Clone, Default)]
pub struct Journal {
    /// Containers created.
    pub created: u32,
    /// Calls to remove a container, failed ones included.
    pub remove_attempts: u32,
    /// The most containers that existed at once.
    pub peak: usize,
    pub execs: Vec<ExecRecord>,
    pub warden: Vec<WardenRecord>,
}

/// A container as the fake shows it.
#[derive(Debug, Clone)]
pub struct FakeContainer {
    pub id: String,
    pub labels: HashMap<String, String>,
    pub running: bool,
}

struct Container {
    labels: HashMap<String, String>,
    running: bool,
    networks: Vec<String>,
    env: Vec<String>,
}

struct ExecState {
    container: String,
    user: String,
    warden: bool,
    /// Kills it (a kill, a reset, its container going).
    stop: CancellationToken,
    exit: Option<i64>,
}

struct Subscriber {
    label: String,
    tx: mpsc::UnboundedSender<Result<ContainerEvent>>,
}

#[derive(Default)]
struct State {
    unreachable: bool,
    next: u64,
    containers: BTreeMap<String, Container>,
    execs: HashMap<String, ExecState>,
    subscribers: Vec<Subscriber>,
    /// Newest first: a program added later wins over an older one.
    programs: Vec<Program>,
    warden_answers: Vec<warden::ScriptedAnswer>,
    fail_creates: u32,
    fail_removes: u32,
    create_delay: Duration,
    journal: Journal,
}

impl State {
    fn reachable(&self) -> Result<()> {
        if self.unreachable {
            return Err(Error::Unreachable {
                backend: BackendKind::Docker,
                endpoint: "fake://engine".into(),
                detail: "the fake engine is switched off".into(),
            });
        }
        Ok(())
    }

    fn next_id(&mut self, prefix: &str) -> String {
        self.next += 1;
        format!("{prefix}-{:04}", self.next)
    }

    /// Ends every exec of `container` (it stopped or went).
    fn stop_execs(&self, container: &str) {
        for exec in self.execs.values().filter(|e| e.container == container) {
            exec.stop.cancel();
        }
    }

    /// Tells the subscribers whose label the container carries.
    fn emit(&mut self, id: &str, labels: &HashMap<String, String>, kind: ContainerEventKind) {
        let event = ContainerEvent {
            id: id.to_string(),
            labels: labels.clone(),
            kind,
        };
        self.subscribers
            .retain(|s| !labels.contains_key(&s.label) || s.tx.send(Ok(event.clone())).is_ok());
    }

    /// The program that answers `argv`: the newest scripted one that
    /// matches, used up if it was for a number of execs only.
    fn program_for(&mut self, argv: &[String]) -> Program {
        let Some(i) = self.programs.iter().position(|p| p.matches(argv)) else {
            return Program::default_for_unscripted();
        };
        let program = self.programs[i].clone();
        if self.programs[i].use_once() {
            self.programs.remove(i);
        }
        program
    }
}

/// The fake engine. Shared as `Arc<FakeBackend>`; the test keeps one handle
/// to drive it, the pools another (as a `SharedBackend`).
pub struct FakeBackend {
    state: Arc<Mutex<State>>,
}

impl FakeBackend {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            state: Arc::new(Mutex::new(State::default())),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        crate::sync::lock(&self.state)
    }

    /// Adds a scripted program; it wins over those added before.
    pub fn program(&self, program: Program) {
        self.lock().programs.insert(0, program);
    }

    /// Makes the language's toolchain check pass (prints what it expects).
    pub fn answer_toolchain(&self, lang: &dyn Language) {
        let (argv, expect) = lang.check();
        self.program(Program::matching(&argv).stdout(format!("{expect}\n")));
    }

    /// The next `times` warden commands that start with `prefix` get
    /// `answer` ("err ...", "busy 1") instead of the usual one.
    pub fn warden_answer(&self, prefix: &str, answer: &str, times: u32) {
        self.lock().warden_answers.push(warden::ScriptedAnswer {
            prefix: prefix.to_string(),
            answer: answer.to_string(),
            times,
        });
    }

    /// Switches the engine off (every call fails `Unreachable`, event
    /// streams end) or on again. Containers are left as they are.
    pub fn set_reachable(&self, reachable: bool) {
        let mut st = self.lock();
        st.unreachable = !reachable;
        if !reachable {
            st.subscribers.clear();
        }
    }

    /// The next `n` container creations fail.
    pub fn fail_creates(&self, n: u32) {
        self.lock().fail_creates = n;
    }

    /// The next `n` removals fail (the container stays).
    pub fn fail_removes(&self, n: u32) {
        self.lock().fail_removes = n;
    }

    /// Each creation takes this long.
    pub fn set_create_delay(&self, delay: Duration) {
        self.lock().create_delay = delay;
    }

    /// The container's main process dies (OOM, `docker kill`): its execs
    /// end, and the engine reports it died.
    pub fn kill_container(&self, id: &str) {
        let mut st = self.lock();
        let Some(c) = st.containers.get_mut(id) else {
            return;
        };
        c.running = false;
        let labels = c.labels.clone();
        st.stop_execs(id);
        st.emit(id, &labels, ContainerEventKind::Died);
    }

    /// Every container stops and no event says so: the engine went down
    /// with them (a daemon restart).
    pub fn stop_all_silently(&self) {
        let mut st = self.lock();
        let ids: Vec<String> = st.containers.keys().cloned().collect();
        for id in ids {
            st.stop_execs(&id);
            if let Some(c) = st.containers.get_mut(&id) {
                c.running = false;
            }
        }
    }

    /// The containers that exist, in the order they were made.
    pub fn containers(&self) -> Vec<FakeContainer> {
        self.lock()
            .containers
            .iter()
            .map(|(id, c)| FakeContainer {
                id: id.clone(),
                labels: c.labels.clone(),
                running: c.running,
            })
            .collect()
    }

    /// Ids of the running containers, in the order they were made.
    pub fn running(&self) -> Vec<String> {
        self.containers()
            .into_iter()
            .filter(|c| c.running)
            .map(|c| c.id)
            .collect()
    }

    pub fn journal(&self) -> Journal {
        self.lock().journal.clone()
    }

    /// The commands the wardens of `container` answered, in order.
    pub fn warden_commands(&self, container: &str) -> Vec<String> {
        self.lock()
            .journal
            .warden
            .iter()
            .filter(|w| w.container == container)
            .map(|w| w.command.clone())
            .collect()
    }

    /// Execs in `container`, the warden's excepted, that still run.
    pub fn live_execs(&self, container: &str) -> usize {
        self.lock()
            .execs
            .values()
            .filter(|e| e.container == container && !e.warden && e.exit.is_none())
            .count()
    }

    /// Records the exit code of a finished exec (before its output ends,
    /// as an engine has it by then).
    fn finished(state: &Mutex<State>, exec_id: &str, code: i64) {
        if let Some(exec) = crate::sync::lock(state).execs.get_mut(exec_id) {
            exec.exit = Some(code);
        }
    }
}
