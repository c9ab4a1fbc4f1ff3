//! The process-wide sections: `shutdown:`, `supervision:`, `metrics:`, `logging:` and
//! `telemetry:`.

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// `shutdown:` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shutdown {
    /// The whole stop's budget, spent stage by stage; past it the process aborts. Keep it
    /// below the orchestrator's grace period (Docker 10 s, Kubernetes 30 s).
    #[serde(default = "default_shutdown_timeout")]
    pub timeout_seconds: f64,
}

fn default_shutdown_timeout() -> f64 {
    10.0
}

impl Default for Shutdown {
    fn default() -> Self {
        Self {
            timeout_seconds: default_shutdown_timeout(),
        }
    }
}

/// `supervision:` section: at most `max_restarts` restarts of panicked actors within
/// `window_seconds`; one more and the server stops (non-zero exit) instead of flapping.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Supervision {
    /// Restarts allowed within the window.
    #[serde(default = "default_max_restarts")]
    pub max_restarts: usize,
    /// The window, in seconds.
    #[serde(default = "default_restart_window")]
    pub window_seconds: f64,
}

fn default_max_restarts() -> usize {
    5
}
fn default_restart_window() -> f64 {
    60.0
}

impl Default for Supervision {
    fn default() -> Self {
        Self {
            max_restarts: default_max_restarts(),
            window_seconds: default_restart_window(),
        }
    }
}

/// `metrics:` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// The JSON dashboard's rolling window (throughput, averages, percentiles), in seconds.
    #[serde(default = "default_window")]
    pub window_seconds: f64,
}

fn default_window() -> f64 {
    60.0
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            window_seconds: default_window(),
        }
    }
}

/// `logging:` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Logging {
    /// `text` (human-readable) or `json`.
    #[serde(default)]
    pub format: LogFormat,
    /// A `tracing` filter, e.g. `info` or `actor_infer=debug,info`. `RUST_LOG` wins if set.
    #[serde(default = "default_log_level")]
    pub level: String,
    /// One line per finished request at INFO (target `actor_infer::access`).
    #[serde(default = "default_true")]
    pub access_log: bool,
}

fn default_true() -> bool {
    true
}

fn default_log_level() -> String {
    "info".into()
}

impl Default for Logging {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: default_log_level(),
            access_log: true,
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `telemetry:` section: OpenTelemetry traces exported over OTLP. Off unless `otlp_endpoint` is
/// set; then every request's span (continuing a W3C `traceparent` it carries) and its tokenize,
/// queue, inference and batch spans are exported.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Telemetry {
    /// Where the OTLP collector listens, e.g. `http://127.0.0.1:4317` (gRPC) or
    /// `http://127.0.0.1:4318/v1/traces` (HTTP). Unset: no exporter, no tracing layer.
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// `grpc` or `http/protobuf` (`http` for short).
    #[serde(default)]
    pub otlp_protocol: OtlpProtocol,
    /// Share of new traces recorded (0..=1). A request whose `traceparent` says "sampled" (or
    /// "not sampled") follows its caller's decision.
    #[serde(default = "default_sampling_ratio")]
    pub sampling_ratio: f64,
    /// The `service.name` resource attribute.
    #[serde(default = "default_service_name")]
    pub service_name: String,
}

fn default_sampling_ratio() -> f64 {
    1.0
}

fn default_service_name() -> String {
    "actor-infer".into()
}

impl Default for Telemetry {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            otlp_protocol: OtlpProtocol::default(),
            sampling_ratio: default_sampling_ratio(),
            service_name: default_service_name(),
        }
    }
}

impl Telemetry {
    /// Checks the ratio, the endpoint's scheme and the service name.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(self.sampling_ratio.is_finite() && (0.0..=1.0).contains(&self.sampling_ratio)) {
            return Err(ConfigError::new(
                "telemetry.sampling_ratio",
                format!("{} must be between 0 and 1", self.sampling_ratio),
            ));
        }
        if let Some(endpoint) = &self.otlp_endpoint
            && !endpoint.starts_with("http://")
        {
            return Err(ConfigError::new(
                "telemetry.otlp_endpoint",
                format!(
                    "{endpoint:?} must be an http:// URL (host and port of the collector; \
                     TLS is not built in: send to a local collector or agent)"
                ),
            ));
        }
        if self.service_name.trim().is_empty() {
            return Err(ConfigError::new(
                "telemetry.service_name",
                "must not be empty",
            ));
        }
        Ok(())
    }
}

/// The OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum OtlpProtocol {
    /// OTLP/gRPC (port 4317 by convention).
    #[default]
    #[serde(rename = "grpc")]
    Grpc,
    /// OTLP/HTTP with protobuf bodies (port 4318, path `/v1/traces`).
    #[serde(rename = "http/protobuf", alias = "http")]
    HttpProtobuf,
}
