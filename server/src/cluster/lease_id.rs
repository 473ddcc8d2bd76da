//! The lease ids of a replica: `<replica>.<instance><random>`, where
//! `instance` is 8 hex digits drawn when the process starts and `random`
//! 32 (128 bits, the part that makes an id unguessable).
//!
//! The replica name routes a call to the lease's owner; the instance tells
//! a replica restarted under the same name (a StatefulSet pod, a systemd
//! restart) that an id of its own name is its previous process's: that
//! lease ended with the process, which is worth saying (REPLICA_GONE)
//! rather than "never heard of it". Clients treat ids as opaque; a server
//! without `[cluster]` keeps plain ids (32 hex digits).

/// Hex digits of the instance part.
const INSTANCE_HEX: usize = 8;
/// Hex digits of the random part.
const RANDOM_HEX: usize = 32;

/// One process of a replica: the name it shares with its restarts, and the
/// instance that is its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incarnation {
    replica: String,
    instance: String,
}

/// Where a lease id came from, as far as this process can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// This process granted it (or it is not an id of this replica's at
    /// all): look it up.
    Here,
    /// An earlier process of this replica granted it: it ended with that
    /// process.
    PreviousProcess,
}

impl Incarnation {
    /// A new process of `replica`, with an instance drawn at random (two
    /// processes of one name share it once in 4 billion restarts; then an
    /// old id is merely not found).
    pub fn new(replica: &str) -> Self {
        Self::with_instance(replica, rand::random::<u32>())
    }

    fn with_instance(replica: &str, instance: u32) -> Self {
        Self {
            replica: replica.to_string(),
            instance: format!("{instance:0width$x}", width = INSTANCE_HEX),
        }
    }

    /// A new lease id of this process.
    pub fn mint(&self) -> String {
        format!(
            "{}.{}{:0width$x}",
            self.replica,
            self.instance,
            rand::random::<u128>(),
            width = RANDOM_HEX
        )
    }

    /// Whether `lease_id`, unknown to this process, was granted by an
    /// earlier one of the same replica: its name, the shape of this
    /// format, another instance. Anything else (another replica's id, a
    /// malformed one, ids of the older `<replica>.<32 hex>` form) is
    /// `Here`, and simply not found.
    pub fn origin(&self, lease_id: &str) -> Origin {
        let Some((replica, rest)) = lease_id.split_once('.') else {
            return Origin::Here;
        };
        let shaped = rest.len() == INSTANCE_HEX + RANDOM_HEX
            && rest
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if replica != self.replica || !shaped {
            return Origin::Here;
        }
        // `shaped`: all ASCII, so the split falls on a character boundary.
        match rest.get(..INSTANCE_HEX) {
            Some(instance) if instance != self.instance => Origin::PreviousProcess,
            _ => Origin::Here,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_carry_the_replica_and_the_instance() {
        let me = Incarnation::with_instance("sandpool-0", 0xab);
        let id = me.mint();
        let (replica, rest) = id.split_once('.').expect("a dot");
        assert_eq!(replica, "sandpool-0");
        assert_eq!(rest.len(), 40, "{id}");
        assert!(rest.starts_with("000000ab"), "{id}");
        assert_eq!(crate::cluster::replica_of(&id), Some("sandpool-0"));
        assert_ne!(me.mint(), id, "each id is new");
        assert_eq!(me.origin(&id), Origin::Here);
    }

    #[test]
    fn a_restart_recognises_its_previous_process() {
        let before = Incarnation::with_instance("a", 1);
        let after = Incarnation::with_instance("a", 2);
        let old = before.mint();
        assert_eq!(after.origin(&old), Origin::PreviousProcess);
        assert_eq!(before.origin(&old), Origin::Here);
        // Another replica's id, however shaped, is not this one's past.
        let other = Incarnation::with_instance("b", 1).mint();
        assert_eq!(after.origin(&other), Origin::Here);
    }

    #[test]
    fn malformed_ids_are_merely_unknown() {
        let me = Incarnation::with_instance("a", 2);
        for id in [
            "",
            "a",
            "a.",
            "a.00000001",
            // The older form, without an instance.
            &format!("a.{:032x}", 7u128),
            // Upper case, a stray character, one digit too many.
            &format!("a.00000001{:032X}", u128::MAX),
            &format!("a.0000000g{:032x}", 7u128),
            &format!("a.00000001{:033x}", 7u128),
            "a.é0000001000000000000000000000000000000000",
            &format!("{:032x}", 7u128),
        ] {
            assert_eq!(me.origin(id), Origin::Here, "{id:?}");
        }
    }
}
