//! A run request checked and turned into what to execute. Every bad input
//! becomes an `InvalidArgument` naming the field.

use std::time::Duration;

use bytes::{Bytes, BytesMut};

use crate::{
    error::{Error, Result},
    pool::{LeaseGuard, lease::RunId},
    sandbox,
    spec::validate_env_name,
};

/// What to run.
#[derive(Debug, Clone, Hash)]
pub enum Program {
    /// Code in a language (`None`: the pool's).
    Code {
        source: Bytes,
        language: Option<String>,
    },
    /// A program and its arguments, without a shell.
    Argv(Vec<String>),
    /// A line for `/bin/sh -c`.
    Shell(String),
}

/// How captured figures are saved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PlotFormat {
    #[default]
    Png,
    Svg,
    Pdf,
}

impl PlotFormat {
    pub fn extension(self) -> &'static str {
        match self {
            PlotFormat::Png => "png",
            PlotFormat::Svg => "svg",
            PlotFormat::Pdf => "pdf",
        }
    }
}

/// A run as asked for.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub program: Program,
    pub stdin: Bytes,
    pub env: Vec<(String, String)>,
    pub working_dir: Option<String>,
    pub timeout: Option<Duration>,
    pub output_limit: Option<u64>,
    pub plot_format: PlotFormat,
    /// Run in this persistent context instead of a fresh process.
    pub context_id: Option<String>,
    /// Chosen by the client: the run is resumable (`journal`).
    pub run_id: Option<RunId>,
}

impl RunSpec {
    pub fn code(source: impl Into<Bytes>) -> Self {
        Self {
            program: Program::Code {
                source: source.into(),
                language: None,
            },
            stdin: Bytes::new(),
            env: Vec::new(),
            working_dir: None,
            timeout: None,
            output_limit: None,
            plot_format: PlotFormat::Png,
            context_id: None,
            run_id: None,
        }
    }

    /// What a repeated Run with the same run id must match: the program
    /// and what it is given (not limits or formats, which a retry may
    /// compute afresh).
    pub fn fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::hash::DefaultHasher::new();
        self.program.hash(&mut hasher);
        self.stdin.hash(&mut hasher);
        self.env.hash(&mut hasher);
        self.working_dir.hash(&mut hasher);
        self.context_id.hash(&mut hasher);
        hasher.finish()
    }
}

/// Server-wide bounds on run requests.
#[derive(Debug, Clone)]
pub struct RunLimits {
    pub max_code_bytes: usize,
    pub max_stdin_bytes: usize,
    /// Artifact content streamed back per run; beyond it files are announced
    /// without content (Download fetches them).
    pub max_artifact_bytes: u64,
    /// What all resumable runs together keep for Attach (`journal`).
    pub max_buffer_bytes: u64,
}

impl Default for RunLimits {
    fn default() -> Self {
        Self {
            max_code_bytes: 1 << 20,
            max_stdin_bytes: 16 << 20,
            max_artifact_bytes: 64 << 20,
            max_buffer_bytes: 256 << 20,
        }
    }
}

/// A checked run, ready to execute.
pub(super) struct Plan {
    pub argv: Vec<String>,
    /// Everything for standard input: the code (if passed that way), then the
    /// caller's input.
    pub input: Bytes,
    pub env: Vec<(String, String)>,
    pub working_dir: String,
    pub timeout: Duration,
    pub output_limit: u64,
    /// The program reports its artifacts itself (else it is wrapped).
    pub reports_artifacts: bool,
    pub plot_format: PlotFormat,
    /// A cell for a persistent context: its id and code.
    pub cell: Option<(String, Bytes)>,
}

fn no_nul(field: &str, text: &str) -> Result<()> {
    if text.contains('\0') {
        return Err(Error::invalid(field, "must not contain NUL bytes"));
    }
    Ok(())
}

/// Where a run's standard input comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stdin {
    /// All of it in the request (`RunSpec::stdin`).
    Given,
    /// Streamed by the client while the program runs; with a terminal of
    /// this size if given.
    Live {
        terminal: Option<sandbox::TerminalSize>,
    },
}

