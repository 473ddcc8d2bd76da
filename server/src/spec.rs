//! What defines a pool: the domain form of `PoolSpec`, its defaults (those of
//! llm-sandbox's PoolConfig) and its validation. Every way a pool is made (the
//! config file, CreatePool) ends in `PoolSpec::validate`.

use std::{collections::BTreeMap, time::Duration};

use crate::backend::BackendKind;

use crate::error::Error;

/// What Acquire does when every container is leased.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExhaustionStrategy {
    #[default]
    Wait,
    FailFast,
    Temporary,
}

/// Sizing and lifecycle; llm-sandbox's PoolConfig. `None` is "no limit".
#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    pub max_pool_size: u32,
    pub min_pool_size: u32,
    pub idle_timeout: Option<Duration>,
    pub acquisition_timeout: Option<Duration>,
    pub health_check_interval: Duration,
    pub max_container_lifetime: Option<Duration>,
    pub max_container_uses: Option<u32>,
    pub exhaustion_strategy: ExhaustionStrategy,
    pub enable_prewarming: bool,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            max_pool_size: 10,
            min_pool_size: 0,
            idle_timeout: Some(Duration::from_secs(300)),
            acquisition_timeout: Some(Duration::from_secs(30)),
            health_check_interval: Duration::from_secs(60),
            max_container_lifetime: Some(Duration::from_secs(3600)),
            max_container_uses: None,
            exhaustion_strategy: ExhaustionStrategy::Wait,
            enable_prewarming: true,
        }
    }
}

/// Container limits and security settings; llm-sandbox's runtime_configs.
#[derive(Debug, Clone, PartialEq)]
pub struct RuntimeConfig {
    pub mem_limit_bytes: i64,
    pub cpu_period: Option<i64>,
    pub cpu_quota: Option<i64>,
    pub cpus: f64,
    pub pids_limit: i64,
    /// Network while leased: "none" or an engine network name.
    pub network: String,
    pub uid: u32,
    pub gid: u32,
    pub read_only_root: bool,
    pub oci_runtime: Option<String>,
    pub tmpfs_size_bytes: i64,
    pub env: BTreeMap<String, String>,
    /// Whether the containers run on gVisor, as the pool's engine describes
    /// the runtime they get (`Backend::runs_on_gvisor`): set when the pool
    /// is made; `None` before, or when the engine did not answer then (the
    /// runtime's name decides).
    pub gvisor: Option<bool>,
}

pub const SANDBOX_UID: u32 = 1000;
/// The uid and gid of a container's idle main process: never the code's.
pub const IDLE_UID: u32 = 65534;
/// The largest output cap of a run (per stream): output beyond the cap is
/// cut, but counting it must not overflow and clients must not be promised
/// more than a stream can sensibly carry.
pub const MAX_OUTPUT_LIMIT: u64 = 1 << 40;
/// Largest `run_buffer_bytes` a pool may keep per resumable run.
pub const MAX_RUN_BUFFER: u64 = 256 << 20;
/// Smallest `run_buffer_bytes`: room for a few events.
pub const MIN_RUN_BUFFER: u64 = 4 << 10;

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            mem_limit_bytes: 1 << 30,
            cpu_period: None,
            cpu_quota: None,
            cpus: 1.0,
            pids_limit: 256,
            network: "none".to_string(),
            uid: SANDBOX_UID,
            gid: SANDBOX_UID,
            read_only_root: true,
            oci_runtime: None,
            tmpfs_size_bytes: 512 << 20,
            env: BTreeMap::new(),
            gvisor: None,
        }
    }
}

/// Whether an OCI runtime's name (or its binary's file name) is gVisor's:
/// `runsc`, as Docker hosts and `scripts/engine-up.sh` register it, and
/// variants such as `runsc-kvm`, or `gvisor`, the usual name of its
/// Kubernetes RuntimeClass. A guess only where the engine cannot say
/// which binary a runtime runs.
pub fn names_gvisor(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    name.contains("runsc") || name.contains("gvisor")
}

/// gVisor's sentry runs each sandboxed process on host threads and stub
/// processes of its own (the ptrace platform: a stub per address space, a
/// thread in it per sentry thread that ran there), all in the container's
/// pids cgroup: an idle container with the runner holds 230 to 250 host
/// pids for 6 processes inside. So on gVisor the pool's `pids_limit` bounds
/// the processes inside (RLIMIT_NPROC of the sandbox user, which gVisor's
/// kernel enforces per sandbox) and the cgroup gets this many times it.
/// At the pool's own limit the sentry's clone failed with EAGAIN and it
/// panicked ("error initializing first thread"), taking the container down.
pub const GVISOR_HOST_PIDS_PER_PROCESS: i64 = 32;

