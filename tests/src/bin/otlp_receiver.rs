//! `otlp-receiver OUT`: the tests' OTLP/gRPC receiver as a process, for the
//! client suites in other languages. Prints `listening http://ADDR` on
//! stdout, then appends what it receives to OUT as JSON lines
//! (`{"span": ...}`, `{"point": ...}` or `{"histogram": ...}`), every 50 ms,
//! until stdin closes.

use std::{io::Write, time::Duration};

use sandpool_tests::otlp::Receiver;
use serde_json::json;
use tokio::io::AsyncReadExt;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let Some(out) = std::env::args_os().nth(1) else {
        anyhow::bail!("usage: otlp-receiver OUT");
    };
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(out)?;
    let receiver = Receiver::start().await;
    println!("listening {}", receiver.endpoint());
    std::io::stdout().flush()?;
    let mut stdin = tokio::io::stdin();
    let mut closed = Box::pin(async move {
        let mut buf = [0u8; 64];
        while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {}
    });
    loop {
        let stop = tokio::select! {
            _ = &mut closed => true,
            _ = tokio::time::sleep(Duration::from_millis(50)) => false,
        };
        let (spans, points, histograms) = receiver.drain();
        for span in spans {
            writeln!(file, "{}", json!({ "span": span }))?;
        }
        for point in points {
            writeln!(file, "{}", json!({ "point": point }))?;
        }
        for histogram in histograms {
            writeln!(file, "{}", json!({ "histogram": histogram }))?;
        }
        file.flush()?;
        if stop {
            break;
        }
    }
    receiver.stop().await;
    Ok(())
}
