//! SVG charts of the report (plotters' SVG backend; text is left to the
//! SVG viewer's fonts, so no font stack is built in).

use std::path::Path;

use anyhow::anyhow;
use plotters::prelude::*;

use super::model::{Latency, Scaling, Series, Sweep};

const SIZE: (u32, u32) = (820, 460);
/// One colour per series, in order (colour-blind safe: Okabe-Ito).
const PALETTE: [RGBColor; 6] = [
    RGBColor(0, 0, 0),
    RGBColor(230, 159, 0),
    RGBColor(0, 114, 178),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(213, 94, 0),
];

fn colour(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// plotters' errors borrow the backend; keep only their text.
fn drawing<T, E: std::fmt::Display>(r: Result<T, E>) -> anyhow::Result<T> {
    r.map_err(|e| anyhow!("drawing a chart: {e}"))
}

/// Points of the empirical distribution of `series` (ms, fraction <=).
fn cdf(series: &Series) -> Vec<(f64, f64)> {
    let mut v = series.samples_ms.clone();
    v.sort_by(f64::total_cmp);
    let n = v.len() as f64;
    v.iter()
        .enumerate()
        .map(|(i, ms)| (ms.max(0.01), (i + 1) as f64 / n))
        .collect()
}

/// The latency distributions of scenario 1 or 2: one CDF per way, on a
/// log time axis (the runner path and the floor are an order apart).
pub fn latency(path: &Path, title: &str, l: &Latency) -> anyhow::Result<()> {
    let preloaded = format!("resident runner, pool preloads {}", l.preload.join(", "));
    let mut ways = vec![
        ("floor: bollard exec", &l.floor),
        ("Acquire+Run+Release, exec path", &l.exec),
        ("Acquire+Run+Release, resident runner", &l.runner),
    ];
    if let Some(p) = &l.preloaded {
        ways.push((preloaded.as_str(), p));
    }
    let all = ways.iter().flat_map(|(_, s)| s.samples_ms.iter().copied());
    let (lo, hi) = all.fold((f64::MAX, 0.0f64), |(lo, hi), x| (lo.min(x), hi.max(x)));
    let (lo, hi) = ((lo * 0.8).max(0.01), (hi * 1.25).max(lo * 2.0));
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    drawing(root.fill(&WHITE))?;
    let mut chart = drawing(
        ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d((lo..hi).log_scale(), 0.0..1.0),
    )?;
    drawing(
        chart
            .configure_mesh()
            .x_desc("milliseconds (log scale)")
            .y_desc("fraction of runs at or under")
            .draw(),
    )?;
    for (i, (name, series)) in ways.iter().enumerate() {
        let c = colour(i);
        drawing(chart.draw_series(LineSeries::new(cdf(series), c.stroke_width(2))))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    drawing(
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw(),
    )?;
    drawing(root.present())
}

/// One value of every sweep point against the client count, a line per
/// pool size; with `floor`, the floor's as dashed lines of the same colour.
fn sweep_chart(
    path: &Path,
    title: &str,
    y_desc: &str,
    sweep: &Sweep,
    value: impl Fn(&super::model::SweepPoint) -> f64,
    floor: Option<&dyn Fn(&super::model::SweepPoint) -> f64>,
) -> anyhow::Result<()> {
    let mut pools: Vec<u32> = sweep.points.iter().map(|p| p.pool_size).collect();
    pools.sort_unstable();
    pools.dedup();
    let clients_max = sweep.points.iter().map(|p| p.clients).max().unwrap_or(1) as f64;
    let y_max = sweep
        .points
        .iter()
        .flat_map(|p| [value(p), floor.map_or(0.0, |f| f(p))])
        .fold(0.0f64, f64::max)
        * 1.15;
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    drawing(root.fill(&WHITE))?;
    let mut chart = drawing(
        ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(
                (1.0..clients_max.max(2.0) * 1.1).log_scale(),
                0.0..y_max.max(1e-3),
            ),
    )?;
    drawing(
        chart
            .configure_mesh()
            .x_desc("concurrent clients (log scale)")
            .y_desc(y_desc)
            .draw(),
    )?;
    for (i, pool) in pools.iter().enumerate() {
        let c = colour(i + 1);
        let mut points: Vec<_> = sweep
            .points
            .iter()
            .filter(|p| p.pool_size == *pool)
            .collect();
        points.sort_by_key(|p| p.clients);
        let ours: Vec<(f64, f64)> = points
            .iter()
            .map(|p| (p.clients as f64, value(p)))
            .collect();
        drawing(chart.draw_series(LineSeries::new(ours.clone(), c.stroke_width(2))))?
            .label(format!("pool of {pool}"))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], c.stroke_width(2)));
        drawing(chart.draw_series(ours.iter().map(|&p| Circle::new(p, 3, c.filled()))))?;
        if let Some(f) = floor {
            let theirs: Vec<(f64, f64)> = points.iter().map(|p| (p.clients as f64, f(p))).collect();
            drawing(chart.draw_series(DashedLineSeries::new(theirs, 6, 4, c.stroke_width(1))))?;
        }
    }
    drawing(
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw(),
    )?;
    drawing(root.present())
}

