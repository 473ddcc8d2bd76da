//! A chaos client (see `sandpool_tests::chaos`): plays a random client of
//! the server at ADDR through the Rust client, one JSON line per step.
//!
//! `chaos_client --addr http://127.0.0.1:50051 --seed 7 --steps 40 --client 0
//!  --pools python --prefix chaos --image sandpool/python:bookworm [--lockstep]`

use sandpool_tests::chaos::client::{ClientArgs, run};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = match ClientArgs::parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("{e}\n{}", ClientArgs::USAGE);
            std::process::exit(2);
        }
    };
    if let Err(e) = run(args).await {
        eprintln!("chaos client: {e:#}");
        std::process::exit(1);
    }
}