impl RuntimeConfig {
    /// "uid:gid" of the user that runs code.
    pub fn user(&self) -> String {
        format!("{}:{}", self.uid, self.gid)
    }

    /// The container runs on gVisor: as its engine said when the pool was
    /// made, else as the runtime's name says (`names_gvisor`).
    pub fn on_gvisor(&self) -> bool {
        self.gvisor
            .unwrap_or_else(|| self.oci_runtime.as_deref().is_some_and(names_gvisor))
    }

    /// The engine's pids limit of the container (its cgroup), and the
    /// RLIMIT_NPROC of its processes, if any (see
    /// `GVISOR_HOST_PIDS_PER_PROCESS`).
    pub fn process_limits(&self) -> (i64, Option<i64>) {
        if self.on_gvisor() {
            (
                // The kernel's largest pid count (PID_MAX_LIMIT).
                self.pids_limit
                    .saturating_mul(GVISOR_HOST_PIDS_PER_PROCESS)
                    .min(1 << 22),
                Some(self.pids_limit),
            )
        } else {
            // RLIMIT_NPROC counts a uid's processes across the whole host
            // (every container's sandbox user is uid 1000): not a limit of
            // one container's.
            (self.pids_limit, None)
        }
    }
}

/// Everything that defines a pool, with defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolSpec {
    pub name: String,
    pub backend: BackendKind,
    pub language: String,
    pub image: String,
    pub libraries: Vec<String>,
    pub config: PoolConfig,
    pub runtime: RuntimeConfig,
    pub reuse: bool,
    pub default_lease_ttl: Duration,
    pub max_lease_ttl: Duration,
    pub default_run_timeout: Duration,
    pub max_run_timeout: Duration,
    pub output_limit_bytes: u64,
    pub output_dir: String,
    /// Network joined while libraries are installed.
    pub install_network: String,
    /// InstallLibraries on a lease may use the network.
    pub lease_installs: bool,
    /// Package index for installers; `None`: the installer's default.
    pub package_index_url: Option<String>,
    /// Most TEMPORARY containers at once; `None` until validated, then
    /// max_pool_size unless set.
    pub max_temporary: Option<u32>,
    /// Longest a lease lives, whatever its keepalives.
    pub max_lease_lifetime: Duration,
    /// Kubernetes namespace of the pool's pods (Kubernetes pools only);
    /// `None`: the server's `[kubernetes] namespace`. Which ones are allowed
    /// is the operator's (`policy::Namespaces`).
    pub namespace: Option<String>,
    /// Runs go through a resident runner in each container: the pool's
    /// `runner_choice`, else the server's `resident_runner` setting
    /// (resolved when the pool is created).
    pub resident_runner: bool,
    /// What the pool's spec asked for (`None`: the server's setting).
    pub runner_choice: Option<bool>,
    /// Events kept per resumable run for Attach (`run::journal`), in bytes.
    pub run_buffer_bytes: u64,
    /// Modules the pre-started interpreter imports ahead of its run
    /// (`lang::Zygote`; see the proto's `PoolSpec.preload`).
    pub preload: Vec<String>,
}

pub const DEFAULT_OUTPUT_DIR: &str = "/sandbox/outputs";
/// The longest duration a pool setting may hold (TTLs, timeouts, intervals):
/// far beyond any sensible value, and far from what `Instant` arithmetic
/// could overflow on.
pub const LONGEST_SETTING: Duration = Duration::from_secs(30 * 24 * 3600);
/// The longest `max_lease_lifetime`.
pub const LONGEST_LEASE_LIFETIME: Duration = Duration::from_secs(366 * 24 * 3600);
/// Health checks run at most this often: each is an engine call per idle
/// container.
pub const SHORTEST_HEALTH_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Most modules a pool may preload.
pub const MAX_PRELOAD: usize = 16;

/// A module name a pre-started interpreter may import: dotted identifiers
/// (`matplotlib.pyplot`), nothing a shell or `import` could read otherwise.
fn validate_module_name(name: &str) -> Result<(), String> {
    // Each part is an identifier: the rule of an environment variable's name.
    if name.len() > 200 || !name.split('.').all(|part| validate_env_name(part).is_ok()) {
        return Err(format!(
            "{name:?} is not a module name (dotted identifiers, like \"numpy\" or \"matplotlib.pyplot\")"
        ));
    }
    Ok(())
}

