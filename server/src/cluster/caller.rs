//! The caller of a forwarded call, as the replica that authenticated it
//! tells the lease's owner: a binary metadata header (JSON inside) that
//! only a peer may set, because the owner believes it as it stands.
//!
//! The whole identity travels (not just its name): identities of client
//! certificates that no identity lists exist only where they connected,
//! and the owner checks the lease's holder and the caller's quotas with it.

use serde::{Deserialize, Serialize};

use crate::identity::{Identity, Quotas, Role};

/// The header. `-bin`: gRPC carries its value as base64, so any byte of a
/// name or pool pattern survives every hop.
pub const HEADER: &str = "sandpool-caller-bin";

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    name: String,
    admin: bool,
    pools: Option<Vec<String>>,
    max_leases: u32,
    max_waiters: u32,
    max_streams: u32,
    max_pools: u32,
}

/// The header's value for `who`.
pub fn encode(who: &Identity) -> Vec<u8> {
    let wire = Wire {
        name: who.name.clone(),
        admin: who.is_admin(),
        pools: who.pools.clone(),
        max_leases: who.quotas.max_leases,
        max_waiters: who.quotas.max_waiters,
        max_streams: who.quotas.max_streams,
        max_pools: who.quotas.max_pools,
    };
    // Plain data of strings, bools and integers: serializing cannot fail.
    serde_json::to_vec(&wire).unwrap_or_default()
}

/// The identity in a header a peer set; the error says what is wrong.
pub fn decode(value: &[u8]) -> Result<Identity, String> {
    let wire: Wire = serde_json::from_slice(value)
        .map_err(|e| format!("{HEADER} is not a caller identity: {e}"))?;
    if wire.name.is_empty() {
        return Err(format!("{HEADER} names no caller"));
    }
    Ok(Identity {
        name: wire.name,
        role: if wire.admin {
            Role::Admin
        } else {
            Role::Tenant
        },
        pools: wire.pools,
        quotas: Quotas {
            max_leases: wire.max_leases,
            max_waiters: wire.max_waiters,
            max_streams: wire.max_streams,
            max_pools: wire.max_pools,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_survive_the_trip() {
        let who = Identity {
            name: "team-a".into(),
            role: Role::Tenant,
            pools: Some(vec!["data-*".into()]),
            quotas: Quotas {
                max_leases: 3,
                ..Quotas::default()
            },
        };
        assert_eq!(decode(&encode(&who)).expect("decodes"), who);
        let admin = Identity::local_admin();
        assert_eq!(decode(&encode(&admin)).expect("decodes"), admin);
    }

    #[test]
    fn garbage_is_refused() {
        assert!(decode(b"not json").is_err());
        assert!(decode(br#"{"name":"","admin":true,"pools":null,"max_leases":1,"max_waiters":1,"max_streams":1,"max_pools":1}"#).is_err());
    }
}
