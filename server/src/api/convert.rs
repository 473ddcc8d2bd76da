//! Conversions between the protobuf contract and the domain types. Bad input
//! becomes `Error::InvalidArgument` here, naming the proto field. Enums go
//! through `From`/`TryFrom` in both directions, never through strings.

use std::time::{Duration, SystemTime};

use sandpool_proto::v1 as pb;

use tonic::Status;

use crate::{
    artifact::ArtifactInfo,
    backend::BackendKind,
    error::{Error, LeaseEnd, Result},
    pool::{
        LeaseInfo, Phase, PoolView,
        lease::Renewal,
        stats::{LatencySummary, PoolStats},
    },
    run::{ArtifactChunk, EndReason, PlotFormat, Program, RunEvent, RunExit, RunSpec},
    spec::{ExhaustionStrategy, PoolSpec, PoolSpecInput, RuntimeInput},
};

/// A proto enum field (an `i32` on the wire) as its enum; a value this
/// server does not know is an error naming `field`.
fn enum_field<E: TryFrom<i32>>(field: &str, value: i32) -> Result<E> {
    E::try_from(value).map_err(|_| Error::invalid(field, format!("unknown value {value}")))
}

impl From<pb::Backend> for BackendKind {
    fn from(b: pb::Backend) -> Self {
        match b {
            pb::Backend::Unspecified | pb::Backend::Docker => BackendKind::Docker,
            pb::Backend::Podman => BackendKind::Podman,
            pb::Backend::Kubernetes => BackendKind::Kubernetes,
        }
    }
}

impl From<BackendKind> for pb::Backend {
    fn from(b: BackendKind) -> Self {
        match b {
            BackendKind::Docker => pb::Backend::Docker,
            BackendKind::Podman => pb::Backend::Podman,
            BackendKind::Kubernetes => pb::Backend::Kubernetes,
        }
    }
}

impl From<pb::ExhaustionStrategy> for ExhaustionStrategy {
    fn from(s: pb::ExhaustionStrategy) -> Self {
        match s {
            pb::ExhaustionStrategy::Unspecified | pb::ExhaustionStrategy::Wait => {
                ExhaustionStrategy::Wait
            }
            pb::ExhaustionStrategy::FailFast => ExhaustionStrategy::FailFast,
            pb::ExhaustionStrategy::Temporary => ExhaustionStrategy::Temporary,
        }
    }
}

impl From<ExhaustionStrategy> for pb::ExhaustionStrategy {
    fn from(s: ExhaustionStrategy) -> Self {
        match s {
            ExhaustionStrategy::Wait => pb::ExhaustionStrategy::Wait,
            ExhaustionStrategy::FailFast => pb::ExhaustionStrategy::FailFast,
            ExhaustionStrategy::Temporary => pb::ExhaustionStrategy::Temporary,
        }
    }
}

impl From<pb::PlotFormat> for PlotFormat {
    fn from(f: pb::PlotFormat) -> Self {
        match f {
            pb::PlotFormat::Unspecified | pb::PlotFormat::Png => PlotFormat::Png,
            pb::PlotFormat::Svg => PlotFormat::Svg,
            pb::PlotFormat::Pdf => PlotFormat::Pdf,
        }
    }
}

impl From<Phase> for pb::PoolPhase {
    fn from(p: Phase) -> Self {
        match p {
            Phase::Warming => pb::PoolPhase::Warming,
            Phase::Ready => pb::PoolPhase::Ready,
            Phase::Failing => pb::PoolPhase::Failing,
            Phase::Draining => pb::PoolPhase::Draining,
        }
    }
}

impl From<EndReason> for pb::EndReason {
    fn from(r: EndReason) -> Self {
        match r {
            EndReason::Exited => pb::EndReason::Exited,
            EndReason::Signaled => pb::EndReason::Signaled,
            EndReason::Timeout => pb::EndReason::Timeout,
            EndReason::Cancelled => pb::EndReason::Cancelled,
            EndReason::OutputLimit => pb::EndReason::OutputLimit,
            EndReason::LeaseExpired => pb::EndReason::LeaseExpired,
            EndReason::RunnerLost => pb::EndReason::RunnerLost,
        }
    }
}

impl From<LeaseEnd> for pb::LeaseState {
    fn from(end: LeaseEnd) -> Self {
        match end {
            LeaseEnd::Released => pb::LeaseState::Released,
            LeaseEnd::Expired => pb::LeaseState::Expired,
            LeaseEnd::Revoked => pb::LeaseState::Revoked,
            LeaseEnd::LifetimeExceeded => pb::LeaseState::LifetimeExceeded,
            LeaseEnd::ContainerLost => pb::LeaseState::ContainerLost,
            LeaseEnd::PoolDeleted => pb::LeaseState::PoolDeleted,
            LeaseEnd::ReplicaGone => pb::LeaseState::ReplicaGone,
        }
    }
}

