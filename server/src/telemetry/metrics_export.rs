//! Metrics over OTLP/gRPC: every interval, the families of
//! [`FAMILIES`](super::instruments::FAMILIES), read off every pool, go out as
//! one export request, the same values `/metrics` shows at that moment.
//!
//! Not the OpenTelemetry SDK's meter: its histograms aggregate values
//! recorded through the SDK (a lock per data point on every record), and its
//! data types cannot be filled from outside. Our histograms are atomics in
//! the pools' meters, already aggregated; this sends them as they are, as
//! cumulative OTLP points (counters as monotonic sums, gauges as gauges).

use std::{
    sync::{Arc, Mutex, Weak},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use opentelemetry_proto::{
    tonic::{
        collector::metrics::v1::{
            ExportMetricsServiceRequest, metrics_service_client::MetricsServiceClient,
        },
        common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value},
        metrics::v1::{
            AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
            ResourceMetrics, ScopeMetrics, Sum, metric, number_data_point,
        },
        resource::v1::Resource,
    },
    transform::common::tonic::ResourceAttributesWithSchema,
};
use tokio_util::sync::CancellationToken;
use tonic::{metadata::MetadataMap, transport::Channel};

use super::{
    instruments::{FAMILIES, Family, Read},
    otel::TelemetryError,
};
use crate::pool::{PoolManager, stats::DURATION_BOUNDS, stats::PoolStats};

/// Longest one export may take, at the interval and at shutdown.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// The exporter while OTLP export is on; what [`register`] adds managers to.
static EXPORTER: Mutex<Option<Arc<Exporter>>> = Mutex::new(None);

pub(super) struct Exporter {
    client: MetricsServiceClient<Channel>,
    headers: MetadataMap,
    resource: Resource,
    schema_url: String,
    /// Held weakly: a stopped server is not kept alive by its exporter.
    managers: Mutex<Vec<Weak<PoolManager>>>,
    stop: CancellationToken,
    runtime: tokio::runtime::Handle,
}

/// Makes `manager`'s pools part of every export (a no-op when export is off).
pub fn register(manager: &Arc<PoolManager>) {
    let exporter = crate::sync::lock(&EXPORTER).clone();
    if let Some(exporter) = exporter {
        crate::sync::lock(&exporter.managers).push(Arc::downgrade(manager));
    }
}

impl Exporter {
    /// Starts exporting to `endpoint` every `interval` (the channel connects
    /// lazily: a collector that is not up yet is no error). Needs a Tokio
    /// runtime.
    pub(super) fn start(
        endpoint: &str,
        interval: Duration,
        resource: &opentelemetry_sdk::Resource,
        var: &impl Fn(&str) -> Option<String>,
    ) -> Result<Arc<Self>, TelemetryError> {
        let channel = Channel::from_shared(endpoint.to_string())
            .map_err(|e| TelemetryError::Endpoint(endpoint.to_string(), e.to_string()))?
            .timeout(EXPORT_TIMEOUT)
            .connect_lazy();
        let headers = var("OTEL_EXPORTER_OTLP_METRICS_HEADERS")
            .or_else(|| var("OTEL_EXPORTER_OTLP_HEADERS"))
            .map(|h| headers(&h))
            .unwrap_or_default();
        let resource = ResourceAttributesWithSchema::from(resource);
        let exporter = Arc::new(Self {
            client: MetricsServiceClient::new(channel),
            headers,
            resource: Resource {
                attributes: resource.attributes.0,
                ..Default::default()
            },
            schema_url: resource.schema_url.unwrap_or_default(),
            managers: Mutex::new(Vec::new()),
            stop: CancellationToken::new(),
            runtime: tokio::runtime::Handle::current(),
        });
        *crate::sync::lock(&EXPORTER) = Some(Arc::clone(&exporter));
        let periodic = Arc::clone(&exporter);
        tokio::spawn(async move {
            let mut failing = false;
            loop {
                tokio::select! {
                    _ = periodic.stop.cancelled() => return,
                    _ = tokio::time::sleep(interval) => {}
                }
                match periodic.export().await {
                    Ok(()) => failing = false,
                    // Once per outage, not at every interval.
                    Err(e) if !failing => {
                        failing = true;
                        tracing::warn!(error = %e, "exporting metrics over OTLP failed");
                    }
                    Err(_) => {}
                }
            }
        });
        Ok(exporter)
    }

    /// Stops the periodic export and exports once more. Blocking: call it
    /// off the async workers.
    pub(super) fn shutdown(&self) {
        self.stop.cancel();
        crate::sync::lock(&EXPORTER).take();
        if let Err(e) = self.runtime.block_on(self.export()) {
            tracing::warn!(error = %e, "flushing metrics at shutdown failed");
        }
    }

