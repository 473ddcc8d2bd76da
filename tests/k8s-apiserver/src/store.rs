//! The object store: every object of every kind as JSON, one
//! `resourceVersion` counter across all of them (as etcd's revision is), and
//! an event history that watches resume from.
//!
//! One `std::sync::Mutex` guards it all and is never held across an await:
//! each operation is a short read-modify-write. Events are broadcast while
//! the lock is held, so every watcher sees them in resourceVersion order.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{Arc, Mutex, MutexGuard},
};

use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::{
    error::{ApiError, ApiResult},
    kinds::Kind,
};

/// How many events a slow watcher may fall behind before it is cut off with
/// 410 Gone (it relists, as against a real server).
const BROADCAST_CAPACITY: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

/// One change. `previous` is the object before a MODIFIED, so a watch with
/// a selector can turn "stopped matching" into DELETED and "started
/// matching" into ADDED, as the API server's watch cache does.
#[derive(Debug)]
pub struct Event {
    pub kind: Kind,
    pub rv: u64,
    pub event_type: EventType,
    pub namespace: String,
    pub object: Value,
    pub previous: Option<Value>,
}

type Key = (Kind, String, String);

struct State {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    history: VecDeque<Arc<Event>>,
    history_limit: usize,
    /// The newest resourceVersion no longer in `history`: a watch from
    /// before it cannot be resumed.
    compacted: u64,
}

pub struct Store {
    state: Mutex<State>,
    events: broadcast::Sender<Arc<Event>>,
}

/// What a new watch starts from: the current objects when it asked for
/// them (no resourceVersion), else the events after its resourceVersion;
/// then the live receiver.
pub struct WatchStart {
    pub initial: Vec<Value>,
    pub backlog: Vec<Arc<Event>>,
    pub receiver: broadcast::Receiver<Arc<Event>>,
    pub rv: u64,
}

pub fn now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default();
    Timestamp::from_second(secs)
        .unwrap_or(Timestamp::UNIX_EPOCH)
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// A random UUID (v4 layout).
pub fn new_uid() -> String {
    let b: [u8; 16] = rand::random();
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    // Version 4, RFC 4122 variant (8, 9, a or b).
    let variant = ["8", "9", "a", "b"][usize::from(b[8] & 3)];
    format!(
        "{}-{}-4{}-{variant}{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

/// The 5-character suffix of `generateName`, from the same alphabet the API
/// server uses (no vowels, no confusable digits).
fn name_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5)
        .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
        .collect()
}

