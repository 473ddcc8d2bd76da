//! The OpenTelemetry SDK's tracer exporting over OTLP/gRPC, W3C trace
//! context as the global propagator; and our metrics exporter (see
//! `metrics_export`) to the same endpoint, with the same resource.

use std::sync::Arc;

use opentelemetry::{KeyValue, global, trace::TracerProvider as _};
use opentelemetry_otlp::{SpanExporter, WithExportConfig};
use opentelemetry_sdk::{
    Resource,
    propagation::TraceContextPropagator,
    trace::{SdkTracer, SdkTracerProvider},
};

use super::{metrics_export::Exporter, settings::Resolved};

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error(
        "OTEL_EXPORTER_OTLP_PROTOCOL={0:?}: sandpool exports over OTLP/gRPC only (set it to grpc or leave it unset)"
    )]
    Protocol(String),
    #[error(
        "the metrics export interval {0:?} is not a positive number (OTEL_METRIC_EXPORT_INTERVAL: milliseconds; telemetry.metrics_interval: seconds)"
    )]
    Interval(String),
    #[error("the OTLP endpoint {0:?} is not a URI: {1}")]
    Endpoint(String, String),
    #[error("cannot build the OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
}

pub(super) struct Providers {
    traces: SdkTracerProvider,
    metrics: Arc<Exporter>,
}

impl Providers {
    /// Builds both exporters (their channel connects lazily: a collector
    /// that is not up yet is no error) and installs them globally.
    pub(super) fn start(
        settings: &Resolved,
        var: &impl Fn(&str) -> Option<String>,
    ) -> Result<Self, TelemetryError> {
        // OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME are read here too;
        // the service name resolved from the file (or the default) is
        // applied over them only when the environment does not name one.
        let resource = Resource::builder()
            .with_service_name(settings.service_name.clone())
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        let spans = SpanExporter::builder()
            .with_tonic()
            .with_endpoint(settings.endpoint.clone())
            .build()?;
        // The sampler comes from OTEL_TRACES_SAMPLER(_ARG) (the SDK's
        // default config reads them), parent-based always-on otherwise.
        let traces = SdkTracerProvider::builder()
            .with_batch_exporter(spans)
            .with_resource(resource.clone())
            .build();
        let metrics = Exporter::start(
            &settings.endpoint,
            settings.metrics_interval,
            &resource,
            var,
        )?;
        global::set_text_map_propagator(TraceContextPropagator::new());
        global::set_tracer_provider(traces.clone());
        Ok(Self { traces, metrics })
    }

    pub(super) fn tracer(&self) -> SdkTracer {
        self.traces.tracer("sandpool-server")
    }

    /// Exports what is buffered (the last metrics included) and stops.
    pub(super) fn shutdown(self) {
        if let Err(e) = self.traces.shutdown() {
            tracing::warn!(error = %e, "flushing traces at shutdown failed");
        }
        self.metrics.shutdown();
    }
}
