//! OpenTelemetry tracing: the process's `tracing` subscriber, the OTLP exporter behind it when
//! `telemetry.otlp_endpoint` is set, and W3C trace context (`traceparent` / `tracestate`) read
//! from HTTP headers and gRPC metadata.
//!
//! Off (the default) the subscriber is the log formatter alone, as it always was: no exporter,
//! no OpenTelemetry layer, and the pipeline's debug-level spans (`tokenize`, `queue`,
//! `inference`, `batch`) stay disabled at their call sites unless the log level asks for them.
//! A request's `traceparent` is still recorded on its span, so logs name it.
//!
//! On, a second layer turns the crate's spans into OpenTelemetry spans: `request` (the front
//! end's, a child of the caller's span when it sent `traceparent`), `tokenize`, `queue` and
//! `inference` (children of `request`), and `batch` (a child of the `inference` span of the
//! oldest request in the batch, linked to the others). Finished spans go into the SDK's batch
//! processor: a bounded queue that a thread of its own drains every
//! `OTEL_BSP_SCHEDULE_DELAY` ms (5000 by default). Serving never waits on the collector: a
//! span is handed over with a non-blocking send, and dropped when the queue is full (a
//! collector that is down or slow costs spans, never latency). The exports run on a one-thread
//! tokio runtime owned here, so neither the actix arbiters nor tonic's are borrowed.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use opentelemetry::{KeyValue, propagation::TextMapPropagator, trace::TracerProvider as _};
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::{
    Resource,
    error::{OTelSdkError, OTelSdkResult},
    propagation::TraceContextPropagator,
    trace::{Sampler, SdkTracerProvider, SpanData, SpanExporter},
};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::{Layer as _, layer::SubscriberExt as _, util::SubscriberInitExt as _};

use crate::config::{Config, LogFormat, Logging, OtlpProtocol};

/// True once [`init`] installed the OpenTelemetry layer.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// How long one export may take before it counts as failed.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the exit waits for the last spans to reach the collector.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

/// Whether spans are exported (`telemetry.otlp_endpoint` is set and [`init`] ran).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Why the exporter could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// opentelemetry-otlp refused the endpoint or protocol.
    #[error("telemetry.otlp_endpoint: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    /// The export thread's runtime could not start.
    #[error("telemetry: cannot start the export runtime: {0}")]
    Runtime(#[from] std::io::Error),
}

/// The running exporter. [`Exporter::shutdown`] (or dropping it) sends what is queued, waiting
/// at most [`FLUSH_TIMEOUT`], and stops the export thread and runtime.
pub struct Exporter {
    provider: SdkTracerProvider,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Exporter {
    /// Flushes and stops (bounded by [`FLUSH_TIMEOUT`]).
    pub fn shutdown(self) {
        drop(self);
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        ENABLED.store(false, Ordering::Relaxed);
        if let Err(e) = self.provider.shutdown_with_timeout(FLUSH_TIMEOUT) {
            tracing::warn!("telemetry: the last spans may not have reached the collector: {e}");
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_millis(100));
        }
    }
}

fn env_filter(logging: &Logging) -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&logging.level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
}

fn ansi() -> bool {
    std::io::IsTerminal::is_terminal(&std::io::stderr())
}

/// Installs the log formatter alone: what the server runs with telemetry off.
fn init_logs_only(logging: &Logging) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(env_filter(logging))
        .with_writer(std::io::stderr)
        .with_ansi(ansi());
    match logging.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().with_current_span(true).init(),
    }
}

/// What the OpenTelemetry layer sees: this crate's spans down to DEBUG (the pipeline's spans
/// are debug-level so that they cost nothing when neither logs nor traces want them), and
/// warnings and errors as span events. Decided on metadata alone, so cached per call site.
fn exported(meta: &tracing::Metadata<'_>) -> bool {
    if meta.is_span() {
        meta.target().starts_with("actor_infer") && *meta.level() <= tracing::Level::DEBUG
    } else {
        *meta.level() <= tracing::Level::WARN
    }
}

