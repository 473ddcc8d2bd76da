//! `sandpool mcp`: an MCP server (stdio or streamable HTTP) in front of a
//! sandpool server, for agent hosts. It is an ordinary sandpool client: one
//! lease per MCP session, acquired on the first tool call that needs a
//! sandbox, kept alive by the client library's Session, released when the
//! session ends (stdio EOF, HTTP DELETE or close, shutdown) or after
//! `--idle-release` seconds without a call; the next call then acquires a
//! fresh sandbox and its result says that files and contexts were reset.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex as StdMutex, Weak},
    time::{Duration, Instant},
};

use axum::{
    extract::Request,
    http::{StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use base64::Engine as _;
use bytes::Bytes;
use rmcp::{
    ErrorData, ServerHandler, ServiceExt,
    handler::server::{router::tool::ToolRouter, wrapper::Parameters},
    model::{
        CallToolResult, ContentBlock, Implementation, ResourceContents, ServerCapabilities,
        ServerConfig,
    },
    schemars::{self, JsonSchema},
    tool, tool_handler, tool_router,
    transport::streamable_http_server::{
        StreamableHttpServerConfig, StreamableHttpService, session::local::LocalSessionManager,
    },
};
use sandpool_client::{AcquireOptions, Client, Error, RunOptions, RunOutput, Session, proto as pb};
use serde::Deserialize;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

/// How long shutdown waits for the releases under way.
const RELEASE_WAIT: Duration = Duration::from_secs(10);
/// How long shutdown waits, after the releases it knows of, for those of
/// sessions whose drop was under way.
const RELEASE_SETTLE: Duration = Duration::from_millis(200);

/// What `sandpool mcp` was asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    /// Pool every session leases from.
    pub pool: String,
    /// Release an idle session's lease after this long; `None`: never.
    pub idle_release: Option<Duration>,
    /// TTL of the leases; `None`: the server's default.
    pub lease_ttl: Option<Duration>,
    /// Serve streamable HTTP here instead of stdio.
    pub http: Option<SocketAddr>,
    /// Bearer token HTTP clients must present (required with `http`).
    pub http_token: Option<String>,
    /// Host header values HTTP accepts besides loopback names.
    pub allowed_hosts: Vec<String>,
}

/// Why `sandpool mcp` could not serve.
#[derive(Debug, thiserror::Error)]
pub enum McpError {
    #[error("--http needs a bearer token: --http-token or SANDPOOL_MCP_HTTP_TOKEN")]
    NoHttpToken,
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP server: {0}")]
    Http(#[source] std::io::Error),
    #[error("MCP over stdio: {0}")]
    Stdio(String),
}

/// Serves MCP until the transport ends or the process is told to stop;
/// every lease still held is released before it returns.
pub async fn serve(client: Client, options: Options) -> Result<(), McpError> {
    let shared = Arc::new(Shared {
        client,
        pool: options.pool.clone(),
        idle_release: options.idle_release,
        lease_ttl: options.lease_ttl,
        live: StdMutex::new(Vec::new()),
        releasing: StdMutex::new(Vec::new()),
    });
    let result = match options.http {
        None => serve_stdio(&shared).await,
        Some(addr) => {
            let token = options
                .http_token
                .clone()
                .filter(|t| !t.is_empty())
                .ok_or(McpError::NoHttpToken)?;
            serve_http(&shared, addr, token, options.allowed_hosts.clone()).await
        }
    };
    shared.release_all().await;
    result
}

async fn serve_stdio(shared: &Arc<Shared>) -> Result<(), McpError> {
    let server = SandpoolMcp::new(shared);
    let slot = Arc::clone(&server.slot);
    let running = server
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|e| McpError::Stdio(e.to_string()))?;
    let token = running.cancellation_token();
    let waiting = running.waiting();
    tokio::pin!(waiting);
    tokio::select! {
        quit = &mut waiting => {
            quit.map_err(|e| McpError::Stdio(e.to_string()))?;
        }
        () = shutdown_signal() => {
            token.cancel();
            let _ = waiting.await;
        }
    }
    slot.close().await;
    Ok(())
}

async fn serve_http(
    shared: &Arc<Shared>,
    addr: SocketAddr,
    token: String,
    allowed_hosts: Vec<String>,
) -> Result<(), McpError> {
    let stop = CancellationToken::new();
    let mut hosts: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    hosts.extend(allowed_hosts);
    let mut config = StreamableHttpServerConfig::default().with_allowed_hosts(hosts);
    config.cancellation_token = stop.child_token();
    let factory = {
        let shared = Arc::clone(shared);
        move || Ok(SandpoolMcp::new(&shared))
    };
    let service: StreamableHttpService<SandpoolMcp, LocalSessionManager> =
        StreamableHttpService::new(factory, Arc::new(LocalSessionManager::default()), config);
    let token = Arc::new(token);
    let app = axum::Router::new()
        .nest_service("/mcp", service)
        .layer(axum::middleware::from_fn(
            move |request: Request, next: Next| {
                let token = Arc::clone(&token);
                async move { require_bearer(&token, request, next).await }
            },
        ));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| McpError::Bind { addr, source })?;
    let local = listener.local_addr().map_err(McpError::Http)?;
    // Tests and scripts read this line to learn the port of `:0`.
    eprintln!("sandpool mcp: serving MCP on http://{local}/mcp");
    let graceful = {
        let stop = stop.clone();
        async move {
            shutdown_signal().await;
            stop.cancel();
        }
    };
    axum::serve(listener, app)
        .with_graceful_shutdown(graceful)
        .await
        .map_err(McpError::Http)
}

