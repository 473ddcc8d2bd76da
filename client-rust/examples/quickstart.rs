//! Acquire a warm container, run code, release it.
//!
//!     SANDPOOL_ADDR=127.0.0.1:50051 SANDPOOL_POOL=python cargo run -p sandpool-client --example quickstart

use sandpool_client::{Client, Error};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let addr = std::env::var("SANDPOOL_ADDR").unwrap_or_else(|_| "127.0.0.1:50051".into());
    let pool = std::env::var("SANDPOOL_POOL").unwrap_or_else(|_| "python".into());
    let client = Client::connect(addr).await?;
    let session = client.acquire(&pool).await?; // kept alive in the background
    let out = session
        .run_collect("import sys; print(sum(range(10)), sys.version_info.major)")
        .await?;
    print!("{}", out.stdout_text()); // "45 3"
    println!("exit {} ({:?})", out.exit_code(), out.end_reason());
    session.release().await // also released on drop
}
