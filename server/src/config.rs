//! Server configuration in layers: built-in defaults, then a TOML file, then
//! environment variables (SANDPOOL_*), then command-line flags (in main).
//! Every problem names the setting at fault.

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

use crate::{
    backend::BackendKind,
    error::Error,
    files::FileLimits,
    identity::{Identity, Quotas, Role},
    policy::{Namespaces, Policy},
    run::RunLimits,
    spec::{PoolSpec, PoolSpecInput, parse_size},
};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{setting}: {message}")]
    Invalid { setting: String, message: String },
}

/// TLS for the gRPC listener: PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Require client certificates signed by this CA (mTLS); the certificate
    /// then identifies the caller, and its leases are its own.
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The whole server configuration, validated.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Where Prometheus metrics are served (GET /metrics); off when `None`.
    pub metrics_listen: Option<SocketAddr>,
    /// Identity in container labels; default `<hostname>-<port>`.
    pub server_id: Option<String>,
    pub shutdown_grace: Duration,
    pub log_format: LogFormat,
    /// Engine endpoints by backend; absent ones come from the environment.
    pub engines: HashMap<BackendKind, String>,
    pub run_limits: RunLimits,
    pub file_limits: FileLimits,
    /// Who may call, and how each proves it.
    pub auth: AuthConfig,
    /// What pools created at run time may be.
    pub policy: Policy,
    /// TEMPORARY containers across all pools at once.
    pub max_temporaries: u32,
    /// Every pool's runs go through a resident runner in each container
    /// (`sandbox::runner`), with the exec path as the fallback, unless the
    /// pool says otherwise. On by default.
    pub resident_runner: bool,
    /// TLS for the gRPC listener (with client certificates: mTLS).
    pub tls: Option<TlsConfig>,
    /// Where Kubernetes pools put their pods (`[kubernetes]`).
    pub kubernetes: crate::backend::KubernetesSettings,
    /// OpenTelemetry export (`[telemetry]`; OTEL_* variables override it at
    /// start, in `telemetry::init_with`).
    pub telemetry: crate::telemetry::TelemetrySettings,
    /// This replica and its peers (`[cluster]`, SANDPOOL_REPLICA,
    /// SANDPOOL_PEER_TOKEN), each setting checked; whether they fit
    /// together is `cluster()`'s to say, once the environment is applied.
    pub cluster: ClusterSettings,
    pub pools: Vec<PoolSpec>,
}

/// `[cluster]` as written, each setting checked on its own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterSettings {
    pub replica: Option<String>,
    pub peers: Vec<crate::cluster::PeerConfig>,
    pub peer_token: Option<String>,
    pub peer_ca: Option<PathBuf>,
    /// `[cluster.kubernetes]`: peers from the Kubernetes API instead of
    /// `peers`.
    pub kubernetes: Option<crate::cluster::DiscoveryConfig>,
    pub peer_cert: Option<PathBuf>,
    pub peer_key: Option<PathBuf>,
    /// See `cluster::ClusterConfig::peer_dead_after`.
    pub peer_dead_after: Option<Duration>,
}

/// The shortest peer token accepted: it guards the header that names any
/// caller, so it must not be guessable.
const MIN_PEER_TOKEN: usize = 16;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    metrics_listen: Option<String>,
    server_id: Option<String>,
    shutdown_grace: Option<f64>,
    log_format: Option<String>,
    /// Runs go through a resident runner in each container (see
    /// `sandbox::runner`); on by default.
    resident_runner: Option<bool>,
    #[serde(default)]
    engines: EnginesFile,
    #[serde(default)]
    limits: LimitsFile,
    #[serde(default)]
    auth: AuthFile,
    #[serde(default)]
    tls: TlsFile,
    #[serde(default)]
    policy: PolicyFile,
    #[serde(default)]
    kubernetes: crate::backend::KubernetesSettings,
    #[serde(default)]
    telemetry: crate::telemetry::TelemetrySettings,
    #[serde(default)]
    cluster: ClusterFile,
    #[serde(default)]
    pools: Vec<PoolSpecInput>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterFile {
    replica: Option<String>,
    peer_token: Option<String>,
    peer_ca: Option<PathBuf>,
    peer_cert: Option<PathBuf>,
    peer_key: Option<PathBuf>,
    peer_dead_after: Option<f64>,
    #[serde(default)]
    peers: Vec<PeerFile>,
    kubernetes: Option<DiscoveryFile>,
}

/// `[cluster.kubernetes]`: the replicas are the endpoints of a Service.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DiscoveryFile {
    service: Option<String>,
    namespace: Option<String>,
    port: Option<PortFile>,
    scheme: Option<String>,
    tls_name: Option<String>,
}

/// A Service port by name (`"grpc"`) or number.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum PortFile {
    Number(i64),
    Name(String),
}

impl DiscoveryFile {
    fn into_config(self) -> Result<crate::cluster::DiscoveryConfig, ConfigError> {
        use crate::cluster::{PortRef, Scheme};
        let service = self.service.ok_or_else(|| {
            ConfigError::invalid(
                "cluster.kubernetes.service",
                "is missing: name the headless Service over the replicas (e.g. \"sandpool-peers\")",
            )
        })?;
        // Service names are RFC 1035 labels: an RFC 1123 label that starts
        // with a letter.
        if !crate::spec::is_namespace_name(&service)
            || !service.starts_with(|c: char| c.is_ascii_lowercase())
        {
            return Err(ConfigError::invalid(
                "cluster.kubernetes.service",
                format!("{service:?} is not a Service name (RFC 1035 label)"),
            ));
        }
        if let Some(ns) = &self.namespace
            && !crate::spec::is_namespace_name(ns)
        {
            return Err(ConfigError::invalid(
                "cluster.kubernetes.namespace",
                format!("{ns:?} is not a namespace name (RFC 1123 label)"),
            ));
        }
        let port = match self.port {
            None => PortRef::Name(crate::cluster::discovery::DEFAULT_PORT.to_string()),
            Some(PortFile::Number(n)) => {
                PortRef::Number(u16::try_from(n).ok().filter(|n| *n > 0).ok_or_else(|| {
                    ConfigError::invalid(
                        "cluster.kubernetes.port",
                        format!("{n} is not a port number (1 to 65535)"),
                    )
                })?)
            }
            Some(PortFile::Name(name)) if is_port_name(&name) => PortRef::Name(name),
            Some(PortFile::Name(name)) => {
                return Err(ConfigError::invalid(
                    "cluster.kubernetes.port",
                    format!(
                        "{name:?} is not a port name (1 to 15 of a-z, 0-9 and '-', with a letter) \
                         nor a number"
                    ),
                ));
            }
        };
        let scheme = match self.scheme.as_deref() {
            None | Some("http") => Scheme::Http,
            Some("https") => Scheme::Https,
            Some(other) => {
                return Err(ConfigError::invalid(
                    "cluster.kubernetes.scheme",
                    format!("{other:?} is not http or https"),
                ));
            }
        };
        if let Some(name) = &self.tls_name {
            if scheme != Scheme::Https {
                return Err(ConfigError::invalid(
                    "cluster.kubernetes.tls_name",
                    "is only for scheme = \"https\"",
                ));
            }
            if name.is_empty() || name.contains(char::is_whitespace) {
                return Err(ConfigError::invalid(
                    "cluster.kubernetes.tls_name",
                    format!("{name:?} is not a DNS name"),
                ));
            }
        }
        Ok(crate::cluster::DiscoveryConfig {
            service,
            namespace: self.namespace,
            port,
            scheme,
            tls_name: self.tls_name,
        })
    }
}