impl PoolSpec {
    fn validate_preload(&self, language: &dyn crate::lang::Language) -> Result<(), Error> {
        if self.preload.is_empty() {
            return Ok(());
        }
        if self.preload.len() > MAX_PRELOAD {
            return Err(Error::invalid(
                "preload",
                format!("{} modules; at most {MAX_PRELOAD}", self.preload.len()),
            ));
        }
        for (i, module) in self.preload.iter().enumerate() {
            validate_module_name(module).map_err(|m| Error::invalid(format!("preload[{i}]"), m))?;
        }
        if language.zygote().is_none() {
            return Err(Error::invalid(
                "preload",
                format!(
                    "{} has no pre-started interpreter to preload modules into (python has)",
                    self.language
                ),
            ));
        }
        if self.runner_choice == Some(false) {
            return Err(Error::invalid(
                "preload",
                "modules are preloaded by the resident runner, which this pool turns off \
                 (resident_runner = false)",
            ));
        }
        Ok(())
    }

    /// A spec with every default, for `language`; the image is the
    /// language's default.
    pub fn new(name: impl Into<String>, language: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            backend: BackendKind::Docker,
            language: language.into(),
            image: String::new(),
            libraries: Vec::new(),
            config: PoolConfig::default(),
            runtime: RuntimeConfig::default(),
            reuse: true,
            default_lease_ttl: Duration::from_secs(30),
            max_lease_ttl: Duration::from_secs(3600),
            default_run_timeout: Duration::from_secs(60),
            max_run_timeout: Duration::from_secs(3600),
            output_limit_bytes: 10 << 20,
            output_dir: DEFAULT_OUTPUT_DIR.to_string(),
            install_network: "bridge".to_string(),
            lease_installs: false,
            package_index_url: None,
            max_temporary: None,
            max_lease_lifetime: Duration::from_secs(24 * 3600),
            namespace: None,
            resident_runner: false,
            runner_choice: None,
            preload: Vec::new(),
            run_buffer_bytes: 4 << 20,
        }
    }

    /// Most TEMPORARY containers at once (validated specs always have it).
    pub fn temporary_limit(&self) -> u32 {
        self.max_temporary.unwrap_or(self.config.max_pool_size)
    }

    /// Checks the spec as a whole and fills the image from the language.
    /// Errors name the offending field.
    pub fn validate(mut self) -> Result<Self, Error> {
        validate_name(&self.name)?;
        let Some(language) = crate::lang::lookup(&self.language) else {
            return Err(Error::invalid(
                "language",
                format!(
                    "unknown language {:?}; known: {}",
                    self.language,
                    crate::lang::names().join(", ")
                ),
            ));
        };
        if self.image.is_empty() {
            self.image = language.default_image().to_string();
        }
        if self.image.chars().any(char::is_whitespace) {
            return Err(Error::invalid(
                "image",
                format!("{:?} is not an image reference", self.image),
            ));
        }
        let c = &self.config;
        if c.max_pool_size == 0 {
            return Err(Error::invalid("config.max_pool_size", "must be at least 1"));
        }
        if c.max_pool_size > 1000 {
            return Err(Error::invalid(
                "config.max_pool_size",
                "must be at most 1000",
            ));
        }
        if c.min_pool_size > c.max_pool_size {
            return Err(Error::invalid(
                "config.min_pool_size",
                format!(
                    "min_pool_size ({}) must be less than or equal to max_pool_size ({})",
                    c.min_pool_size, c.max_pool_size
                ),
            ));
        }
        if c.health_check_interval < SHORTEST_HEALTH_CHECK_INTERVAL {
            return Err(Error::invalid(
                "config.health_check_interval",
                format!(
                    "must be at least {}s",
                    SHORTEST_HEALTH_CHECK_INTERVAL.as_secs()
                ),
            ));
        }
        let settings = [
            ("config.idle_timeout", c.idle_timeout),
            ("config.acquisition_timeout", c.acquisition_timeout),
            (
                "config.health_check_interval",
                Some(c.health_check_interval),
            ),
            ("config.max_container_lifetime", c.max_container_lifetime),
            ("default_lease_ttl", Some(self.default_lease_ttl)),
            ("max_lease_ttl", Some(self.max_lease_ttl)),
            ("default_run_timeout", Some(self.default_run_timeout)),
            ("max_run_timeout", Some(self.max_run_timeout)),
        ];
        for (field, value) in settings {
            if value.is_some_and(|d| d > LONGEST_SETTING) {
                return Err(Error::invalid(
                    field,
                    format!("must be at most {} days", LONGEST_SETTING.as_secs() / 86400),
                ));
            }
        }
        if self.max_lease_lifetime < Duration::from_secs(1)
            || self.max_lease_lifetime > LONGEST_LEASE_LIFETIME
        {
            return Err(Error::invalid(
                "max_lease_lifetime",
                format!(
                    "must be between 1s and {} days",
                    LONGEST_LEASE_LIFETIME.as_secs() / 86400
                ),
            ));
        }
        if self.max_temporary.is_some_and(|n| n > 1000) {
            return Err(Error::invalid("max_temporary", "must be at most 1000"));
        }
        self.max_temporary = Some(self.temporary_limit());
        if self.default_lease_ttl < Duration::from_secs(1) {
            return Err(Error::invalid("default_lease_ttl", "must be at least 1s"));
        }
        if self.max_lease_ttl < self.default_lease_ttl {
            return Err(Error::invalid(
                "max_lease_ttl",
                format!(
                    "must be at least default_lease_ttl ({}s)",
                    self.default_lease_ttl.as_secs_f64()
                ),
            ));
        }
        if self.default_run_timeout.is_zero() {
            return Err(Error::invalid("default_run_timeout", "must be positive"));
        }
        if self.max_run_timeout < self.default_run_timeout {
            return Err(Error::invalid(
                "max_run_timeout",
                format!(
                    "must be at least default_run_timeout ({}s)",
                    self.default_run_timeout.as_secs_f64()
                ),
            ));
        }
        if !(MIN_RUN_BUFFER..=MAX_RUN_BUFFER).contains(&self.run_buffer_bytes) {
            return Err(Error::invalid(
                "run_buffer_bytes",
                format!(
                    "{} must be between {MIN_RUN_BUFFER} and {MAX_RUN_BUFFER}",
                    self.run_buffer_bytes
                ),
            ));
        }
        if self.output_limit_bytes == 0 || self.output_limit_bytes > MAX_OUTPUT_LIMIT {
            return Err(Error::invalid(
                "output_limit_bytes",
                format!("must be between 1 and {MAX_OUTPUT_LIMIT}"),
            ));
        }
        if !self.output_dir.starts_with('/') || self.output_dir.contains("..") {
            return Err(Error::invalid(
                "output_dir",
                format!(
                    "{:?} must be an absolute path without '..'",
                    self.output_dir
                ),
            ));
        }
        for (i, lib) in self.libraries.iter().enumerate() {
            validate_library(lib).map_err(|m| Error::invalid(format!("libraries[{i}]"), m))?;
        }
        if !self.libraries.is_empty()
            && language
                .install_command(&self.libraries, crate::lang::InstallScope::Pool, None)
                .is_none()
        {
            return Err(Error::invalid(
                "libraries",
                format!("sandpool has no library installer for {}", self.language),
            ));
        }
        self.validate_preload(language)?;
        if self.install_network == "none" || !is_network_name(&self.install_network) {
            return Err(Error::invalid(
                "install_network",
                format!(
                    "{:?} is not a network to install from; name an engine network such as \"bridge\" \
                     (never host, another container's or a namespace's)",
                    self.install_network
                ),
            ));
        }
        if let Some(url) = &self.package_index_url {
            let ok = (url.starts_with("http://") || url.starts_with("https://"))
                && !url.chars().any(|c| c.is_whitespace() || c.is_control());
            if !ok {
                return Err(Error::invalid(
                    "package_index_url",
                    format!("{url:?} is not an http(s) URL"),
                ));
            }
        }
        if let Some(namespace) = &self.namespace {
            if self.backend != BackendKind::Kubernetes {
                return Err(Error::invalid(
                    "namespace",
                    format!(
                        "only Kubernetes pools have a namespace; this pool's backend is {} \
                         (leave namespace empty)",
                        self.backend
                    ),
                ));
            }
            if !is_namespace_name(namespace) {
                return Err(Error::invalid(
                    "namespace",
                    format!(
                        "{namespace:?} is not a Kubernetes namespace name (1 to 63 of a-z, 0-9 \
                         and '-', starting and ending with a letter or digit)"
                    ),
                ));
            }
        }
        self.runtime.validate()?;
        Ok(self)
    }
}