/// 401 unless the request carries `Authorization: Bearer <token>`.
async fn require_bearer(token: &str, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    match presented {
        Some(p) if constant_time_eq(p.as_bytes(), token.as_bytes()) => next.run(request).await,
        Some(_) => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer error=\"invalid_token\"")],
            "the bearer token is not this MCP server's\n",
        )
            .into_response(),
        None => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "this MCP server needs an Authorization: Bearer header\n",
        )
            .into_response(),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// What every MCP session shares: the sandpool client and the sessions
/// alive, so that shutdown can release their leases.
struct Shared {
    client: Client,
    pool: String,
    idle_release: Option<Duration>,
    lease_ttl: Option<Duration>,
    live: StdMutex<Vec<Weak<Slot>>>,
    /// Releases of sessions that ended while the process runs on.
    releasing: StdMutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Shared {
    fn register(&self, slot: &Arc<Slot>) {
        if let Ok(mut live) = self.live.lock() {
            live.retain(|w| w.strong_count() > 0);
            live.push(Arc::downgrade(slot));
        }
    }

    async fn release_all(&self) {
        let slots: Vec<Arc<Slot>> = match self.live.lock() {
            Ok(mut live) => live.drain(..).filter_map(|w| w.upgrade()).collect(),
            Err(_) => Vec::new(),
        };
        for slot in slots {
            slot.close().await;
        }
        // A slot that could not be upgraded above was being dropped (an
        // HTTP session's service ends on a task of its own at shutdown):
        // its Drop queues its release, maybe only after the first look. So
        // look again after a pause, until a look finds nothing new, within
        // RELEASE_WAIT; a release left queued would die with the runtime
        // and leave its lease to its TTL.
        let until = tokio::time::Instant::now() + RELEASE_WAIT;
        let mut looked_again = false;
        loop {
            let pending: Vec<_> = match self.releasing.lock() {
                Ok(mut r) => r.drain(..).collect(),
                Err(_) => Vec::new(),
            };
            if pending.is_empty() {
                if looked_again || tokio::time::Instant::now() >= until {
                    return;
                }
                looked_again = true;
                tokio::time::sleep(RELEASE_SETTLE).await;
                continue;
            }
            looked_again = false;
            if tokio::time::timeout_at(until, futures::future::join_all(pending))
                .await
                .is_err()
            {
                return;
            }
        }
    }

    /// Releases `session` in the background; `release_all` waits for it.
    fn release_later(&self, session: Session) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime: Session's Drop leaves the lease to its TTL.
            return;
        };
        let task = runtime.spawn(async move {
            let _ = session.release().await;
        });
        if let Ok(mut releasing) = self.releasing.lock() {
            releasing.retain(|t| !t.is_finished());
            releasing.push(task);
        }
    }
}

