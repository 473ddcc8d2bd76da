//! Persistent interpreter contexts: a kernel process per context that runs
//! cells in one namespace (Python; see kernel.py). A Run that names a context
//! sends its code to the kernel as a cell; output streams as usual. A
//! timeout or cancel interrupts the cell (SIGINT); a cell that ignores the
//! interrupt gets its kernel killed and restarted, and the run says so.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use tokio::{
    io::AsyncWriteExt,
    sync::{OwnedMutexGuard, mpsc, watch},
};

use super::artifacts::{ArtifactWatch, FrameScanner};
use crate::{
    error::{Error, Result},
    pool::LeaseGuard,
    sandbox::{self, EngineError, EngineResult, ExecSpec, ExecStdin, Output},
    sync::lock,
};

/// Contexts one lease may hold at once.
const MAX_CONTEXTS: usize = 8;
/// How long a kernel may take to start.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an interrupted cell may take to stop before its kernel is killed.
const INTERRUPT_GRACE: Duration = Duration::from_secs(3);

/// A lease's contexts (kept in the lease, dropped with it).
#[derive(Default)]
pub struct ContextSet {
    contexts: Mutex<HashMap<String, Arc<Context>>>,
}

impl ContextSet {
    fn of(lease: &LeaseGuard) -> Arc<ContextSet> {
        lease.attachment::<ContextSet>()
    }
}

/// A running kernel.
struct Kernel {
    pid: String,
    exec_id: String,
    stdin: ExecStdin,
    output: mpsc::Receiver<EngineResult<Output>>,
}

pub struct Context {
    pub id: String,
    /// Carried in the kernel's environment as its run id.
    marker: String,
    /// The group of the kernel and everything it starts, by which they are
    /// killed (its cells' processes included); held while the context lives.
    group: sandbox::RunGroup,
    nonce: String,
    kernel: Arc<tokio::sync::Mutex<Kernel>>,
    /// Bumped whenever a cell finishes, for interrupt escalation.
    finished: watch::Sender<u64>,
    pid: Mutex<String>,
    /// Deleted: a cell still running must not bring the kernel back.
    deleted: std::sync::atomic::AtomicBool,
}

/// Opens a context on the lease.
pub async fn create(lease: &LeaseGuard, language: Option<&str>) -> Result<String> {
    let pool_language = &lease.spec().language;
    if let Some(lang) = language.filter(|l| !l.is_empty() && *l != pool_language) {
        return Err(Error::invalid(
            "language",
            format!("this lease's pool runs {pool_language}, not {lang}"),
        ));
    }
    if lease.lang().context_kernel().is_none() {
        return Err(Error::NotAllowed(format!(
            "persistent contexts exist for python and javascript; this lease's pool runs {pool_language}"
        )));
    }
    let set = ContextSet::of(lease);
    if lock(&set.contexts).len() >= MAX_CONTEXTS {
        return Err(Error::NotAllowed(format!(
            "a lease holds at most {MAX_CONTEXTS} contexts; delete one first"
        )));
    }
    let id = format!("ctx-{:016x}", rand::random::<u64>());
    let nonce = format!("{:032x}", rand::random::<u128>());
    let marker = format!("{id}-{:08x}", rand::random::<u32>());
    let group = lease
        .sandbox()
        .run_group()
        .map_err(|e| lease.sandbox_error(e))?;
    let kernel = start_kernel(lease, &id, &marker, &group, &nonce).await?;
    let context = Arc::new(Context {
        id: id.clone(),
        marker,
        group,
        nonce,
        pid: Mutex::new(kernel.pid.clone()),
        kernel: Arc::new(tokio::sync::Mutex::new(kernel)),
        finished: watch::channel(0).0,
        deleted: std::sync::atomic::AtomicBool::new(false),
    });
    lock(&set.contexts).insert(id.clone(), context);
    Ok(id)
}

/// Ends a context and kills its kernel.
pub async fn delete(lease: &LeaseGuard, id: &str) -> Result<()> {
    let set = ContextSet::of(lease);
    let Some(context) = lock(&set.contexts).remove(id) else {
        return Err(Error::ContextNotFound {
            lease_id: lease.id().to_string(),
            context_id: id.to_string(),
        });
    };
    context
        .deleted
        .store(true, std::sync::atomic::Ordering::SeqCst);
    lease.sandbox().kill_group(context.group.gid()).await?;
    Ok(())
}

pub fn find(lease: &LeaseGuard, id: &str) -> Result<Arc<Context>> {
    lock(&ContextSet::of(lease).contexts)
        .get(id)
        .cloned()
        .ok_or_else(|| Error::ContextNotFound {
            lease_id: lease.id().to_string(),
            context_id: id.to_string(),
        })
}