/// A Kubernetes namespace name: an RFC 1123 label.
pub fn is_namespace_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 63
        && text
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !text.starts_with('-')
        && !text.ends_with('-')
}

impl RuntimeConfig {
    fn validate(&self) -> Result<(), Error> {
        if self.mem_limit_bytes < 6 << 20 {
            return Err(Error::invalid("runtime.mem_limit", "must be at least 6m"));
        }
        if !(self.cpus > 0.0 && self.cpus <= 1024.0) {
            return Err(Error::invalid(
                "runtime.cpus",
                format!("{} is not in (0, 1024]", self.cpus),
            ));
        }
        if self.cpu_quota.is_some_and(|q| q < 1000) {
            return Err(Error::invalid(
                "runtime.cpu_quota",
                "must be at least 1000 (microseconds)",
            ));
        }
        if self
            .cpu_period
            .is_some_and(|p| !(1000..=1_000_000).contains(&p))
        {
            return Err(Error::invalid(
                "runtime.cpu_period",
                "must be between 1000 and 1000000",
            ));
        }
        if self.pids_limit < 16 {
            return Err(Error::invalid("runtime.pids_limit", "must be at least 16"));
        }
        if self.uid == 0 || self.gid == 0 {
            return Err(Error::invalid(
                "runtime.user",
                "code never runs as root (uid or gid 0)",
            ));
        }
        if self.uid == IDLE_UID {
            return Err(Error::invalid(
                "runtime.user",
                format!("uid {IDLE_UID} is the containers' idle user, never the code's"),
            ));
        }
        if self.pids_limit > 1 << 22 {
            return Err(Error::invalid(
                "runtime.pids_limit",
                "must be at most 4194304",
            ));
        }
        if self.tmpfs_size_bytes > self.mem_limit_bytes.saturating_mul(64) {
            return Err(Error::invalid(
                "runtime.tmpfs_size",
                "must be at most 64 times mem_limit",
            ));
        }
        if !is_network_name(&self.network) {
            return Err(Error::invalid(
                "runtime.network",
                format!(
                    "{:?} is not allowed; use \"none\" or a network name (never host, another \
                     container's or a namespace's)",
                    self.network
                ),
            ));
        }
        if self.tmpfs_size_bytes < 1 << 20 {
            return Err(Error::invalid("runtime.tmpfs_size", "must be at least 1m"));
        }
        for key in self.env.keys() {
            validate_env_name(key).map_err(|m| Error::invalid("runtime.env", m))?;
        }
        Ok(())
    }
}

