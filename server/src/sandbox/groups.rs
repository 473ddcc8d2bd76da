//! A group of its own for every run. Each run (and each context's kernel,
//! and each install on a lease) runs as the sandbox uid with a gid that no
//! other live run of the container has. An unprivileged process can never
//! change its gids (it has no CAP_SETGID, and no-new-privileges stops
//! setgid programs), so `env -i`, `setsid` and double forks all keep it: it
//! is the kernel-enforced tag by which a kill finds a run's whole tree and
//! nothing else. As a bonus, runs cannot trace each other's processes
//! (ptrace wants the same gids too).
//!
//! What a program sees: `id -g` is the run's gid (a number without a name)
//! and new files get that group; they still belong to the sandbox user, so
//! later runs use them as before.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
};

use crate::sync::lock;

/// The gids runs get, cycled through: a gid comes back only after the other
/// 9,999 were used, so a daemon that an early run left behind rarely shares
/// one with a later run (and then only within the same lease: a reset kills
/// everything).
const FIRST: u32 = 20_000;
const LAST: u32 = 29_999;

/// The gids of one container's runs.
#[derive(Debug)]
pub struct Groups {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    next: u32,
    held: HashSet<u32>,
}

impl Default for Groups {
    fn default() -> Self {
        Self {
            inner: Mutex::new(Inner {
                next: FIRST,
                held: HashSet::new(),
            }),
        }
    }
}

/// A run's gid, given back when dropped (after the run's kill, if any).
#[derive(Debug)]
pub struct RunGroup {
    gid: u32,
    groups: Arc<Groups>,
}

impl RunGroup {
    pub fn gid(&self) -> u32 {
        self.gid
    }
}

impl Drop for RunGroup {
    fn drop(&mut self) {
        lock(&self.groups.inner).held.remove(&self.gid);
    }
}

impl Groups {
    /// A gid no live run of the container holds; `None` if every one is held.
    pub fn allocate(self: &Arc<Self>) -> Option<RunGroup> {
        let mut inner = lock(&self.inner);
        for _ in FIRST..=LAST {
            let gid = inner.next;
            inner.next = if gid >= LAST { FIRST } else { gid + 1 };
            if inner.held.insert(gid) {
                return Some(RunGroup {
                    gid,
                    groups: Arc::clone(self),
                });
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gids_are_unique_among_live_runs_and_cycle() {
        let groups = Arc::new(Groups::default());
        let a = groups.allocate().expect("a");
        let b = groups.allocate().expect("b");
        assert_ne!(a.gid(), b.gid());
        assert!((FIRST..=LAST).contains(&a.gid()) && (FIRST..=LAST).contains(&b.gid()));
        let first = a.gid();
        drop(a);
        // Not handed out again at once.
        let c = groups.allocate().expect("c");
        assert_ne!(c.gid(), first);
        // Every gid held: none left.
        let held: Vec<_> = std::iter::from_fn(|| groups.allocate()).collect();
        assert_eq!(held.len() + 2, (LAST - FIRST + 1) as usize);
        assert!(groups.allocate().is_none());
        drop(held);
        assert!(groups.allocate().is_some());
    }
}
