//! The audit trail: one structured record per Acquire, Release, Run, file
//! transfer, pool change and refusal, naming the identity, on its own log
//! target (`sandpool::audit`), so that an operator can answer who ran what
//! and when (e.g. `RUST_LOG=info,sandpool::audit=info` with JSON logs, and
//! route the target to its own sink).
//!
//! Records never carry secrets, code or output: code is described by its
//! size and SHA-256, leases by a prefix of their id (enough to correlate,
//! not enough to use).

use sha2::{Digest, Sha256};
use tonic::Status;
use tonic_types::StatusExt;

use crate::{identity::Identity, pool::LeaseInfo, run::RunExit, spec::PoolSpec};

/// The log target of audit records.
pub const TARGET: &str = "sandpool::audit";

/// A lease id as audit records show it.
pub fn lease_ref(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// Records a refused call; passes the result on.
pub fn outcome<T>(
    who: &Identity,
    rpc: &'static str,
    result: Result<T, Status>,
) -> Result<T, Status> {
    if let Err(status) = &result {
        refused(&who.name, rpc, status);
    }
    result
}

/// A call that was refused or failed.
pub fn refused(identity: &str, rpc: &str, status: &Status) {
    let reason = status
        .get_error_details()
        .error_info()
        .map(|i| i.reason.clone())
        .unwrap_or_default();
    tracing::info!(
        target: TARGET,
        event = "refused",
        identity,
        rpc,
        code = ?status.code(),
        reason,
        message = status.message(),
    );
}

pub fn acquired(who: &Identity, lease: &LeaseInfo) {
    tracing::info!(
        target: TARGET,
        event = "acquire",
        identity = %who.name,
        pool = %lease.pool,
        lease = lease_ref(&lease.id),
        container = %lease.container_id,
        temporary = lease.temporary,
    );
}

pub fn released(who: &Identity, lease_id: &str) {
    tracing::info!(target: TARGET, event = "release", identity = %who.name, lease = lease_ref(lease_id));
}

/// What a run was asked to run, for its records.
pub struct RunSubject {
    pub lease: String,
    pub language: String,
    pub code_bytes: usize,
    pub code_sha256: String,
}

impl RunSubject {
    pub fn new(lease_id: &str, language: &str, code: &[u8]) -> Self {
        Self {
            lease: lease_ref(lease_id).to_string(),
            language: language.to_string(),
            code_bytes: code.len(),
            code_sha256: hex::encode(Sha256::digest(code)),
        }
    }
}

pub fn run_ended(who: &Identity, subject: &RunSubject, run_id: &str, exit: &RunExit) {
    tracing::info!(
        target: TARGET,
        event = "run",
        identity = %who.name,
        lease = %subject.lease,
        run = run_id,
        language = %subject.language,
        code_bytes = subject.code_bytes,
        code_sha256 = %subject.code_sha256,
        end_reason = ?exit.reason,
        exit_code = exit.exit_code,
        duration_ms = exit.duration.as_millis() as u64,
        stdout_bytes = exit.stdout_bytes,
        stderr_bytes = exit.stderr_bytes,
    );
}

pub fn transfer(who: &Identity, lease_id: &str, direction: &'static str, path: &str, bytes: u64) {
    tracing::info!(
        target: TARGET,
        event = "transfer",
        identity = %who.name,
        lease = lease_ref(lease_id),
        direction,
        path,
        bytes,
    );
}

pub fn pool_created(who: &Identity, spec: &PoolSpec) {
    tracing::info!(
        target: TARGET,
        event = "create_pool",
        identity = %who.name,
        pool = %spec.name,
        image = %spec.image,
        network = %spec.runtime.network,
        max_pool_size = spec.config.max_pool_size,
    );
}

pub fn pool_deleted(who: &Identity, pool: &str) {
    tracing::info!(target: TARGET, event = "delete_pool", identity = %who.name, pool);
}
