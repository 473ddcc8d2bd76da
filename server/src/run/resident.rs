//! Runs on the container's resident runner (`sandbox::runner`): the same
//! program, argv, environment, user, working directory and input as the
//! exec path would start, sent as one frame. Everything else about the run
//! (events, caps, timeouts, kills, artifacts) is the `Pump`'s, as for an
//! exec; only where output comes from and where the exit code is read
//! differ.

use bytes::Bytes;

use super::Source;
use crate::{
    pool::LeaseGuard,
    sandbox::{
        ExecSpec,
        runner::{Request, RunnerRun},
    },
};

/// What a shell and the engines report for a program killed by SIGKILL:
/// for a run whose runner went down with it before it could report the
/// exit. Either sandpool's own kill took it (the kill takes the runner's
/// group), or the program killed every process of its user (`kill -9 -1`),
/// which on the exec path kills the exec's own process (the artifact
/// wrapper) and ends the run with this very code.
const KILLED: i32 = 128 + 9;

/// Starts `spec` on the runner; `None` when there is none ready, and the
/// run takes the exec path.
pub(super) async fn start(lease: &LeaseGuard, spec: &ExecSpec, input: &Bytes) -> Option<RunnerRun> {
    if !lease.spec().resident_runner {
        return None;
    }
    let request = Request {
        working_dir: spec
            .working_dir
            .clone()
            .unwrap_or_else(|| "/".to_string())
            .into_bytes(),
        stdin: spec.stdin,
        argv: spec.argv.iter().map(|a| a.clone().into_bytes()).collect(),
        env: spec.env.iter().map(|e| e.clone().into_bytes()).collect(),
    };
    lease.sandbox().run_on_runner(&request, input).await
}

/// The run's exit code. When the runner's stream ended before it reported
/// one: SIGKILL's (see `KILLED`); if nobody stopped the run, the program
/// may still run, and its group is killed first, and the lease's later runs
/// take the exec path.
pub(super) async fn exit_code(lease: &LeaseGuard, run: RunnerRun, stopped: bool) -> i32 {
    match run.exit_code() {
        Some(code) => {
            run.finish(true);
            code
        }
        // Sandpool's own kill took the runner down with the program; a
        // runner that broke its protocol is not replaced (later runs of the
        // lease take the exec path).
        None if stopped => {
            let replace = !run.broke_protocol();
            run.finish(replace);
            KILLED
        }
        None => {
            tracing::warn!(container = %lease.sandbox().id(), error = %run.lost(), "the run ends as killed by SIGKILL");
            kill(lease, run).await;
            KILLED
        }
    }
}

/// A run whose source failed mid-way: on the runner, its program may still
/// run.
pub(super) async fn failed(lease: &LeaseGuard, source: Source) {
    if let Source::Runner(run) = source {
        kill(lease, *run).await;
    }
}

async fn kill(lease: &LeaseGuard, run: RunnerRun) {
    if let Err(e) = lease.sandbox().kill_group(run.gid()).await {
        tracing::warn!(container = %lease.sandbox().id(), error = %e, "could not kill a run whose runner was lost");
    }
    run.finish(false);
}