/// The concurrency sweep: throughput, and p95 latency.
pub fn sweep(dir: &Path, sweep: &Sweep) -> anyhow::Result<Vec<String>> {
    let throughput = "sweep-throughput.svg";
    sweep_chart(
        &dir.join(throughput),
        &format!(
            "Acquire+Run+Release throughput ({} path; dashed: the floor)",
            sweep.path
        ),
        "tasks per second",
        sweep,
        |p| p.tasks_per_second,
        Some(&|p| p.floor_tasks_per_second),
    )?;
    let p95 = "sweep-p95.svg";
    sweep_chart(
        &dir.join(p95),
        &format!("p95 of one Acquire+Run+Release ({} path)", sweep.path),
        "milliseconds",
        sweep,
        |p| p.latency.p95_ms,
        None,
    )?;
    Ok(vec![throughput.into(), p95.into()])
}

/// Scaling: idle containers and the server's RSS while each pool warms.
pub fn scaling(dir: &Path, scaling: &Scaling) -> anyhow::Result<Vec<String>> {
    let name = "scaling.svg";
    let t_max = scaling
        .points
        .iter()
        .flat_map(|p| p.curve.iter().map(|c| c.0))
        .fold(1.0f64, f64::max);
    let n_max = scaling
        .points
        .iter()
        .map(|p| p.containers)
        .max()
        .unwrap_or(1) as f64;
    let rss_max = scaling
        .points
        .iter()
        .flat_map(|p| p.curve.iter().map(|c| c.2 as f64 / 1024.0))
        .fold(1.0f64, f64::max);
    let path = dir.join(name);
    let root = SVGBackend::new(&path, (SIZE.0, SIZE.1 * 2 - 60)).into_drawing_area();
    drawing(root.fill(&WHITE))?;
    let (top, bottom) = root.split_vertically(SIZE.1 - 30);
    let mut ready = drawing(
        ChartBuilder::on(&top)
            .caption(
                "Prewarm: idle containers since CreatePool",
                ("sans-serif", 20),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0.0..t_max * 1.05, 0.0..n_max * 1.1),
    )?;
    drawing(
        ready
            .configure_mesh()
            .x_desc("seconds")
            .y_desc("idle containers")
            .draw(),
    )?;
    let mut rss = drawing(
        ChartBuilder::on(&bottom)
            .caption(
                "Server RSS (this process: server in-process) while warming",
                ("sans-serif", 20),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0.0..t_max * 1.05, 0.0..rss_max * 1.15),
    )?;
    drawing(rss.configure_mesh().x_desc("seconds").y_desc("MiB").draw())?;
    for (i, p) in scaling.points.iter().enumerate() {
        let c = colour(i + 1);
        let label = format!("pool of {}", p.containers);
        drawing(ready.draw_series(LineSeries::new(
            p.curve.iter().map(|&(t, n, _)| (t, f64::from(n))),
            c.stroke_width(2),
        )))?
        .label(label.clone())
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], c.stroke_width(2)));
        drawing(rss.draw_series(LineSeries::new(
            p.curve.iter().map(|&(t, _, kib)| (t, kib as f64 / 1024.0)),
            c.stroke_width(2),
        )))?
        .label(label)
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    for chart in [&mut ready, &mut rss] {
        drawing(
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::LowerRight)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw(),
        )?;
    }
    drawing(root.present())?;
    Ok(vec![name.into()])
}
