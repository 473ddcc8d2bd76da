//! What goes wrong, as error variants a caller can act on.

use std::time::Duration;

use sandpool_client::{AcquireOptions, Client, Error, proto as pb};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let addr = std::env::var("SANDPOOL_ADDR").unwrap_or_else(|_| "127.0.0.1:50051".into());
    let pool = std::env::var("SANDPOOL_POOL").unwrap_or_else(|_| "python".into());
    let client = Client::builder(addr)
        .timeout(Duration::from_secs(10)) // deadline of every unary call
        .connect()
        .await?;

    match client.acquire("no-such-pool").await {
        Err(Error::NotFound(status)) => println!("NotFound: {}", status.message()),
        other => println!("unexpected: {:?}", other.err()),
    }

    // A lease that ends behind the session's back: the next call says so.
    let session = client
        .acquire_with(AcquireOptions::new(&pool).ttl(Duration::from_secs(30)))
        .await?;
    client
        .sessions()
        .release(pb::ReleaseRequest {
            lease_id: session.lease_id().to_string(),
        })
        .await?;
    match session.run_collect("print(1)").await {
        // The server's reason, typed: the ErrorReason enum of errors.proto.
        Err(err @ Error::LeaseLost { .. }) => println!(
            "LeaseLost, reason {}",
            err.error_reason().map_or("none", |r| r.as_str_name())
        ),
        other => println!("unexpected: {other:?}"),
    }
    drop(session);

    // A FAIL_FAST pool that is full answers at once.
    let mut spec = pb::PoolSpec {
        name: format!("{pool}-fail-fast"),
        language: "python".into(),
        ..Default::default()
    };
    if let Ok(image) = std::env::var("SANDPOOL_IMAGE") {
        spec.image = image;
    }
    spec.config = Some(pb::PoolConfig {
        max_pool_size: Some(1),
        min_pool_size: Some(1),
        exhaustion_strategy: pb::ExhaustionStrategy::FailFast as i32,
        ..Default::default()
    });
    let name = spec.name.clone();
    client.create_pool(spec, true).await?;
    let holder = client.acquire(&name).await?;
    match client.acquire(&name).await {
        Err(err @ Error::PoolExhausted(_)) => {
            println!("PoolExhausted, retry after {:?}", err.retry_after())
        }
        other => println!("unexpected: {:?}", other.err()),
    }
    holder.release().await?;
    client.delete_pool(&name, true).await?;
    Ok(())
}
