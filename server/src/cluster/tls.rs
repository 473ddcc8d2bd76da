//! TLS between replicas: how a replica reaches `https://` peers (trusting
//! `peer_ca`, presenting `peer_cert` when it has one), and how a replica
//! tells a peer's client certificate from a client's on its own listener.
//!
//! A client certificate that chains to `peer_ca` proves a peer as the peer
//! token does: the forwarded-caller header is then believed. That is why
//! `peer_ca` must be a CA that signs the replicas' certificates only, and
//! why it may not also be the listener's `client_ca` (every client would
//! then be a peer): `listener_client_roots` refuses that.

use std::{path::Path, sync::Arc};

use rustls::{
    RootCertStore,
    pki_types::{CertificateDer, UnixTime, pem::PemObject},
    server::{WebPkiClientVerifier, danger::ClientCertVerifier},
};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use super::ClusterConfig;

/// TLS settings of the cluster that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {setting} {path}: {source}")]
    Read {
        setting: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("{setting} {path} holds no PEM certificate")]
    NoCertificate { setting: &'static str, path: String },
    #[error("cluster.peer_ca {path} cannot check certificates: {detail}")]
    BadCa { path: String, detail: String },
    #[error(
        "cluster.peer_ca and tls.client_ca share a certificate: every client with a \
         certificate would prove itself a peer; give the replicas a CA of their own"
    )]
    SharedCa,
}

fn read(setting: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        setting,
        path: path.display().to_string(),
        source,
    })
}

/// The certificates of a PEM file, at least one.
fn certificates(
    setting: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            setting,
            path: path.display().to_string(),
        });
    }
    Ok(certs)
}

/// The TLS of calls to `https://` peers: their CA, and this replica's
/// client certificate when it has one. `None` without `peer_ca` (the
/// config has then checked that no peer is https).
pub fn client_tls(config: &ClusterConfig) -> Result<Option<ClientTlsConfig>, TlsError> {
    let Some(ca) = &config.peer_ca else {
        return Ok(None);
    };
    let mut tls =
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read("cluster.peer_ca", ca)?));
    // The config admits the two only together.
    if let (Some(cert), Some(key)) = (&config.peer_cert, &config.peer_key) {
        tls = tls.identity(Identity::from_pem(
            read("cluster.peer_cert", cert)?,
            read("cluster.peer_key", key)?,
        ));
    }
    Ok(Some(tls))
}

/// Recognises the client certificates of peers: those that chain to
/// `peer_ca`, for client authentication, valid now.
#[derive(Clone)]
pub struct PeerCerts {
    verifier: Arc<dyn ClientCertVerifier>,
}

impl std::fmt::Debug for PeerCerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerCerts")
    }
}

