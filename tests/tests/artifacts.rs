//! Artifacts and plots come back in the Run stream; ListArtifacts knows
//! which run made what; nothing leaks between runs or leases.

use std::collections::BTreeMap;

use sandpool_client::{RunOutput, Session, proto as pb};
use sandpool_tests::{TestServer, language_pool, python_pool};
use sha2::{Digest, Sha256};

/// Reassembles the run's artifacts: name -> (info of the last chunk, bytes).
fn files(out: &RunOutput) -> BTreeMap<String, (pb::ArtifactInfo, Vec<u8>)> {
    let mut files: BTreeMap<String, (pb::ArtifactInfo, Vec<u8>)> = BTreeMap::new();
    for chunk in &out.artifacts {
        let info = chunk.info.clone().expect("info");
        let entry = files
            .entry(info.name.clone())
            .or_insert_with(|| (info.clone(), Vec::new()));
        assert_eq!(chunk.offset, entry.1.len() as u64, "chunks arrive in order");
        entry.1.extend_from_slice(&chunk.data);
        entry.0 = info;
    }
    files
}

async fn run(session: &Session, code: &str, format: pb::PlotFormat) -> RunOutput {
    session
        .run_request(pb::RunRequest {
            program: Some(pb::run_request::Program::Code(pb::Code {
                source: Some(pb::code::Source::Text(code.into())),
                language: String::new(),
            })),
            plot_format: format as i32,
            ..Default::default()
        })
        .await
        .expect("run")
        .collect()
        .await
        .expect("collect")
}

