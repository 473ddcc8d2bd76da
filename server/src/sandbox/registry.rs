//! The live containers of one pool, by id: the one handle of each, with the
//! state the server keeps for it (its warden connection, its runs' groups).
//! Forgetting a container closes its warden's stdin, which ends the warden.

use std::{collections::HashMap, sync::Mutex};

use super::Container;
use crate::sync::lock;

#[derive(Default)]
pub struct Sandboxes {
    map: Mutex<HashMap<String, Container>>,
}

impl Sandboxes {
    pub fn insert(&self, container: &Container) {
        lock(&self.map).insert(container.id().to_string(), container.clone());
    }

    pub fn get(&self, id: &str) -> Option<Container> {
        lock(&self.map).get(id).cloned()
    }

    /// The handle of `id`, or `make`'s, remembered from now on.
    pub fn get_or_insert(&self, id: &str, make: impl FnOnce() -> Container) -> Container {
        lock(&self.map)
            .entry(id.to_string())
            .or_insert_with(make)
            .clone()
    }

    pub fn remove(&self, id: &str) -> Option<Container> {
        lock(&self.map).remove(id)
    }
}