/// Installs the process's `tracing` subscriber: the log formatter of `logging:`, plus the
/// OpenTelemetry layer and its OTLP exporter when `telemetry.otlp_endpoint` is set. Returns the
/// exporter, to be shut down at exit. On an error the log formatter is installed alone.
pub fn init(config: &Config) -> Result<Option<Exporter>, TelemetryError> {
    let Some(endpoint) = &config.telemetry.otlp_endpoint else {
        init_logs_only(&config.logging);
        return Ok(None);
    };
    let exporter = match build(config, endpoint) {
        Ok(e) => e,
        Err(e) => {
            init_logs_only(&config.logging);
            return Err(e);
        }
    };
    let tracer = exporter.provider.tracer("actor-infer");
    let logging = &config.logging;
    let logs: Box<dyn tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync> =
        match logging.format {
            LogFormat::Text => tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(ansi())
                .with_filter(env_filter(logging))
                .boxed(),
            LogFormat::Json => tracing_subscriber::fmt::layer()
                .json()
                .with_current_span(true)
                .with_writer(std::io::stderr)
                .with_filter(env_filter(logging))
                .boxed(),
        };
    let otel = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        .with_filter(tracing_subscriber::filter::filter_fn(exported));
    tracing_subscriber::registry().with(logs).with(otel).init();
    ENABLED.store(true, Ordering::Relaxed);
    let t = &config.telemetry;
    tracing::info!(
        endpoint = %endpoint,
        protocol = ?t.otlp_protocol,
        sampling_ratio = t.sampling_ratio,
        service_name = %t.service_name,
        "OpenTelemetry: exporting traces over OTLP"
    );
    Ok(Some(exporter))
}

/// The tracer provider: resource attributes, sampler, and the OTLP exporter behind a batch
/// processor.
fn build(config: &Config, endpoint: &str) -> Result<Exporter, TelemetryError> {
    let t = &config.telemetry;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("otlp-export")
        .enable_all()
        .build()?;
    let otlp = {
        // tonic's lazy channel is made (and its worker spawned) on the export runtime.
        let _enter = runtime.enter();
        match t.otlp_protocol {
            OtlpProtocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .with_timeout(EXPORT_TIMEOUT)
                .build()?,
            OtlpProtocol::HttpProtobuf => {
                let client = reqwest::Client::builder()
                    .timeout(EXPORT_TIMEOUT)
                    .build()
                    .map_err(std::io::Error::other)?;
                opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_http_client(HttpClient(client))
                    .with_endpoint(http_traces_url(endpoint))
                    .with_timeout(EXPORT_TIMEOUT)
                    .build()?
            }
        }
    };
    let resource = Resource::builder()
        .with_service_name(t.service_name.clone())
        .with_attributes([
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
            KeyValue::new("actor_infer.experiment", config.experiment.name.clone()),
        ])
        .build();
    let provider = SdkTracerProvider::builder()
        .with_resource(resource)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            t.sampling_ratio,
        ))))
        .with_batch_exporter(OnRuntime {
            inner: Arc::new(otlp),
            runtime: runtime.handle().clone(),
            failing: Arc::new(AtomicBool::new(false)),
        })
        .build();
    Ok(Exporter {
        provider,
        runtime: Some(runtime),
    })
}

/// OTLP/HTTP posts traces to `/v1/traces`; an endpoint given as `http://host:4318` gets it.
fn http_traces_url(endpoint: &str) -> String {
    let rest = endpoint.trim_start_matches("http://");
    match rest.find('/') {
        Some(i) if rest.len() > i + 1 => endpoint.to_string(),
        _ => format!("{}/v1/traces", endpoint.trim_end_matches('/')),
    }
}

/// Runs each export of the OTLP exporter on the export runtime (the SDK's batch thread has no
/// tokio runtime of its own), and says once when exports start failing and once when they
/// work again, rather than once per batch.
#[derive(Debug)]
struct OnRuntime {
    inner: Arc<opentelemetry_otlp::SpanExporter>,
    runtime: tokio::runtime::Handle,
    failing: Arc<AtomicBool>,
}