/// A proto duration as seconds; negative is an error naming `field`.
fn seconds(field: &str, d: Option<prost_types::Duration>) -> Result<Option<f64>> {
    match d {
        None => Ok(None),
        Some(d) => {
            if d.seconds < 0 || d.nanos < 0 {
                return Err(Error::invalid(field, "must not be negative"));
            }
            Ok(Some(d.seconds as f64 + f64::from(d.nanos) / 1e9))
        }
    }
}

/// A proto duration as a std one; negative is an error naming `field`.
pub fn duration(field: &str, d: Option<prost_types::Duration>) -> Result<Option<Duration>> {
    match d {
        None => Ok(None),
        Some(d) => Duration::try_from(d)
            .map(Some)
            .map_err(|_| Error::invalid(field, "must not be negative")),
    }
}

pub fn pb_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

pub fn pb_time(t: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(t)
}

/// "No limit" is a zero duration on the wire.
fn pb_limit(d: Option<Duration>) -> Option<prost_types::Duration> {
    Some(pb_duration(d.unwrap_or(Duration::ZERO)))
}

pub fn spec_from_pb(spec: pb::PoolSpec) -> Result<PoolSpec> {
    let config = spec.config.unwrap_or_default();
    let runtime = spec.runtime.unwrap_or_default();
    let backend: pb::Backend = enum_field("backend", spec.backend)?;
    let strategy: pb::ExhaustionStrategy =
        enum_field("config.exhaustion_strategy", config.exhaustion_strategy)?;
    let input = PoolSpecInput {
        name: spec.name,
        language: spec.language,
        backend: Some(backend.into()),
        image: Some(spec.image),
        libraries: spec.libraries,
        max_pool_size: config.max_pool_size,
        min_pool_size: config.min_pool_size,
        idle_timeout: seconds("config.idle_timeout", config.idle_timeout)?,
        acquisition_timeout: seconds("config.acquisition_timeout", config.acquisition_timeout)?,
        health_check_interval: seconds(
            "config.health_check_interval",
            config.health_check_interval,
        )?,
        max_container_lifetime: seconds(
            "config.max_container_lifetime",
            config.max_container_lifetime,
        )?,
        max_container_uses: config.max_container_uses,
        exhaustion_strategy: Some(strategy.into()),
        enable_prewarming: config.enable_prewarming,
        reuse: spec.reuse,
        default_lease_ttl: seconds("default_lease_ttl", spec.default_lease_ttl)?,
        max_lease_ttl: seconds("max_lease_ttl", spec.max_lease_ttl)?,
        default_run_timeout: seconds("default_run_timeout", spec.default_run_timeout)?,
        max_run_timeout: seconds("max_run_timeout", spec.max_run_timeout)?,
        output_limit_bytes: spec.output_limit_bytes,
        output_dir: Some(spec.output_dir),
        install_network: Some(spec.install_network),
        lease_installs: spec.lease_installs,
        package_index_url: Some(spec.package_index_url),
        max_temporary: spec.max_temporary,
        max_lease_lifetime: seconds("max_lease_lifetime", spec.max_lease_lifetime)?,
        namespace: spec.namespace,
        run_buffer_bytes: spec.run_buffer_bytes,
        resident_runner: spec.resident_runner,
        preload: spec.preload,
        runtime: RuntimeInput {
            mem_limit: runtime.mem_limit,
            cpu_period: runtime.cpu_period,
            cpu_quota: runtime.cpu_quota,
            cpus: runtime.cpus,
            pids_limit: runtime.pids_limit,
            network: runtime.network,
            user: runtime.user,
            read_only_root: runtime.read_only_root,
            oci_runtime: runtime.oci_runtime,
            tmpfs_size: runtime.tmpfs_size,
            env: runtime.env.into_iter().collect(),
        },
    };
    input.into_spec()
}

