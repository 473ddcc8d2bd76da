//! The OpenTelemetry SDK: a tracer and a meter provider exporting over
//! OTLP/gRPC, W3C trace context as the global propagator.

use opentelemetry::{KeyValue, global, trace::TracerProvider as _};
use opentelemetry_otlp::{MetricExporter, SpanExporter, WithExportConfig};
use opentelemetry_sdk::{
    Resource,
    metrics::{PeriodicReader, SdkMeterProvider},
    propagation::TraceContextPropagator,
    trace::{SdkTracer, SdkTracerProvider},
};

use super::settings::Resolved;

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
    #[error("cannot build the OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
}

pub(super) struct Providers {
    traces: SdkTracerProvider,
    metrics: SdkMeterProvider,
}

impl Providers {
    /// Builds both exporters (their channel connects lazily: a collector
    /// that is not up yet is no error) and installs them globally.
    pub(super) fn start(settings: &Resolved) -> Result<Self, TelemetryError> {
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
        let metric_exporter = MetricExporter::builder()
            .with_tonic()
            .with_endpoint(settings.endpoint.clone())
            .build()?;
        let reader = PeriodicReader::builder(metric_exporter)
            .with_interval(settings.metrics_interval)
            .build();
        let metrics = SdkMeterProvider::builder()
            .with_reader(reader)
            .with_resource(resource)
            .build();
        global::set_text_map_propagator(TraceContextPropagator::new());
        global::set_tracer_provider(traces.clone());
        global::set_meter_provider(metrics.clone());
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
        if let Err(e) = self.metrics.shutdown() {
            tracing::warn!(error = %e, "flushing metrics at shutdown failed");
        }
    }
}
