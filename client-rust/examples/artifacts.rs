//! Files a run writes to /sandbox/outputs and the figures it shows come back
//! with the run, whole; uploads and downloads move files in and out.

use sandpool_client::{Client, Error, RunOptions, proto::PlotFormat};

const PLOTS: &str = r#"
import matplotlib.pyplot as plt
plt.plot([1, 4, 9]); plt.title('shown')
plt.show()
plt.figure(); plt.bar(['a', 'b'], [3, 5])   # still open at the end: captured too
open('/sandbox/outputs/sum.csv', 'w').write('n,sum\n3,14\n')
"#;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let addr = std::env::var("SANDPOOL_ADDR").unwrap_or_else(|_| "127.0.0.1:50051".into());
    let pool = std::env::var("SANDPOOL_POOL").unwrap_or_else(|_| "python".into());
    let client = Client::connect(addr).await?;
    let session = client.acquire(&pool).await?;

    session.upload("/sandbox/in/data.txt", "1 2 3\n").await?;
    let out = session.run_collect(PLOTS).await?;
    for file in &out.files {
        let kind = if file.is_plot() { "plot" } else { "file" };
        println!(
            "{kind} {} {} {} bytes",
            file.name(),
            file.mime_type(),
            file.data.len()
        );
    }
    let png_plots = out
        .plots()
        .iter()
        .filter(|p| p.data.starts_with(b"\x89PNG\r\n\x1a\n"))
        .count();
    println!("png plots: {png_plots}");

    let svg = session
        .run_with(
            "import matplotlib.pyplot as plt\nplt.plot([3, 1, 2])\nplt.show()",
            RunOptions::new().plot_format(PlotFormat::Svg),
        )
        .await?
        .collect()
        .await?;
    for plot in svg.plots() {
        let text = String::from_utf8_lossy(&plot.data);
        println!(
            "svg plot {} has <svg: {}",
            plot.mime_type(),
            text.contains("<svg")
        );
    }

    let (_, csv) = session.download("/sandbox/outputs/sum.csv").await?;
    print!("downloaded: {}", String::from_utf8_lossy(&csv));
    println!("listed: {}", session.list_artifacts().await?.len());
    session.release().await
}
