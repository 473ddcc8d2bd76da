//! `report`: every benchmark in one run, written as benchmarks.md (headline
//! numbers first), benchmarks.json (every sample) and SVG charts.
//!
//! One module per scenario measures and returns its numbers; `markdown`
//! and `charts` turn them into the document. A scenario that fails is
//! reported (in the document, and as the command's error at the end) and
//! the others still run; both servers stop and their containers go
//! whatever happened.

pub mod charts;
pub mod context;
pub mod engine_cpu;
pub mod first_byte;
pub mod languages;
pub mod latency;
pub mod machine;
pub mod markdown;
pub mod metrics;
pub mod model;
pub mod options;
pub mod peer;
pub mod plots;
pub mod reset;
pub mod scaling;
pub mod stdout_rate;
pub mod sweep;
pub mod transfer;

use std::{future::Future, time::Instant};

use anyhow::{Context as _, bail};

use context::Ctx;
use model::{Failure, Report};
use options::{Options, Plan, Scenario};

/// Runs `scenario` if the plan has it; a failure goes to `failures`.
async fn attempt<T>(
    failures: &mut Vec<Failure>,
    plan: &Plan,
    which: Scenario,
    name: &str,
    run: impl Future<Output = anyhow::Result<T>>,
) -> Option<T> {
    if !plan.runs(which) {
        return None;
    }
    eprintln!("report: {name}");
    let started = Instant::now();
    let result = run.await;
    eprintln!(
        "report: {name}: {} in {:.1} s",
        if result.is_ok() { "done" } else { "FAILED" },
        started.elapsed().as_secs_f64()
    );
    match result {
        Ok(v) => Some(v),
        Err(e) => {
            eprintln!("report: {name}: {e:#}");
            failures.push(Failure {
                scenario: name.to_string(),
                error: format!("{e:#}"),
            });
            None
        }
    }
}

/// The command line as a reader would type it again.
fn command_line() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let build = if cfg!(debug_assertions) {
        ""
    } else {
        " --release"
    };
    let mut line = format!("cargo run{build} -p sandpool-bench --bin report");
    if !args.is_empty() {
        line.push_str(" -- ");
        line.push_str(&args.join(" "));
    }
    line
}

pub async fn run(options: Options) -> anyhow::Result<()> {
    let plan = Plan::from(&options)?;
    let started = Instant::now();
    let out_dir = plan.out_dir.clone();
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let ctx = Ctx::start(plan.clone()).await?;
    let mut report = Report {
        command: command_line(),
        date: machine::now_utc(),
        smoke: plan.smoke,
        iterations: plan.iterations,
        machine: machine::facts(&ctx.docker).await,
        ..Default::default()
    };
    let f = &mut report.failures;
    report.python_print = attempt(
        f,
        &plan,
        Scenario::Latency,
        "1 python print",
        latency::measure(&ctx, latency::PRINT, &[]),
    )
    .await;
    report.python_numpy = attempt(
        f,
        &plan,
        Scenario::Latency,
        "2 python numpy",
        latency::measure(&ctx, latency::NUMPY, &["numpy"]),
    )
    .await;
    report.languages = attempt(
        f,
        &plan,
        Scenario::Languages,
        "3 languages",
        languages::measure(&ctx),
    )
    .await;
    if let Some(rows) = &report.languages {
        for row in rows {
            if let Some(e) = &row.error {
                f.push(Failure {
                    scenario: format!("3 languages: {}", row.language),
                    error: e.clone(),
                });
            }
        }
    }
    report.first_byte = attempt(
        f,
        &plan,
        Scenario::FirstByte,
        "4 first stdout byte",
        first_byte::measure(&ctx),
    )
    .await;
    report.plots = attempt(f, &plan, Scenario::Plots, "5 plots", plots::measure(&ctx)).await;
    report.stdout_rate = attempt(
        f,
        &plan,
        Scenario::Stdout,
        "6 stdout throughput",
        stdout_rate::measure(&ctx),
    )
    .await;
    report.transfer = attempt(
        f,
        &plan,
        Scenario::Transfer,
        "7 upload and download",
        transfer::measure(&ctx),
    )
    .await;
    report.sweep = attempt(
        f,
        &plan,
        Scenario::Sweep,
        "8 concurrency sweep",
        sweep::measure(&ctx),
    )
    .await;
    if let Some(sweep) = &report.sweep {
        for e in &sweep.errors {
            f.push(Failure {
                scenario: "8 concurrency sweep".into(),
                error: e.clone(),
            });
        }
    }
    report.scaling = attempt(
        f,
        &plan,
        Scenario::Scaling,
        "9 scaling",
        scaling::measure(&ctx),
    )
    .await;
    report.reset = attempt(f, &plan, Scenario::Reset, "10 reset", reset::measure(&ctx)).await;
    report.peer = attempt(
        f,
        &plan,
        Scenario::Peer,
        "11 peer: llm-sandbox",
        peer::measure(&ctx),
    )
    .await;
    for problem in ctx.stop().await {
        report.failures.push(Failure {
            scenario: "cleanup".into(),
            error: problem,
        });
    }
    report.seconds = started.elapsed().as_secs_f64();
    write(&out_dir, &mut report)?;
    eprintln!(
        "report: wrote {} in {:.0} s",
        out_dir.join("benchmarks.md").display(),
        report.seconds
    );
    if !report.failures.is_empty() {
        bail!(
            "{} scenario(s) failed: {}",
            report.failures.len(),
            report
                .failures
                .iter()
                .map(|f| format!("{}: {}", f.scenario, f.error))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    Ok(())
}

/// Charts, then the JSON and the document; a chart that fails to draw is
/// a failure of the report, not of the measurements.
fn write(dir: &std::path::Path, report: &mut Report) -> anyhow::Result<()> {
    let mut charts = Vec::new();
    let mut chart_errors = Vec::new();
    for (name, title, latency) in [
        (
            "latency-print.svg",
            "Python print('test'): Acquire+Run+Release vs floor",
            &report.python_print,
        ),
        (
            "latency-numpy.svg",
            "Python import numpy: Acquire+Run+Release vs floor",
            &report.python_numpy,
        ),
    ] {
        if let Some(l) = latency {
            match charts::latency(&dir.join(name), title, l) {
                Ok(()) => charts.push(name.to_string()),
                Err(e) => chart_errors.push(format!("{name}: {e:#}")),
            }
        }
    }
    if let Some(s) = &report.sweep {
        match charts::sweep(dir, s) {
            Ok(names) => charts.extend(names),
            Err(e) => chart_errors.push(format!("sweep charts: {e:#}")),
        }
    }
    if let Some(s) = &report.scaling {
        match charts::scaling(dir, s) {
            Ok(names) => charts.extend(names),
            Err(e) => chart_errors.push(format!("scaling chart: {e:#}")),
        }
    }
    for e in chart_errors {
        report.failures.push(Failure {
            scenario: "charts".into(),
            error: e,
        });
    }
    let json = serde_json::to_string_pretty(&*report)?;
    std::fs::write(dir.join("benchmarks.json"), json + "\n")
        .with_context(|| format!("writing {}", dir.join("benchmarks.json").display()))?;
    std::fs::write(dir.join("benchmarks.md"), markdown::render(report, &charts))
        .with_context(|| format!("writing {}", dir.join("benchmarks.md").display()))?;
    Ok(())
}