/// The name of an engine network a pool's containers may join: what Docker
/// and Podman accept as a network's name ([a-zA-Z0-9][a-zA-Z0-9_.-]*), which
/// leaves out the modes that share another namespace ("container:<id>",
/// "ns:<path>", "slirp4netns:...") and "host", the host's own.
pub fn is_network_name(name: &str) -> bool {
    name.len() <= 128
        && name != "host"
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Pool names end up in container names and labels: keep them to a safe set.
pub fn validate_name(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "name",
            format!(
                "{name:?} is not a pool name: use 1-63 characters of a-z, 0-9, '-', '_', '.', starting with a letter or digit"
            ),
        ))
    }
}

/// An environment variable name: a portable identifier.
pub fn validate_env_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!("{name:?} is not a valid environment variable name"))
    }
}

/// A package name or requirement as an installer takes it: letters, digits
/// and the punctuation of version specifiers and scoped npm names, nothing a
/// shell would interpret. Installers never run through a shell anyway; this
/// keeps option injection ("--index-url ...") out too.
pub fn validate_library(lib: &str) -> Result<(), String> {
    let ok = !lib.is_empty()
        && lib.len() <= 200
        && !lib.starts_with('-')
        && lib
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.@/=<>!~+:[],".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{lib:?} is not a package name (letters, digits and -_.@/=<>!~+:[], only; no leading '-')"
        ))
    }
}

/// Parses a size in Docker syntax ("512m", "1g", "1024k", "1048576", "1.5g").
pub fn parse_size(text: &str) -> Option<i64> {
    let t = text.trim().to_ascii_lowercase();
    let t = t.strip_suffix('b').unwrap_or(&t);
    let (num, mult) = match t.chars().last()? {
        'k' => (&t[..t.len() - 1], 1i64 << 10),
        'm' => (&t[..t.len() - 1], 1 << 20),
        'g' => (&t[..t.len() - 1], 1 << 30),
        't' => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    let value: f64 = num.trim().parse().ok()?;
    if !value.is_finite() || value < 0.0 {
        return None;
    }
    let bytes = value * mult as f64;
    (bytes <= i64::MAX as f64).then_some(bytes as i64)
}

/// Parses "uid:gid" or "uid" (gid = uid); names are not resolved.
pub fn parse_user(text: &str) -> Option<(u32, u32)> {
    match text.split_once(':') {
        Some((u, g)) => Some((u.trim().parse().ok()?, g.trim().parse().ok()?)),
        None => {
            let u = text.trim().parse().ok()?;
            Some((u, u))
        }
    }
}

/// A pool spec as written by a person (config file) or a client (CreatePool):
/// every field optional, durations in seconds. `into_spec` applies the
/// defaults and checks everything, naming the field at fault.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSpecInput {
    pub name: String,
    pub language: String,
    #[serde(default, deserialize_with = "from_text")]
    pub backend: Option<BackendKind>,
    pub image: Option<String>,
    #[serde(default)]
    pub libraries: Vec<String>,
    pub max_pool_size: Option<u32>,
    pub min_pool_size: Option<u32>,
    pub idle_timeout: Option<f64>,
    pub acquisition_timeout: Option<f64>,
    pub health_check_interval: Option<f64>,
    pub max_container_lifetime: Option<f64>,
    pub max_container_uses: Option<u32>,
    #[serde(default, deserialize_with = "from_text")]
    pub exhaustion_strategy: Option<ExhaustionStrategy>,
    pub enable_prewarming: Option<bool>,
    pub reuse: Option<bool>,
    pub default_lease_ttl: Option<f64>,
    pub max_lease_ttl: Option<f64>,
    pub default_run_timeout: Option<f64>,
    pub max_run_timeout: Option<f64>,
    pub output_limit_bytes: Option<u64>,
    pub run_buffer_bytes: Option<u64>,
    /// Runs through a resident runner (unset: the server's setting).
    pub resident_runner: Option<bool>,
    #[serde(default)]
    pub preload: Vec<String>,
    pub output_dir: Option<String>,
    pub install_network: Option<String>,
    pub lease_installs: Option<bool>,
    pub package_index_url: Option<String>,
    pub max_temporary: Option<u32>,
    pub max_lease_lifetime: Option<f64>,
    /// Kubernetes pools: the namespace of their pods (empty: the server's).
    pub namespace: Option<String>,
    #[serde(default)]
    pub runtime: RuntimeInput,
}