async fn start_kernel(
    lease: &LeaseGuard,
    context_id: &str,
    marker: &str,
    group: &sandbox::RunGroup,
    nonce: &str,
) -> Result<Kernel> {
    let spec = lease.spec();
    let out_dir = spec.output_dir.clone();
    // The pool's runtime.env first: the kernel is the lease's process.
    let mut env: Vec<(String, String)> = spec
        .runtime
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    env.extend([
        ("PYTHONUNBUFFERED".to_string(), "1".to_string()),
        ("PYTHONDONTWRITEBYTECODE".to_string(), "1".to_string()),
        ("SANDPOOL_OUTPUT_DIR".to_string(), out_dir.clone()),
        (
            "SANDPOOL_PLOT_DIR".to_string(),
            format!("{}/plots", out_dir.trim_end_matches('/')),
        ),
    ]);
    env.extend(lease.lang().library_env());
    env.extend(lease.env().iter().cloned());
    env.push(("SANDPOOL_CONTEXT_NONCE".into(), nonce.to_string()));
    env.push((sandbox::RUN_MARKER.into(), marker.to_string()));
    let exec = ExecSpec {
        argv: lease
            .sandbox()
            .user_argv(lease.lang().context_kernel().unwrap_or_default()),
        env: crate::sandbox::merge_env(env),
        user: lease.sandbox().run_user(group),
        working_dir: Some(sandbox::WORKSPACE.to_string()),
        stdin: true,
        privileged: false,
        terminal: None,
    };
    let mut started = lease
        .sandbox()
        .start(exec)
        .await
        .map_err(|e| lease.engine_error(e))?;
    let stdin = started.stdin.take().ok_or_else(|| {
        Error::from(EngineError::Engine {
            op: "exec start",
            detail: "the kernel has no stdin".into(),
        })
    })?;
    // The engine's stream goes to a channel that cells read in turn.
    let (tx, mut output) = mpsc::channel(64);
    // Supervised for the log line a panic deserves; the stream cannot be
    // had twice, so a second run ends at once and the kernel counts as dead
    // (the next cell restarts it).
    let stream = Arc::new(Mutex::new(Some(started.output)));
    crate::supervise::spawn("context kernel forwarder", move || {
        let stream = lock(&stream).take();
        let tx = tx.clone();
        async move {
            use futures::StreamExt;
            let Some(mut stream) = stream else { return };
            while let Some(item) = stream.next().await {
                if tx.send(item).await.is_err() {
                    return;
                }
            }
        }
    });
    let mut ready = FrameScanner::new("sandpool-ready", nonce);
    let mut early = Vec::new();
    let wait = async {
        while !ready.seen() {
            match output.recv().await {
                Some(Ok(Output::Stderr(d))) => early.extend_from_slice(&ready.feed(&d)),
                Some(Ok(Output::Stdout(d))) => early.extend_from_slice(&d),
                Some(Err(e)) => return Err(Error::from(e)),
                None => break,
            }
        }
        Ok(())
    };
    match tokio::time::timeout(START_TIMEOUT, wait).await {
        Ok(Ok(())) if ready.seen() => {}
        Ok(Err(e)) => return Err(e),
        _ => {
            return Err(Error::ContextFailed {
                context_id: context_id.to_string(),
                message: format!(
                    "the {} kernel did not start: {}",
                    spec.language,
                    String::from_utf8_lossy(&early).trim()
                ),
            });
        }
    }
    let pid = ready
        .payload
        .as_ref()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .unwrap_or_default();
    Ok(Kernel {
        pid,
        exec_id: started.id,
        stdin,
        output,
    })
}

/// The cell header's trace fields: TRACEPARENT (`-` for none), then
/// TRACESTATE, which may hold spaces, as the rest of the line (empty for
/// none). Neither holds a newline (W3C allows none, and our spans' state
/// comes from a header value).
fn trace_fields(trace_env: &[(String, String)]) -> String {
    let find = |name: &str| {
        trace_env
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.replace(['\n', '\r'], ""))
    };
    let parent = find("TRACEPARENT").filter(|p| !p.is_empty() && !p.contains(' '));
    match parent {
        Some(parent) => format!("{parent} {}", find("TRACESTATE").unwrap_or_default()),
        None => "- ".to_string(),
    }
}

/// One run in a context: exclusive use of the kernel until it ends.
pub struct Cell {
    context: Arc<Context>,
    kernel: OwnedMutexGuard<Kernel>,
    /// The end-of-cell frame on stderr (with the status)...
    status: FrameScanner,
    /// ...and on stdout: the engine keeps no order between the two streams.
    stdout_end: FrameScanner,
    done: bool,
}

