//! The report's numbers, as written to benchmarks.json: every sample in
//! milliseconds next to its summary, so the JSON alone can be re-analysed.

use std::time::Duration;

use serde::Serialize;

use crate::stats::{Summary, ms, ratio};

/// Samples of one measured thing, in milliseconds, with their summary.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Series {
    pub n: usize,
    pub median_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    pub samples_ms: Vec<f64>,
}

impl Series {
    pub fn of(samples: &[Duration]) -> Self {
        let s = Summary::of(samples);
        Self {
            n: samples.len(),
            median_ms: ms(s.median),
            p95_ms: ms(s.p95),
            p99_ms: ms(s.p99),
            min_ms: ms(s.min),
            max_ms: ms(s.max),
            samples_ms: samples.iter().map(|d| ms(*d)).collect(),
        }
    }

    /// From samples already in milliseconds (the peer driver's).
    pub fn of_ms(samples_ms: &[f64]) -> Self {
        let durations: Vec<Duration> = samples_ms
            .iter()
            .map(|m| Duration::from_secs_f64(m.max(0.0) / 1e3))
            .collect();
        Self::of(&durations)
    }

    /// This series' median over `floor`'s.
    pub fn median_ratio(&self, floor: &Series) -> f64 {
        self.median_ms / floor.median_ms
    }

    /// This series' p95 over `floor`'s.
    pub fn p95_ratio(&self, floor: &Series) -> f64 {
        self.p95_ms / floor.p95_ms
    }
}

/// The median of per-iteration ratios `ours[i] / floor[i]` (each pair taken
/// back to back, so the machine's drift cancels within a pair).
pub fn paired_ratio(ours: &[Duration], floor: &[Duration]) -> f64 {
    let ratios: Vec<f64> = ours.iter().zip(floor).map(|(o, f)| ratio(*o, *f)).collect();
    crate::stats::median_f64(&ratios)
}

/// Where the report ran.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub memory_gib: f64,
    pub cpu_model: String,
    pub kernel: String,
    pub engine: String,
    pub engine_version: String,
    pub cgroup: String,
    pub build: &'static str,
}

/// Scenarios 1 and 2: one program, three ways, interleaved.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    pub code: String,
    pub floor: Series,
    pub exec: Series,
    pub runner: Series,
    /// Median of paired ratios exec/floor and runner/floor.
    pub exec_paired: f64,
    pub runner_paired: f64,
    /// The resident runner on a pool that preloads `preload` into its
    /// waiting interpreters (`PoolSpec.preload`), when the scenario has one.
    pub preload: Vec<String>,
    pub preloaded: Option<Series>,
    pub preloaded_paired: Option<f64>,
}

/// Scenario 3, one language.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LanguageRow {
    pub language: String,
    pub floor: Series,
    pub exec: Series,
    pub runner: Series,
    pub error: Option<String>,
}

/// Scenario 4: first stdout byte at the reader after the program wrote it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FirstByte {
    pub floor: Series,
    pub exec: Series,
    pub runner: Series,
}

/// Scenario 5: a matplotlib figure.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Plots {
    /// A raw exec that renders the figure to PNG on stdout.
    pub floor: Series,
    pub captured: Series,
    pub agg: Series,
    pub no_plot: Series,
    pub captured_png_bytes: usize,
    pub floor_png_bytes: usize,
}

/// Scenario 6: a program writing `bytes` to stdout.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StdoutRate {
    pub bytes: u64,
    pub floor: Series,
    pub exec: Series,
    pub runner: Series,
}

/// Scenario 7: a file of `bytes` up and down.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Transfer {
    pub bytes: u64,
    pub upload: Series,
    pub download: Series,
    /// The same bytes through a raw exec's stdin (`cat > file`) and stdout
    /// (`cat file`) on the same container.
    pub floor_upload: Series,
    pub floor_download: Series,
    /// `docker cp` (the engine's archive API) on a scratch container of the
    /// same image with a writable root; None with `docker_cp_error` when it
    /// could not be measured.
    pub docker_cp_upload: Option<Series>,
    pub docker_cp_download: Option<Series>,
    pub docker_cp_error: Option<String>,
    /// What the archive API says on the pool's own container.
    pub archive_api_on_pool_container: String,
}

/// Scenario 8, one point of the sweep.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SweepPoint {
    pub clients: usize,
    pub pool_size: u32,
    pub tasks: usize,
    pub seconds: f64,
    pub tasks_per_second: f64,
    pub latency: Series,
    /// Raw execs of the same program by min(clients, pool_size) workers,
    /// one container each.
    pub floor_workers: usize,
    pub floor_seconds: f64,
    pub floor_tasks_per_second: f64,
    pub floor_latency: Series,
}

