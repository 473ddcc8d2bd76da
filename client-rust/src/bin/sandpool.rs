//! `sandpool`: run code in a warm sandbox and manage pools from a shell.

use std::{
    io::{Read, Write},
    process::ExitCode,
    time::Duration,
};

use clap::{Parser, Subcommand};
use sandpool_client::{Client, Error, RunEvent, proto as pb};

#[cfg(feature = "mcp")]
#[path = "sandpool/mcp.rs"]
mod mcp;
#[path = "sandpool/shell.rs"]
mod shell;

#[derive(Debug, Parser)]
#[command(
    name = "sandpool",
    version,
    about = "Run code in warm sandbox containers"
)]
struct Cli {
    /// Server address.
    #[arg(
        long,
        global = true,
        env = "SANDPOOL_ADDR",
        default_value = "127.0.0.1:50051"
    )]
    addr: String,
    /// Bearer token, for servers that require one.
    #[arg(long, global = true, env = "SANDPOOL_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run code (or, with --shell, a shell command) in a pool; output streams
    /// live and the exit code is the program's.
    Run {
        /// Pool to lease from.
        #[arg(long, default_value = "python")]
        pool: String,
        /// Treat CODE as a shell command line.
        #[arg(long)]
        shell: bool,
        /// Kill the run after this many seconds.
        #[arg(long)]
        timeout: Option<f64>,
        /// The code; "-" reads it from standard input.
        code: String,
    },
    /// An interactive shell (or COMMAND) in a sandbox of POOL, on this
    /// terminal: raw mode, resizes followed, Ctrl-C goes to the sandbox.
    /// Exits with the program's exit code.
    Shell {
        /// Pool to lease from.
        pool: String,
        /// End the session after this many seconds (default: the pool's
        /// max_run_timeout).
        #[arg(long)]
        timeout: Option<f64>,
        /// The program and its arguments (after --); default: bash, or sh.
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// List pools.
    Pools,
    /// Show a pool's statistics.
    Stats {
        name: String,
        /// Keep printing on every change.
        #[arg(long)]
        watch: bool,
    },
    /// Create a pool.
    CreatePool {
        name: String,
        #[arg(long, default_value = "python")]
        language: String,
        #[arg(long)]
        image: Option<String>,
        /// docker (default), podman or kubernetes.
        #[arg(long)]
        backend: Option<String>,
        /// Kubernetes pools: the namespace of their pods (default: the
        /// server's; the server allows only the ones its operator listed).
        #[arg(long)]
        namespace: Option<String>,
        #[arg(long)]
        min: Option<u32>,
        #[arg(long)]
        max: Option<u32>,
        /// wait, fail-fast or temporary.
        #[arg(long)]
        strategy: Option<String>,
        /// Give every lease a fresh container.
        #[arg(long)]
        no_reuse: bool,
        /// Return once the pool is warm.
        #[arg(long)]
        wait: bool,
    },
    /// Serve MCP (Model Context Protocol) for agent hosts: over stdio, or
    /// over streamable HTTP at /mcp with --http. Each MCP session leases one
    /// sandbox from POOL, acquired on first use and released when the
    /// session ends.
    #[cfg(feature = "mcp")]
    Mcp {
        /// Pool to lease from.
        #[arg(long, default_value = "python")]
        pool: String,
        /// Serve streamable HTTP on this address (e.g. 127.0.0.1:8808)
        /// instead of stdio.
        #[arg(long)]
        http: Option<std::net::SocketAddr>,
        /// Bearer token HTTP clients must send (required with --http).
        #[arg(long, env = "SANDPOOL_MCP_HTTP_TOKEN", hide_env_values = true)]
        http_token: Option<String>,
        /// Host header values accepted over HTTP besides localhost,
        /// 127.0.0.1 and ::1 (repeatable).
        #[arg(long)]
        allowed_host: Vec<String>,
        /// Release a session's sandbox after this many seconds without a
        /// tool call (0: never); the next call gets a fresh one.
        #[arg(long, default_value_t = 600)]
        idle_release: u64,
        /// TTL of the leases in seconds (default: the server's); the
        /// keepalive renews them at a third of it.
        #[arg(long)]
        lease_ttl: Option<u64>,
    },
    /// Delete (drain) a pool.
    DeletePool {
        name: String,
        /// Return once its containers are gone.
        #[arg(long)]
        wait: bool,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sandpool: {e}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode, Error> {
    let mut builder = Client::builder(cli.addr);
    if let Some(token) = cli.token {
        builder = builder.token(token);
    }
    let client = builder.connect().await?;
    match cli.command {
        Command::Run {
            pool,
            shell,
            timeout,
            code,
        } => run_code(&client, &pool, shell, timeout, code).await,
        Command::Shell {
            pool,
            timeout,
            command,
        } => {
            let options = shell::Options {
                pool,
                timeout,
                command,
            };
            shell::shell(&client, options).await
        }
        Command::Pools => {
            println!(
                "{:<20} {:<12} {:<32} {:<9} {:>9} {:>5} {:>5}",
                "NAME", "LANGUAGE", "IMAGE", "PHASE", "TOTAL/MAX", "IDLE", "BUSY"
            );
            for pool in client.list_pools().await? {
                let spec = pool.spec.unwrap_or_default();
                let stats = pool.stats.unwrap_or_default();
                let counts = stats.state_counts.unwrap_or_default();
                let phase = pb::PoolPhase::try_from(pool.phase)
                    .map(|p| {
                        p.as_str_name()
                            .trim_start_matches("POOL_PHASE_")
                            .to_string()
                    })
                    .unwrap_or_default();
                println!(
                    "{:<20} {:<12} {:<32} {:<9} {:>9} {:>5} {:>5}",
                    spec.name,
                    spec.language,
                    spec.image,
                    phase,
                    format!("{}/{}", stats.total_size, stats.max_size),
                    counts.idle,
                    counts.busy
                );
                if !pool.status_message.is_empty() {
                    println!("    {}", pool.status_message);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Stats { name, watch } => {
            if watch {
                let mut stream = client.watch_stats(&name).await?;
                while let Some(message) = stream.message().await? {
                    if let Some(stats) = message.stats {
                        print_stats(&stats);
                    }
                }
            } else {
                print_stats(&client.stats(&name).await?);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::CreatePool {
            name,
            language,
            image,
            backend,
            namespace,
            min,
            max,
            strategy,
            no_reuse,
            wait,
        } => {
            let backend = match backend.as_deref() {
                None => pb::Backend::Unspecified,
                Some("docker") => pb::Backend::Docker,
                Some("podman") => pb::Backend::Podman,
                Some("kubernetes" | "k8s") => pb::Backend::Kubernetes,
                Some(other) => {
                    return Err(Error::Protocol(format!(
                        "--backend {other:?}: use docker, podman or kubernetes"
                    )));
                }
            };
            let strategy = match strategy.as_deref().map(|s| s.replace('_', "-")) {
                None => pb::ExhaustionStrategy::Unspecified,
                Some(s) if s == "wait" => pb::ExhaustionStrategy::Wait,
                Some(s) if s == "fail-fast" => pb::ExhaustionStrategy::FailFast,
                Some(s) if s == "temporary" => pb::ExhaustionStrategy::Temporary,
                Some(other) => {
                    return Err(Error::Protocol(format!(
                        "--strategy {other:?}: use wait, fail-fast or temporary"
                    )));
                }
            };
            let spec = pb::PoolSpec {
                name,
                language,
                image: image.unwrap_or_default(),
                backend: backend as i32,
                namespace,
                config: Some(pb::PoolConfig {
                    min_pool_size: min,
                    max_pool_size: max,
                    exhaustion_strategy: strategy as i32,
                    ..Default::default()
                }),
                reuse: no_reuse.then_some(false),
                ..Default::default()
            };
            let pool = client.create_pool(spec, wait).await?;
            let phase = pb::PoolPhase::try_from(pool.phase)
                .map(|p| p.as_str_name())
                .unwrap_or("?");
            println!(
                "created {} ({phase})",
                pool.spec.map(|s| s.name).unwrap_or_default()
            );
            if !pool.status_message.is_empty() {
                println!("    {}", pool.status_message);
            }
            Ok(ExitCode::SUCCESS)
        }
        #[cfg(feature = "mcp")]
        Command::Mcp {
            pool,
            http,
            http_token,
            allowed_host,
            idle_release,
            lease_ttl,
        } => {
            let options = mcp::Options {
                pool,
                idle_release: (idle_release > 0).then(|| Duration::from_secs(idle_release)),
                lease_ttl: lease_ttl.map(Duration::from_secs),
                http,
                http_token,
                allowed_hosts: allowed_host,
            };
            Ok(match mcp::serve(client, options).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("sandpool mcp: {e}");
                    ExitCode::from(2)
                }
            })
        }
        Command::DeletePool { name, wait } => {
            let busy = client.delete_pool(&name, wait).await?;
            println!("deleting {name}: {busy} containers still leased");
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn run_code(
    client: &Client,
    pool: &str,
    shell: bool,
    timeout: Option<f64>,
    code: String,
) -> Result<ExitCode, Error> {
    let code = if code == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| Error::Protocol(format!("reading code from stdin: {e}")))?;
        text
    } else {
        code
    };
    let program = if shell {
        pb::run_request::Program::Command(pb::Command {
            argv: Vec::new(),
            shell: code,
        })
    } else {
        pb::run_request::Program::Code(pb::Code {
            source: Some(pb::code::Source::Text(code)),
            language: String::new(),
        })
    };
    let timeout = timeout_arg(timeout)?.map(prost_types_duration);
    let session = client.acquire(pool).await?;
    let mut events = session
        .run_request(pb::RunRequest {
            program: Some(program),
            timeout,
            ..Default::default()
        })
        .await?;
    let mut exit = None;
    loop {
        let event = tokio::select! {
            e = events.next() => e,
            _ = tokio::signal::ctrl_c() => {
                // Dropping the stream kills the run on the server.
                drop(events);
                session.release().await?;
                return Ok(ExitCode::from(130));
            }
        };
        let Some(event) = event else { break };
        match event? {
            RunEvent::Started { .. } | RunEvent::Artifact(_) => {}
            RunEvent::Stdout(d) => {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(&d);
                let _ = out.flush();
            }
            RunEvent::Stderr(d) => {
                let mut err = std::io::stderr().lock();
                let _ = err.write_all(&d);
                let _ = err.flush();
            }
            RunEvent::Gap(g) => {
                eprintln!(
                    "sandpool: the connection broke for too long: {} bytes of stdout and {} of stderr were lost",
                    g.stdout_bytes, g.stderr_bytes
                );
            }
            RunEvent::Exit(e) => exit = Some(e),
        }
    }
    session.release().await?;
    let Some(exit) = exit else {
        return Err(Error::Protocol(
            "the run ended without an exit event".into(),
        ));
    };
    Ok(exit_code(&exit, &[pb::EndReason::Exited]))
}

/// `--timeout SECONDS`, checked.
fn timeout_arg(timeout: Option<f64>) -> Result<Option<Duration>, Error> {
    match timeout {
        Some(t) if t.is_finite() && t > 0.0 => Ok(Some(Duration::from_secs_f64(t))),
        Some(t) => Err(Error::Protocol(format!(
            "--timeout {t}: must be a positive number of seconds"
        ))),
        None => Ok(None),
    }
}

/// The command's exit code for a run's end: the program's, 124 after a
/// timeout (as timeout(1)). Ends other than `quiet` are explained on stderr.
fn exit_code(exit: &pb::RunExit, quiet: &[pb::EndReason]) -> ExitCode {
    let reason = pb::EndReason::try_from(exit.end_reason).unwrap_or(pb::EndReason::Unspecified);
    if !quiet.contains(&reason) {
        eprintln!("sandpool: {}", exit.message);
    }
    let code = match reason {
        pb::EndReason::Timeout => 124,
        _ => exit.exit_code,
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn prost_types_duration(d: Duration) -> pb_duration::Duration {
    pb_duration::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

mod pb_duration {
    pub use prost_types::Duration;
}

fn print_stats(s: &pb::PoolStats) {
    let c = s.state_counts.unwrap_or_default();
    let n = s.counters.unwrap_or_default();
    let lat = s.acquire_latency.unwrap_or_default();
    let ms = |d: Option<prost_types::Duration>| {
        d.map_or(0.0, |d| d.seconds as f64 * 1e3 + f64::from(d.nanos) / 1e6)
    };
    println!(
        "{}: total {}/{} (min {}) idle {} busy {} initializing {} resetting {} unhealthy {} removing {} | waiting {} leases {} temporaries {}{}",
        s.pool,
        s.total_size,
        s.max_size,
        s.min_size,
        c.idle,
        c.busy,
        c.initializing,
        c.resetting,
        c.unhealthy,
        c.removing,
        s.waiting,
        s.active_leases,
        s.temporary_containers,
        if s.closed { " CLOSED" } else { "" }
    );
    println!(
        "    acquisitions {} waits {} wait_timeouts {} fail_fast {} runs {} created {} create_failures {} health_failures {} | acquire p50 {:.3}ms p99 {:.3}ms",
        n.acquisitions,
        n.waits,
        n.wait_timeouts,
        n.fail_fast_refusals,
        n.runs,
        n.containers_created,
        n.create_failures,
        n.health_failures,
        ms(lat.p50),
        ms(lat.p99)
    );
}