pub(super) fn plan(
    lease: &LeaseGuard,
    spec: RunSpec,
    limits: &RunLimits,
    stdin: Stdin,
) -> Result<Plan> {
    let pool = lease.spec();
    if let Stdin::Live { .. } = stdin {
        if spec.context_id.is_some() {
            return Err(Error::invalid(
                "context_id",
                "a context's cells are not interactive; run them with Run",
            ));
        }
        if !spec.stdin.is_empty() {
            return Err(Error::invalid(
                "stdin",
                "an interactive run's input comes as stdin requests, not in its start",
            ));
        }
    }
    let mut reports_artifacts = false;
    let mut cell = None;
    if let Some(context_id) = spec.context_id.clone() {
        let source = match &spec.program {
            Program::Code { source, .. } => source.clone(),
            _ => {
                return Err(Error::invalid(
                    "context_id",
                    "a context runs code, not commands",
                ));
            }
        };
        if !spec.stdin.is_empty() || !spec.env.is_empty() || spec.working_dir.is_some() {
            return Err(Error::invalid(
                "context_id",
                "a context's cells take no stdin, env or working_dir (set them in the code)",
            ));
        }
        cell = Some((context_id, source));
    }
    let (argv, prefix, mut env) = match spec.program {
        Program::Code { source, language } => {
            if let Some(language) = language.filter(|l| !l.is_empty())
                && language != pool.language
            {
                return Err(Error::invalid(
                    "code.language",
                    format!(
                        "this lease's pool {:?} runs {}, not {language}; acquire from a {language} pool",
                        pool.name, pool.language
                    ),
                ));
            }
            if source.is_empty() {
                return Err(Error::invalid(
                    "code",
                    "is empty; send the program's source",
                ));
            }
            if source.len() > limits.max_code_bytes {
                return Err(Error::invalid(
                    "code",
                    format!(
                        "is {} bytes, above the limit of {} bytes; upload large programs as files and run them as a command",
                        source.len(),
                        limits.max_code_bytes
                    ),
                ));
            }
            // Live input counts as none here: the code then travels as an
            // argument when it can, leaving stdin to the client (and to a
            // terminal, which would echo code written to it).
            let plan = lease.lang().plan(&source, !spec.stdin.is_empty());
            if matches!(stdin, Stdin::Live { terminal: Some(_) }) && !plan.stdin_prefix.is_empty() {
                // A terminal would echo the code and read it line by line.
                return Err(Error::invalid(
                    "code",
                    "is too large to pass to a program with a terminal; upload it as a file and run it as a command",
                ));
            }
            reports_artifacts = lease.lang().reports_artifacts();
            (plan.argv, plan.stdin_prefix, plan.env)
        }
        Program::Argv(argv) => {
            if argv.first().is_none_or(|a| a.is_empty()) {
                return Err(Error::invalid(
                    "command.argv",
                    "needs a program name as its first element",
                ));
            }
            for arg in &argv {
                no_nul("command.argv", arg)?;
            }
            (argv, Bytes::new(), Vec::new())
        }
        Program::Shell(line) => {
            if line.trim().is_empty() {
                return Err(Error::invalid("command.shell", "is empty"));
            }
            no_nul("command.shell", &line)?;
            (
                vec!["/bin/sh".into(), "-c".into(), line],
                Bytes::new(),
                Vec::new(),
            )
        }
    };
    if spec.stdin.len() > limits.max_stdin_bytes {
        return Err(Error::invalid(
            "stdin",
            format!(
                "is {} bytes, above the limit of {} bytes; upload it as a file instead",
                spec.stdin.len(),
                limits.max_stdin_bytes
            ),
        ));
    }
    for (key, value) in &spec.env {
        validate_env_name(key).map_err(|m| Error::invalid("env", m))?;
        if key == sandbox::RUN_MARKER {
            return Err(Error::invalid(
                "env",
                format!("{key} is reserved by sandpool"),
            ));
        }
        no_nul("env", value)?;
    }
    env.extend(spec.env);
    let working_dir = match spec.working_dir.filter(|d| !d.is_empty()) {
        None => sandbox::WORKSPACE.to_string(),
        Some(dir) => {
            no_nul("working_dir", &dir)?;
            if !dir.starts_with('/') {
                return Err(Error::invalid(
                    "working_dir",
                    format!("{dir:?} must be an absolute path"),
                ));
            }
            dir
        }
    };
    let timeout = match spec.timeout {
        None => pool.default_run_timeout,
        Some(t) if t.is_zero() => return Err(Error::invalid("timeout", "must be positive")),
        Some(t) if t > pool.max_run_timeout => {
            return Err(Error::invalid(
                "timeout",
                format!(
                    "{}s is above the pool's max_run_timeout of {}s",
                    t.as_secs_f64(),
                    pool.max_run_timeout.as_secs_f64()
                ),
            ));
        }
        Some(t) => t,
    };
    let output_limit = match spec.output_limit {
        None => pool.output_limit_bytes,
        Some(0) => return Err(Error::invalid("output_limit_bytes", "must be positive")),
        Some(n) if n > pool.output_limit_bytes => {
            return Err(Error::invalid(
                "output_limit_bytes",
                format!(
                    "{n} is above the pool's output_limit_bytes of {}",
                    pool.output_limit_bytes
                ),
            ));
        }
        Some(n) => n,
    };
    let input = if prefix.is_empty() {
        spec.stdin
    } else {
        let mut all = BytesMut::with_capacity(prefix.len() + spec.stdin.len());
        all.extend_from_slice(&prefix);
        all.extend_from_slice(&spec.stdin);
        all.freeze()
    };
    Ok(Plan {
        argv,
        input,
        env,
        working_dir,
        timeout,
        output_limit,
        reports_artifacts,
        plot_format: spec.plot_format,
        cell,
    })
}
