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
    run::RunLimits,
    spec::{PoolSpec, PoolSpecInput},
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
    /// Accepted bearer tokens; empty means no authentication.
    pub tokens: Vec<String>,
    /// TLS for the gRPC listener (with client certificates: mTLS).
    pub tls: Option<TlsConfig>,
    pub pools: Vec<PoolSpec>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    metrics_listen: Option<String>,
    server_id: Option<String>,
    shutdown_grace: Option<f64>,
    log_format: Option<String>,
    #[serde(default)]
    engines: EnginesFile,
    #[serde(default)]
    limits: LimitsFile,
    #[serde(default)]
    auth: AuthFile,
    #[serde(default)]
    tls: TlsFile,
    #[serde(default)]
    pools: Vec<PoolSpecInput>,
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
    allowed_roots: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthFile {
    #[serde(default)]
    tokens: Vec<String>,
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

impl ConfigError {
    /// A setting at fault, named as the file or the environment spells it.
    fn invalid(setting: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            setting: setting.into(),
            message: message.into(),
        }
    }
}

impl ServerConfig {
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
        let metrics_listen = match file.metrics_listen.as_deref().filter(|m| !m.is_empty()) {
            None => None,
            Some(text) => Some(text.parse().map_err(|_| {
                ConfigError::invalid(
                    "metrics_listen",
                    format!("{text:?} is not an address like 127.0.0.1:9464"),
                )
            })?),
        };
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
        let mut pools = Vec::new();
        for (i, input) in file.pools.into_iter().enumerate() {
            let label = format!("pools[{i}] ({})", input.name);
            let spec = input.into_spec().map_err(|e| match e {
                Error::InvalidArgument { field, message } => {
                    ConfigError::invalid(format!("{label}.{field}"), message)
                }
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
        Ok(Self {
            listen,
            metrics_listen,
            server_id: file.server_id.filter(|s| !s.is_empty()),
            shutdown_grace,
            log_format,
            engines,
            run_limits,
            file_limits,
            tokens: file.auth.tokens,
            tls,
            pools,
        })
    }

    /// SANDPOOL_LISTEN, SANDPOOL_METRICS_LISTEN, SANDPOOL_SERVER_ID,
    /// SANDPOOL_TOKENS (comma-separated), SANDPOOL_LOG_FORMAT.
    pub fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if let Some(listen) = var("SANDPOOL_LISTEN").filter(|v| !v.is_empty()) {
            self.listen = listen.parse().map_err(|_| {
                ConfigError::invalid("SANDPOOL_LISTEN", format!("{listen:?} is not an address"))
            })?;
        }
        if let Some(metrics) = var("SANDPOOL_METRICS_LISTEN").filter(|v| !v.is_empty()) {
            self.metrics_listen = Some(metrics.parse().map_err(|_| {
                ConfigError::invalid(
                    "SANDPOOL_METRICS_LISTEN",
                    format!("{metrics:?} is not an address"),
                )
            })?);
        }
        if let Some(id) = var("SANDPOOL_SERVER_ID").filter(|v| !v.is_empty()) {
            self.server_id = Some(id);
        }
        if let Some(tokens) = var("SANDPOOL_TOKENS").filter(|v| !v.is_empty()) {
            self.tokens = tokens
                .split(',')
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
                .collect();
        }
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
        assert_eq!(c.tokens, vec!["a".to_string(), "b".to_string()]);
    }
}
