//! A server span per RPC: a tower layer around tonic's routes that takes the
//! caller's W3C trace context (`traceparent`, `tracestate`) from the request
//! metadata and keeps the span open until the response body (for a
//! streaming RPC, its last message and trailers) is done. Off, the layer
//! passes the call through untouched.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use futures::future::{BoxFuture, Either};
use http::{HeaderMap, Request, Response};
use http_body::{Frame, SizeHint};
use opentelemetry::{global, propagation::Extractor};
use tonic::body::Body;
use tower_layer::Layer;
use tower_service::Service;
use tracing::{Instrument, Span, field::Empty};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::{enabled, stamp};

/// Services left untraced: health probes and reflection say nothing about
/// the work and would drown it.
const UNTRACED: [&str; 2] = ["grpc.health.", "grpc.reflection."];

#[derive(Debug, Clone, Copy, Default)]
pub struct RpcSpanLayer;

impl<S> Layer<S> for RpcSpanLayer {
    type Service = RpcSpan<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcSpan { inner }
    }
}

#[derive(Debug, Clone)]
pub struct RpcSpan<S> {
    inner: S,
}

impl<S> Service<Request<Body>> for RpcSpan<S>
where
    S: Service<Request<Body>, Response = Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Either<S::Future, BoxFuture<'static, Result<Response<Body>, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        if !enabled() {
            return Either::Left(self.inner.call(request));
        }
        let path = request.uri().path().trim_start_matches('/');
        if UNTRACED.iter().any(|prefix| path.starts_with(prefix)) {
            return Either::Left(self.inner.call(request));
        }
        let span = server_span(path, request.headers());
        let call = self.inner.call(request).instrument(span.clone());
        Either::Right(Box::pin(async move {
            let response = call.await?;
            Ok(finish(response, span))
        }))
    }
}

/// The span of one call to `path` (`package.Service/Method`), child of the
/// caller's context when its metadata carries one.
fn server_span(path: &str, headers: &HeaderMap) -> Span {
    let (service, method) = path.split_once('/').unwrap_or((path, ""));
    let span = tracing::info_span!(
        target: "sandpool::trace",
        "rpc",
        otel.name = path,
        otel.kind = "server",
        otel.status_code = Empty,
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
        rpc.grpc.status_code = Empty,
        sandpool.pool = Empty,
        sandpool.lease = Empty,
        trace_id = Empty,
        span_id = Empty,
    );
    let caller = global::get_text_map_propagator(|p| p.extract(&Metadata(headers)));
    // A caller without a (valid) traceparent starts a trace here.
    let _ = span.set_parent(caller);
    stamp(&span);
    span
}

/// Records the status now when it is in the headers (an error answered
/// before any message), else when the trailers pass by; the span ends when
/// the body is done with.
fn finish(response: Response<Body>, span: Span) -> Response<Body> {
    if let Some(code) = grpc_status(response.headers()) {
        record_status(&span, code);
    }
    response.map(|inner| Body::new(TracedBody { inner, span }))
}

fn grpc_status(headers: &HeaderMap) -> Option<i32> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// `rpc.grpc.status_code`, and an error status for the codes that are the
/// server's fault (OpenTelemetry's gRPC conventions for server spans).
fn record_status(span: &Span, code: i32) {
    span.record("rpc.grpc.status_code", code);
    // UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS
    if matches!(code, 2 | 4 | 12 | 13 | 14 | 15) {
        span.record("otel.status_code", "ERROR");
    }
}

pin_project_lite::pin_project! {
    /// The response body, holding the RPC's span open until it is dropped;
    /// the stream behind it is polled inside the span.
    struct TracedBody {
        #[pin]
        inner: Body,
        span: Span,
    }
}

impl http_body::Body for TracedBody {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let _entered = this.span.enter();
        let polled = this.inner.poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(code) = frame.trailers_ref().and_then(grpc_status)
        {
            record_status(this.span, code);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// gRPC metadata as the propagator reads it.
struct Metadata<'a>(&'a HeaderMap);

impl Extractor for Metadata<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}
