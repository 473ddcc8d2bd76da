//! Test helper: acquires a lease on POOL at ADDR through the Rust client
//! (which keeps it alive in the background), prints the lease id, then waits
//! forever. Tests kill it with SIGKILL to play a client that dies.

use std::io::Write;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(addr), Some(pool)) = (args.next(), args.next()) else {
        eprintln!("usage: hold_lease ADDR POOL");
        std::process::exit(2);
    };
    let client = sandpool_client::Client::connect(addr)
        .await
        .expect("connect");
    let session = client.acquire(&pool).await.expect("acquire");
    println!("{}", session.lease_id());
    std::io::stdout().flush().expect("flush");
    std::future::pending::<()>().await;
    drop(session);
}
