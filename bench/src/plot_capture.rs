//! A matplotlib figure made in a run, three ways: captured by sandpool (the
//! figure comes back as an artifact), drawn with the Agg backend (show()
//! does nothing, nothing comes back), and the same program without the
//! plotting lines.

use std::time::{Duration, Instant};

use anyhow::bail;
use sandpool_client::{Session, proto as pb};

/// Data for the plot, and the plotting lines.
pub const DATA: &str = "import math\nys = [math.sin(x / 10) for x in range(200)]\n";
pub const PLOT: &str =
    "import matplotlib.pyplot as plt\nplt.plot(ys)\nplt.title('bench')\nplt.show()\n";

/// The floor's program: the same figure, rendered to PNG and written to
/// stdout, which is how a caller of a raw engine exec gets a figure back.
pub const FLOOR_PROGRAM: &str = "import math, sys\nimport matplotlib\nmatplotlib.use('agg')\nimport matplotlib.pyplot as plt\nys = [math.sin(x / 10) for x in range(200)]\nplt.plot(ys)\nplt.title('bench')\nplt.savefig(sys.stdout.buffer, format='png')\n";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// plt.show() with sandpool's capture: a PNG comes back.
    Captured,
    /// The Agg backend: show() does nothing, nothing comes back.
    Agg,
    /// No matplotlib at all.
    NoPlot,
}

impl Variant {
    pub const ALL: [Variant; 3] = [Variant::Captured, Variant::Agg, Variant::NoPlot];
}

/// One run of `variant` on `session`: its time (request to exit) and the
/// artifact bytes that came back. Fails unless exactly the captured run
/// brought a plot back.
pub async fn run_variant(session: &Session, variant: Variant) -> anyhow::Result<(Duration, usize)> {
    let code = match variant {
        Variant::NoPlot => format!("{DATA}print('ok')"),
        _ => format!("{DATA}{PLOT}print('ok')"),
    };
    let mut request = pb::RunRequest {
        program: Some(pb::run_request::Program::Code(pb::Code {
            source: Some(pb::code::Source::Text(code)),
            language: String::new(),
        })),
        ..Default::default()
    };
    if variant == Variant::Agg {
        request.env.insert("MPLBACKEND".into(), "agg".into());
    }
    let capture = variant == Variant::Captured;
    let started = Instant::now();
    let out = session.run_request(request).await?.collect().await?;
    let took = started.elapsed();
    if out.stdout_text() != "ok\n" {
        bail!(
            "unexpected output {:?} / {:?}",
            out.stdout_text(),
            out.stderr_text()
        );
    }
    let plots = out
        .artifacts
        .iter()
        .filter(|a| a.last && a.info.as_ref().is_some_and(|i| i.plot))
        .count();
    if capture != (plots == 1) {
        bail!("capture={capture} but {plots} plots came back");
    }
    Ok((took, out.artifacts.iter().map(|a| a.data.len()).sum()))
}
