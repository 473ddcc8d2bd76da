//! A persistent interpreter (like a notebook kernel), per-lease setup, and
//! a library installed from a package file for this lease only.

use sandpool_client::{AcquireOptions, Client, Error};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let addr = std::env::var("SANDPOOL_ADDR").unwrap_or_else(|_| "127.0.0.1:50051".into());
    let pool = std::env::var("SANDPOOL_POOL").unwrap_or_else(|_| "python".into());
    let client = Client::connect(addr).await?;
    let options = AcquireOptions::new(&pool)
        .env("PROJECT", "apollo")
        .file("/sandbox/data/input.txt", "hello file");
    let session = client.acquire_with(options).await?;

    let ctx = session.create_context().await?;
    ctx.run_collect("import os\ncount = len(open('/sandbox/data/input.txt').read())")
        .await?;
    let boom = ctx.run_collect("raise ValueError('oops')").await?;
    let last = boom
        .stderr_text()
        .lines()
        .last()
        .unwrap_or_default()
        .to_string();
    println!("error kept the context: exit {} ({last})", boom.exit_code());
    let out = ctx
        .run_collect("print(count, os.environ['PROJECT'])")
        .await?;
    print!("context: {}", out.stdout_text());
    ctx.delete().await?;

    // Package files in the container install for this lease only (names
    // need a pool with lease_installs and a reachable index).
    if let Ok(wheel) = std::env::var("SANDPOOL_WHEEL") {
        let name = wheel
            .rsplit('/')
            .next()
            .unwrap_or("package.whl")
            .to_string();
        let bytes = std::fs::read(&wheel).map_err(|e| Error::Protocol(e.to_string()))?;
        session
            .upload(&format!("/sandbox/pkgs/{name}"), bytes)
            .await?;
        let done = session
            .install_libraries(&[format!("/sandbox/pkgs/{name}")])
            .await?;
        let installed = done.log.lines().find(|l| l.starts_with("Successfully"));
        println!("{}", installed.unwrap_or("install log without a result"));
    }
    session.release().await
}