    async fn export(&self) -> Result<(), String> {
        let pools: Vec<PoolStats> = {
            let mut managers = crate::sync::lock(&self.managers);
            managers.retain(|m| m.strong_count() > 0);
            managers
                .iter()
                .filter_map(Weak::upgrade)
                .flat_map(|m| m.all_pools().into_iter().map(|p| p.stats))
                .collect()
        };
        if pools.is_empty() {
            return Ok(());
        }
        let request = request(
            self.resource.clone(),
            self.schema_url.clone(),
            &pools,
            SystemTime::now(),
        );
        let mut request = tonic::Request::new(request);
        *request.metadata_mut() = self.headers.clone();
        let mut client = self.client.clone();
        match tokio::time::timeout(EXPORT_TIMEOUT, client.export(request)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(status)) => Err(status.to_string()),
            Err(_) => Err(format!("no answer within {EXPORT_TIMEOUT:?}")),
        }
    }
}

/// OTEL_EXPORTER_OTLP_HEADERS: `key=value` pairs separated by commas,
/// values percent-encoded. Pairs that are not valid gRPC metadata are
/// skipped (with a warning: a header such as a collector's token missing is
/// worth a line).
fn headers(spec: &str) -> MetadataMap {
    let mut map = MetadataMap::new();
    for pair in spec.split(',').filter(|p| !p.trim().is_empty()) {
        let parsed = pair.split_once('=').and_then(|(k, v)| {
            let key = tonic::metadata::MetadataKey::from_bytes(k.trim().to_lowercase().as_bytes())
                .ok()?;
            let value = percent_decode(v.trim()).parse().ok()?;
            Some((key, value))
        });
        match parsed {
            Some((key, value)) => {
                map.insert(key, value);
            }
            None => tracing::warn!(
                "OTEL_EXPORTER_OTLP_HEADERS: skipping an entry that is not key=value metadata"
            ),
        }
    }
    map
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One export: every family over `pools`, cumulative from each pool's
/// creation.
pub fn request(
    resource: Resource,
    schema_url: String,
    pools: &[PoolStats],
    now: SystemTime,
) -> ExportMetricsServiceRequest {
    let metrics = FAMILIES
        .iter()
        .map(|family| metric(family, pools, nanos(now)))
        .collect();
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(resource),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: "sandpool-server".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                metrics,
                schema_url: String::new(),
            }],
            schema_url,
        }],
    }
}

fn metric(family: &Family, pools: &[PoolStats], now: u64) -> Metric {
    let numbers = |read: fn(&PoolStats) -> Vec<crate::telemetry::instruments::Sample>| {
        pools
            .iter()
            .flat_map(|stats| {
                read(stats)
                    .into_iter()
                    .map(move |(label, value)| NumberDataPoint {
                        attributes: attributes(&stats.pool, label),
                        start_time_unix_nano: nanos(stats.created),
                        time_unix_nano: now,
                        value: Some(number_data_point::Value::AsDouble(value)),
                        ..Default::default()
                    })
            })
            .collect::<Vec<_>>()
    };
    let data = match family.read {
        Read::Gauge(read) => metric::Data::Gauge(Gauge {
            data_points: numbers(read),
        }),
        Read::Counter(read) => metric::Data::Sum(Sum {
            data_points: numbers(read),
            aggregation_temporality: AggregationTemporality::Cumulative.into(),
            is_monotonic: true,
        }),
        Read::Histogram(read) => metric::Data::Histogram(Histogram {
            data_points: pools
                .iter()
                .map(|stats| {
                    let h = read(stats);
                    HistogramDataPoint {
                        attributes: attributes(&stats.pool, None),
                        start_time_unix_nano: nanos(stats.created),
                        time_unix_nano: now,
                        count: h.count(),
                        sum: Some(h.sum),
                        bucket_counts: h.buckets.to_vec(),
                        explicit_bounds: DURATION_BOUNDS.to_vec(),
                        ..Default::default()
                    }
                })
                .collect(),
            aggregation_temporality: AggregationTemporality::Cumulative.into(),
        }),
    };
    Metric {
        name: family.otlp_name().into(),
        description: family.help.into(),
        unit: family.unit.into(),
        data: Some(data),
        ..Default::default()
    }
}

fn attributes(pool: &str, label: Option<(&'static str, &'static str)>) -> Vec<KeyValue> {
    let text = |key: &str, value: &str| KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_string())),
        }),
        ..Default::default()
    };
    let mut out = vec![text("pool", pool)];
    if let Some((key, value)) = label {
        out.push(text(key, value));
    }
    out
}

fn nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_parsed_and_decoded() {
        let map = headers("Authorization=Bearer%20abc, x-tenant = t1,broken");
        assert_eq!(
            map.get("authorization").and_then(|v| v.to_str().ok()),
            Some("Bearer abc")
        );
        assert_eq!(
            map.get("x-tenant").and_then(|v| v.to_str().ok()),
            Some("t1")
        );
        assert_eq!(map.len(), 2);
    }
}