impl Cell {
    /// Sends `code` to the context's kernel. `trace_env` (TRACEPARENT and
    /// TRACESTATE of the run's span, or nothing) goes with it: the kernel
    /// was started by another call, so its own environment names no run's
    /// span, and the cell's code must see its own (as a plain run's does).
    pub async fn begin(
        context: Arc<Context>,
        run_id: &str,
        code: &Bytes,
        plot_format: &str,
        watch: &ArtifactWatch,
        trace_env: &[(String, String)],
    ) -> Result<Cell> {
        let Ok(mut kernel) = Arc::clone(&context.kernel).try_lock_owned() else {
            return Err(Error::NotAllowed(format!(
                "context {} is running another cell; wait for it or cancel it",
                context.id
            )));
        };
        let (nonce, since) = watch.cell_args();
        let header = format!(
            "{run_id} {plot_format} {nonce} {since} {} {}\n",
            code.len(),
            trace_fields(trace_env)
        );
        let sent = async {
            kernel.stdin.write_all(header.as_bytes()).await?;
            kernel.stdin.write_all(code).await?;
            kernel.stdin.flush().await
        };
        if let Err(e) = sent.await {
            return Err(Error::ContextFailed {
                context_id: context.id.clone(),
                message: format!(
                    "the context's interpreter is gone ({e}); delete it and create another"
                ),
            });
        }
        let status = FrameScanner::new("sandpool-cell", &context.nonce);
        let stdout_end = FrameScanner::new("sandpool-cell", &context.nonce);
        Ok(Cell {
            context,
            kernel,
            status,
            stdout_end,
            done: false,
        })
    }

    /// The cell's next output; `None` once it finished (or the kernel died).
    pub async fn next(&mut self) -> Option<EngineResult<Output>> {
        if self.done {
            return None;
        }
        let item = match self.kernel.output.recv().await {
            Some(Ok(Output::Stderr(d))) => Some(Ok(Output::Stderr(self.status.feed(&d)))),
            Some(Ok(Output::Stdout(d))) => Some(Ok(Output::Stdout(self.stdout_end.feed(&d)))),
            None => {
                self.done = true;
                return None;
            }
            other => other,
        };
        if self.status.seen() && self.stdout_end.seen() {
            self.done = true;
            self.context.finished.send_modify(|n| *n += 1);
        }
        item
    }

    /// Stops the cell: an interrupt, then (after a grace period, or at once
    /// when `hard`) the kernel is killed. The task's result: whether the
    /// container is gone (see `run::Pump`).
    pub fn stop(&self, lease: &LeaseGuard, hard: bool) -> tokio::task::JoinHandle<bool> {
        let container = lease.sandbox().clone();
        let context = Arc::clone(&self.context);
        let pid = lock(&context.pid).clone();
        let mut finished = context.finished.subscribe();
        tokio::spawn(async move {
            if !hard {
                let argv = vec!["kill".to_string(), "-INT".to_string(), pid];
                let _ = container.run_command(argv).await;
                if tokio::time::timeout(INTERRUPT_GRACE, finished.changed())
                    .await
                    .is_ok()
                {
                    return false;
                }
            }
            match container.kill_group(context.group.gid()).await {
                Ok(()) => false,
                Err(e) => {
                    tracing::warn!(context = %context.id, error = %e, "could not kill the kernel");
                    true
                }
            }
        })
    }

    /// The cell's exit status, and whether the kernel had to be restarted
    /// (its state is gone then).
    pub async fn finish(mut self, lease: &LeaseGuard) -> (i32, bool) {
        if let Some(payload) = &self.status.payload {
            let code = String::from_utf8_lossy(payload).parse().unwrap_or(1);
            return (code, false);
        }
        // The kernel died: report how, then start a fresh one unless the
        // lease is over.
        let code = lease
            .sandbox()
            .exit_code(&self.kernel.exec_id)
            .await
            .map_or(-1, |c| i32::try_from(c).unwrap_or(-1));
        if lease.ended().is_none()
            && !self
                .context
                .deleted
                .load(std::sync::atomic::Ordering::SeqCst)
        {
            match start_kernel(
                lease,
                &self.context.id,
                &self.context.marker,
                &self.context.group,
                &self.context.nonce,
            )
            .await
            {
                Ok(kernel) => {
                    *lock(&self.context.pid) = kernel.pid.clone();
                    *self.kernel = kernel;
                }
                Err(e) => {
                    tracing::warn!(context = %self.context.id, error = %e, "could not restart the kernel")
                }
            }
        }
        (code, true)
    }
}

#[cfg(test)]
mod tests {
    use super::trace_fields;

    #[test]
    fn the_cell_header_carries_the_trace_context() {
        let pair = |k: &str, v: &str| (k.to_string(), v.to_string());
        assert_eq!(trace_fields(&[]), "- ");
        let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        assert_eq!(
            trace_fields(&[pair("TRACEPARENT", parent)]),
            format!("{parent} ")
        );
        assert_eq!(
            trace_fields(&[
                pair("TRACEPARENT", parent),
                pair("TRACESTATE", "a=1, b=two words\n")
            ]),
            format!("{parent} a=1, b=two words")
        );
    }
}