pub fn spec_to_pb(spec: &PoolSpec) -> pb::PoolSpec {
    let c = &spec.config;
    let rt = &spec.runtime;
    pb::PoolSpec {
        name: spec.name.clone(),
        backend: pb::Backend::from(spec.backend).into(),
        language: spec.language.clone(),
        image: spec.image.clone(),
        libraries: spec.libraries.clone(),
        config: Some(pb::PoolConfig {
            max_pool_size: Some(c.max_pool_size),
            min_pool_size: Some(c.min_pool_size),
            idle_timeout: pb_limit(c.idle_timeout),
            acquisition_timeout: pb_limit(c.acquisition_timeout),
            health_check_interval: Some(pb_duration(c.health_check_interval)),
            max_container_lifetime: pb_limit(c.max_container_lifetime),
            max_container_uses: Some(c.max_container_uses.unwrap_or(0)),
            exhaustion_strategy: pb::ExhaustionStrategy::from(c.exhaustion_strategy).into(),
            enable_prewarming: Some(c.enable_prewarming),
        }),
        runtime: Some(pb::RuntimeConfig {
            mem_limit: Some(rt.mem_limit_bytes.to_string()),
            cpu_period: rt.cpu_period,
            cpu_quota: rt.cpu_quota,
            cpus: Some(rt.cpus),
            pids_limit: Some(rt.pids_limit),
            network: Some(rt.network.clone()),
            user: Some(rt.user()),
            read_only_root: Some(rt.read_only_root),
            oci_runtime: rt.oci_runtime.clone(),
            tmpfs_size: Some(rt.tmpfs_size_bytes.to_string()),
            env: rt.env.clone().into_iter().collect(),
        }),
        reuse: Some(spec.reuse),
        default_lease_ttl: Some(pb_duration(spec.default_lease_ttl)),
        max_lease_ttl: Some(pb_duration(spec.max_lease_ttl)),
        default_run_timeout: Some(pb_duration(spec.default_run_timeout)),
        max_run_timeout: Some(pb_duration(spec.max_run_timeout)),
        output_limit_bytes: Some(spec.output_limit_bytes),
        output_dir: spec.output_dir.clone(),
        install_network: spec.install_network.clone(),
        lease_installs: Some(spec.lease_installs),
        package_index_url: spec.package_index_url.clone().unwrap_or_default(),
        max_temporary: spec.max_temporary,
        max_lease_lifetime: Some(pb_duration(spec.max_lease_lifetime)),
        namespace: spec.namespace.clone(),
        run_buffer_bytes: Some(spec.run_buffer_bytes),
        resident_runner: Some(spec.resident_runner),
        preload: spec.preload.clone(),
    }
}

fn latency_to_pb(l: &LatencySummary) -> pb::LatencySummary {
    pb::LatencySummary {
        samples: l.samples,
        p50: Some(pb_duration(l.p50)),
        p90: Some(pb_duration(l.p90)),
        p99: Some(pb_duration(l.p99)),
        max: Some(pb_duration(l.max)),
    }
}

pub fn stats_to_pb(s: &PoolStats) -> pb::PoolStats {
    let c = &s.counters;
    let r = &c.recycled;
    let sc = &s.state_counts;
    pb::PoolStats {
        pool: s.pool.clone(),
        total_size: s.total_size,
        max_size: s.max_size,
        min_size: s.min_size,
        state_counts: Some(pb::StateCounts {
            initializing: sc.initializing,
            idle: sc.idle,
            busy: sc.busy,
            resetting: sc.resetting,
            unhealthy: sc.unhealthy,
            removing: sc.removing,
        }),
        closed: s.closed,
        counters: Some(pb::PoolCounters {
            acquisitions: c.acquisitions,
            waits: c.waits,
            wait_timeouts: c.wait_timeouts,
            fail_fast_refusals: c.fail_fast_refusals,
            temporaries: c.temporaries,
            releases: c.releases,
            lease_expirations: c.lease_expirations,
            health_failures: c.health_failures,
            containers_created: c.containers_created,
            create_failures: c.create_failures,
            recycled: Some(pb::RecycleCounts {
                idle_timeout: r.idle_timeout,
                lifetime: r.lifetime,
                uses: r.uses,
                unhealthy: r.unhealthy,
                no_reuse: r.no_reuse,
                reset_failed: r.reset_failed,
                drained: r.drained,
            }),
            runs: c.runs,
        }),
        acquire_latency: Some(latency_to_pb(&s.acquire_latency)),
        temporary_containers: s.temporary_containers,
        waiting: s.waiting,
        active_leases: s.active_leases,
        time: Some(pb_time(s.time)),
    }
}