const TWO_FIGURES: &str = r#"
import matplotlib.pyplot as plt
import numpy as np
x = np.linspace(0, 10, 50)
plt.plot(x, np.sin(x)); plt.title('shown')
plt.show()
plt.figure(); plt.plot(x, np.cos(x)); plt.title('left open')
print('plotted')
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn figures_and_files_come_back_as_artifacts() {
    let server = TestServer::start().await;
    let mut spec = python_pool("plots");
    spec.config.as_mut().expect("config").max_pool_size = Some(1);
    server.pool(spec).await;
    let session = server.client.acquire("plots").await.expect("acquire");

    let out = run(&session, TWO_FIGURES, pb::PlotFormat::Unspecified).await;
    assert_eq!(out.stdout_text(), "plotted\n", "no banner in stdout");
    assert!(
        out.stderr.is_empty(),
        "nothing on stderr: {}",
        out.stderr_text()
    );
    let got = files(&out);
    let plots: Vec<_> = got.values().filter(|(info, _)| info.plot).collect();
    assert_eq!(
        plots.len(),
        2,
        "one figure shown, one still open at exit: {:?}",
        got.keys()
    );
    for (info, bytes) in &plots {
        assert!(
            bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
            "{} is a PNG",
            info.name
        );
        assert_eq!(info.mime_type, "image/png");
        assert_eq!(info.size, bytes.len() as u64);
        assert_eq!(info.sha256, hex::encode(Sha256::digest(bytes)));
        assert_eq!(info.run_id, out.run_id);
    }

    // SVG when asked; a plain file too; only this run's artifacts.
    let code = "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()\nopen('/sandbox/outputs/table.csv', 'w').write('a,b\\n1,2\\n')";
    let out = run(&session, code, pb::PlotFormat::Svg).await;
    let got = files(&out);
    assert_eq!(got.len(), 2, "{:?}", got.keys());
    let (svg, svg_bytes) = got.values().find(|(i, _)| i.plot).expect("a plot");
    assert_eq!(svg.mime_type, "image/svg+xml");
    assert!(
        String::from_utf8_lossy(svg_bytes).contains("<svg"),
        "an SVG document"
    );
    let (csv, csv_bytes) = got.get("table.csv").expect("the csv");
    assert!(!csv.plot);
    assert_eq!(csv_bytes, b"a,b\n1,2\n");

    // Seaborn draws through matplotlib; PDF on request.
    let code = "import seaborn as sns\nimport matplotlib.pyplot as plt\nsns.histplot([1, 2, 2, 3, 3, 3])\nplt.show()";
    let out = run(&session, code, pb::PlotFormat::Pdf).await;
    let got = files(&out);
    assert_eq!(got.len(), 1, "{:?} {}", got.keys(), out.stderr_text());
    let (pdf, pdf_bytes) = got.values().next().expect("one plot");
    assert!(pdf.plot && pdf.mime_type == "application/pdf", "{pdf:?}");
    assert!(pdf_bytes.starts_with(b"%PDF"), "a PDF document");

    // A run that makes nothing gets nothing, even right after one that did.
    let out = run(&session, "print('quiet')", pb::PlotFormat::Unspecified).await;
    assert!(out.artifacts.is_empty(), "{:?}", files(&out).keys());

    // ListArtifacts knows every file and the run that made it.
    let listed = session.list_artifacts().await.expect("list");
    assert_eq!(listed.len(), 5, "{listed:?}");
    assert_eq!(listed.iter().filter(|a| a.plot).count(), 4);
    assert!(
        listed
            .iter()
            .all(|a| !a.run_id.is_empty() && a.sha256.len() == 64),
        "{listed:?}"
    );
    let (_, body) = session.download(&csv.path).await.expect("download again");
    assert_eq!(body.as_ref(), b"a,b\n1,2\n");
    let container = session.container_id().to_string();
    session.release().await.expect("release");

    // The next lease (same container) sees none of it.
    let next = server.client.acquire("plots").await.expect("acquire");
    assert_eq!(next.container_id(), container);
    assert!(next.list_artifacts().await.expect("list").is_empty());
    let out = run(
        &next,
        "import matplotlib.pyplot as plt\nprint(plt.get_fignums())",
        pb::PlotFormat::Unspecified,
    )
    .await;
    assert_eq!(out.stdout_text(), "[]\n");
    assert!(out.artifacts.is_empty());
    next.release().await.expect("release");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_and_large_files_and_the_cap() {
    let mut config = sandpool_tests::empty_config();
    config.run_limits.max_artifact_bytes = 3 << 20;
    let server = TestServer::start_with(config).await;
    server.pool(python_pool("files")).await;
    let session = server.client.acquire("files").await.expect("acquire");
    // A shell command's files are reported too (through the wrapper).
    let out = session
        .shell("mkdir -p /sandbox/outputs/deep && head -c 2500000 /dev/urandom > /sandbox/outputs/deep/blob.bin && echo made")
        .await
        .expect("shell");
    assert_eq!(out.stdout_text(), "made\n");
    let got = files(&out);
    let (info, bytes) = got.get("deep/blob.bin").expect("the blob");
    assert_eq!(bytes.len(), 2_500_000, "all of it, in chunks");
    assert!(
        out.artifacts.len() > 1,
        "large files come in several chunks"
    );
    assert_eq!(info.sha256, hex::encode(Sha256::digest(bytes)));
    // Over the run's budget: announced without content.
    let out = session
        .shell("head -c 2000000 /dev/urandom > /sandbox/outputs/a.bin; head -c 2000000 /dev/urandom > /sandbox/outputs/b.bin")
        .await
        .expect("shell");
    let omitted: Vec<_> = out.artifacts.iter().filter(|c| c.omitted).collect();
    assert_eq!(omitted.len(), 1, "the second file is over the 3 MiB budget");
    assert!(omitted[0].data.is_empty());
    assert_eq!(omitted[0].info.as_ref().expect("info").size, 2_000_000);
    session.release().await.expect("release");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r_base_and_ggplot2_plots_come_back() {
    let server = TestServer::start().await;
    server.pool(language_pool("r", "r")).await;
    let session = server.client.acquire("r").await.expect("acquire");
    let code = "plot(1:10)\nlibrary(ggplot2)\nggplot(data.frame(x = 1:5, y = c(2, 4, 1, 5, 3)), aes(x, y)) + geom_line()\ncat('drawn\\n')";
    let out = run(&session, code, pb::PlotFormat::Unspecified).await;
    assert_eq!(out.stdout_text(), "drawn\n", "{}", out.stderr_text());
    let got = files(&out);
    assert_eq!(got.len(), 2, "a base plot and a ggplot: {:?}", got.keys());
    for (info, bytes) in got.values() {
        assert!(info.plot, "{info:?}");
        assert!(bytes.starts_with(b"\x89PNG"), "{} is a PNG", info.name);
    }
    let out = run(&session, "plot(1:3)", pb::PlotFormat::Svg).await;
    let got = files(&out);
    assert_eq!(got.len(), 1, "only this run's plot: {:?}", got.keys());
    assert!(got.values().all(
        |(i, b)| i.mime_type == "image/svg+xml" && String::from_utf8_lossy(b).contains("<svg")
    ));
    session.release().await.expect("release");
    server.stop().await;
}
