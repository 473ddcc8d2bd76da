//! Authentication: every call to the sandpool services is made by an
//! `Identity`, attached to the request by this interceptor.
//!
//! - A bearer token (`authorization: Bearer <token>`) names the identity
//!   whose token digest it matches (tokens themselves are never kept).
//! - Without a token, a client certificate (mutual TLS) names the identity
//!   configured for its digest; an unlisted certificate from the client CA
//!   is an identity of its own (named after its digest) with the configured
//!   role for such certificates.
//! - With no credentials configured at all (a developer's machine, loopback
//!   only), every caller is the one local admin.
//! - A call a peer replica forwarded (`cluster`) carries the caller's
//!   identity in a header of its own, believed only from a proven peer:
//!   the peer token as its bearer token, or (on a TLS listener) a client
//!   certificate that chains to `cluster.peer_ca`. Checked before anything
//!   else, on every server: a caller that sets the header without either
//!   is refused, even where every caller is the local admin.

use std::{collections::HashMap, sync::Arc};

use tonic::{Request, Status, service::Interceptor};

use crate::{
    cluster::tls::PeerCerts,
    config::{AuthConfig, sha256},
    identity::{Identity, Quotas, Role},
};

/// The identity making a call.
#[derive(Debug, Clone)]
pub struct Caller(pub Arc<Identity>);

/// Marks a call a peer replica forwarded here: it is served here or
/// refused, never forwarded again.
#[derive(Debug, Clone, Copy)]
pub struct Forwarded;

/// Resolves the caller of every request.
#[derive(Clone)]
pub struct Auth {
    inner: Arc<Inner>,
}

struct Inner {
    /// By token digest. Digests are compared through the map's hash of a
    /// digest, never byte by byte against the secret itself.
    by_token: HashMap<[u8; 32], Arc<Identity>>,
    by_cert: HashMap<[u8; 32], Arc<Identity>>,
    /// Role and quotas of a client certificate no identity names.
    unlisted_cert: Option<(Role, Quotas)>,
    /// The caller of a server without credentials.
    local: Option<Arc<Identity>>,
    /// Digest of the peer token, when this server has peers.
    peer_token: Option<[u8; 32]>,
    /// Recognises peers' client certificates (a TLS listener with
    /// `cluster.peer_ca`).
    peer_certs: Option<PeerCerts>,
}

impl Auth {
    /// `mutual_tls`: the listener requires client certificates.
    /// `peer_token`: the token peer replicas forward calls with.
    /// `peer_certs`: the peers' client certificates, the other proof.
    pub fn new(
        config: &AuthConfig,
        mutual_tls: bool,
        peer_token: Option<&str>,
        peer_certs: Option<PeerCerts>,
    ) -> Self {
        let mut by_token = HashMap::new();
        let mut by_cert = HashMap::new();
        for c in &config.identities {
            let identity = Arc::new(c.identity.clone());
            if let Some(digest) = c.token_sha256 {
                by_token.insert(digest, Arc::clone(&identity));
            }
            if let Some(digest) = c.client_cert_sha256 {
                by_cert.insert(digest, identity);
            }
        }
        let unlisted_cert = if mutual_tls {
            config.client_cert_role.map(|r| (r, config.default_quotas))
        } else {
            None
        };
        let configured = !config.identities.is_empty() || mutual_tls;
        Self {
            inner: Arc::new(Inner {
                by_token,
                by_cert,
                unlisted_cert,
                local: (!configured).then(|| Arc::new(Identity::local_admin())),
                peer_token: peer_token.map(|t| sha256(t.as_bytes())),
                peer_certs,
            }),
        }
    }

    /// Whether callers must prove who they are.
    pub fn enabled(&self) -> bool {
        self.inner.local.is_none()
    }

    /// The caller a peer forwarded, if the request says it was forwarded:
    /// `Some(Err)` when it says so without being from a peer.
    fn forwarded<T>(&self, request: &Request<T>) -> Option<Result<Arc<Identity>, Status>> {
        let header = request.metadata().get_bin(crate::cluster::caller::HEADER)?;
        let refuse = |why: &str| {
            Err(super::status::not_a_peer(&format!(
                "only a peer replica may set {}: {why}",
                crate::cluster::caller::HEADER
            )))
        };
        if self.inner.peer_token.is_none() && self.inner.peer_certs.is_none() {
            return Some(refuse("this server has no [cluster] peers"));
        }
        if !self.proven_peer(request) {
            return Some(refuse(
                "the call carries neither the peer token nor a peer's client certificate",
            ));
        }
        let identity = match header.to_bytes() {
            Ok(bytes) => crate::cluster::caller::decode(&bytes),
            Err(_) => Err(format!("{} is not base64", crate::cluster::caller::HEADER)),
        };
        Some(
            identity
                .map(Arc::new)
                .map_err(|why| super::status::unauthenticated(&why)),
        )
    }

    /// Whether a peer replica made the call: it carries the peer token, or
    /// its TLS client certificate chains to the peers' CA.
    fn proven_peer<T>(&self, request: &Request<T>) -> bool {
        if let Some(digest) = self.inner.peer_token {
            let token = request
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            if token.map(|t| sha256(t.trim().as_bytes())) == Some(digest) {
                return true;
            }
        }
        match (&self.inner.peer_certs, request.peer_certs()) {
            (Some(peers), Some(chain)) => peers.is_peer(&chain),
            _ => false,
        }
    }