impl SpanExporter for OnRuntime {
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        let inner = self.inner.clone();
        let failing = self.failing.clone();
        let task = self.runtime.spawn(async move { inner.export(batch).await });
        async move {
            let result = task
                .await
                .unwrap_or_else(|e| Err(OTelSdkError::InternalFailure(e.to_string())));
            match &result {
                Err(e) if !failing.swap(true, Ordering::Relaxed) => tracing::warn!(
                    "telemetry: cannot export spans to the OTLP collector ({e}); serving goes \
                     on, spans are dropped while it is unreachable"
                ),
                Ok(()) if failing.swap(false, Ordering::Relaxed) => {
                    tracing::info!("telemetry: the OTLP collector is reachable again")
                }
                _ => {}
            }
            result
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.set_resource(resource);
        }
    }
}

/// OTLP/HTTP through the reqwest client the crate already has (opentelemetry-otlp's own
/// would pull a second reqwest major).
#[derive(Debug)]
struct HttpClient(reqwest::Client);

#[tonic::async_trait]
impl opentelemetry_http::HttpClient for HttpClient {
    async fn send_bytes(
        &self,
        request: opentelemetry_http::Request<opentelemetry_http::Bytes>,
    ) -> Result<
        opentelemetry_http::Response<opentelemetry_http::Bytes>,
        opentelemetry_http::HttpError,
    > {
        let response = self.0.execute(reqwest::Request::try_from(request)?).await?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.bytes().await?;
        let mut out = opentelemetry_http::Response::new(body);
        *out.status_mut() = status;
        *out.headers_mut() = headers;
        Ok(out)
    }
}

/// A request's W3C trace context, as its transport carried it.
#[derive(Debug, Clone)]
pub struct TraceContext {
    traceparent: String,
    tracestate: Option<String>,
}

impl TraceContext {
    /// The caller's `traceparent`.
    pub fn traceparent(&self) -> &str {
        &self.traceparent
    }

    /// From HTTP headers; `None` without a `traceparent`.
    pub fn from_http(headers: &actix_web::http::header::HeaderMap) -> Option<TraceContext> {
        let get = |k: &str| headers.get(k).and_then(|v| v.to_str().ok());
        Self::from_parts(get("traceparent"), get("tracestate"))
    }

    /// From gRPC metadata; `None` without a `traceparent`.
    pub fn from_grpc(metadata: &tonic::metadata::MetadataMap) -> Option<TraceContext> {
        let get = |k: &str| metadata.get(k).and_then(|v| v.to_str().ok());
        Self::from_parts(get("traceparent"), get("tracestate"))
    }

    fn from_parts(traceparent: Option<&str>, tracestate: Option<&str>) -> Option<TraceContext> {
        Some(TraceContext {
            traceparent: traceparent?.to_owned(),
            tracestate: tracestate.map(str::to_owned),
        })
    }
}

impl opentelemetry::propagation::Extractor for TraceContext {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "traceparent" => Some(&self.traceparent),
            "tracestate" => self.tracestate.as_deref(),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent", "tracestate"]
    }
}

/// Continues the caller's trace on `span` (a request's span, declared with an empty
/// `traceparent` field): the `traceparent` is recorded on the span (so every log line of the
/// request names it, beside its request id) and, when spans are exported, the caller's span
/// becomes the span's remote parent. Without one (or with a malformed one) a new trace starts.
pub fn continue_trace(span: &tracing::Span, context: Option<TraceContext>) {
    let Some(context) = context else {
        return;
    };
    span.record("traceparent", context.traceparent.as_str());
    if enabled() {
        let _ = span.set_parent(TraceContextPropagator::new().extract(&context));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_endpoints_get_the_traces_path_unless_they_name_one() {
        assert_eq!(http_traces_url("http://c:4318"), "http://c:4318/v1/traces");
        assert_eq!(http_traces_url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(
            http_traces_url("http://c:4318/otlp/t"),
            "http://c:4318/otlp/t"
        );
    }
}
