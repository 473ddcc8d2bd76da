//! Logs, traces and metrics.
//!
//! Logs: `tracing` with levels from RUST_LOG (default info), as text or JSON.
//! Traces and metrics: OpenTelemetry over OTLP/gRPC, on only when an
//! endpoint is configured (the standard OTEL_* variables or `[telemetry]`
//! in the config file). Off, every span helper here returns
//! `Span::none()` after one relaxed atomic load: the hot path pays nothing
//! else.
//!
//! Spans of ours have the target [`TARGET`]; only those (and their events)
//! go to OpenTelemetry, whatever RUST_LOG says, so what is exported is what
//! this module and its callers chose: names, ids, counts, never a token or
//! the code a lease ran.

pub mod instruments;
pub mod metrics_export;
mod otel;
pub mod rpc;
mod settings;

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::trace::{SpanContext, TraceContextExt};
use sha2::{Digest, Sha256};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{EnvFilter, Layer, filter::Targets, fmt, prelude::*};

pub use self::{otel::TelemetryError, settings::TelemetrySettings};
use crate::config::LogFormat;

/// The target of every span (and span event) that is exported.
pub const TARGET: &str = "sandpool::trace";

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether traces are exported: the one check the hot path makes.
#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Pauses (or resumes) making spans while the exporters stay installed: a
/// paused server behaves as one with OpenTelemetry off, which is what the
/// tracing-cost bench compares against in the same process. Resuming is
/// refused when nothing was ever installed.
pub fn set_tracing(on: bool, telemetry: &Telemetry) {
    ENABLED.store(on && telemetry.installed, Ordering::Relaxed);
}

/// The exporters while they run; [`Telemetry::shutdown`] flushes them.
#[must_use = "shut it down at exit, or spans still buffered are lost"]
pub struct Telemetry {
    providers: Option<otel::Providers>,
    /// Our layer is the global subscriber's (not so when one was installed
    /// before, as in a test binary that logged first).
    installed: bool,
}

impl Telemetry {
    /// Whether OpenTelemetry is on.
    pub fn exporting(&self) -> bool {
        self.providers.is_some()
    }

    /// Exports what is still buffered and stops the exporters. Blocking (the
    /// SDK's shutdown is): call it off the async workers.
    pub fn shutdown(self) {
        if let Some(providers) = self.providers {
            ENABLED.store(false, Ordering::Relaxed);
            providers.shutdown();
        }
    }
}

/// Installs the global subscriber for logs only. Safe to call more than
/// once (later calls are no-ops), which tests rely on.
pub fn init(format: LogFormat) {
    let _ = tracing_subscriber::registry()
        .with(log_layer(format))
        .try_init();
}

/// Installs logs and, when `settings` (with the OTEL_* variables read by
/// `var`) name an endpoint, the OTLP exporters for traces and metrics.
/// Needs a Tokio runtime (the exporter's gRPC channel lives on it).
pub fn init_with(
    format: LogFormat,
    settings: &TelemetrySettings,
    var: impl Fn(&str) -> Option<String>,
) -> Result<Telemetry, TelemetryError> {
    let resolved = settings.resolve(&var)?;
    let Some(resolved) = resolved else {
        init(format);
        return Ok(Telemetry {
            providers: None,
            installed: false,
        });
    };
    let providers = otel::Providers::start(&resolved, &var)?;
    let traces = tracing_opentelemetry::layer()
        .with_tracer(providers.tracer())
        // Busy/idle time and thread ids per span: bookkeeping on every poll
        // that the spans' own timing already covers.
        .with_tracked_inactivity(false)
        .with_threads(false)
        // The level is ours to choose per span; what RUST_LOG says is for
        // the logs.
        .with_filter(Targets::new().with_target(TARGET, tracing::Level::TRACE));
    let installed = tracing_subscriber::registry()
        .with(log_layer(format))
        .with(traces)
        .try_init()
        .is_ok();
    if installed {
        ENABLED.store(true, Ordering::Relaxed);
    }
    tracing::info!(endpoint = %resolved.endpoint, service = %resolved.service_name, "OpenTelemetry export is on");
    Ok(Telemetry {
        providers: Some(providers),
        installed,
    })
}

/// The log lines, filtered by RUST_LOG. Inside a span of ours they carry its
/// `trace_id` and `span_id` (recorded by [`stamp`]): text lines in the span
/// prefix, JSON lines in their `spans` list.
fn log_layer<S>(format: LogFormat) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    match format {
        LogFormat::Text => fmt::layer().with_target(false).with_filter(filter).boxed(),
        LogFormat::Json => fmt::layer()
            .json()
            .with_current_span(false)
            .with_filter(filter)
            .boxed(),
    }
}