/// A Kubernetes port name (IANA_SVC_NAME): 1 to 15 of a-z, 0-9 and '-',
/// with at least one letter, no '-' at either end nor two in a row.
fn is_port_name(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && name.chars().any(|c| c.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PeerFile {
    name: String,
    address: String,
}

impl ClusterFile {
    fn into_settings(self) -> Result<ClusterSettings, ConfigError> {
        if let Some(replica) = &self.replica {
            crate::cluster::check_replica_name(replica)
                .map_err(|why| ConfigError::invalid("cluster.replica", why))?;
        }
        let mut peers: Vec<crate::cluster::PeerConfig> = Vec::new();
        for (i, peer) in self.peers.into_iter().enumerate() {
            let at = format!("cluster.peers[{i}]");
            crate::cluster::check_replica_name(&peer.name)
                .map_err(|why| ConfigError::invalid(format!("{at}.name"), why))?;
            check_peer_address(&format!("{at}.address"), &peer.address)?;
            if peers.iter().any(|p| p.name == peer.name) {
                return Err(ConfigError::invalid(
                    format!("{at}.name"),
                    format!("{:?} is listed twice", peer.name),
                ));
            }
            peers.push(crate::cluster::PeerConfig {
                name: peer.name,
                address: peer.address,
            });
        }
        if let Some(token) = &self.peer_token {
            check_peer_token("cluster.peer_token", token)?;
        }
        let kubernetes = self
            .kubernetes
            .map(DiscoveryFile::into_config)
            .transpose()?;
        // One source of peers: a static list beside discovery would give
        // two answers to "is this replica gone?".
        if kubernetes.is_some() && !peers.is_empty() {
            return Err(ConfigError::invalid(
                "cluster.kubernetes",
                "and cluster.peers are both set: peers come either from the static list or \
                 from the Kubernetes API, not both; drop one",
            ));
        }
        match (&self.peer_cert, &self.peer_key) {
            (Some(_), None) => {
                return Err(ConfigError::invalid(
                    "cluster.peer_key",
                    "is missing: cluster.peer_cert needs the key of its certificate",
                ));
            }
            (None, Some(_)) => {
                return Err(ConfigError::invalid(
                    "cluster.peer_cert",
                    "is missing: cluster.peer_key is the key of a certificate; name it too",
                ));
            }
            _ => {}
        }
        // A peer silent this long is presumed dead (cluster::liveness): long
        // enough that a busy or briefly cut-off replica is not given up on,
        // short enough that callers of a vanished one hear it within a
        // retry or two. 0: never presumed dead.
        let peer_dead_after = match self.peer_dead_after {
            None => Some(Duration::from_secs(15)),
            Some(0.0) => None,
            Some(s) if s.is_finite() && s >= 1.0 => Some(Duration::from_secs_f64(s)),
            Some(s) => {
                return Err(ConfigError::invalid(
                    "cluster.peer_dead_after",
                    format!("{s} is not a number of seconds of at least 1 (or 0: never)"),
                ));
            }
        };
        Ok(ClusterSettings {
            replica: self.replica,
            peers,
            peer_token: self.peer_token,
            peer_ca: self.peer_ca,
            kubernetes,
            peer_cert: self.peer_cert,
            peer_key: self.peer_key,
            peer_dead_after,
        })
    }
}

/// A peer is reached at `http://host:port` or `https://host:port`.
fn check_peer_address(setting: &str, address: &str) -> Result<(), ConfigError> {
    let bad = |why: &str| {
        ConfigError::invalid(
            setting,
            format!("{address:?} {why}; write http://host:port or https://host:port"),
        )
    };
    let uri: http::Uri = address.parse().map_err(|_| bad("is not a URL"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(bad("is not http or https"));
    }
    if uri.host().is_none_or(str::is_empty) || uri.port_u16().is_none() {
        return Err(bad("needs a host and a port"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(bad("has a path"));
    }
    Ok(())
}

fn check_peer_token(setting: &str, token: &str) -> Result<(), ConfigError> {
    // Visible ASCII only: it travels as `authorization: Bearer <token>`.
    if token.len() < MIN_PEER_TOKEN || !token.chars().all(|c| c.is_ascii_graphic()) {
        return Err(ConfigError::invalid(
            setting,
            format!(
                "must be at least {MIN_PEER_TOKEN} visible ASCII characters, no spaces \
                 (e.g. `openssl rand -hex 24`)"
            ),
        ));
    }
    Ok(())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnginesFile {
    docker: Option<String>,
    podman: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsFile {
    max_code_bytes: Option<usize>,
    max_stdin_bytes: Option<usize>,
    max_upload_bytes: Option<u64>,
    /// What all resumable runs together keep for Attach.
    max_run_buffer_bytes: Option<u64>,
    allowed_roots: Option<Vec<String>>,
}

/// An identity and the credentials that prove it.
#[derive(Debug, Clone, PartialEq)]
pub struct Credentialed {
    pub identity: Identity,
    /// SHA-256 of its bearer token (the token itself is not kept).
    pub token_sha256: Option<[u8; 32]>,
    /// SHA-256 of its client certificate (DER).
    pub client_cert_sha256: Option<[u8; 32]>,
}

/// Authentication and authorization settings.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthConfig {
    pub identities: Vec<Credentialed>,
    /// The role of a client certificate (mutual TLS) that no identity names;
    /// `None`: such certificates are refused.
    pub client_cert_role: Option<Role>,
    /// Quotas of identities that set none, and of unlisted certificates.
    pub default_quotas: Quotas,
    /// Accept every caller as admin on a non-loopback address without auth.
    pub insecure: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            identities: Vec::new(),
            client_cert_role: Some(Role::Tenant),
            default_quotas: Quotas::default(),
            insecure: false,
        }
    }
}

impl AuthConfig {
    /// Adds bearer tokens given in short form (the `tokens` list,
    /// SANDPOOL_TOKENS): each is an identity of `role` named after a prefix
    /// of its digest.
    pub fn add_tokens(&mut self, tokens: &[String], role: Role) {
        for token in tokens {
            let digest = sha256(token.as_bytes());
            self.identities.retain(|c| c.token_sha256 != Some(digest));
            self.identities.push(Credentialed {
                identity: Identity {
                    name: format!("{role}-{}", hex::encode(&digest[..4])),
                    role,
                    pools: None,
                    quotas: self.default_quotas,
                },
                token_sha256: Some(digest),
                client_cert_sha256: None,
            });
        }
    }
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(data).into()
}

/// A SHA-256 written as hex, with or without colons (as `openssl x509
/// -fingerprint -sha256` prints it).
fn parse_digest(setting: &str, text: &str) -> Result<[u8; 32], ConfigError> {
    let clean: String = text.chars().filter(|c| *c != ':').collect();
    let bytes = hex::decode(clean.to_ascii_lowercase())
        .map_err(|_| ConfigError::invalid(setting, "is not a hex SHA-256"))?;
    bytes
        .try_into()
        .map_err(|_| ConfigError::invalid(setting, "is not 32 bytes (a SHA-256)"))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthFile {
    /// Short form: bearer tokens of tenants.
    #[serde(default)]
    tokens: Vec<String>,
    /// Short form: bearer tokens of admins.
    #[serde(default)]
    admin_tokens: Vec<String>,
    #[serde(default)]
    identities: Vec<IdentityFile>,
    client_cert_role: Option<String>,
    #[serde(default)]
    quotas: QuotasFile,
    #[serde(default)]
    insecure: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct IdentityFile {
    name: String,
    role: Option<Role>,
    token: Option<String>,
    token_sha256: Option<String>,
    client_cert_sha256: Option<String>,
    pools: Option<Vec<String>>,
    max_leases: Option<u32>,
    max_waiters: Option<u32>,
    max_streams: Option<u32>,
    max_pools: Option<u32>,
}

#[derive(Debug, Default, Deserialize, Clone, Copy)]
#[serde(deny_unknown_fields)]
struct QuotasFile {
    max_leases: Option<u32>,
    max_waiters: Option<u32>,
    max_streams: Option<u32>,
    max_pools: Option<u32>,
}

impl QuotasFile {
    fn over(self, base: Quotas) -> Quotas {
        Quotas {
            max_leases: self.max_leases.unwrap_or(base.max_leases),
            max_waiters: self.max_waiters.unwrap_or(base.max_waiters),
            max_streams: self.max_streams.unwrap_or(base.max_streams),
            max_pools: self.max_pools.unwrap_or(base.max_pools),
        }
    }
}

impl AuthFile {
    fn into_config(self) -> Result<AuthConfig, ConfigError> {
        let mut auth = AuthConfig {
            default_quotas: self.quotas.over(Quotas::default()),
            insecure: self.insecure,
            ..AuthConfig::default()
        };
        auth.client_cert_role = match self.client_cert_role.as_deref() {
            None | Some("tenant") => Some(Role::Tenant),
            Some("admin") => Some(Role::Admin),
            Some("none") => None,
            Some(other) => {
                return Err(ConfigError::invalid(
                    "auth.client_cert_role",
                    format!("{other:?} is not tenant, admin or none"),
                ));
            }
        };
        auth.add_tokens(&self.tokens, Role::Tenant);
        auth.add_tokens(&self.admin_tokens, Role::Admin);
        for (i, entry) in self.identities.into_iter().enumerate() {
            let at = format!("auth.identities[{i}]");
            crate::spec::validate_name(&entry.name).map_err(|_| {
                ConfigError::invalid(
                    format!("{at}.name"),
                    format!("{:?} is not a name (a-z, 0-9, '-', '_', '.')", entry.name),
                )
            })?;
            if auth
                .identities
                .iter()
                .any(|c| c.identity.name == entry.name)
            {
                return Err(ConfigError::invalid(
                    format!("{at}.name"),
                    format!("{:?} is defined twice", entry.name),
                ));
            }
            let token_sha256 = match (entry.token, entry.token_sha256) {
                (Some(_), Some(_)) => {
                    return Err(ConfigError::invalid(
                        &at,
                        "set token or token_sha256, not both",
                    ));
                }
                (Some(token), None) => Some(sha256(token.as_bytes())),
                (None, Some(hex)) => Some(parse_digest(&format!("{at}.token_sha256"), &hex)?),
                (None, None) => None,
            };
            let client_cert_sha256 = entry
                .client_cert_sha256
                .map(|hex| parse_digest(&format!("{at}.client_cert_sha256"), &hex))
                .transpose()?;
            if token_sha256.is_none() && client_cert_sha256.is_none() {
                return Err(ConfigError::invalid(
                    &at,
                    "needs a token, token_sha256 or client_cert_sha256",
                ));
            }
            let taken = auth.identities.iter().any(|c| {
                (token_sha256.is_some() && c.token_sha256 == token_sha256)
                    || (client_cert_sha256.is_some() && c.client_cert_sha256 == client_cert_sha256)
            });
            if taken {
                return Err(ConfigError::invalid(
                    &at,
                    "its credential belongs to another identity",
                ));
            }
            let quotas = QuotasFile {
                max_leases: entry.max_leases,
                max_waiters: entry.max_waiters,
                max_streams: entry.max_streams,
                max_pools: entry.max_pools,
            };
            auth.identities.push(Credentialed {
                identity: Identity {
                    name: entry.name,
                    role: entry.role.unwrap_or(Role::Tenant),
                    pools: entry.pools,
                    quotas: quotas.over(auth.default_quotas),
                },
                token_sha256,
                client_cert_sha256,
            });
        }
        Ok(auth)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    images: Option<Vec<String>>,
    networks: Option<Vec<String>>,
    install_networks: Option<Vec<String>>,
    runtimes: Option<Vec<String>>,
    max_memory: Option<String>,
    max_cpus: Option<f64>,
    max_pids: Option<i64>,
    max_tmpfs_size: Option<String>,
    max_pool_size: Option<u32>,
    max_temporary: Option<u32>,
    max_temporaries_total: Option<u32>,
}

impl PolicyFile {
    fn into_policy(self) -> Result<(Policy, u32), ConfigError> {
        let d = Policy::default();
        let size = |setting: &str, text: Option<String>, default: i64| match text {
            None => Ok(default),
            Some(t) => parse_size(&t).filter(|n| *n > 0).ok_or_else(|| {
                ConfigError::invalid(setting, format!("{t:?} is not a size like 2g"))
            }),
        };
        for (setting, list) in [
            ("policy.networks", &self.networks),
            ("policy.install_networks", &self.install_networks),
        ] {
            if let Some(bad) = list
                .iter()
                .flatten()
                .find(|n| crate::policy::shares_a_namespace(n))
            {
                return Err(ConfigError::invalid(
                    setting,
                    format!("{bad:?} would share a namespace with the host or another container"),
                ));
            }
        }
        let policy = Policy {
            images: self.images.unwrap_or(d.images),
            networks: self.networks.unwrap_or(d.networks),
            install_networks: self.install_networks.unwrap_or(d.install_networks),
            runtimes: self.runtimes.unwrap_or(d.runtimes),
            max_memory_bytes: size("policy.max_memory", self.max_memory, d.max_memory_bytes)?,
            max_cpus: match self.max_cpus {
                Some(c) if !(c > 0.0 && c.is_finite()) => {
                    return Err(ConfigError::invalid("policy.max_cpus", "must be positive"));
                }
                other => other.unwrap_or(d.max_cpus),
            },
            max_pids: self.max_pids.unwrap_or(d.max_pids),
            max_tmpfs_bytes: size(
                "policy.max_tmpfs_size",
                self.max_tmpfs_size,
                d.max_tmpfs_bytes,
            )?,
            max_pool_size: self.max_pool_size.unwrap_or(d.max_pool_size),
            max_temporary: self.max_temporary.unwrap_or(d.max_temporary),
        };
        Ok((policy, self.max_temporaries_total.unwrap_or(100)))
    }
}

/// The built-in configuration: one warm `python` pool.
pub const DEFAULT_CONFIG: &str = r#"
listen = "127.0.0.1:50051"

[[pools]]
name = "python"
language = "python"
min_pool_size = 2
max_pool_size = 10
"#;

/// Certificate and key come together; a client CA needs them.
fn tls_config(
    setting: &str,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
) -> Result<Option<TlsConfig>, ConfigError> {
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some(TlsConfig {
            cert,
            key,
            client_ca,
        })),
        (None, None) if client_ca.is_none() => Ok(None),
        _ => Err(ConfigError::invalid(
            setting,
            "TLS needs both a certificate and a key (and a client CA only with them)",
        )),
    }
}

/// Where /metrics is served: an address, or just a port (`9464`, `:9464`),
/// which means loopback: metrics name every pool, so they stay on this
/// machine unless the operator names an address.
pub fn parse_metrics_listen(setting: &str, text: &str) -> Result<SocketAddr, ConfigError> {
    let port = text.strip_prefix(':').unwrap_or(text);
    if let Ok(port) = port.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    text.parse().map_err(|_| {
        ConfigError::invalid(
            setting,
            format!("{text:?} is not a port or an address like 127.0.0.1:9464"),
        )
    })
}

impl ConfigError {
    /// A setting at fault, named as the file or the environment spells it.
    fn invalid(setting: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            setting: setting.into(),
            message: message.into(),
        }
    }
}

/// The Kubernetes namespaces pools may name, from `[kubernetes]`.
fn namespaces_of(settings: &crate::backend::KubernetesSettings) -> Namespaces {
    Namespaces {
        home: settings.namespace.clone(),
        extra: settings.namespaces.clone(),
    }
}

impl ServerConfig {
    /// The Kubernetes namespaces pools may name (`[kubernetes] namespace`
    /// and `namespaces`).
    pub fn namespaces(&self) -> Namespaces {
        namespaces_of(&self.kubernetes)
    }

    /// The built-in default.
    pub fn builtin() -> Self {
        // The built-in text is part of the program and covered by tests.
        Self::from_toml(DEFAULT_CONFIG, Path::new("<built-in>"))
            .unwrap_or_else(|e| panic!("built-in config: {e}"))
    }

    /// Reads `path` (or the built-in default), then applies SANDPOOL_* variables.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let mut config = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
                Self::from_toml(&text, path)?
            }
            None => Self::builtin(),
        };
        config.apply_env(|name| std::env::var(name).ok())?;
        config.cluster()?;
        Ok(config)
    }

    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let file: FileConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let listen_text = file.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
        let listen = listen_text.parse().map_err(|_| {
            ConfigError::invalid(
                "listen",
                format!("{listen_text:?} is not an address like 127.0.0.1:50051"),
            )
        })?;
        let metrics_listen = file
            .metrics_listen
            .as_deref()
            .filter(|m| !m.is_empty())
            .map(|text| parse_metrics_listen("metrics_listen", text))
            .transpose()?;
        let shutdown_grace = match file.shutdown_grace {
            None => Duration::from_secs(10),
            Some(s) if s.is_finite() && s >= 0.0 => Duration::from_secs_f64(s),
            Some(s) => {
                return Err(ConfigError::invalid(
                    "shutdown_grace",
                    format!("{s} is not a number of seconds"),
                ));
            }
        };
        let log_format = match file.log_format.as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(ConfigError::invalid(
                    "log_format",
                    format!("{other:?} is not text or json"),
                ));
            }
        };
        let mut engines = HashMap::new();
        if let Some(docker) = file.engines.docker {
            engines.insert(BackendKind::Docker, docker);
        }
        if let Some(podman) = file.engines.podman {
            engines.insert(BackendKind::Podman, podman);
        }
        let mut run_limits = RunLimits::default();
        let mut file_limits = FileLimits::default();
        let limits = file.limits;
        if let Some(n) = limits.max_code_bytes {
            run_limits.max_code_bytes = n;
        }
        if let Some(n) = limits.max_stdin_bytes {
            run_limits.max_stdin_bytes = n;
        }
        if let Some(n) = limits.max_run_buffer_bytes {
            if n < crate::spec::MIN_RUN_BUFFER {
                return Err(ConfigError::invalid(
                    "limits.max_run_buffer_bytes",
                    format!("{n} is below {}", crate::spec::MIN_RUN_BUFFER),
                ));
            }
            run_limits.max_buffer_bytes = n;
        }
        if let Some(n) = limits.max_upload_bytes {
            file_limits.max_upload_bytes = n;
        }
        if let Some(roots) = limits.allowed_roots {
            for root in &roots {
                if !root.starts_with('/') || root.contains("..") || root.len() < 2 {
                    return Err(ConfigError::invalid(
                        "limits.allowed_roots",
                        format!("{root:?} must be an absolute directory other than /"),
                    ));
                }
            }
            file_limits.allowed_roots = roots
                .into_iter()
                .map(|r| r.trim_end_matches('/').to_string())
                .collect();
        }
        let tls = tls_config("tls", file.tls.cert, file.tls.key, file.tls.client_ca)?;
        file.kubernetes
            .validate()
            .map_err(|(field, message)| ConfigError::invalid(field, message))?;
        let auth = file.auth.into_config()?;
        let (mut policy, max_temporaries) = file.policy.into_policy()?;
        let namespaces = namespaces_of(&file.kubernetes);
        let mut pools = Vec::new();
        for (i, input) in file.pools.into_iter().enumerate() {
            let label = format!("pools[{i}] ({})", input.name);
            let spec = input.into_spec().map_err(|e| match e {
                Error::InvalidArgument { field, message } => {
                    ConfigError::invalid(format!("{label}.{field}"), message)
                }
                other => ConfigError::invalid(label.clone(), other.to_string()),
            })?;
            // The operator's pools too keep to the namespaces listed in
            // [kubernetes]: the server watches and cleans up only those.
            namespaces.check(&spec).map_err(|e| match e {
                Error::PolicyViolation { field, limit, .. } => ConfigError::invalid(
                    format!("{label}.{field}"),
                    format!(
                        "{:?} is not kubernetes.namespace nor listed in kubernetes.namespaces \
                         (allowed: {limit})",
                        spec.namespace.as_deref().unwrap_or_default()
                    ),
                ),
                other => ConfigError::invalid(label.clone(), other.to_string()),
            })?;
            if pools.iter().any(|p: &PoolSpec| p.name == spec.name) {
                return Err(ConfigError::invalid(
                    label,
                    format!("a pool named {:?} is defined twice", spec.name),
                ));
            }
            pools.push(spec);
        }
        policy.trust_config_pools(&pools);
        let cluster = file.cluster.into_settings()?;
        Ok(Self {
            listen,
            metrics_listen,
            server_id: file.server_id.filter(|s| !s.is_empty()),
            shutdown_grace,
            log_format,
            engines,
            run_limits,
            file_limits,
            auth,
            policy,
            max_temporaries,
            resident_runner: file.resident_runner.unwrap_or(true),
            tls,
            kubernetes: file.kubernetes,
            telemetry: file.telemetry,
            cluster,
            pools,
        })
    }

    /// This replica and its peers, if the server is one of several: checks
    /// that the settings (file and environment together) fit. A peer named
    /// like this replica is this replica, left out, so every replica can
    /// read the same list.
    pub fn cluster(&self) -> Result<Option<crate::cluster::ClusterConfig>, ConfigError> {
        let c = &self.cluster;
        let Some(replica) = c.replica.clone() else {
            if c.peers.is_empty() && c.kubernetes.is_none() {
                // No replica named and no peers: a server on its own (a
                // stray peer token changes nothing).
                return Ok(None);
            }
            return Err(ConfigError::invalid(
                "cluster.replica",
                "is missing: with peers, name this replica (cluster.replica or SANDPOOL_REPLICA; \
                 on Kubernetes the pod's name, from the downward API); it prefixes every lease id \
                 it grants",
            ));
        };
        let peers: Vec<_> = c
            .peers
            .iter()
            .filter(|p| p.name != replica)
            .cloned()
            .collect();
        self.check_peer_proof(&peers)?;
        if let Some(peer) = peers.iter().find(|p| p.address.starts_with("https://"))
            && c.peer_ca.is_none()
        {
            return Err(ConfigError::invalid(
                "cluster.peer_ca",
                format!(
                    "is missing: peer {:?} is reached over https; name the CA (PEM) of the peers' certificates",
                    peer.name
                ),
            ));
        }
        if c.kubernetes
            .as_ref()
            .is_some_and(|k| k.scheme == crate::cluster::Scheme::Https)
            && c.peer_ca.is_none()
        {
            return Err(ConfigError::invalid(
                "cluster.peer_ca",
                "is missing: cluster.kubernetes.scheme is https; name the CA (PEM) of the peers' \
                 certificates",
            ));
        }
        Ok(Some(crate::cluster::ClusterConfig {
            replica,
            peers,
            peer_token: c.peer_token.clone(),
            peer_ca: c.peer_ca.clone(),
            kubernetes: c.kubernetes.clone(),
            peer_cert: c.peer_cert.clone(),
            peer_key: c.peer_key.clone(),
            peer_dead_after: c.peer_dead_after,
        }))
    }

    /// Replicas with peers prove themselves to each other, with the peer
    /// token or a client certificate (`peer_cert`, mutual TLS): only such a
    /// proof lets a call name its caller. A certificate is shown only over
    /// https, and taken as proof only by a TLS listener that knows the
    /// peers' CA.
    fn check_peer_proof(&self, peers: &[crate::cluster::PeerConfig]) -> Result<(), ConfigError> {
        let c = &self.cluster;
        let http = peers.iter().find(|p| !p.address.starts_with("https://"));
        // Peers found through the Kubernetes API are all reached one way.
        let discovered = c.kubernetes.as_ref();
        let discovered_https =
            discovered.is_some_and(|k| k.scheme == crate::cluster::Scheme::Https);
        let any_peers = !peers.is_empty() || discovered.is_some();
        if c.peer_cert.is_some() {
            if !discovered_https && !peers.iter().any(|p| p.address.starts_with("https://")) {
                return Err(ConfigError::invalid(
                    "cluster.peer_cert",
                    "is presented only to https:// peers, and no peer is reached over https",
                ));
            }
            if let Some(peer) = http
                && c.peer_token.is_none()
            {
                return Err(ConfigError::invalid(
                    "cluster.peer_token",
                    format!(
                        "is missing: peer {:?} is reached over http, where cluster.peer_cert \
                         is not presented; list it as https:// or set a peer token",
                        peer.name
                    ),
                ));
            }
            if c.peer_token.is_none() && self.tls.is_none() {
                return Err(ConfigError::invalid(
                    "cluster.peer_cert",
                    "without cluster.peer_token needs a TLS listener (tls.cert, tls.key): \
                     peers prove themselves here with their certificates, which only TLS carries",
                ));
            }
        }
        if discovered.is_some_and(|k| k.scheme != crate::cluster::Scheme::Https)
            && c.peer_cert.is_some()
            && c.peer_token.is_none()
        {
            return Err(ConfigError::invalid(
                "cluster.peer_token",
                "is missing: cluster.kubernetes.scheme is http, where cluster.peer_cert is not \
                 presented; use https or set a peer token",
            ));
        }
        if any_peers && c.peer_token.is_none() && c.peer_cert.is_none() {
            return Err(ConfigError::invalid(
                "cluster.peer_token",
                "is missing: replicas with peers prove themselves to each other with a shared \
                 peer token (cluster.peer_token or SANDPOOL_PEER_TOKEN) or client certificates \
                 (cluster.peer_cert and peer_key, https peers, TLS on the listener): the only \
                 credentials that may name a forwarded call's caller",
            ));
        }
        Ok(())
    }

    /// SANDPOOL_LISTEN, SANDPOOL_METRICS_LISTEN, SANDPOOL_SERVER_ID,
    /// SANDPOOL_TOKENS (comma-separated), SANDPOOL_LOG_FORMAT,
    /// SANDPOOL_REPLICA, SANDPOOL_PEER_TOKEN.
    pub fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if let Some(listen) = var("SANDPOOL_LISTEN").filter(|v| !v.is_empty()) {
            self.listen = listen.parse().map_err(|_| {
                ConfigError::invalid("SANDPOOL_LISTEN", format!("{listen:?} is not an address"))
            })?;
        }
        if let Some(metrics) = var("SANDPOOL_METRICS_LISTEN").filter(|v| !v.is_empty()) {
            self.metrics_listen = Some(parse_metrics_listen("SANDPOOL_METRICS_LISTEN", &metrics)?);
        }
        if let Some(flag) = var("SANDPOOL_INSECURE").filter(|v| !v.is_empty()) {
            self.auth.insecure = matches!(flag.as_str(), "1" | "true" | "yes");
        }
        if let Some(flag) = var("SANDPOOL_RESIDENT_RUNNER") {
            self.resident_runner = resident_runner_flag(&flag, self.resident_runner);
        }
        if let Some(id) = var("SANDPOOL_SERVER_ID").filter(|v| !v.is_empty()) {
            self.server_id = Some(id);
        }
        if let Some(replica) = var("SANDPOOL_REPLICA").filter(|v| !v.is_empty()) {
            crate::cluster::check_replica_name(&replica)
                .map_err(|why| ConfigError::invalid("SANDPOOL_REPLICA", why))?;
            self.cluster.replica = Some(replica);
        }
        if let Some(token) = var("SANDPOOL_PEER_TOKEN").filter(|v| !v.is_empty()) {
            check_peer_token("SANDPOOL_PEER_TOKEN", &token)?;
            self.cluster.peer_token = Some(token);
        }
        let list = |name: &str| -> Vec<String> {
            var(name)
                .unwrap_or_default()
                .split(',')
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
                .collect()
        };
        self.auth.add_tokens(&list("SANDPOOL_TOKENS"), Role::Tenant);
        self.auth
            .add_tokens(&list("SANDPOOL_ADMIN_TOKENS"), Role::Admin);
        let cert = var("SANDPOOL_TLS_CERT")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from);
        let key = var("SANDPOOL_TLS_KEY")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from);
        let client_ca = var("SANDPOOL_TLS_CLIENT_CA")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from);
        if cert.is_some() || key.is_some() || client_ca.is_some() {
            let current = self.tls.clone();
            self.tls = tls_config(
                "SANDPOOL_TLS_*",
                cert.or_else(|| current.as_ref().map(|t| t.cert.clone())),
                key.or_else(|| current.as_ref().map(|t| t.key.clone())),
                client_ca.or_else(|| current.and_then(|t| t.client_ca)),
            )?;
        }
        match var("SANDPOOL_LOG_FORMAT").as_deref() {
            None | Some("") => {}
            Some("text") => self.log_format = LogFormat::Text,
            Some("json") => self.log_format = LogFormat::Json,
            Some(other) => {
                return Err(ConfigError::invalid(
                    "SANDPOOL_LOG_FORMAT",
                    format!("{other:?} is not text or json"),
                ));
            }
        }
        Ok(())
    }
}