pub fn name_of(object: &Value) -> &str {
    object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

pub fn uid_of(object: &Value) -> &str {
    object
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

pub fn rv_of(object: &Value) -> &str {
    object
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// Sets `metadata.<field>`, creating `metadata` when needed.
pub fn set_meta(object: &mut Value, field: &str, value: Value) {
    if !object.get("metadata").is_some_and(Value::is_object) {
        object["metadata"] = json!({});
    }
    object["metadata"][field] = value;
}

impl Store {
    pub fn new(history_limit: usize) -> Self {
        let (events, _) = broadcast::channel(BROADCAST_CAPACITY);
        Self {
            state: Mutex::new(State {
                rv: 1,
                objects: BTreeMap::new(),
                history: VecDeque::new(),
                history_limit: history_limit.max(1),
                compacted: 0,
            }),
            events,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent JSON behind (every
        // mutation is one insert/remove), so poisoning is ignored.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn resource_version(&self) -> u64 {
        self.lock().rv
    }

    fn record(&self, state: &mut State, event: Event) {
        let event = Arc::new(event);
        state.history.push_back(event.clone());
        while state.history.len() > state.history_limit {
            if let Some(old) = state.history.pop_front() {
                state.compacted = old.rv;
            }
        }
        // No receiver is fine: nobody watches.
        let _ = self.events.send(event);
    }

    /// Stores a new object: name from `generateName` when needed, uid,
    /// creationTimestamp, resourceVersion. Emits ADDED.
    pub fn create(&self, kind: Kind, namespace: &str, mut object: Value) -> ApiResult<Value> {
        let mut state = self.lock();
        let mut name = name_of(&object).to_string();
        if name.is_empty() {
            let prefix = object
                .pointer("/metadata/generateName")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            if prefix.is_empty() {
                return Err(ApiError::invalid(
                    kind,
                    "",
                    &[(
                        "metadata.name".into(),
                        "Required value: name or generateName is required".into(),
                    )],
                ));
            }
            // Retry on the (unlikely) collision, as the API server does.
            name = loop {
                let candidate = format!("{prefix}{}", name_suffix());
                let key = (kind, namespace.to_string(), candidate.clone());
                if !state.objects.contains_key(&key) {
                    break candidate;
                }
            };
        }
        let key = (kind, namespace.to_string(), name.clone());
        if state.objects.contains_key(&key) {
            return Err(ApiError::already_exists(kind, &name));
        }
        state.rv += 1;
        let rv = state.rv;
        object["apiVersion"] = json!(kind.api_version());
        object["kind"] = json!(kind.kind());
        set_meta(&mut object, "name", json!(name));
        set_meta(&mut object, "namespace", json!(namespace));
        set_meta(&mut object, "uid", json!(new_uid()));
        set_meta(&mut object, "resourceVersion", json!(rv.to_string()));
        set_meta(&mut object, "creationTimestamp", json!(now()));
        set_meta(&mut object, "generation", json!(1));
        state.objects.insert(key, object.clone());
        self.record(
            &mut state,
            Event {
                kind,
                rv,
                event_type: EventType::Added,
                namespace: namespace.to_string(),
                object: object.clone(),
                previous: None,
            },
        );
        Ok(object)
    }

    pub fn get(&self, kind: Kind, namespace: &str, name: &str) -> ApiResult<Value> {
        self.lock()
            .objects
            .get(&(kind, namespace.to_string(), name.to_string()))
            .cloned()
            .ok_or_else(|| ApiError::not_found(kind, name))
    }

    /// Objects of `kind` (in `namespace`, or all) that pass `filter`, and
    /// the resourceVersion the list is consistent with.
    pub fn list(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        filter: impl Fn(&Value) -> bool,
    ) -> (Vec<Value>, u64) {
        let state = self.lock();
        let items = state
            .objects
            .iter()
            .filter(|((k, ns, _), _)| *k == kind && namespace.is_none_or(|n| n == ns))
            .map(|(_, v)| v)
            .filter(|v| filter(v))
            .cloned()
            .collect();
        (items, state.rv)
    }

    /// Read-modify-write of one object. `change` gets the current object
    /// and returns the new one, or `None` to leave it as it is. A new
    /// version gets the next resourceVersion and emits MODIFIED; the
    /// identity fields (name, namespace, uid, creationTimestamp) are kept.
    pub fn update(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        change: impl FnOnce(&Value) -> ApiResult<Option<Value>>,
    ) -> ApiResult<Value> {
        let mut state = self.lock();
        let key = (kind, namespace.to_string(), name.to_string());
        let current = state
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(kind, name))?;
        let Some(mut next) = change(&current)? else {
            return Ok(current);
        };
        for field in ["name", "namespace", "uid", "creationTimestamp"] {
            let keep = current["metadata"][field].clone();
            set_meta(&mut next, field, keep);
        }
        next["apiVersion"] = json!(kind.api_version());
        next["kind"] = json!(kind.kind());
        // An update that changes nothing is no event, as with a real server.
        set_meta(
            &mut next,
            "resourceVersion",
            current["metadata"]["resourceVersion"].clone(),
        );
        if next == current {
            return Ok(current);
        }
        state.rv += 1;
        let rv = state.rv;
        set_meta(&mut next, "resourceVersion", json!(rv.to_string()));
        state.objects.insert(key, next.clone());
        self.record(
            &mut state,
            Event {
                kind,
                rv,
                event_type: EventType::Modified,
                namespace: namespace.to_string(),
                object: next.clone(),
                previous: Some(current),
            },
        );
        Ok(next)
    }

    /// Removes an object (if `uid` is given, only that incarnation of the
    /// name). Emits DELETED with the object at a new resourceVersion.
    pub fn remove(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        uid: Option<&str>,
    ) -> ApiResult<Value> {
        let mut state = self.lock();
        let key = (kind, namespace.to_string(), name.to_string());
        match state.objects.get(&key) {
            None => return Err(ApiError::not_found(kind, name)),
            Some(o) if uid.is_some_and(|u| u != uid_of(o)) => {
                return Err(ApiError::conflict(
                    kind,
                    name,
                    "Precondition failed: UID in precondition does not match the object",
                ));
            }
            Some(_) => {}
        }
        let Some(mut object) = state.objects.remove(&key) else {
            return Err(ApiError::not_found(kind, name));
        };
        state.rv += 1;
        let rv = state.rv;
        set_meta(&mut object, "resourceVersion", json!(rv.to_string()));
        self.record(
            &mut state,
            Event {
                kind,
                rv,
                event_type: EventType::Deleted,
                namespace: namespace.to_string(),
                object: object.clone(),
                previous: None,
            },
        );
        Ok(object)
    }

    /// Starts a watch of `kind`. `since` None: begin with the current
    /// objects (as synthetic ADDED events), then changes. `since` Some(rv):
    /// begin with the changes after rv, or 410 Gone when they are no longer
    /// kept. Snapshot and subscription are taken under one lock, so no event
    /// falls between them.
    pub fn watch(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        since: Option<u64>,
    ) -> ApiResult<WatchStart> {
        let state = self.lock();
        let receiver = self.events.subscribe();
        let in_scope = |ns: &str| namespace.is_none_or(|n| n == ns);
        match since {
            None => Ok(WatchStart {
                initial: state
                    .objects
                    .iter()
                    .filter(|((k, ns, _), _)| *k == kind && in_scope(ns))
                    .map(|(_, v)| v.clone())
                    .collect(),
                backlog: Vec::new(),
                receiver,
                rv: state.rv,
            }),
            Some(rv) if rv < state.compacted => Err(ApiError::gone(format!(
                "too old resource version: {rv} ({})",
                state.compacted + 1
            ))),
            Some(rv) => Ok(WatchStart {
                initial: Vec::new(),
                backlog: state
                    .history
                    .iter()
                    .filter(|e| e.rv > rv && e.kind == kind && in_scope(&e.namespace))
                    .cloned()
                    .collect(),
                receiver,
                rv: state.rv.max(rv),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_history_and_gone() {
        let store = Store::new(3);
        let a = store
            .create(Kind::Lease, "ns", json!({"metadata": {"name": "a"}}))
            .unwrap();
        let rv_a: u64 = rv_of(&a).parse().unwrap();
        let b = store
            .create(Kind::Pod, "ns", json!({"metadata": {"generateName": "p-"}}))
            .unwrap();
        assert!(name_of(&b).starts_with("p-") && name_of(&b).len() == 7);
        assert!(rv_of(&b).parse::<u64>().unwrap() > rv_a);
        assert_eq!(
            store
                .create(Kind::Lease, "ns", json!({"metadata": {"name": "a"}}))
                .unwrap_err()
                .code,
            409
        );
        // A no-op update is no new version.
        let same = store
            .update(Kind::Lease, "ns", "a", |o| Ok(Some(o.clone())))
            .unwrap();
        assert_eq!(rv_of(&same), rv_of(&a));
        let w = store.watch(Kind::Lease, Some("ns"), Some(rv_a)).unwrap();
        assert!(w.backlog.is_empty());
        for i in 0..4 {
            store
                .update(Kind::Lease, "ns", "a", |o| {
                    let mut o = o.clone();
                    o["spec"] = json!({"leaseDurationSeconds": i});
                    Ok(Some(o))
                })
                .unwrap();
        }
        assert_eq!(
            store
                .watch(Kind::Lease, None, Some(rv_a))
                .err()
                .map(|e| e.code),
            Some(410)
        );
        let now = store.resource_version();
        let w = store.watch(Kind::Lease, None, Some(now - 1)).unwrap();
        assert_eq!(w.backlog.len(), 1);
        store.remove(Kind::Lease, "ns", "a", None).unwrap();
        assert_eq!(store.get(Kind::Lease, "ns", "a").unwrap_err().code, 404);
    }
}