/// Runtime settings as written; see `RuntimeConfig` for the defaults.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeInput {
    pub mem_limit: Option<String>,
    pub cpu_period: Option<i64>,
    pub cpu_quota: Option<i64>,
    pub cpus: Option<f64>,
    pub pids_limit: Option<i64>,
    pub network: Option<String>,
    pub user: Option<String>,
    pub read_only_root: Option<bool>,
    pub oci_runtime: Option<String>,
    pub tmpfs_size: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// Seconds to a duration: negative or not finite is an error.
fn seconds(field: &str, value: f64) -> Result<Duration, Error> {
    if !value.is_finite() || value < 0.0 {
        return Err(Error::invalid(
            field,
            format!("must be a non-negative number of seconds, got {value}"),
        ));
    }
    Duration::try_from_secs_f64(value).map_err(|e| Error::invalid(field, e.to_string()))
}

/// A limit where zero means "none" (llm-sandbox's None).
fn optional_limit(
    field: &str,
    value: Option<f64>,
    default: Option<Duration>,
) -> Result<Option<Duration>, Error> {
    match value {
        None => Ok(default),
        Some(v) => {
            let d = seconds(field, v)?;
            Ok((!d.is_zero()).then_some(d))
        }
    }
}

fn required(field: &str, value: Option<f64>, default: Duration) -> Result<Duration, Error> {
    value.map_or(Ok(default), |v| seconds(field, v))
}

impl std::str::FromStr for ExhaustionStrategy {
    type Err = String;

    /// llm-sandbox's names in any case, `-` or `_`: "wait", "FAIL_FAST".
    fn from_str(text: &str) -> Result<Self, String> {
        match text.to_ascii_lowercase().replace('-', "_").as_str() {
            "wait" => Ok(ExhaustionStrategy::Wait),
            "fail_fast" => Ok(ExhaustionStrategy::FailFast),
            "temporary" => Ok(ExhaustionStrategy::Temporary),
            other => Err(format!(
                "{other:?} is not one of wait, fail_fast, temporary"
            )),
        }
    }
}

/// An optional setting written as text and parsed with `FromStr`; empty
/// text is the same as none.
fn from_text<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: std::str::FromStr<Err = String>,
{
    use serde::Deserialize;
    Option::<String>::deserialize(d)?
        .filter(|t| !t.is_empty())
        .map(|t| t.parse().map_err(serde::de::Error::custom))
        .transpose()
}