/// A span of ours, child of the current one; `Span::none()` when traces are
/// off (its fields are not even evaluated then).
#[macro_export]
macro_rules! otel_span {
    ($name:literal $(, $($field:tt)*)?) => {
        if $crate::telemetry::enabled() {
            let span = ::tracing::info_span!(
                target: "sandpool::trace",
                $name,
                trace_id = ::tracing::field::Empty,
                span_id = ::tracing::field::Empty
                $(, $($field)*)?
            );
            $crate::telemetry::stamp(&span);
            span
        } else {
            ::tracing::Span::none()
        }
    };
}

/// A span event of ours (run start, run exit) on the current span.
#[macro_export]
macro_rules! otel_event {
    ($name:tt) => {
        if $crate::telemetry::enabled() {
            ::tracing::info!(target: "sandpool::trace", $name);
        }
    };
    ($name:tt, $($field:tt)+) => {
        if $crate::telemetry::enabled() {
            ::tracing::event!(
                target: "sandpool::trace",
                ::tracing::Level::INFO,
                { $($field)+ },
                $name
            );
        }
    };
}

/// Records the span's trace and span ids as fields, for the log lines
/// written inside it.
pub fn stamp(span: &Span) {
    let context = span.context();
    let otel = context.span();
    let ids = otel.span_context();
    if ids.is_valid() {
        span.record("trace_id", tracing::field::display(ids.trace_id()));
        span.record("span_id", tracing::field::display(ids.span_id()));
    }
}

/// A root span for work in the background (`what`: warm-up, reset, health
/// check, recycle), linked to the span current where it was caused (the
/// Release of the lease whose container it resets, the Acquire whose lease
/// emptied the pool), if any.
pub fn background(what: &'static str, pool: &str) -> Span {
    if !enabled() {
        return Span::none();
    }
    let cause = current_context();
    let span = tracing::info_span!(
        target: "sandpool::trace",
        parent: None,
        "background",
        otel.name = what,
        sandpool.pool = pool,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    if let Some(cause) = cause {
        span.add_link(cause);
    }
    stamp(&span);
    span
}

/// The OpenTelemetry context of the current span, when there is one.
fn current_context() -> Option<SpanContext> {
    let context = Span::current().context();
    let ids = context.span().span_context().clone();
    ids.is_valid().then_some(ids)
}

/// A lease id as spans carry it: the first 16 hex digits of its SHA-256. The
/// id itself is a capability (whoever holds it and the identity can use the
/// lease); its hash still lets an operator find one lease's spans.
pub fn lease_tag(lease_id: &str) -> String {
    let digest = Sha256::digest(lease_id.as_bytes());
    hex::encode(&digest[..8])
}

/// Records the pool on the current RPC span.
pub fn record_pool(pool: &str) {
    if enabled() {
        Span::current().record("sandpool.pool", pool);
    }
}

/// Records the (hashed) lease on the current RPC span.
pub fn record_lease(lease_id: &str) {
    if enabled() && !lease_id.is_empty() {
        Span::current().record("sandpool.lease", lease_tag(lease_id));
    }
}

/// TRACEPARENT (and TRACESTATE) for the current span, for the environment
/// of a program a lease runs, so that it can continue the trace. Empty when
/// traces are off or the span is not sampled in.
pub fn trace_env() -> Vec<(String, String)> {
    if !enabled() {
        return Vec::new();
    }
    let context = Span::current().context();
    let otel = context.span();
    let ids = otel.span_context();
    if !ids.is_valid() {
        return Vec::new();
    }
    let mut env = vec![(
        "TRACEPARENT".to_string(),
        format!(
            "00-{}-{}-{:02x}",
            ids.trace_id(),
            ids.span_id(),
            ids.trace_flags().to_u8()
        ),
    )];
    let state = ids.trace_state().header();
    if !state.is_empty() {
        env.push(("TRACESTATE".to_string(), state));
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_tags_are_short_stable_and_not_the_id() {
        let id = "0123456789abcdef0123456789abcdef";
        let tag = lease_tag(id);
        assert_eq!(tag.len(), 16);
        assert_eq!(tag, lease_tag(id));
        assert!(!id.contains(&tag));
        assert_ne!(tag, lease_tag("another"));
    }

    #[test]
    fn off_means_no_spans_and_no_environment() {
        // Nothing in this test binary turns export on.
        assert!(!enabled());
        assert!(otel_span!("run").is_none());
        assert!(background("container.reset", "py").is_none());
        assert!(trace_env().is_empty());
    }
}