/// Scenario 8.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Sweep {
    pub path: String,
    pub tasks_per_point: usize,
    pub points: Vec<SweepPoint>,
    /// Pool sizes that failed, and why.
    pub errors: Vec<String>,
}

/// CPU time spent while containers were made, in seconds, by where it
/// was spent (see `engine_cpu`).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct CpuUse {
    /// dockerd and containerd.
    pub engine_daemons: f64,
    /// The new containers' shims and what they reaped (runc, exec'd
    /// processes that ended).
    pub shims: f64,
    /// This process: the in-process server (and the idle bench client).
    pub server: f64,
    /// The new containers' cgroups (their processes; partly counted in
    /// `shims` already, so left out of `total`).
    pub containers_cgroup: Option<f64>,
    pub total: f64,
    /// Every core's busy time over the window (/proc/stat: all but idle
    /// and iowait): what the counts above miss too (the containers' live
    /// processes, the kernel's own threads) and whatever else ran.
    pub machine: Option<f64>,
}

/// Scenario 9, one pool size.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ScalePoint {
    pub containers: u32,
    /// From CreatePool until every container is idle (failed creations
    /// retried by the server included).
    pub prewarm_seconds: f64,
    /// Creations that failed on the way, and the pool's first message.
    pub create_failures: u64,
    pub first_failure: Option<String>,
    pub acquire: Series,
    pub server_acquire_p99_ms: f64,
    pub rss_before_kib: u64,
    pub rss_warm_kib: u64,
    pub cpu: CpuUse,
    /// (seconds since CreatePool, idle containers, RSS KiB) while warming.
    pub curve: Vec<(f64, u32, u64)>,
}

/// Scenario 9.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Scaling {
    pub points: Vec<ScalePoint>,
    /// One container's creation (a pool of one warming).
    pub one_create_seconds: f64,
    pub one_create_cpu: CpuUse,
    pub cores: usize,
    /// How busy the idle machine was just before (cores' worth, from
    /// /proc/stat over a second): what `machine` counts that is not the
    /// creation's.
    pub idle_busy_cores: f64,
    /// One creation's CPU over the whole machine less the idle machine's
    /// share of its window, where /proc/stat can be read; else `total`.
    pub one_create_cpu_seconds: f64,
    /// n x `one_create_cpu_seconds` / cores, for the smaller pool's n.
    pub cpu_bound_seconds: f64,
    /// The same from the per-process count (`one_create_cpu.total`), which
    /// misses the containers' live processes and the kernel's threads.
    pub cpu_bound_counted_seconds: f64,
    pub cpu_bound_containers: u32,
}

/// Scenario 10.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Reset {
    pub floor: Series,
    /// Acquire + Run + Release on a settled pool of one.
    pub single: Series,
    /// The same back to back: each Acquire waits for the previous reset.
    pub back_to_back: Series,
    /// From the server's sandpool_reset_duration_seconds histogram.
    pub resets: u64,
    pub reset_mean_ms: f64,
    /// Upper bounds of the buckets holding the median and the 95th
    /// percentile (the histogram's resolution).
    pub reset_p50_bucket_ms: f64,
    pub reset_p95_bucket_ms: f64,
}

/// Scenario 11, one implementation.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PeerImpl {
    pub name: String,
    pub hello: Series,
    pub numpy: Series,
    pub concurrent_seconds: Vec<f64>,
    pub concurrent_tasks_per_second: f64,
    pub concurrent_latency: Series,
    /// FIFO fairness in the thread example (`peer::fifo_inversions`):
    /// pairs of waiting tasks that asked one after the other, and how many
    /// of them were served the other way round.
    pub fifo_pairs: usize,
    pub fifo_inversions: usize,
}

/// Scenario 11.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Peer {
    pub llm_sandbox_version: String,
    pub tasks: usize,
    pub threads: usize,
    pub pool_size: usize,
    pub implementations: Vec<PeerImpl>,
}

/// A scenario that failed, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub scenario: String,
    pub error: String,
}

/// Everything one run measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub command: String,
    pub date: String,
    pub smoke: bool,
    pub iterations: usize,
    pub seconds: f64,
    pub machine: Machine,
    pub python_print: Option<Latency>,
    pub python_numpy: Option<Latency>,
    pub languages: Option<Vec<LanguageRow>>,
    pub first_byte: Option<FirstByte>,
    pub plots: Option<Plots>,
    pub stdout_rate: Option<StdoutRate>,
    pub transfer: Option<Transfer>,
    pub sweep: Option<Sweep>,
    pub scaling: Option<Scaling>,
    pub reset: Option<Reset>,
    pub peer: Option<Peer>,
    pub failures: Vec<Failure>,
}
