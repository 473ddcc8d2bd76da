//! The report's command line, and what `--smoke` turns it into.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

/// Every benchmark in one run, against the floor (a raw engine exec of the
/// same command on a container of the same pool) measured interleaved in
/// the same run; writes benchmarks.md, benchmarks.json and SVG charts.
#[derive(Debug, Clone, Parser)]
#[command(name = "report")]
pub struct Options {
    /// Where benchmarks.md, benchmarks.json and the charts go (default the
    /// workspace's docs/, or a new temporary directory with --smoke).
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
    /// Measured iterations of the latency scenarios; the others scale
    /// from it.
    #[arg(long, default_value_t = 60)]
    pub iterations: usize,
    /// A quick pass that only checks that every scenario still works: 3
    /// iterations, a sweep of two points, scaling to 3 containers, no peer,
    /// output in a temporary directory.
    #[arg(long)]
    pub smoke: bool,
    /// Tasks per point of the concurrency sweep.
    #[arg(long, default_value_t = 48)]
    pub sweep_tasks: usize,
    /// Concurrent clients of the sweep.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 2, 4, 8, 16, 32])]
    pub sweep_clients: Vec<usize>,
    /// Pool sizes of the sweep.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 2, 4, 8, 16])]
    pub sweep_pools: Vec<u32>,
    /// Sweep on the exec path instead of the resident runner (the
    /// server's default path).
    #[arg(long)]
    pub sweep_exec: bool,
    /// The larger idle pool of the scaling scenario (the smaller is 10).
    #[arg(long, default_value_t = 200)]
    pub scale_max: u32,
    /// Leave out the llm-sandbox peer column (no venv, no pip).
    #[arg(long)]
    pub no_peer: bool,
    /// The venv the peer column installs llm-sandbox and sandpool's Python
    /// client into (default target/bench-peer-venv of the workspace).
    #[arg(long)]
    pub peer_venv: Option<PathBuf>,
    /// Languages of the per-language table (default all).
    #[arg(long, value_delimiter = ',')]
    pub languages: Vec<String>,
    /// Run only these scenarios (default all).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<Scenario>,
    /// MiB written to stdout and moved by upload and download.
    #[arg(long, default_value_t = 20)]
    pub mib: u64,
    /// Image of the Python pools.
    #[arg(long, default_value = "sandpool/python:bookworm")]
    pub image: String,
}

/// The scenarios, as --only names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// 1 and 2: Python print and numpy, floor vs exec path vs runner path.
    Latency,
    /// 3: hello world per language.
    Languages,
    /// 4: first stdout byte lag.
    FirstByte,
    /// 5: matplotlib capture.
    Plots,
    /// 6: stdout throughput.
    Stdout,
    /// 7: upload and download.
    Transfer,
    /// 8: clients x pool sizes.
    Sweep,
    /// 9: idle pools of 10 and --scale-max containers.
    Scaling,
    /// 10: back-to-back cycles on a pool of one.
    Reset,
    /// 11: llm-sandbox and sandpool's llm-sandbox layer.
    Peer,
}

/// The numbers every scenario works with, after --smoke.
#[derive(Debug, Clone)]
pub struct Plan {
    pub smoke: bool,
    pub out_dir: PathBuf,
    pub image: String,
    pub iterations: usize,
    /// Leases per language (scenario 3), each with `steady` runs per path.
    pub language_leases: usize,
    pub steady: usize,
    pub languages: Vec<String>,
    pub first_byte: usize,
    pub plots: usize,
    pub rate_runs: usize,
    pub bytes: u64,
    pub sweep_clients: Vec<usize>,
    pub sweep_pools: Vec<u32>,
    pub sweep_tasks: usize,
    pub sweep_runner: bool,
    pub scale_small: u32,
    pub scale_max: u32,
    pub acquires: usize,
    pub reset_rounds: usize,
    pub peer: bool,
    pub peer_venv: PathBuf,
    pub peer_iterations: usize,
    pub only: Vec<Scenario>,
}

impl Plan {
    pub fn from(options: &Options) -> anyhow::Result<Self> {
        let smoke = options.smoke;
        let n = if smoke { 3 } else { options.iterations.max(2) };
        let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .map(std::path::Path::to_path_buf)
            .unwrap_or_default();
        let out_dir = match (&options.out_dir, smoke) {
            (Some(dir), _) => dir.clone(),
            (None, false) => workspace.join("docs"),
            (None, true) => std::env::temp_dir().join(format!(
                "sandpool-bench-smoke-{}-{}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)?
                    .as_millis()
            )),
        };
        let languages = if !options.languages.is_empty() {
            options.languages.clone()
        } else if smoke {
            // Two languages show that the table works; all of them would
            // take a pool each, too long for a check.
            vec!["bash".into(), "python".into()]
        } else {
            crate::hello::HELLO
                .iter()
                .map(|h| h.language.to_string())
                .collect()
        };
        let scale_max = if smoke { 3 } else { options.scale_max.max(1) };
        Ok(Self {
            smoke,
            out_dir,
            image: options.image.clone(),
            iterations: n,
            language_leases: if smoke { 1 } else { (n / 10).max(3) },
            steady: if smoke { 1 } else { 3 },
            languages,
            first_byte: if smoke { 2 } else { n.min(30) },
            plots: if smoke { 1 } else { (n / 3).max(3) },
            rate_runs: if smoke { 1 } else { (n / 10).max(3) },
            bytes: (if smoke { 2 } else { options.mib.max(1) }) << 20,
            sweep_clients: if smoke {
                vec![1, 2]
            } else {
                options.sweep_clients.clone()
            },
            sweep_pools: if smoke {
                vec![1]
            } else {
                options.sweep_pools.clone()
            },
            sweep_tasks: if smoke { 4 } else { options.sweep_tasks.max(1) },
            sweep_runner: !options.sweep_exec,
            // 10 against 200 by default; a smaller --scale-max keeps the
            // smaller pool a third of it.
            scale_small: (scale_max / 3).clamp(1, 10),
            scale_max,
            acquires: if smoke { 3 } else { n.max(100) },
            reset_rounds: if smoke { 1 } else { (n / 6).max(3) },
            peer: !smoke && !options.no_peer,
            peer_venv: options
                .peer_venv
                .clone()
                .unwrap_or_else(|| workspace.join("target").join("bench-peer-venv")),
            peer_iterations: if smoke { 2 } else { n.min(30) },
            only: options.only.clone(),
        })
    }

    /// Whether `scenario` is to run.
    pub fn runs(&self, scenario: Scenario) -> bool {
        (self.only.is_empty() || self.only.contains(&scenario))
            && (scenario != Scenario::Peer || self.peer)
    }
}