/// One MCP session's sandbox: the lease (when held) and its contexts.
struct Slot {
    shared: Arc<Shared>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    session: Option<Session>,
    /// Context name -> context id, in the current lease.
    contexts: HashMap<String, String>,
    /// Said at the start of the next tool result.
    notice: Option<String>,
    last_used: Option<Instant>,
    closed: bool,
}

impl Slot {
    fn new(shared: &Arc<Shared>) -> Arc<Self> {
        let slot = Arc::new(Self {
            shared: Arc::clone(shared),
            state: Mutex::new(State::default()),
        });
        shared.register(&slot);
        if let Some(idle) = shared.idle_release {
            tokio::spawn(idle_reaper(Arc::downgrade(&slot), idle));
        }
        slot
    }

    /// Releases the lease for good (the MCP session ended).
    async fn close(&self) {
        let mut state = self.state.lock().await;
        state.closed = true;
        state.contexts.clear();
        if let Some(session) = state.session.take() {
            let _ = session.release().await;
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        // An HTTP session closed (or its service was dropped at shutdown).
        if let Some(session) = self.state.get_mut().session.take() {
            self.shared.release_later(session);
        }
    }
}

/// Releases the slot's lease once it has been idle for `idle`.
async fn idle_reaper(slot: Weak<Slot>, idle: Duration) {
    loop {
        let wait = {
            let Some(slot) = slot.upgrade() else { return };
            let mut state = slot.state.lock().await;
            if state.closed {
                return;
            }
            let since = state.last_used.map_or(Duration::ZERO, |t| t.elapsed());
            if state.session.is_some() && since >= idle {
                let session = state.session.take();
                state.contexts.clear();
                state.notice = Some(format!(
                    "This session was idle for {}s, so its sandbox was released; \
                     a new sandbox was acquired for this call: files and context \
                     state from before were reset.",
                    idle.as_secs()
                ));
                if let Some(session) = session {
                    let _ = session.release().await;
                }
                idle
            } else if state.session.is_some() {
                idle - since
            } else {
                idle
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// Why a tool call failed.
enum Fail {
    /// The caller's arguments: said back as they are.
    Bad(String),
    /// The lease is gone; retried once with a fresh one.
    LeaseGone(String),
    /// The sandpool server said no (or could not be reached).
    Server(String),
}

impl From<Error> for Fail {
    fn from(e: Error) -> Self {
        match e {
            Error::LeaseLost { reason, .. } => Fail::LeaseGone(reason),
            other => Fail::Server(other.to_string()),
        }
    }
}

/// A tool call, as data, so a call whose lease was lost can run again.
enum Op {
    Execute {
        code: String,
        language: Option<String>,
        timeout: Option<Duration>,
        files: Vec<(String, Bytes)>,
    },
    Context {
        name: String,
        code: String,
        language: Option<String>,
        timeout: Option<Duration>,
    },
    Shell {
        command: String,
        timeout: Option<Duration>,
    },
    Upload {
        path: String,
        data: Bytes,
    },
    Download {
        path: String,
    },
    List {
        path: String,
    },
    Install {
        libraries: Vec<String>,
    },
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileArg {
    /// Path in the sandbox; relative paths are under /sandbox.
    path: String,
    /// The file's content.
    content: String,
    /// "text" (default) or "base64" for binary content.
    #[serde(default)]
    encoding: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecuteCodeArgs {
    /// The program's source code.
    code: String,
    /// Language of the code (see list_languages); default: the pool's.
    #[serde(default)]
    language: Option<String>,
    /// Kill the program after this many seconds; default: the pool's.
    #[serde(default)]
    timeout: Option<f64>,
    /// Files to write into the sandbox before the program runs.
    #[serde(default)]
    files: Option<Vec<FileArg>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ContextArgs {
    /// The code; what it defines stays for the next call with the same context.
    code: String,
    /// Name of the context (default "default"); each name is its own interpreter.
    #[serde(default)]
    context: Option<String>,
    /// Language of a new context; default: the pool's.
    #[serde(default)]
    language: Option<String>,
    /// Interrupt the code after this many seconds.
    #[serde(default)]
    timeout: Option<f64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ShellArgs {
    /// A shell command line, run by /bin/sh -c in /sandbox.
    command: String,
    /// Kill it after this many seconds.
    #[serde(default)]
    timeout: Option<f64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UploadArgs {
    /// Path in the sandbox; relative paths are under /sandbox.
    path: String,
    /// The file's content.
    content: String,
    /// "text" (default) or "base64" for binary content.
    #[serde(default)]
    encoding: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PathArgs {
    /// Path in the sandbox; relative paths are under /sandbox.
    path: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListArgs {
    /// Directory in the sandbox (default /sandbox).
    #[serde(default)]
    path: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InstallArgs {
    /// Package names (or paths of package files uploaded to the sandbox).
    libraries: Vec<String>,
}

/// The MCP handler of one session.
#[derive(Clone)]
pub struct SandpoolMcp {
    slot: Arc<Slot>,
    tool_router: ToolRouter<Self>,
}

#[tool_router]
impl SandpoolMcp {
    fn new(shared: &Arc<Shared>) -> Self {
        Self {
            slot: Slot::new(shared),
            tool_router: Self::tool_router(),
        }
    }

    #[tool(
        description = "Run a program in the sandbox and return its output, exit code and end reason. \
        Figures (matplotlib plt.show() or left open) come back as PNG images, other files the \
        program writes to $SANDPOOL_OUTPUT_DIR (/sandbox/outputs) come back as resources. \
        Each call is a fresh process; files persist between calls of this session."
    )]
    async fn execute_code(
        &self,
        Parameters(args): Parameters<ExecuteCodeArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let op = (|| {
            let mut files = Vec::new();
            for f in args.files.unwrap_or_default() {
                let data = decode(&f.content, f.encoding.as_deref(), &f.path)?;
                files.push((sandbox_path(&f.path)?, data));
            }
            Ok(Op::Execute {
                timeout: timeout_arg(args.timeout)?,
                code: args.code,
                language: nonempty(args.language),
                files,
            })
        })();
        self.call(op).await
    }

    #[tool(
        description = "Run code in a persistent interpreter (like a notebook kernel): variables, \
        imports and functions stay for the next call with the same context name. Returns output, \
        exit code and end reason as execute_code does."
    )]
    async fn execute_code_in_context(
        &self,
        Parameters(args): Parameters<ContextArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let op = timeout_arg(args.timeout).map(|timeout| Op::Context {
            name: nonempty(args.context).unwrap_or_else(|| "default".into()),
            code: args.code,
            language: nonempty(args.language),
            timeout,
        });
        self.call(op).await
    }

    #[tool(description = "Run a shell command line (/bin/sh -c) in the sandbox.")]
    async fn run_shell(
        &self,
        Parameters(args): Parameters<ShellArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let op = timeout_arg(args.timeout).map(|timeout| Op::Shell {
            command: args.command,
            timeout,
        });
        self.call(op).await
    }

    #[tool(description = "Write a file into the sandbox (parent directories are created).")]
    async fn upload_file(
        &self,
        Parameters(args): Parameters<UploadArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let op = (|| {
            Ok(Op::Upload {
                data: decode(&args.content, args.encoding.as_deref(), &args.path)?,
                path: sandbox_path(&args.path)?,
            })
        })();
        self.call(op).await
    }

    #[tool(
        description = "Read a file from the sandbox: text as text, images as images, anything \
        else as a base64 resource."
    )]
    async fn download_file(
        &self,
        Parameters(args): Parameters<PathArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let op = sandbox_path(&args.path).map(|path| Op::Download { path });
        self.call(op).await
    }

    #[tool(description = "List a directory of the sandbox: type, size and name of each entry.")]
    async fn list_files(
        &self,
        Parameters(args): Parameters<ListArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let op =
            sandbox_path(args.path.as_deref().unwrap_or("/sandbox")).map(|path| Op::List { path });
        self.call(op).await
    }

    #[tool(
        description = "Install libraries (pip/npm/... packages of the pool's language) for this \
        session's sandbox only."
    )]
    async fn install_libraries(
        &self,
        Parameters(args): Parameters<InstallArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let op = if args.libraries.is_empty() || args.libraries.iter().any(|l| l.trim().is_empty())
        {
            Err("libraries: give at least one non-empty package name".to_string())
        } else {
            Ok(Op::Install {
                libraries: args.libraries,
            })
        };
        self.call(op).await
    }

    #[tool(
        description = "The languages execute_code accepts here: the default (this server's pool's) \
        first, then those of the other pools this identity can see."
    )]
    async fn list_languages(&self) -> Result<CallToolResult, ErrorData> {
        let client = &self.slot.shared.client;
        let pool = &self.slot.shared.pool;
        let default = match client.get_pool(pool).await {
            Ok(p) => p.spec.map(|s| s.language).unwrap_or_default(),
            Err(e) => {
                return Ok(CallToolResult::error(vec![ContentBlock::text(format!(
                    "cannot read pool {pool:?}: {e}"
                ))]));
            }
        };
        let mut others: Vec<String> = match client.list_pools().await {
            Ok(pools) => pools
                .into_iter()
                .filter_map(|p| p.spec.map(|s| s.language))
                .filter(|l| !l.is_empty() && *l != default)
                .collect(),
            Err(_) => Vec::new(),
        };
        others.sort();
        others.dedup();
        let mut text = format!("default: {default} (pool {pool})\n");
        if !others.is_empty() {
            text.push_str(&format!(
                "other pools' languages (this sandbox's image may lack them): {}\n",
                others.join(", ")
            ));
        }
        Ok(CallToolResult::success(vec![ContentBlock::text(text)]))
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for SandpoolMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("sandpool", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "Runs code in an isolated sandbox container leased from a sandpool server. \
                 Files and contexts persist for this session; an idle session's sandbox is \
                 released and the next result says so.",
            )
    }
}

impl SandpoolMcp {
    /// Runs `op` on the session's lease (acquired when needed); a lost lease
    /// is replaced once and the call run again.
    async fn call(&self, op: Result<Op, String>) -> Result<CallToolResult, ErrorData> {
        let op = match op {
            Ok(op) => op,
            Err(message) => return Ok(CallToolResult::error(vec![ContentBlock::text(message)])),
        };
        let mut state = self.slot.state.lock().await;
        if state.closed {
            return Ok(CallToolResult::error(vec![ContentBlock::text(
                "this MCP session has ended; open a new one",
            )]));
        }
        let pending = state.notice.take();
        let mut notes: Vec<String> = pending.clone().into_iter().collect();
        let mut result = self.attempt(&mut state, &op).await;
        if let Err(Fail::LeaseGone(reason)) = &result {
            let reason = reason.clone();
            // Dropping the Session releases what may be left of the lease.
            state.session = None;
            state.contexts.clear();
            result = self.attempt(&mut state, &op).await;
            notes.push(if result.is_ok() {
                format!(
                    "The sandbox's lease was lost ({reason}); this call ran again in a new \
                     sandbox: files and context state from before were reset."
                )
            } else {
                format!(
                    "The sandbox's lease was lost ({reason}); files and context state from \
                     before are gone, and running this call in a new sandbox failed:"
                )
            });
        }
        if state.session.is_none() && pending.is_some() {
            // No new sandbox yet: say it with the next call that gets one.
            notes.retain(|n| Some(n) != pending.as_ref());
            state.notice = pending;
        }
        state.last_used = Some(Instant::now());
        drop(state);
        let mut content: Vec<ContentBlock> = notes.into_iter().map(ContentBlock::text).collect();
        Ok(match result {
            Ok(more) => {
                content.extend(more);
                CallToolResult::success(content)
            }
            Err(fail) => {
                content.push(ContentBlock::text(match fail {
                    Fail::Bad(m) => m,
                    Fail::LeaseGone(reason) => {
                        format!("the new sandbox's lease was lost too: {reason}")
                    }
                    Fail::Server(m) => m,
                }));
                CallToolResult::error(content)
            }
        })
    }

    async fn attempt(&self, state: &mut State, op: &Op) -> Result<Vec<ContentBlock>, Fail> {
        if let Some(reason) = state.session.as_ref().and_then(|s| s.lost()) {
            return Err(Fail::LeaseGone(reason));
        }
        if state.session.is_none() {
            let shared = &self.slot.shared;
            let pool = &shared.pool;
            let mut acquire = AcquireOptions::new(pool.clone());
            if let Some(ttl) = shared.lease_ttl {
                acquire = acquire.ttl(ttl);
            }
            let session = shared.client.acquire_with(acquire).await.map_err(|e| {
                Fail::Server(format!("cannot lease a sandbox from pool {pool:?}: {e}"))
            })?;
            state.contexts.clear();
            state.session = Some(session);
        }
        let State {
            session, contexts, ..
        } = state;
        let Some(session) = session.as_ref() else {
            return Err(Fail::Bad("no sandbox".into()));
        };
        match op {
            Op::Execute {
                code,
                language,
                timeout,
                files,
            } => {
                for (path, data) in files {
                    session.upload(path, data.clone()).await?;
                }
                let mut options = RunOptions::new();
                options.timeout = *timeout;
                options.language = language.clone();
                let out = session
                    .run_with(code.clone(), options)
                    .await?
                    .collect()
                    .await?;
                Ok(run_result(&out))
            }
            Op::Context {
                name,
                code,
                language,
                timeout,
            } => {
                let id = match contexts.get(name) {
                    Some(id) => id.clone(),
                    None => {
                        let context = session
                            .create_context_in(language.as_deref().unwrap_or(""))
                            .await?;
                        let id = context.detach();
                        contexts.insert(name.clone(), id.clone());
                        id
                    }
                };
                let mut options = RunOptions::new();
                options.timeout = *timeout;
                let mut request = options.request(code.clone());
                request.context_id = id;
                let out = session.run_request(request).await?.collect().await?;
                let mut content = run_result(&out);
                if out.context_restarted() {
                    content.push(ContentBlock::text(format!(
                        "The context {name:?} had to be restarted to stop the code: its state is gone."
                    )));
                }
                Ok(content)
            }
            Op::Shell { command, timeout } => {
                let request = pb::RunRequest {
                    program: Some(pb::run_request::Program::Command(pb::Command {
                        argv: Vec::new(),
                        shell: command.clone(),
                    })),
                    timeout: timeout.map(|d| prost_types::Duration {
                        seconds: d.as_secs() as i64,
                        nanos: d.subsec_nanos() as i32,
                    }),
                    ..Default::default()
                };
                let out = session.run_request(request).await?.collect().await?;
                Ok(run_result(&out))
            }
            Op::Upload { path, data } => {
                session.upload(path, data.clone()).await?;
                Ok(vec![ContentBlock::text(format!(
                    "wrote {} bytes to {path}",
                    data.len()
                ))])
            }
            Op::Download { path } => {
                let (header, data) = session.download(path).await?;
                if header.kind == pb::DownloadKind::Tar as i32 {
                    return Err(Fail::Bad(format!(
                        "{path} is a directory: use list_files, then download its files"
                    )));
                }
                Ok(vec![file_content(path, &mime_of(path), &data)])
            }
            Op::List { path } => {
                let out = session
                    .exec(&[
                        "find",
                        path,
                        "-mindepth",
                        "1",
                        "-maxdepth",
                        "1",
                        "-printf",
                        "%y %10s %P\\n",
                    ])
                    .await?;
                if out.exit_code() != 0 {
                    return Err(Fail::Bad(format!(
                        "cannot list {path}: {}",
                        out.stderr_text().trim()
                    )));
                }
                let mut lines: Vec<&str> = out
                    .stdout
                    .split(|b| *b == b'\n')
                    .filter_map(|l| std::str::from_utf8(l).ok())
                    .filter(|l| !l.is_empty())
                    .collect();
                lines.sort_by_key(|l| l.get(13..).unwrap_or(""));
                let mut text = format!("{path} (d: directory, f: file, l: link; size in bytes):\n");
                for line in &lines {
                    text.push_str(line);
                    text.push('\n');
                }
                if lines.is_empty() {
                    text.push_str("(empty)\n");
                }
                Ok(vec![ContentBlock::text(text)])
            }
            Op::Install { libraries } => {
                let response = session.install_libraries(libraries).await?;
                Ok(vec![ContentBlock::text(format!(
                    "installed {}\n{}",
                    libraries.join(", "),
                    response.log
                ))])
            }
        }
    }
}

/// A run's result: a text summary, then its files (plots as images).
fn run_result(out: &RunOutput) -> Vec<ContentBlock> {
    let reason = out
        .end_reason()
        .as_str_name()
        .trim_start_matches("END_REASON_")
        .to_ascii_lowercase();
    let mut text = format!("exit_code: {}\nend_reason: {reason}\n", out.exit_code());
    if let Some(exit) = &out.exit {
        if !exit.message.is_empty() {
            text.push_str(&format!("message: {}\n", exit.message));
        }
        if exit.truncated {
            text.push_str("note: output was cut at the pool's output limit\n");
        }
    }
    text.push_str("stdout:\n");
    text.push_str(&out.stdout_text());
    if !out.stdout.is_empty() && !out.stdout.ends_with(b"\n") {
        text.push('\n');
    }
    text.push_str("stderr:\n");
    text.push_str(&out.stderr_text());
    let mut content = vec![ContentBlock::text(text)];
    for file in &out.files {
        if file.omitted {
            content.push(ContentBlock::text(format!(
                "file {} ({} bytes) is too large to return here: use download_file",
                file.info.path, file.info.size
            )));
            continue;
        }
        let mime = if file.mime_type().is_empty() {
            mime_of(&file.info.path)
        } else {
            file.mime_type().to_string()
        };
        content.push(file_content(&file.info.path, &mime, &file.data));
    }
    content
}

/// A file as MCP content: an image, an embedded text resource, or a blob.
fn file_content(path: &str, mime: &str, data: &[u8]) -> ContentBlock {
    let b64 = || base64::engine::general_purpose::STANDARD.encode(data);
    let uri = format!("file://{path}");
    if matches!(
        mime,
        "image/png" | "image/jpeg" | "image/gif" | "image/webp"
    ) {
        return ContentBlock::image(b64(), mime);
    }
    match std::str::from_utf8(data) {
        Ok(text) if is_textual(mime) => {
            ContentBlock::resource(ResourceContents::text(text, uri).with_mime_type(mime))
        }
        _ => ContentBlock::resource(ResourceContents::blob(b64(), uri).with_mime_type(mime)),
    }
}

fn is_textual(mime: &str) -> bool {
    mime.starts_with("text/")
        || matches!(
            mime,
            "application/json" | "image/svg+xml" | "application/xml" | "application/javascript"
        )
}

fn mime_of(path: &str) -> String {
    let ext = path.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    match ext.as_deref() {
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("gif") => "image/gif",
        Some("webp") => "image/webp",
        Some("svg") => "image/svg+xml",
        Some("pdf") => "application/pdf",
        Some("json") => "application/json",
        Some("csv") => "text/csv",
        Some("html" | "htm") => "text/html",
        Some("md") => "text/markdown",
        Some("txt" | "py" | "js" | "ts" | "sh" | "log" | "r" | "rb" | "go" | "rs" | "c" | "h") => {
            "text/plain"
        }
        _ => "application/octet-stream",
    }
    .to_string()
}

fn decode(content: &str, encoding: Option<&str>, path: &str) -> Result<Bytes, String> {
    match encoding.unwrap_or("text") {
        "text" | "utf-8" | "utf8" => Ok(Bytes::from(content.to_string())),
        "base64" => base64::engine::general_purpose::STANDARD
            .decode(content.trim())
            .map(Bytes::from)
            .map_err(|e| format!("{path}: content is not valid base64 ({e})")),
        other => Err(format!(
            "{path}: encoding {other:?} is not known: use \"text\" or \"base64\""
        )),
    }
}

/// An absolute path in the sandbox: relative ones are under /sandbox.
fn sandbox_path(path: &str) -> Result<String, String> {
    let path = path.trim();
    if path.is_empty() {
        return Err("path: empty; give a file path such as data.csv or /sandbox/data.csv".into());
    }
    if path.contains('\0') {
        return Err("path: contains a NUL byte".into());
    }
    Ok(if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/sandbox/{path}")
    })
}

fn timeout_arg(timeout: Option<f64>) -> Result<Option<Duration>, String> {
    match timeout {
        None => Ok(None),
        Some(t) if t.is_finite() && t > 0.0 && t <= 86_400.0 => {
            Ok(Some(Duration::from_secs_f64(t)))
        }
        Some(t) => Err(format!(
            "timeout: {t} is not a number of seconds between 0 and 86400 (e.g. 30)"
        )),
    }
}

fn nonempty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.trim().is_empty())
}