impl PoolSpecInput {
    /// Applies the defaults and validates.
    pub fn into_spec(self) -> Result<PoolSpec, Error> {
        let mut spec = PoolSpec::new(self.name, self.language);
        let d = PoolConfig::default();
        spec.backend = self.backend.unwrap_or_default();
        spec.image = self.image.unwrap_or_default();
        spec.libraries = self.libraries;
        spec.config = PoolConfig {
            max_pool_size: self.max_pool_size.unwrap_or(d.max_pool_size),
            min_pool_size: self.min_pool_size.unwrap_or(d.min_pool_size),
            idle_timeout: optional_limit("config.idle_timeout", self.idle_timeout, d.idle_timeout)?,
            acquisition_timeout: optional_limit(
                "config.acquisition_timeout",
                self.acquisition_timeout,
                d.acquisition_timeout,
            )?,
            health_check_interval: required(
                "config.health_check_interval",
                self.health_check_interval,
                d.health_check_interval,
            )?,
            max_container_lifetime: optional_limit(
                "config.max_container_lifetime",
                self.max_container_lifetime,
                d.max_container_lifetime,
            )?,
            max_container_uses: self.max_container_uses.filter(|&n| n > 0),
            exhaustion_strategy: self.exhaustion_strategy.unwrap_or_default(),
            enable_prewarming: self.enable_prewarming.unwrap_or(d.enable_prewarming),
        };
        spec.reuse = self.reuse.unwrap_or(true);
        spec.default_lease_ttl = required(
            "default_lease_ttl",
            self.default_lease_ttl,
            spec.default_lease_ttl,
        )?;
        spec.max_lease_ttl = required("max_lease_ttl", self.max_lease_ttl, spec.max_lease_ttl)?;
        spec.default_run_timeout = required(
            "default_run_timeout",
            self.default_run_timeout,
            spec.default_run_timeout,
        )?;
        spec.max_run_timeout = required(
            "max_run_timeout",
            self.max_run_timeout,
            spec.max_run_timeout,
        )?;
        if let Some(limit) = self.output_limit_bytes {
            spec.output_limit_bytes = limit;
        }
        if let Some(bytes) = self.run_buffer_bytes {
            spec.run_buffer_bytes = bytes;
        }
        if let Some(dir) = self.output_dir.filter(|d| !d.is_empty()) {
            spec.output_dir = dir;
        }
        if let Some(network) = self.install_network.filter(|n| !n.is_empty()) {
            spec.install_network = network;
        }
        spec.lease_installs = self.lease_installs.unwrap_or(false);
        spec.package_index_url = self.package_index_url.filter(|u| !u.is_empty());
        spec.max_temporary = self.max_temporary;
        spec.max_lease_lifetime = required(
            "max_lease_lifetime",
            self.max_lease_lifetime,
            spec.max_lease_lifetime,
        )?;
        spec.namespace = self.namespace.filter(|n| !n.is_empty());
        spec.runner_choice = self.resident_runner;
        spec.preload = self.preload;
        spec.runtime = self.runtime.into_runtime()?;
        spec.validate()
    }
}