/// SANDPOOL_RESIDENT_RUNNER as the server reads it: empty leaves `current`
/// (the config file's setting), "1", "true" or "yes" turn the runner on,
/// anything else off. Tests that start servers read it the same way.
pub fn resident_runner_flag(value: &str, current: bool) -> bool {
    if value.is_empty() {
        current
    } else {
        matches!(value, "1" | "true" | "yes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_has_one_python_pool() {
        let c = ServerConfig::builtin();
        assert_eq!(c.pools.len(), 1);
        assert_eq!(c.pools[0].name, "python");
        assert_eq!(c.pools[0].image, "sandpool/python:bookworm");
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
    }

    #[test]
    fn bad_pool_names_the_pool_and_field() {
        let text = r#"
[[pools]]
name = "p"
language = "python"
min_pool_size = 3
max_pool_size = 1
"#;
        let err = ServerConfig::from_toml(text, Path::new("t.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("pools[0] (p).config.min_pool_size"), "{err}");
    }

    #[test]
    fn the_example_config_is_valid_and_matches_the_defaults() {
        let text = include_str!("../../deploy/sandpool.example.toml");
        let example = ServerConfig::from_toml(text, Path::new("sandpool.example.toml")).unwrap();
        let builtin = ServerConfig::builtin();
        assert_eq!(
            example.pools, builtin.pools,
            "the example documents the defaults"
        );
        assert_eq!(example.listen, builtin.listen);
        assert_eq!(
            example.policy, builtin.policy,
            "the example documents the policy"
        );
        assert_eq!(example.auth, builtin.auth, "and the auth defaults");
        assert_eq!(example.max_temporaries, builtin.max_temporaries);
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = ServerConfig::from_toml("lisen = \"x\"", Path::new("t.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("lisen"), "{err}");
    }

    #[test]
    fn duplicate_pools_are_rejected() {
        let text = "[[pools]]\nname = \"a\"\nlanguage = \"python\"\n[[pools]]\nname = \"a\"\nlanguage = \"python\"\n";
        assert!(ServerConfig::from_toml(text, Path::new("t.toml")).is_err());
    }

    #[test]
    fn env_overrides_file() {
        let mut c = ServerConfig::builtin();
        c.apply_env(|name| match name {
            "SANDPOOL_LISTEN" => Some("0.0.0.0:6000".into()),
            "SANDPOOL_TOKENS" => Some("a, b".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(c.listen.port(), 6000);
        let tokens: Vec<_> = c.auth.identities.iter().map(|i| i.token_sha256).collect();
        assert_eq!(tokens, vec![Some(sha256(b"a")), Some(sha256(b"b"))]);
        assert!(
            c.auth
                .identities
                .iter()
                .all(|i| i.identity.role == Role::Tenant)
        );
    }

    #[test]
    fn metrics_on_a_bare_port_stay_on_loopback() {
        let at = parse_metrics_listen("m", "9464").unwrap();
        assert!(at.ip().is_loopback());
        assert_eq!(parse_metrics_listen("m", ":9").unwrap().port(), 9);
        assert!(
            !parse_metrics_listen("m", "0.0.0.0:9464")
                .unwrap()
                .ip()
                .is_loopback()
        );
        assert!(parse_metrics_listen("m", "nine").is_err());
    }

    #[test]
    fn identities_have_roles_pools_and_quotas() {
        let text = r#"
[auth]
tokens = ["t1"]
quotas = { max_leases = 5 }
[[auth.identities]]
name = "ops"
role = "admin"
token = "s3cret"
[[auth.identities]]
name = "team-a"
token_sha256 = "AB:CD:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:01"
pools = ["data-*"]
max_pools = 1
[policy]
runtimes = ["runsc"]
max_memory = "4g"

[[pools]]
name = "python"
language = "python"
"#;
        let c = ServerConfig::from_toml(text, Path::new("t.toml")).unwrap();
        let by_name = |n: &str| {
            c.auth
                .identities
                .iter()
                .find(|i| i.identity.name == n)
                .unwrap()
                .clone()
        };
        assert_eq!(by_name("ops").identity.role, Role::Admin);
        assert_eq!(by_name("ops").token_sha256, Some(sha256(b"s3cret")));
        let team = by_name("team-a").identity;
        assert_eq!(team.role, Role::Tenant);
        assert_eq!(team.pools, Some(vec!["data-*".to_string()]));
        assert_eq!(team.quotas.max_pools, 1);
        assert_eq!(team.quotas.max_leases, 5, "the defaults fill the rest");
        assert_eq!(c.policy.runtimes, vec!["runsc".to_string()]);
        assert_eq!(c.policy.max_memory_bytes, 4 << 30);
        assert!(
            c.policy
                .images
                .contains(&"sandpool/python:bookworm".to_string())
        );
    }

    #[test]
    fn kubernetes_pools_keep_to_the_listed_namespaces() {
        let pool = |ns: &str| {
            format!(
                "[kubernetes]\nnamespace = \"sandboxes\"\nnamespaces = [\"llm-sandbox\"]\n\
                 [[pools]]\nname = \"k\"\nlanguage = \"python\"\nbackend = \"kubernetes\"\n\
                 namespace = \"{ns}\"\n"
            )
        };
        for ok in ["", "sandboxes", "llm-sandbox"] {
            let c = ServerConfig::from_toml(&pool(ok), Path::new("t.toml")).expect(ok);
            assert_eq!(
                c.pools[0].namespace.as_deref(),
                Some(ok).filter(|n| !n.is_empty())
            );
            assert!(c.namespaces().allows("llm-sandbox"));
        }
        let err = ServerConfig::from_toml(&pool("kube-system"), Path::new("t.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("pools[0] (k).namespace") && err.contains("llm-sandbox"),
            "{err}"
        );
        let err = ServerConfig::from_toml(
            "[kubernetes]\nnamespaces = [\"Not_A_Name\"]\n",
            Path::new("t.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("kubernetes.namespaces[0]"), "{err}");
        let err = ServerConfig::from_toml(
            "[[pools]]\nname = \"d\"\nlanguage = \"python\"\nnamespace = \"x\"\n",
            Path::new("t.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("pools[0] (d).namespace"), "{err}");
    }

    const CLUSTER: &str = r#"
[cluster]
replica = "a"
peer_token = "0123456789abcdef0123"
peers = [
  { name = "a", address = "http://127.0.0.1:7001" },
  { name = "b", address = "http://127.0.0.1:7002" },
  { name = "c", address = "http://10.0.0.3:50051" },
]
"#;

    #[test]
    fn no_cluster_means_alone() {
        let c = ServerConfig::builtin();
        assert_eq!(c.cluster().unwrap(), None);
        let mut c = ServerConfig::builtin();
        c.apply_env(|name| (name == "SANDPOOL_PEER_TOKEN").then(|| "0123456789abcdef".into()))
            .unwrap();
        assert_eq!(c.cluster().unwrap(), None, "a token alone makes no cluster");
    }

    #[test]
    fn a_cluster_names_this_replica_and_its_peers() {
        let c = ServerConfig::from_toml(CLUSTER, Path::new("t.toml")).unwrap();
        let cluster = c.cluster().unwrap().expect("a cluster");
        assert_eq!(cluster.replica, "a");
        // A silent peer is given up on after 15 s unless the config says.
        assert_eq!(cluster.peer_dead_after, Some(Duration::from_secs(15)));
        for (setting, expect) in [("0", None), ("2.5", Some(Duration::from_millis(2500)))] {
            let text = CLUSTER.replace(
                "[cluster]\n",
                &format!("[cluster]\npeer_dead_after = {setting}\n"),
            );
            let c = ServerConfig::from_toml(&text, Path::new("t.toml")).unwrap();
            let cluster = c.cluster().unwrap().expect("a cluster");
            assert_eq!(
                cluster.peer_dead_after, expect,
                "peer_dead_after = {setting}"
            );
        }
        let names: Vec<_> = cluster.peers.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["b", "c"], "this replica is left out of its peers");
        // The same list serves every replica: the environment names it.
        let mut c = ServerConfig::from_toml(CLUSTER, Path::new("t.toml")).unwrap();
        c.apply_env(|name| match name {
            "SANDPOOL_REPLICA" => Some("b".into()),
            "SANDPOOL_PEER_TOKEN" => Some("another-token-of-enough-length".into()),
            _ => None,
        })
        .unwrap();
        let cluster = c.cluster().unwrap().expect("a cluster");
        assert_eq!(cluster.replica, "b");
        assert_eq!(cluster.peers.len(), 2);
        assert_eq!(
            cluster.peer_token.as_deref(),
            Some("another-token-of-enough-length")
        );
    }

    const TLS: &str = "[tls]\ncert = \"s.pem\"\nkey = \"s.key\"\n";
    const MTLS: &str = "peer_ca = \"ca.pem\"\npeer_cert = \"a.pem\"\npeer_key = \"a.key\"\n";
    const HTTPS_PEER: &str = "peers = [{ name = \"b\", address = \"https://h:1\" }]\n";

    #[test]
    fn bad_clusters_name_the_setting() {
        let peers = "peers = [{ name = \"b\", address = \"http://127.0.0.1:7002\" }]\n";
        for (text, setting) in [
            ("[cluster]\nreplica = \"a.b\"\n".to_string(), "cluster.replica"),
            (
                "[cluster]\npeers = [{ name = \"B\", address = \"http://h:1\" }]\n".into(),
                "cluster.peers[0].name",
            ),
            (
                "[cluster]\npeers = [{ name = \"b\", address = \"127.0.0.1:7002\" }]\n".into(),
                "cluster.peers[0].address",
            ),
            (
                "[cluster]\npeers = [{ name = \"b\", address = \"http://h\" }]\n".into(),
                "cluster.peers[0].address",
            ),
            (
                "[cluster]\npeers = [{ name = \"b\", address = \"ftp://h:1\" }]\n".into(),
                "cluster.peers[0].address",
            ),
            (
                format!("[cluster]\n{peers}peers2 = 1\n"),
                "config file t.toml",
            ),
            (
                "[cluster]\npeer_token = \"short\"\n".into(),
                "cluster.peer_token",
            ),
            (
                "[cluster]\npeers = [{ name = \"b\", address = \"http://h:1\" }, { name = \"b\", address = \"http://h:2\" }]\n".into(),
                "cluster.peers[1].name",
            ),
            (
                "[cluster]\npeer_cert = \"a.pem\"\n".into(),
                "cluster.peer_key",
            ),
            (
                "[cluster]\npeer_key = \"a.key\"\n".into(),
                "cluster.peer_cert",
            ),
            (
                "[cluster]\npeer_dead_after = 0.5\n".into(),
                "cluster.peer_dead_after",
            ),
            (
                "[cluster]\npeer_dead_after = -3\n".into(),
                "cluster.peer_dead_after",
            ),
        ] {
            let err = ServerConfig::from_toml(&text, Path::new("t.toml"))
                .unwrap_err()
                .to_string();
            assert!(err.starts_with(setting), "{setting}: {err}");
        }
        // Settings that fit only together.
        for (text, setting) in [
            (format!("[cluster]\n{peers}"), "cluster.replica"),
            (format!("[cluster]\nreplica = \"a\"\n{peers}"), "cluster.peer_token"),
            (
                "[cluster]\nreplica = \"a\"\npeer_token = \"0123456789abcdef\"\npeers = [{ name = \"b\", address = \"https://h:1\" }]\n".into(),
                "cluster.peer_ca",
            ),
            // A client certificate is shown only over https...
            (
                format!("[cluster]\nreplica = \"a\"\n{MTLS}{peers}"),
                "cluster.peer_cert",
            ),
            // ... so an http peer still needs the token ...
            (
                format!(
                    "{TLS}[cluster]\nreplica = \"a\"\n{MTLS}peers = [{{ name = \"b\", address = \"https://h:1\" }}, {{ name = \"c\", address = \"http://h:2\" }}]\n"
                ),
                "cluster.peer_token",
            ),
            // ... and without one, peers prove themselves here only over TLS.
            (
                format!("[cluster]\nreplica = \"a\"\n{MTLS}{HTTPS_PEER}"),
                "cluster.peer_cert",
            ),
        ] {
            let c = ServerConfig::from_toml(&text, Path::new("t.toml")).unwrap();
            let err = c.cluster().unwrap_err().to_string();
            assert!(err.starts_with(setting), "{setting}: {err}");
        }
        // Mutual TLS alone proves a peer: no token needed.
        let text = format!("{TLS}[cluster]\nreplica = \"a\"\n{MTLS}{HTTPS_PEER}");
        let c = ServerConfig::from_toml(&text, Path::new("t.toml")).unwrap();
        let cluster = c.cluster().unwrap().expect("a cluster");
        assert_eq!(cluster.peer_token, None);
        assert_eq!(cluster.peer_cert.as_deref(), Some(Path::new("a.pem")));
        let mut c = ServerConfig::builtin();
        let err = c
            .apply_env(|name| (name == "SANDPOOL_REPLICA").then(|| "Bad".into()))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("SANDPOOL_REPLICA"), "{err}");
    }

    #[test]
    fn a_cluster_can_find_its_peers_through_kubernetes() {
        use crate::cluster::{PortRef, Scheme};
        let text = "[kubernetes]\nlease_namespace = \"sandpool\"\n\
                    [cluster]\npeer_token = \"0123456789abcdef0123\"\n\
                    [cluster.kubernetes]\nservice = \"sandpool-peers\"\n";
        let mut c = ServerConfig::from_toml(text, Path::new("t.toml")).unwrap();
        let err = c.cluster().unwrap_err().to_string();
        assert!(err.starts_with("cluster.replica"), "{err}");
        c.apply_env(|name| (name == "SANDPOOL_REPLICA").then(|| "sandpool-7d9f-x2x4q".into()))
            .unwrap();
        let cluster = c.cluster().unwrap().expect("a cluster");
        assert_eq!(cluster.replica, "sandpool-7d9f-x2x4q");
        assert!(cluster.peers.is_empty());
        let k = cluster.kubernetes.expect("discovery");
        assert_eq!(k.service, "sandpool-peers");
        assert_eq!(
            k.namespace, None,
            "the lease namespace is the backend's to resolve"
        );
        assert_eq!(k.port, PortRef::Name("grpc".into()));
        assert_eq!(k.scheme, Scheme::Http);
        let c = ServerConfig::from_toml(
            "[cluster]\nreplica = \"a\"\npeer_token = \"0123456789abcdef0123\"\n\
             peer_ca = \"/ca.pem\"\n[cluster.kubernetes]\nservice = \"p\"\nnamespace = \"ns\"\n\
             port = 7000\nscheme = \"https\"\ntls_name = \"sandpool.ns.svc\"\n",
            Path::new("t.toml"),
        )
        .unwrap();
        let k = c
            .cluster()
            .unwrap()
            .expect("a cluster")
            .kubernetes
            .expect("discovery");
        assert_eq!(k.port, PortRef::Number(7000));
        assert_eq!(k.scheme, Scheme::Https);
        assert_eq!(k.tls_name.as_deref(), Some("sandpool.ns.svc"));
        assert_eq!(k.namespace.as_deref(), Some("ns"));
    }

    #[test]
    fn bad_discovery_names_the_setting() {
        let k = "[cluster.kubernetes]\n";
        for (text, setting) in [
            (
                format!("[cluster]\n{k}namespace = \"x\"\n"),
                "cluster.kubernetes.service",
            ),
            (
                format!("[cluster]\n{k}service = \"Peers\"\n"),
                "cluster.kubernetes.service",
            ),
            (
                format!("[cluster]\n{k}service = \"1p\"\n"),
                "cluster.kubernetes.service",
            ),
            (
                format!("[cluster]\n{k}service = \"p\"\nnamespace = \"a_b\"\n"),
                "cluster.kubernetes.namespace",
            ),
            (
                format!("[cluster]\n{k}service = \"p\"\nport = 0\n"),
                "cluster.kubernetes.port",
            ),
            (
                format!("[cluster]\n{k}service = \"p\"\nport = 70000\n"),
                "cluster.kubernetes.port",
            ),
            (
                format!("[cluster]\n{k}service = \"p\"\nport = \"grpc-port-that-is-long\"\n"),
                "cluster.kubernetes.port",
            ),
            (
                format!("[cluster]\n{k}service = \"p\"\nscheme = \"h2\"\n"),
                "cluster.kubernetes.scheme",
            ),
            (
                format!("[cluster]\n{k}service = \"p\"\ntls_name = \"x\"\n"),
                "cluster.kubernetes.tls_name",
            ),
            (
                format!("[cluster]\n{k}service = \"p\"\nlabels = 1\n"),
                "config file t.toml",
            ),
            (
                format!(
                    "[cluster]\npeers = [{{ name = \"b\", address = \"http://h:1\" }}]\n{k}service = \"p\"\n"
                ),
                "cluster.kubernetes",
            ),
        ] {
            let err = ServerConfig::from_toml(&text, Path::new("t.toml"))
                .unwrap_err()
                .to_string();
            assert!(err.starts_with(setting), "{setting}: {err}");
        }
        // Settings that fit only together.
        for (text, setting) in [
            (
                format!("[cluster]\nreplica = \"a\"\n{k}service = \"p\"\n"),
                "cluster.peer_token",
            ),
            (
                format!(
                    "[cluster]\nreplica = \"a\"\npeer_token = \"0123456789abcdef\"\n{k}service = \"p\"\nscheme = \"https\"\n"
                ),
                "cluster.peer_ca",
            ),
        ] {
            let c = ServerConfig::from_toml(&text, Path::new("t.toml")).unwrap();
            let err = c.cluster().unwrap_err().to_string();
            assert!(err.starts_with(setting), "{setting}: {err}");
        }
    }

    #[test]
    fn bad_auth_and_policy_name_the_setting() {
        for (text, setting) in [
            ("[[auth.identities]]\nname = \"x\"\n", "auth.identities[0]"),
            (
                "[[auth.identities]]\nname = \"x\"\ntoken_sha256 = \"zz\"\n",
                "auth.identities[0].token_sha256",
            ),
            ("[policy]\nnetworks = [\"host\"]\n", "policy.networks"),
            (
                "[policy]\ninstall_networks = [\"container:x\"]\n",
                "policy.install_networks",
            ),
            (
                "[auth]\nclient_cert_role = \"root\"\n",
                "auth.client_cert_role",
            ),
        ] {
            let err = ServerConfig::from_toml(text, Path::new("t.toml"))
                .unwrap_err()
                .to_string();
            assert!(err.starts_with(setting), "{setting}: {err}");
        }
    }
}