impl PeerCerts {
    /// From the PEM of `peer_ca` (read from `path`, named in errors).
    pub fn from_pem(path: &Path, pem: &[u8]) -> Result<Self, TlsError> {
        let bad = |detail: String| TlsError::BadCa {
            path: path.display().to_string(),
            detail,
        };
        let mut roots = RootCertStore::empty();
        for cert in certificates("cluster.peer_ca", path, pem)? {
            roots.add(cert).map_err(|e| bad(e.to_string()))?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .map_err(|e| bad(e.to_string()))?;
        Ok(Self { verifier })
    }

    /// Whether `chain` (a TLS client's certificates, its own first) is a
    /// peer's. The listener checked it against all its client roots; this
    /// says whether `peer_ca` is the one it chains to.
    pub fn is_peer(&self, chain: &[CertificateDer<'static>]) -> bool {
        let Some((leaf, intermediates)) = chain.split_first() else {
            return false;
        };
        self.verifier
            .verify_client_cert(leaf, intermediates, UnixTime::now())
            .is_ok()
    }
}

/// The client roots of a TLS listener, given its own client CA (mutual
/// TLS for clients) and the cluster's peer CA: the PEM of both, and the
/// checker of peers' certificates. `None`: no client certificates.
pub struct ListenerRoots {
    pub pem: Vec<u8>,
    pub peer_certs: Option<PeerCerts>,
}

/// See `ListenerRoots`. Client certificates are required only with a
/// client CA; peers' alone are optional (ordinary clients have none).
pub fn listener_client_roots(
    client_ca: Option<&Path>,
    peer_ca: Option<&Path>,
) -> Result<Option<ListenerRoots>, TlsError> {
    let client = client_ca
        .map(|p| read("tls.client_ca", p).map(|pem| (p, pem)))
        .transpose()?;
    let peer = peer_ca
        .map(|p| read("cluster.peer_ca", p).map(|pem| (p, pem)))
        .transpose()?;
    let mut pem = Vec::new();
    if let Some((path, client_pem)) = &client {
        certificates("tls.client_ca", path, client_pem)?;
        pem.extend_from_slice(client_pem);
        pem.push(b'\n');
    }
    let peer_certs = match &peer {
        Some((path, peer_pem)) => {
            let peer_certs = PeerCerts::from_pem(path, peer_pem)?;
            if let Some((client_path, client_pem)) = &client {
                let clients = certificates("tls.client_ca", client_path, client_pem)?;
                if certificates("cluster.peer_ca", path, peer_pem)?
                    .iter()
                    .any(|c| clients.contains(c))
                {
                    return Err(TlsError::SharedCa);
                }
            }
            pem.extend_from_slice(peer_pem);
            Some(peer_certs)
        }
        None => None,
    };
    if pem.is_empty() {
        return Ok(None);
    }
    Ok(Some(ListenerRoots { pem, peer_certs }))
}

#[cfg(test)]
mod tests {
    use std::{path::PathBuf, process::Command};

    use super::*;

    /// Certificates made by openssl (as the TLS tests make theirs): CAs
    /// `peers` and `clients`, and a client certificate signed by each.
    fn certificates_in(dir: &Path) {
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .current_dir(dir)
                .args(args)
                .output()
                .expect("openssl");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").expect("ext");
        for (ca, leaf) in [("peers", "replica"), ("clients", "alice")] {
            let mut args = vec!["req", "-x509"];
            args.extend(ec);
            let (key, pem, cn) = (
                format!("{ca}.key"),
                format!("{ca}.pem"),
                format!("/CN={ca}"),
            );
            args.extend(["-keyout", &key, "-out", &pem, "-days", "1", "-subj", &cn]);
            openssl(&args);
            let mut args = vec!["req"];
            args.extend(ec);
            let (key, csr, cn) = (
                format!("{leaf}.key"),
                format!("{leaf}.csr"),
                format!("/CN={leaf}"),
            );
            args.extend(["-keyout", &key, "-out", &csr, "-subj", &cn]);
            openssl(&args);
            let (out, ca_key) = (format!("{leaf}.pem"), format!("{ca}.key"));
            openssl(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &pem,
                "-CAkey",
                &ca_key,
                "-CAcreateserial",
                "-out",
                &out,
                "-days",
                "1",
                "-extfile",
                "client.ext",
            ]);
        }
    }

    fn chain(dir: &Path, name: &str) -> Vec<CertificateDer<'static>> {
        let path = dir.join(format!("{name}.pem"));
        let pem = std::fs::read(&path).expect("pem");
        certificates("test", &path, &pem).expect("a certificate")
    }

    #[test]
    fn peers_are_told_by_their_ca_and_the_cas_stay_apart() {
        let dir = std::env::temp_dir().join(format!(
            "sandpool-peer-tls-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).expect("dir");
        certificates_in(&dir);
        let at = |name: &str| -> PathBuf { dir.join(name) };

        let roots = listener_client_roots(Some(&at("clients.pem")), Some(&at("peers.pem")))
            .expect("both CAs")
            .expect("client roots");
        let peers = roots.peer_certs.expect("peers' CA");
        assert!(peers.is_peer(&chain(&dir, "replica")));
        assert!(!peers.is_peer(&chain(&dir, "alice")), "a client is no peer");
        assert!(!peers.is_peer(&[]));
        // Both CAs are the listener's roots.
        let pem = String::from_utf8(roots.pem).expect("pem");
        assert_eq!(pem.matches("BEGIN CERTIFICATE").count(), 2);

        let only_peers = listener_client_roots(None, Some(&at("peers.pem")))
            .expect("peers' CA")
            .expect("client roots");
        assert!(only_peers.peer_certs.is_some());
        assert!(listener_client_roots(None, None).expect("none").is_none());

        let shared = listener_client_roots(Some(&at("peers.pem")), Some(&at("peers.pem")));
        assert!(matches!(shared, Err(TlsError::SharedCa)));
        let missing = listener_client_roots(None, Some(&at("nowhere.pem")))
            .err()
            .expect("missing")
            .to_string();
        assert!(
            missing.starts_with("cannot read cluster.peer_ca"),
            "{missing}"
        );
        let not_pem = listener_client_roots(None, Some(&at("client.ext")))
            .err()
            .expect("no certificate")
            .to_string();
        assert!(not_pem.contains("holds no PEM certificate"), "{not_pem}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