    fn resolve<T>(&self, request: &Request<T>) -> Result<Arc<Identity>, Status> {
        let inner = &self.inner;
        if let Some(local) = &inner.local {
            return Ok(Arc::clone(local));
        }
        if let Some(value) = request.metadata().get("authorization") {
            let token = value
                .to_str()
                .ok()
                .and_then(|v| {
                    v.strip_prefix("Bearer ")
                        .or_else(|| v.strip_prefix("bearer "))
                })
                .ok_or_else(|| {
                    super::status::unauthenticated(
                        "the authorization metadata must be `Bearer <token>`",
                    )
                })?;
            return inner
                .by_token
                .get(&sha256(token.trim().as_bytes()))
                .cloned()
                .ok_or_else(|| super::status::unauthenticated("the bearer token is not accepted"));
        }
        let chain = request.peer_certs();
        let cert = chain
            .as_ref()
            .and_then(|certs| certs.first().map(|c| sha256(c.as_ref())));
        if let Some(digest) = cert {
            if let Some(identity) = inner.by_cert.get(&digest) {
                return Ok(Arc::clone(identity));
            }
            // The listener trusts the peers' CA too: a peer's certificate
            // proves a peer, not a caller (peers name the caller in the
            // header), so it is no unlisted client identity.
            if let (Some(peers), Some(chain)) = (&inner.peer_certs, &chain)
                && peers.is_peer(chain)
            {
                return Err(super::status::unauthenticated(
                    "a peer replica's client certificate names no caller",
                ));
            }
            if let Some((role, quotas)) = inner.unlisted_cert {
                return Ok(Arc::new(Identity {
                    name: format!("cert-{}", hex::encode(&digest[..8])),
                    role,
                    pools: None,
                    quotas,
                }));
            }
            return Err(super::status::unauthenticated(
                "the client certificate names no identity of this server",
            ));
        }
        Err(super::status::unauthenticated(
            "missing `authorization: Bearer <token>` metadata (or a client certificate)",
        ))
    }
}

impl Interceptor for Auth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let forwarded = self.forwarded(&request);
        let is_forwarded = forwarded.is_some();
        let caller = match forwarded {
            Some(result) => result,
            None => self.resolve(&request),
        };
        let caller = caller.inspect_err(|status| {
            let peer = request
                .remote_addr()
                .map(|a| a.to_string())
                .unwrap_or_default();
            super::audit::refused(&format!("unauthenticated {peer}"), "-", status);
        })?;
        request.extensions_mut().insert(Caller(caller));
        if is_forwarded {
            request.extensions_mut().insert(Forwarded);
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Credentialed;

    fn config() -> AuthConfig {
        let mut config = AuthConfig::default();
        config.identities.push(Credentialed {
            identity: Identity {
                name: "ops".into(),
                role: Role::Admin,
                pools: None,
                quotas: Quotas::default(),
            },
            token_sha256: Some(sha256(b"ops-token")),
            client_cert_sha256: None,
        });
        config
    }

    fn request(token: Option<&str>) -> Request<()> {
        let mut r = Request::new(());
        if let Some(t) = token {
            r.metadata_mut().insert(
                "authorization",
                format!("Bearer {t}").parse().expect("ascii"),
            );
        }
        r
    }

    #[test]
    fn without_credentials_everyone_is_the_local_admin() {
        let auth = Auth::new(&AuthConfig::default(), false, None, None);
        assert!(!auth.enabled());
        let who = auth.resolve(&request(None)).expect("local");
        assert!(who.is_admin());
    }

    fn forwarded_request(token: &str, who: &Identity) -> Request<()> {
        let mut r = request(Some(token));
        r.metadata_mut().insert_bin(
            crate::cluster::caller::HEADER,
            tonic::metadata::MetadataValue::from_bytes(&crate::cluster::caller::encode(who)),
        );
        r
    }

    #[test]
    fn only_peers_may_name_the_caller() {
        let tenant = Identity {
            name: "team-a".into(),
            role: Role::Tenant,
            pools: None,
            quotas: Quotas::default(),
        };
        let mut auth = Auth::new(&config(), false, Some("peer-secret-0123"), None);
        let ok = auth
            .call(forwarded_request("peer-secret-0123", &tenant))
            .expect("a peer may");
        assert_eq!(
            ok.extensions().get::<Caller>().expect("caller").0.name,
            "team-a"
        );
        assert!(ok.extensions().get::<Forwarded>().is_some());
        for token in ["ops-token", "nope"] {
            let refused = auth
                .call(forwarded_request(token, &tenant))
                .expect_err("not a peer");
            assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{token}");
        }
        // Even where everyone is the local admin, and where there are no peers.
        let mut open = Auth::new(&AuthConfig::default(), false, None, None);
        let refused = open
            .call(forwarded_request("anything", &tenant))
            .expect_err("no peers");
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        // The peer token alone is nobody.
        let refused = auth
            .call(request(Some("peer-secret-0123")))
            .expect_err("no identity");
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn tokens_name_identities_and_unknown_ones_are_refused() {
        let auth = Auth::new(&config(), false, None, None);
        assert!(auth.enabled());
        assert_eq!(
            auth.resolve(&request(Some("ops-token"))).expect("ops").name,
            "ops"
        );
        let refused = auth.resolve(&request(Some("nope"))).expect_err("unknown");
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        let missing = auth.resolve(&request(None)).expect_err("none");
        assert_eq!(missing.code(), tonic::Code::Unauthenticated);
    }
}
