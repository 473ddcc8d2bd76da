//! Create a pool that belongs to this process and keep it alive until the
//! process is killed: when it dies, the server deletes the pool within the
//! owner TTL. (The client's tests kill it with SIGKILL.)
//!
//!     SANDPOOL_ADDR=127.0.0.1:50051 cargo run -p sandpool-client --example hold_owned_pool -- NAME [OWNER_TTL_MS]

use std::time::Duration;

use sandpool_client::{Client, DEFAULT_OWNER_TTL, Error, proto as pb};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let addr = std::env::var("SANDPOOL_ADDR").unwrap_or_else(|_| "127.0.0.1:50051".into());
    let image = std::env::var("SANDPOOL_IMAGE").unwrap_or_default();
    let mut args = std::env::args().skip(1);
    let name = args.next().unwrap_or_else(|| "owned".into());
    let owner_ttl = args
        .next()
        .and_then(|ms| ms.parse().ok())
        .map_or(DEFAULT_OWNER_TTL, Duration::from_millis);
    let client = Client::connect(addr).await?;
    let spec = pb::PoolSpec {
        name,
        language: "python".into(),
        image,
        config: Some(pb::PoolConfig {
            min_pool_size: Some(1),
            max_pool_size: Some(2),
            ..Default::default()
        }),
        ..Default::default()
    };
    let pool = client.create_owned_pool(spec, owner_ttl, true).await?;
    println!("POOL {} {}", pool.name(), pool.pool().owner);
    // Kept alive in the background until the process dies.
    std::future::pending::<()>().await;
    pool.delete().await.map(|_| ())
}