/// A pool as the caller may see it: with `redact`, environment values and
/// credentials in URLs are hidden (only admins see secrets).
pub fn pool_to_pb(view: &PoolView, redact: bool) -> pb::Pool {
    let mut spec = spec_to_pb(&view.spec);
    if redact {
        redact_secrets(&mut spec);
    }
    pb::Pool {
        spec: Some(spec),
        phase: pb::PoolPhase::from(view.phase).into(),
        status_message: view.status_message.clone(),
        create_time: Some(pb_time(view.created)),
        stats: Some(stats_to_pb(&view.stats)),
        owner: view.owner.clone().unwrap_or_default(),
        owner_expire_time: view.owner_expire_time.map(pb_time),
        // Set by the service, which knows the replica (see pool_service).
        replica: String::new(),
    }
}

/// What a redacted secret reads as.
pub const REDACTED: &str = "<redacted>";

fn redact_secrets(spec: &mut pb::PoolSpec) {
    if let Some(runtime) = spec.runtime.as_mut() {
        for value in runtime.env.values_mut() {
            *value = REDACTED.to_string();
        }
    }
    spec.package_index_url = redact_url(&spec.package_index_url);
    for library in &mut spec.libraries {
        *library = redact_url(library);
    }
}

/// `scheme://user:password@host/...` without its user information; other
/// text unchanged.
fn redact_url(text: &str) -> String {
    let Some((scheme, rest)) = text.split_once("://") else {
        return text.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://{REDACTED}@{}", &rest[at + 1..]),
        None => text.to_string(),
    }
}

pub fn lease_to_pb(lease: &LeaseInfo) -> pb::Lease {
    pb::Lease {
        id: lease.id.clone(),
        pool: lease.pool.clone(),
        container_id: lease.container_id.clone(),
        ttl: Some(pb_duration(lease.ttl)),
        expire_time: Some(pb_time(lease.expire_time)),
        temporary: lease.temporary,
        language: lease.language.clone(),
    }
}

/// ACTIVE for a lease that has not ended.
pub fn lease_state(end: Option<LeaseEnd>) -> pb::LeaseState {
    end.map_or(pb::LeaseState::Active, pb::LeaseState::from)
}

/// The answer to a keepalive of a lease (or, with an empty `lease_id` and
/// a `pool`, of an owned pool).
pub fn renewal_to_pb(lease_id: String, pool: String, renewal: Renewal) -> pb::KeepAliveResponse {
    let (state, expire_time, ttl) = match renewal {
        Renewal::Active { expire_time, ttl } => (
            pb::LeaseState::Active,
            Some(pb_time(expire_time)),
            Some(pb_duration(ttl)),
        ),
        Renewal::Ended(end) => (lease_state(Some(end)), None, None),
        Renewal::NotFound => (pb::LeaseState::NotFound, None, None),
    };
    pb::KeepAliveResponse {
        lease_id,
        state: state as i32,
        expire_time,
        ttl,
        pool,
    }
}

pub fn run_spec_from_pb(req: pb::RunRequest) -> Result<RunSpec> {
    let program = match req.program {
        None => return Err(Error::invalid("program", "set code or command")),
        Some(pb::run_request::Program::Code(code)) => {
            let source = match code.source {
                Some(pb::code::Source::Text(text)) => bytes::Bytes::from(text),
                Some(pb::code::Source::Data(data)) => data,
                None => bytes::Bytes::new(),
            };
            Program::Code {
                source,
                language: Some(code.language).filter(|l| !l.is_empty()),
            }
        }
        Some(pb::run_request::Program::Command(cmd)) => {
            match (cmd.argv.is_empty(), cmd.shell.is_empty()) {
                (false, true) => Program::Argv(cmd.argv),
                (true, false) => Program::Shell(cmd.shell),
                (true, true) => return Err(Error::invalid("command", "set argv or shell")),
                (false, false) => {
                    return Err(Error::invalid("command", "set argv or shell, not both"));
                }
            }
        }
    };
    let mut env: Vec<(String, String)> = req.env.into_iter().collect();
    env.sort();
    Ok(RunSpec {
        program,
        stdin: req.stdin,
        env,
        working_dir: Some(req.working_dir).filter(|d| !d.is_empty()),
        timeout: duration("timeout", req.timeout)?,
        output_limit: req.output_limit_bytes,
        plot_format: enum_field::<pb::PlotFormat>("plot_format", req.plot_format)?.into(),
        context_id: Some(req.context_id).filter(|c| !c.is_empty()),
        run_id: match req.run_id.as_str() {
            "" => None,
            id => Some(
                crate::pool::lease::RunId::chosen(id)
                    .map_err(|why| Error::invalid("run_id", format!("{id:?} {why}")))?,
            ),
        },
    })
}

