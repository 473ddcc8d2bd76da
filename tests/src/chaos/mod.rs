//! The randomised protocol test (issue 9): clients in separate processes
//! ([`client`], the `chaos_client` binary) drive a live server through
//! random sequences of CreatePool, Acquire, KeepAlive, Run, Cancel, Upload,
//! Download, Release and abandon, while the [`driver`] in the parent kills
//! some of them with SIGKILL and checks invariants after every round and at
//! the end. The test `tests/chaos.rs` and the soak (`sandpool-bench --bin
//! soak`) both run the driver; only their sizes differ.
//!
//! Decisions come from [`Rng`] (SplitMix64, so a seed means the same
//! decisions on any machine and any version of a crate): the same seed gives
//! the same decisions, step by step, in every client and in the parent. Their
//! outcomes (whether an Acquire finds a free container, when a kill lands)
//! depend on timing; the driver prints a digest of the decisions so that two
//! runs can be compared.

pub mod client;
pub mod driver;

use serde::{Deserialize, Serialize};

/// SplitMix64: small, fast, and stable forever (unlike a library's default
/// generator), which is what a reproducible seed needs.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// The seed of the `n`-th child generator (clients get their own).
    pub fn derive(seed: u64, n: u64) -> u64 {
        Rng::new(seed ^ n.wrapping_mul(0xd1b5_4a32_d192_ed03)).next_u64()
    }
}

/// A lease as a client holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseView {
    pub id: String,
    pub container: String,
    pub pool: String,
    pub ttl_ms: u64,
    pub temporary: bool,
}

/// A pool a client created with an owner TTL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnedView {
    pub name: String,
    pub owner_ttl_ms: u64,
}

/// What a client is about to do (printed before it does it): if it is
/// killed half-way, the parent knows what may exist that it never heard of.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    pub op: String,
    /// The pool an Acquire asks, or the name a CreatePool gives.
    pub pool: Option<String>,
    /// The lease TTL (Acquire) or owner TTL (CreatePool).
    pub ttl_ms: u64,
}

/// One line of a client's stdout.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Line {
    /// Printed before a step's operation.
    Intent {
        client: u32,
        step: u32,
        intent: Intent,
    },
    /// Printed after it: what the client holds now.
    Step(Box<StepReport>),
}

/// A client's state after one step.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StepReport {
    pub client: u32,
    pub step: u32,
    /// What the generator decided, whatever came of it.
    pub decision: String,
    /// What came of it.
    pub outcome: String,
    /// Leases held now (kept alive in the background, not known lost).
    pub held: Vec<LeaseView>,
    /// Pools owned now.
    pub owned: Vec<OwnedView>,
    /// A lease this step acquired.
    pub acquired: Option<LeaseView>,
    /// Leases this step released (the server answered).
    pub released: Vec<String>,
    /// Leases this step dropped without releasing; their keepalive stopped.
    pub abandoned: Vec<LeaseView>,
    /// Leases the client found lost (id, reason), dropped since the last step.
    pub lost: Vec<(String, String)>,
    /// Pools this step deleted.
    pub deleted_pools: Vec<String>,
    /// Owned pools the client found lost (name, reason).
    pub lost_pools: Vec<(String, String)>,
    /// Things that must not happen (wrong output, a file of an earlier
    /// lease, an error on a lease the client holds).
    pub violations: Vec<String>,
    /// The last step: the client exits after this line.
    pub done: bool,
    /// The client exits without releasing anything (it vanishes: what it
    /// held is reclaimed by TTL, as for a kill).
    pub vanished: bool,
}