impl RuntimeInput {
    fn into_runtime(self) -> Result<RuntimeConfig, Error> {
        let mut rt = RuntimeConfig::default();
        if let Some(text) = self.mem_limit {
            rt.mem_limit_bytes = parse_size(&text).ok_or_else(|| {
                Error::invalid(
                    "runtime.mem_limit",
                    format!("{text:?} is not a size like \"512m\" or \"1g\""),
                )
            })?;
        }
        if let Some(text) = self.tmpfs_size {
            rt.tmpfs_size_bytes = parse_size(&text).ok_or_else(|| {
                Error::invalid(
                    "runtime.tmpfs_size",
                    format!("{text:?} is not a size like \"512m\""),
                )
            })?;
        }
        rt.cpu_period = self.cpu_period;
        rt.cpu_quota = self.cpu_quota;
        if let Some(cpus) = self.cpus {
            rt.cpus = cpus;
        }
        if let Some(pids) = self.pids_limit {
            rt.pids_limit = pids;
        }
        if let Some(network) = self.network {
            rt.network = network;
        }
        if let Some(text) = self.user {
            let (uid, gid) = parse_user(&text).ok_or_else(|| {
                Error::invalid(
                    "runtime.user",
                    format!("{text:?} is not \"uid:gid\" (numeric)"),
                )
            })?;
            rt.uid = uid;
            rt.gid = gid;
        }
        if let Some(ro) = self.read_only_root {
            rt.read_only_root = ro;
        }
        rt.oci_runtime = self.oci_runtime.filter(|r| !r.is_empty());
        rt.env = self.env;
        Ok(rt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(err: Error) -> String {
        match err {
            Error::InvalidArgument { field, .. } => field,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn defaults_match_llm_sandbox() {
        let c = PoolConfig::default();
        assert_eq!(c.max_pool_size, 10);
        assert_eq!(c.min_pool_size, 0);
        assert_eq!(c.idle_timeout, Some(Duration::from_secs(300)));
        assert_eq!(c.acquisition_timeout, Some(Duration::from_secs(30)));
        assert_eq!(c.health_check_interval, Duration::from_secs(60));
        assert_eq!(c.max_container_lifetime, Some(Duration::from_secs(3600)));
        assert_eq!(c.max_container_uses, None);
        assert_eq!(c.exhaustion_strategy, ExhaustionStrategy::Wait);
        assert!(c.enable_prewarming);
    }

    #[test]
    fn validation_names_the_field() {
        let mut s = PoolSpec::new("p", "python");
        s.config.min_pool_size = 5;
        s.config.max_pool_size = 2;
        assert_eq!(field_of(s.validate().unwrap_err()), "config.min_pool_size");

        let mut s = PoolSpec::new("p", "python");
        s.config.max_pool_size = 0;
        assert_eq!(field_of(s.validate().unwrap_err()), "config.max_pool_size");

        let s = PoolSpec::new("Bad Name", "python");
        assert_eq!(field_of(s.validate().unwrap_err()), "name");

        let s = PoolSpec::new("p", "cobol");
        assert_eq!(field_of(s.validate().unwrap_err()), "language");

        let mut s = PoolSpec::new("p", "python");
        s.runtime.uid = 0;
        assert_eq!(field_of(s.validate().unwrap_err()), "runtime.user");

        let mut s = PoolSpec::new("p", "python");
        s.libraries = vec!["numpy; rm -rf /".into()];
        assert_eq!(field_of(s.validate().unwrap_err()), "libraries[0]");
    }

    #[test]
    fn input_applies_defaults_and_zero_disables() {
        let input = PoolSpecInput {
            name: "p".into(),
            language: "python".into(),
            idle_timeout: Some(0.0),
            max_container_uses: Some(0),
            exhaustion_strategy: Some(ExhaustionStrategy::FailFast),
            ..Default::default()
        };
        let spec = input.into_spec().unwrap();
        assert_eq!(spec.config.idle_timeout, None);
        assert_eq!(spec.config.max_container_uses, None);
        assert_eq!(
            spec.config.acquisition_timeout,
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            spec.config.exhaustion_strategy,
            ExhaustionStrategy::FailFast
        );
        assert_eq!(spec.default_lease_ttl, Duration::from_secs(30));
    }

    #[test]
    fn negative_durations_name_the_field() {
        let input = PoolSpecInput {
            name: "p".into(),
            language: "python".into(),
            acquisition_timeout: Some(-1.0),
            ..Default::default()
        };
        assert_eq!(
            field_of(input.into_spec().unwrap_err()),
            "config.acquisition_timeout"
        );
    }

    #[test]
    fn only_kubernetes_pools_name_a_valid_namespace() {
        let mut s = PoolSpec::new("p", "python");
        s.namespace = Some("team-a".into());
        assert_eq!(field_of(s.clone().validate().unwrap_err()), "namespace");
        s.backend = BackendKind::Podman;
        assert_eq!(field_of(s.clone().validate().unwrap_err()), "namespace");
        s.backend = BackendKind::Kubernetes;
        assert_eq!(
            s.clone().validate().unwrap().namespace.as_deref(),
            Some("team-a")
        );
        for bad in ["Team-A", "-a", "a-", "a.b", "", &"a".repeat(64)] {
            s.namespace = Some(bad.to_string());
            assert_eq!(
                field_of(s.clone().validate().unwrap_err()),
                "namespace",
                "{bad:?}"
            );
        }
        // Empty text in a request is "the server's namespace".
        let input = PoolSpecInput {
            name: "p".into(),
            language: "python".into(),
            namespace: Some(String::new()),
            ..Default::default()
        };
        assert_eq!(input.into_spec().unwrap().namespace, None);
    }

    #[test]
    fn image_defaults_from_language() {
        let s = PoolSpec::new("p", "python").validate().unwrap();
        assert_eq!(s.image, "sandpool/python:bookworm");
    }

    #[test]
    fn sizes_parse_in_docker_syntax() {
        assert_eq!(parse_size("512m"), Some(512 << 20));
        assert_eq!(parse_size("1g"), Some(1 << 30));
        assert_eq!(parse_size("1.5G"), Some(3 << 29));
        assert_eq!(parse_size("1024"), Some(1024));
        assert_eq!(parse_size("12kb"), Some(12 << 10));
        assert_eq!(parse_size("lots"), None);
        assert_eq!(parse_size("-1m"), None);
    }

    #[test]
    fn libraries_reject_shell_and_options() {
        assert!(validate_library("numpy").is_ok());
        assert!(validate_library("numpy==1.26.4").is_ok());
        assert!(validate_library("@scope/pkg@1.2.3").is_ok());
        assert!(validate_library("pandas[excel]>=2").is_ok());
        assert!(validate_library("numpy; rm -rf /").is_err());
        assert!(validate_library("$(reboot)").is_err());
        assert!(validate_library("--index-url=http://evil").is_err());
        assert!(validate_library("a b").is_err());
    }
}
