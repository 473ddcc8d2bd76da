//! An OTLP/gRPC receiver for the telemetry suites: the collector's trace and
//! metrics services (from `opentelemetry-proto`), keeping what they are sent
//! as flat records that a test can assert on (and, from the
//! `otlp-receiver` binary, print as JSON lines for the client suites).

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
};

use opentelemetry_proto::tonic::{
    collector::{
        metrics::v1::{
            ExportMetricsServiceRequest, ExportMetricsServiceResponse,
            metrics_service_server::{MetricsService, MetricsServiceServer},
        },
        trace::v1::{
            ExportTraceServiceRequest, ExportTraceServiceResponse,
            trace_service_server::{TraceService, TraceServiceServer},
        },
    },
    common::v1::{AnyValue, KeyValue, any_value},
    metrics::v1::{metric, number_data_point},
};
use serde::Serialize;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

/// One span as exported, ids in hex.
#[derive(Debug, Clone, Serialize)]
pub struct SpanRecord {
    pub service: String,
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    pub name: String,
    /// SPAN_KIND_* number: 2 is SERVER.
    pub kind: i32,
    pub attributes: Vec<(String, String)>,
    pub events: Vec<EventRecord>,
    /// (trace id, span id) of each link.
    pub links: Vec<(String, String)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EventRecord {
    pub name: String,
    pub attributes: Vec<(String, String)>,
}

impl SpanRecord {
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

impl EventRecord {
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// One data point of a gauge or sum.
#[derive(Debug, Clone, Serialize)]
pub struct PointRecord {
    pub metric: String,
    pub attributes: Vec<(String, String)>,
    pub value: f64,
}

/// One data point of a histogram.
#[derive(Debug, Clone, Serialize)]
pub struct HistogramRecord {
    pub metric: String,
    pub unit: String,
    pub attributes: Vec<(String, String)>,
    pub count: u64,
    pub sum: f64,
    pub bounds: Vec<f64>,
    /// Per bucket, not cumulative: one more than `bounds` (+Inf last).
    pub bucket_counts: Vec<u64>,
    /// AGGREGATION_TEMPORALITY_* number: 2 is CUMULATIVE.
    pub temporality: i32,
}

#[derive(Debug, Default)]
struct Received {
    spans: Vec<SpanRecord>,
    points: Vec<PointRecord>,
    histograms: Vec<HistogramRecord>,
    /// Export calls of either kind, empty ones included.
    exports: usize,
}

/// A running receiver; stops when dropped.
pub struct Receiver {
    pub addr: SocketAddr,
    received: Arc<Mutex<Received>>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

#[derive(Clone)]
struct Collector {
    received: Arc<Mutex<Received>>,
}

impl Collector {
    fn lock(&self) -> MutexGuard<'_, Received> {
        self.received.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Receiver {
    /// Listens on 127.0.0.1 at a free port.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the receiver");
        let addr = listener.local_addr().expect("receiver address");
        let received = Arc::new(Mutex::new(Received::default()));
        let collector = Collector {
            received: Arc::clone(&received),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(collector.clone()))
                .add_service(MetricsServiceServer::new(collector))
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
                    let _ = stopped.await;
                })
                .await;
            if let Err(e) = served {
                eprintln!("OTLP receiver failed: {e}");
            }
        });
        Self {
            addr,
            received,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// `http://ADDR`, for OTEL_EXPORTER_OTLP_ENDPOINT.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn lock(&self) -> MutexGuard<'_, Received> {
        self.received.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn spans(&self) -> Vec<SpanRecord> {
        self.lock().spans.clone()
    }

    pub fn points(&self) -> Vec<PointRecord> {
        self.lock().points.clone()
    }

    pub fn histograms(&self) -> Vec<HistogramRecord> {
        self.lock().histograms.clone()
    }

    pub fn exports(&self) -> usize {
        self.lock().exports
    }

    /// Takes what arrived since the last call (for the binary's output).
    pub fn drain(&self) -> (Vec<SpanRecord>, Vec<PointRecord>, Vec<HistogramRecord>) {
        let mut received = self.lock();
        (
            std::mem::take(&mut received.spans),
            std::mem::take(&mut received.points),
            std::mem::take(&mut received.histograms),
        )
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut spans = Vec::new();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .as_ref()
                .and_then(|r| {
                    r.attributes
                        .iter()
                        .find(|kv| kv.key == "service.name")
                        .map(|kv| text(kv.value.as_ref()))
                })
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    spans.push(SpanRecord {
                        service: service.clone(),
                        trace_id: hex::encode(&span.trace_id),
                        span_id: hex::encode(&span.span_id),
                        parent_span_id: hex::encode(&span.parent_span_id),
                        name: span.name,
                        kind: span.kind,
                        attributes: pairs(&span.attributes),
                        events: span
                            .events
                            .into_iter()
                            .map(|e| EventRecord {
                                name: e.name,
                                attributes: pairs(&e.attributes),
                            })
                            .collect(),
                        links: span
                            .links
                            .into_iter()
                            .map(|l| (hex::encode(&l.trace_id), hex::encode(&l.span_id)))
                            .collect(),
                    });
                }
            }
        }
        let mut received = self.lock();
        received.exports += 1;
        received.spans.extend(spans);
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Collector {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        let mut points = Vec::new();
        let mut histograms = Vec::new();
        for resource_metrics in request.into_inner().resource_metrics {
            for scope in resource_metrics.scope_metrics {
                for metric in scope.metrics {
                    let data_points = match metric.data {
                        Some(metric::Data::Gauge(g)) => g.data_points,
                        Some(metric::Data::Sum(s)) => s.data_points,
                        Some(metric::Data::Histogram(h)) => {
                            for point in h.data_points {
                                histograms.push(HistogramRecord {
                                    metric: metric.name.clone(),
                                    unit: metric.unit.clone(),
                                    attributes: pairs(&point.attributes),
                                    count: point.count,
                                    sum: point.sum.unwrap_or(f64::NAN),
                                    bounds: point.explicit_bounds,
                                    bucket_counts: point.bucket_counts,
                                    temporality: h.aggregation_temporality,
                                });
                            }
                            Vec::new()
                        }
                        _ => Vec::new(),
                    };
                    for point in data_points {
                        let value = match point.value {
                            Some(number_data_point::Value::AsDouble(v)) => v,
                            Some(number_data_point::Value::AsInt(v)) => v as f64,
                            None => f64::NAN,
                        };
                        points.push(PointRecord {
                            metric: metric.name.clone(),
                            attributes: pairs(&point.attributes),
                            value,
                        });
                    }
                }
            }
        }
        let mut received = self.lock();
        received.exports += 1;
        received.points.extend(points);
        received.histograms.extend(histograms);
        Ok(Response::new(ExportMetricsServiceResponse::default()))
    }
}

fn pairs(attributes: &[KeyValue]) -> Vec<(String, String)> {
    attributes
        .iter()
        .map(|kv| (kv.key.clone(), text(kv.value.as_ref())))
        .collect()
}

/// An attribute's value as text (numbers and booleans as Rust prints them).
fn text(value: Option<&AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}