pub fn exit_to_pb(exit: &RunExit) -> pb::RunExit {
    pb::RunExit {
        exit_code: exit.exit_code,
        end_reason: pb::EndReason::from(exit.reason).into(),
        signal: exit.signal,
        duration: Some(pb_duration(exit.duration)),
        stdout_bytes: exit.stdout_bytes,
        stderr_bytes: exit.stderr_bytes,
        truncated: exit.truncated,
        message: exit.message.clone(),
        context_restarted: exit.context_restarted,
    }
}

pub fn artifact_chunk_to_pb(chunk: ArtifactChunk) -> pb::RunArtifact {
    pb::RunArtifact {
        info: Some(artifact_to_pb(&chunk.info)),
        offset: chunk.offset,
        data: chunk.data,
        last: chunk.last,
        omitted: chunk.omitted,
    }
}

pub fn artifact_to_pb(a: &ArtifactInfo) -> pb::ArtifactInfo {
    pb::ArtifactInfo {
        name: a.name.clone(),
        path: a.path.clone(),
        mime_type: a.mime_type.clone(),
        size: a.size,
        sha256: a.sha256.clone(),
        run_id: a.run_id.clone(),
        modify_time: Some(pb_time(a.modified)),
        plot: a.plot,
    }
}

/// One event of a run as the `seq`th message of its stream; a run that
/// failed mid-way ends the stream with its status.
pub fn run_event_to_pb(seq: u64, event: RunEvent) -> Result<pb::RunResponse, Status> {
    use pb::run_response::Event;
    let event = match event {
        RunEvent::Started { run_id, start_time } => Event::Started(pb::RunStarted {
            run_id: run_id.to_string(),
            start_time: Some(pb_time(start_time)),
        }),
        RunEvent::Stdout(data) => Event::Stdout(pb::OutputChunk { data }),
        RunEvent::Stderr(data) => Event::Stderr(pb::OutputChunk { data }),
        RunEvent::Artifact(chunk) => Event::Artifact(artifact_chunk_to_pb(chunk)),
        RunEvent::Exit(exit) => Event::Exit(exit_to_pb(&exit)),
        RunEvent::Failed(err) => return Err(Status::from(err)),
    };
    Ok(pb::RunResponse {
        seq,
        event: Some(event),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The end_reason label of the runs metric is the proto's name.
    #[test]
    fn end_reason_labels_are_the_proto_names() {
        use crate::pool::stats::END_REASONS;
        for reason in [
            EndReason::Exited,
            EndReason::Signaled,
            EndReason::Timeout,
            EndReason::Cancelled,
            EndReason::OutputLimit,
            EndReason::LeaseExpired,
            EndReason::RunnerLost,
        ] {
            let proto = pb::EndReason::from(reason).as_str_name();
            assert_eq!(
                format!(
                    "END_REASON_{}",
                    END_REASONS[reason.metric_index()].to_uppercase()
                ),
                proto
            );
        }
    }

    #[test]
    fn secrets_are_redacted_for_tenants() {
        assert_eq!(
            redact_url("https://user:pw@pypi.example/simple"),
            "https://<redacted>@pypi.example/simple"
        );
        assert_eq!(redact_url("https://host/a@b"), "https://host/a@b");
        assert_eq!(redact_url("numpy"), "numpy");
        let mut spec = PoolSpec::new("p", "python").validate().expect("valid");
        spec.runtime.env.insert("API_KEY".into(), "hunter2".into());
        spec.package_index_url = Some("https://u:p@index.example/simple".into());
        let view = PoolView {
            spec: std::sync::Arc::new(spec),
            phase: Phase::Ready,
            status_message: String::new(),
            created: SystemTime::now(),
            owner_expire_time: None,
            stats: PoolStats {
                pool: "p".into(),
                total_size: 0,
                max_size: 10,
                min_size: 0,
                state_counts: Default::default(),
                closed: false,
                counters: Default::default(),
                acquire_latency: LatencySummary {
                    samples: 0,
                    p50: Duration::ZERO,
                    p90: Duration::ZERO,
                    p99: Duration::ZERO,
                    max: Duration::ZERO,
                },
                meters: Default::default(),
                temporary_containers: 0,
                waiting: 0,
                active_leases: 0,
                created: SystemTime::now(),
                time: SystemTime::now(),
            },
            owner: None,
        };
        let shown = pool_to_pb(&view, true).spec.expect("spec");
        assert_eq!(shown.runtime.expect("rt").env["API_KEY"], REDACTED);
        assert!(!shown.package_index_url.contains("u:p"));
        let admin = pool_to_pb(&view, false).spec.expect("spec");
        assert_eq!(admin.runtime.expect("rt").env["API_KEY"], "hunter2");
    }
}
