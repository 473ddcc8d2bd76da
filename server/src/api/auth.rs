//! Optional bearer-token authentication. With tokens configured, every call
//! to the sandpool services must carry `authorization: Bearer <token>`; the
//! caller's identity (a digest of its token) is attached to the request so
//! that a lease can only be used by the caller that acquired it. Without
//! tokens but with mutual TLS, the client certificate is the identity.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use tonic::{Request, Status, service::Interceptor};

/// Who is calling: `None` when authentication is off.
#[derive(Debug, Clone)]
pub struct Caller(pub Option<String>);

/// Checks bearer tokens; a no-op when none are configured.
#[derive(Clone)]
pub struct Auth {
    /// Digests of the accepted tokens (the tokens themselves are not kept).
    accepted: Arc<Vec<[u8; 32]>>,
}

impl Auth {
    pub fn new(tokens: &[String]) -> Self {
        Self {
            accepted: Arc::new(
                tokens
                    .iter()
                    .map(|t| Sha256::digest(t.as_bytes()).into())
                    .collect(),
            ),
        }
    }

    pub fn enabled(&self) -> bool {
        !self.accepted.is_empty()
    }
}

impl Interceptor for Auth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if !self.enabled() {
            // With mutual TLS, the client's certificate says who it is.
            let caller = request.peer_certs().and_then(|certs| {
                certs
                    .first()
                    .map(|cert| hex::encode(&Sha256::digest(cert.as_ref())[..16]))
            });
            request.extensions_mut().insert(Caller(caller));
            return Ok(request);
        }
        let token = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .ok_or_else(|| {
                super::status::unauthenticated("missing `authorization: Bearer <token>` metadata")
            })?;
        let digest: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
        // Compare digests in full against every accepted one: no early exit
        // that would time-leak a token.
        let known = self.accepted.iter().fold(false, |found, d| {
            found
                | (d.iter()
                    .zip(digest.iter())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0)
        });
        if !known {
            return Err(super::status::unauthenticated(
                "the bearer token is not accepted",
            ));
        }
        request
            .extensions_mut()
            .insert(Caller(Some(hex::encode(&digest[..16]))));
        Ok(request)
    }
}
