//! W3C trace context on every call: an explicit `traceparent` given to the
//! builder, else (feature `otel`) the caller's current OpenTelemetry
//! context, injected by the global propagator at each call.

use tonic::{
    Status,
    metadata::{AsciiMetadataValue, MetadataMap},
};

use crate::Error;

#[derive(Clone, Default)]
pub(crate) struct TraceContext {
    explicit: Option<(AsciiMetadataValue, Option<AsciiMetadataValue>)>,
}

impl TraceContext {
    /// Checks `traceparent`'s form (`00-<32 hex>-<16 hex>-<2 hex>`): the
    /// server would ignore a malformed one without a word.
    pub(crate) fn explicit(traceparent: &str, tracestate: Option<&str>) -> Result<Self, Error> {
        let invalid = |what: &str| {
            Error::InvalidArgument(Status::invalid_argument(format!(
                "invalid {what}: expected 00-<32 hex>-<16 hex>-<2 hex> and header text"
            )))
        };
        let parts: Vec<&str> = traceparent.split('-').collect();
        let lengths_ok = parts.iter().map(|p| p.len()).eq([2, 32, 16, 2]);
        let hex_ok = parts.iter().all(|p| {
            p.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        });
        if !(lengths_ok && hex_ok) {
            return Err(invalid("traceparent"));
        }
        let parent = traceparent.parse().map_err(|_| invalid("traceparent"))?;
        let state = match tracestate.filter(|s| !s.is_empty()) {
            Some(s) => Some(s.parse().map_err(|_| invalid("tracestate"))?),
            None => None,
        };
        Ok(Self {
            explicit: Some((parent, state)),
        })
    }

    /// From the current context at each call (feature `otel`), else nothing.
    pub(crate) fn current() -> Self {
        Self::default()
    }

    pub(crate) fn apply(&self, metadata: &mut MetadataMap) {
        match &self.explicit {
            Some((parent, state)) => {
                metadata.insert("traceparent", parent.clone());
                if let Some(state) = state {
                    metadata.insert("tracestate", state.clone());
                }
            }
            #[cfg(feature = "otel")]
            None => inject_current(metadata),
            #[cfg(not(feature = "otel"))]
            None => {}
        }
    }
}

#[cfg(feature = "otel")]
fn inject_current(metadata: &mut MetadataMap) {
    struct Injector<'a>(&'a mut MetadataMap);
    impl opentelemetry::propagation::Injector for Injector<'_> {
        fn set(&mut self, key: &str, value: String) {
            if let (Ok(key), Ok(value)) = (
                tonic::metadata::AsciiMetadataKey::from_bytes(key.as_bytes()),
                value.parse(),
            ) {
                self.0.insert(key, value);
            }
        }
    }
    let context = opentelemetry::Context::current();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut Injector(metadata))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_explicit_traceparent_is_checked_and_sent() {
        let good = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let mut metadata = MetadataMap::new();
        TraceContext::explicit(good, Some("vendor=1"))
            .expect("valid")
            .apply(&mut metadata);
        assert_eq!(
            metadata.get("traceparent").and_then(|v| v.to_str().ok()),
            Some(good)
        );
        assert_eq!(
            metadata.get("tracestate").and_then(|v| v.to_str().ok()),
            Some("vendor=1")
        );
        for bad in [
            "",
            "00-xyz",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
        ] {
            assert!(TraceContext::explicit(bad, None).is_err(), "{bad:?}");
        }
    }

    #[cfg(feature = "otel")]
    #[test]
    fn the_current_context_is_injected() {
        use opentelemetry::trace::{
            SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
        };
        // A propagator as an application installs one (the SDK's W3C one is
        // not a dependency of this crate: a minimal one writes the header).
        #[derive(Debug)]
        struct W3c;
        impl opentelemetry::propagation::TextMapPropagator for W3c {
            fn inject_context(
                &self,
                cx: &opentelemetry::Context,
                injector: &mut dyn opentelemetry::propagation::Injector,
            ) {
                let span = cx.span();
                let sc = span.span_context();
                if sc.is_valid() {
                    injector.set(
                        "traceparent",
                        format!(
                            "00-{}-{}-{:02x}",
                            sc.trace_id(),
                            sc.span_id(),
                            sc.trace_flags().to_u8()
                        ),
                    );
                }
            }
            fn extract_with_context(
                &self,
                cx: &opentelemetry::Context,
                _: &dyn opentelemetry::propagation::Extractor,
            ) -> opentelemetry::Context {
                cx.clone()
            }
            fn fields(&self) -> opentelemetry::propagation::text_map_propagator::FieldIter<'_> {
                opentelemetry::propagation::text_map_propagator::FieldIter::new(&[])
            }
        }
        opentelemetry::global::set_text_map_propagator(W3c);
        let sc = SpanContext::new(
            TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap(),
            SpanId::from_hex("b7ad6b7169203331").unwrap(),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        let _attached = opentelemetry::Context::current()
            .with_remote_span_context(sc)
            .attach();
        let mut metadata = MetadataMap::new();
        TraceContext::current().apply(&mut metadata);
        assert_eq!(
            metadata.get("traceparent").and_then(|v| v.to_str().ok()),
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        );
    }
}
