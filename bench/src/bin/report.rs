//! `report`: every benchmark in one run, as docs/benchmarks.md (headline
//! numbers first), docs/benchmarks.json (every sample) and SVG charts. Each
//! number is compared with the floor, a raw engine exec of the same command
//! through bollard on a container of the same pool, measured interleaved
//! in the same run. See `sandpool_bench::report`.
//!
//! Run: `cargo run --release -p sandpool-bench --bin report` (about 15 to
//! 25 minutes on 2 cores); `-- --smoke` checks every scenario in a couple
//! of minutes and writes into a temporary directory.

use clap::Parser;
use sandpool_bench::report::{self, options::Options};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    report::run(Options::parse()).await
}
