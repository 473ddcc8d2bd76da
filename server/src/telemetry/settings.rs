//! What turns OpenTelemetry on: `[telemetry]` in the config file, then the
//! standard OTEL_* variables over it (as every other setting: file, then
//! environment).

use serde::Deserialize;

use super::otel::TelemetryError;

/// `[telemetry]` in the config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySettings {
    /// OTLP/gRPC endpoint, e.g. `http://otel-collector:4317`; export is off
    /// without one (here or in OTEL_EXPORTER_OTLP_ENDPOINT).
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the exported resource [default: sandpool-server].
    pub service_name: Option<String>,
    /// How often metrics are exported, in seconds [default: 60].
    pub metrics_interval: Option<f64>,
}

/// Settings with the environment applied, export on.
#[derive(Debug, Clone)]
pub(super) struct Resolved {
    pub endpoint: String,
    pub service_name: String,
    pub metrics_interval: std::time::Duration,
}

impl TelemetrySettings {
    /// `None` when export is off: no endpoint anywhere, or
    /// OTEL_SDK_DISABLED=true. Other OTEL_* variables (resource attributes,
    /// sampler, timeouts, headers) are read by the SDK and the span
    /// exporter; the metrics exporter (`metrics_export`) reads the headers.
    pub(super) fn resolve(
        &self,
        var: &impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Resolved>, TelemetryError> {
        let set = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        if set("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        if let Some(protocol) = set("OTEL_EXPORTER_OTLP_PROTOCOL")
            && protocol.trim() != "grpc"
        {
            return Err(TelemetryError::Protocol(protocol));
        }
        let endpoint = set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .or_else(|| set("OTEL_EXPORTER_OTLP_ENDPOINT"))
            .or_else(|| self.otlp_endpoint.clone().filter(|e| !e.is_empty()));
        let Some(endpoint) = endpoint else {
            return Ok(None);
        };
        let service_name = set("OTEL_SERVICE_NAME")
            .or_else(|| self.service_name.clone())
            .unwrap_or_else(|| "sandpool-server".to_string());
        let metrics_interval = match set("OTEL_METRIC_EXPORT_INTERVAL") {
            Some(ms) => ms
                .trim()
                .parse::<u64>()
                .map(std::time::Duration::from_millis)
                .map_err(|_| TelemetryError::Interval(ms))?,
            None => match self.metrics_interval {
                Some(s) if s.is_finite() && s > 0.0 => std::time::Duration::from_secs_f64(s),
                Some(s) => return Err(TelemetryError::Interval(s.to_string())),
                None => std::time::Duration::from_secs(60),
            },
        };
        Ok(Some(Resolved {
            endpoint,
            service_name,
            metrics_interval,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn off_without_an_endpoint_or_when_disabled() {
        let settings = TelemetrySettings::default();
        assert!(settings.resolve(&env(&[])).unwrap().is_none());
        let file = TelemetrySettings {
            otlp_endpoint: Some("http://collector:4317".into()),
            ..Default::default()
        };
        assert!(
            file.resolve(&env(&[("OTEL_SDK_DISABLED", "true")]))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn the_environment_wins_over_the_file() {
        let file = TelemetrySettings {
            otlp_endpoint: Some("http://file:4317".into()),
            service_name: Some("from-file".into()),
            metrics_interval: Some(5.0),
        };
        let on = file
            .resolve(&env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4317"),
                ("OTEL_METRIC_EXPORT_INTERVAL", "250"),
            ]))
            .unwrap()
            .unwrap();
        assert_eq!(on.endpoint, "http://env:4317");
        assert_eq!(on.service_name, "from-file");
        assert_eq!(on.metrics_interval.as_millis(), 250);
    }

    #[test]
    fn only_grpc_is_spoken() {
        let err = TelemetrySettings::default()
            .resolve(&env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4318"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ]))
            .unwrap_err();
        assert!(err.to_string().contains("http/protobuf"), "{err}");
    }
}
