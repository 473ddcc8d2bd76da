//! Who calls: identities with a role, the pools they may use and their
//! quotas, and the book of what each one holds right now.
//!
//! Admins manage every pool (the config file's included) and see secrets;
//! tenants use pools, and may create pools at run time (within the policy)
//! and delete the ones they created. A lease belongs to the identity that
//! acquired it.

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex},
};

use crate::sync::lock;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Tenant,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Admin => "admin",
            Role::Tenant => "tenant",
        })
    }
}

/// What one identity may hold at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quotas {
    /// Leases held.
    pub max_leases: u32,
    /// Acquires waiting for a container.
    pub max_waiters: u32,
    /// Open streams (runs, keepalives, watches, transfers).
    pub max_streams: u32,
    /// Pools created at run time and not yet deleted.
    pub max_pools: u32,
}

impl Default for Quotas {
    fn default() -> Self {
        Self {
            max_leases: 64,
            max_waiters: 64,
            max_streams: 256,
            max_pools: 16,
        }
    }
}

/// A caller the server knows.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    /// Stable and not secret: names leases' and pools' owners in logs, the
    /// audit trail and ListPools.
    pub name: String,
    pub role: Role,
    /// Glob patterns (`*`, `?`) of the pools it may use besides those it
    /// created; `None`: every pool of the config file.
    pub pools: Option<Vec<String>>,
    pub quotas: Quotas,
}

impl Identity {
    /// The one caller of a server without authentication: a developer's
    /// machine, listening on loopback only.
    pub fn local_admin() -> Self {
        Self {
            name: "local".into(),
            role: Role::Admin,
            pools: None,
            quotas: Quotas::default(),
        }
    }

    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// Whether it may use `pool`, created by `owner` (`None`: the config
    /// file's). Admins may use every pool; a tenant the pools it created,
    /// those on its list, and (without a list) the config file's.
    pub fn may_use(&self, pool: &str, owner: Option<&str>) -> bool {
        if self.is_admin() || owner == Some(self.name.as_str()) {
            return true;
        }
        match &self.pools {
            Some(patterns) => patterns.iter().any(|p| glob_match(p, pool)),
            None => owner.is_none(),
        }
    }

    /// Whether it may change or delete `pool`, created by `owner`.
    pub fn may_manage(&self, owner: Option<&str>) -> bool {
        self.is_admin() || owner == Some(self.name.as_str())
    }
}

/// `*` matches any run of characters, `?` any one; everything else itself.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    // Iterative matching with one backtrack point for the last `*`: linear
    // enough for names, and no recursion a pattern could blow up.
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// A quota that can run out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Quota {
    Leases,
    Waiters,
    Streams,
    Pools,
}

impl Quota {
    pub fn as_str(self) -> &'static str {
        match self {
            Quota::Leases => "leases",
            Quota::Waiters => "waiters",
            Quota::Streams => "streams",
            Quota::Pools => "pools",
        }
    }

    fn limit(self, q: &Quotas) -> u32 {
        match self {
            Quota::Leases => q.max_leases,
            Quota::Waiters => q.max_waiters,
            Quota::Streams => q.max_streams,
            Quota::Pools => q.max_pools,
        }
    }
}

/// A quota was full.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaExceeded {
    pub identity: String,
    pub quota: Quota,
    pub limit: u32,
}

/// What every identity holds, by quota.
#[derive(Default)]
pub struct QuotaBook {
    held: Mutex<HashMap<(String, Quota), u32>>,
}

impl QuotaBook {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Takes one unit of `quota` for `who`; given back when the guard drops.
    pub fn take(
        self: &Arc<Self>,
        who: &Identity,
        quota: Quota,
    ) -> Result<QuotaGuard, QuotaExceeded> {
        let limit = quota.limit(&who.quotas);
        let key = (who.name.clone(), quota);
        let mut held = lock(&self.held);
        let n = held.entry(key.clone()).or_insert(0);
        if *n >= limit {
            return Err(QuotaExceeded {
                identity: who.name.clone(),
                quota,
                limit,
            });
        }
        *n += 1;
        Ok(QuotaGuard {
            book: Arc::clone(self),
            key: Some(key),
        })
    }

    /// How much of `quota` `who` holds.
    pub fn held(&self, who: &str, quota: Quota) -> u32 {
        lock(&self.held)
            .get(&(who.to_string(), quota))
            .copied()
            .unwrap_or(0)
    }
}

/// One unit of a quota, held until dropped.
pub struct QuotaGuard {
    book: Arc<QuotaBook>,
    key: Option<(String, Quota)>,
}

impl Drop for QuotaGuard {
    fn drop(&mut self) {
        let Some(key) = self.key.take() else { return };
        let mut held = lock(&self.book.held);
        if let Some(n) = held.get_mut(&key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.remove(&key);
            }
        }
    }
}

impl fmt::Debug for QuotaGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QuotaGuard")
            .field("key", &self.key)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(pools: Option<Vec<&str>>) -> Identity {
        Identity {
            name: "t".into(),
            role: Role::Tenant,
            pools: pools.map(|p| p.into_iter().map(String::from).collect()),
            quotas: Quotas {
                max_leases: 2,
                ..Quotas::default()
            },
        }
    }

    #[test]
    fn globs_match_names() {
        assert!(glob_match("py*", "python"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a?c", "abc"));
        assert!(glob_match("sandpool/*", "sandpool/python:bookworm"));
        assert!(glob_match("*-dev-*", "team-dev-1"));
        assert!(!glob_match("py*", "ruby"));
        assert!(!glob_match("a?c", "ac"));
        assert!(!glob_match("abc", "abcd"));
    }

    #[test]
    fn tenants_use_config_pools_their_own_and_listed_ones() {
        let open = tenant(None);
        assert!(open.may_use("python", None));
        assert!(open.may_use("mine", Some("t")));
        assert!(!open.may_use("theirs", Some("other")));
        assert!(!open.may_manage(None));
        assert!(open.may_manage(Some("t")));
        let listed = tenant(Some(vec!["data-*"]));
        assert!(!listed.may_use("python", None));
        assert!(listed.may_use("data-1", None));
        assert!(listed.may_use("data-2", Some("other")));
        assert!(Identity::local_admin().may_use("x", Some("anyone")));
    }

    #[test]
    fn quotas_count_and_give_back() {
        let book = QuotaBook::new();
        let who = tenant(None);
        let a = book.take(&who, Quota::Leases).expect("first");
        let _b = book.take(&who, Quota::Leases).expect("second");
        let full = book.take(&who, Quota::Leases).expect_err("third");
        assert_eq!(full.limit, 2);
        assert_eq!(book.held("t", Quota::Leases), 2);
        drop(a);
        assert_eq!(book.held("t", Quota::Leases), 1);
        book.take(&who, Quota::Leases).expect("room again");
    }
}
