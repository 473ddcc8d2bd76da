//! Output arrives while the program runs, not at its end.

use std::time::Instant;

use sandpool_client::{Client, Error, RunEvent, RunOptions};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let addr = std::env::var("SANDPOOL_ADDR").unwrap_or_else(|_| "127.0.0.1:50051".into());
    let pool = std::env::var("SANDPOOL_POOL").unwrap_or_else(|_| "python".into());
    let client = Client::connect(addr).await?;
    let session = client.acquire(&pool).await?;

    let code = "import sys, time\nfor i in range(3):\n    print('tick', i, flush=True)\n    time.sleep(0.3)\nprint('done', file=sys.stderr)";
    let started = Instant::now();
    let mut run = session.run(code).await?;
    // Chunks come as the program writes them (a line may come in pieces):
    // print each line once it is complete, stdout's with the time it arrived.
    let (mut out_line, mut err_line) = (Vec::new(), Vec::new());
    while let Some(event) = run.next().await {
        match event? {
            RunEvent::Started { run_id } => println!("started {run_id}"),
            RunEvent::Stdout(data) => {
                for line in complete_lines(&mut out_line, &data) {
                    println!("[{:4.1}s] {line}", started.elapsed().as_secs_f64());
                }
            }
            RunEvent::Stderr(data) => {
                for line in complete_lines(&mut err_line, &data) {
                    println!("stderr: {line}");
                }
            }
            RunEvent::Artifact(_) => {}
            // A connection that broke for longer than the server could
            // keep the run's output: how much was lost.
            RunEvent::Gap(gap) => println!("lost {} bytes of stdout", gap.stdout_bytes),
            RunEvent::Exit(exit) => println!("exit {} after {:?}", exit.exit_code, exit.duration),
        }
    }

    // stdin, env and a timeout: a run past its timeout is killed.
    let out = session
        .run_with(
            "import os, sys\nprint(sys.stdin.read().upper(), os.environ['WHO'])\nwhile True: pass",
            RunOptions::new()
                .stdin("shouting")
                .env("WHO", "sandpool")
                .timeout(std::time::Duration::from_secs(1)),
        )
        .await?
        .collect()
        .await?;
    print!("{}", out.stdout_text());
    println!("ended by {:?}", out.end_reason());
    session.release().await
}

/// The lines that `data` completes, after what `pending` held of a line;
/// keeps the rest in `pending`.
fn complete_lines(pending: &mut Vec<u8>, data: &[u8]) -> Vec<String> {
    let mut lines = Vec::new();
    for &byte in data {
        if byte == b'\n' {
            lines.push(String::from_utf8_lossy(pending).into_owned());
            pending.clear();
        } else {
            pending.push(byte);
        }
    }
    lines
}
