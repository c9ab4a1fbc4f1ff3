//! The access log: one line per finished request, at INFO, target `actor_infer::access`
//! (`logging.access_log: false` turns it off). HTTP writes it from a middleware, so every
//! request has its line, a refused one included (bad JSON, the API key, an unknown route);
//! gRPC writes it when an inference call closes, and for a call the API key refuses. A line
//! names the request id, the trace id (from the caller's `traceparent`, else the one the
//! server started when spans are exported), transport, method and route, model and version,
//! the HTTP status or gRPC code and the error kind, texts, tokens, total and stage times and
//! the client's address; `logging.format: json` makes them JSON fields. A 5xx (an internal
//! error, a deadline) adds a WARN or ERROR line with its cause. Health probes and metric scrapes
//! log at DEBUG (a readiness probe's 503 while loading or stopping too), so that probes and
//! scrapers do not drown the requests.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use crate::actors::router::Timings;

/// Target of the access lines (filter on it: `RUST_LOG=actor_infer::access=off,info`).
pub const TARGET: &str = "actor_infer::access";

/// What an inference call learns for its access line while it runs: shared between the
/// [`super::Call`] (the Router's answer adds the tokens) and the transport that writes the line.
#[derive(Debug, Default, Clone)]
pub struct Detail(Arc<DetailInner>);

#[derive(Debug, Default)]
struct DetailInner {
    tokens: AtomicU64,
    rest: Mutex<Rest>,
}

#[derive(Debug, Default)]
struct Rest {
    trace_id: Option<String>,
    texts: usize,
    timings: Option<Timings>,
}

impl Detail {
    /// Adds the tokens the model saw.
    pub fn add_tokens(&self, n: u64) {
        self.0.tokens.fetch_add(n, Ordering::Relaxed);
    }

    /// Notes the texts answered and where the time went.
    pub fn served(&self, texts: usize, timings: &Timings) {
        let mut r = self
            .0
            .rest
            .lock()
            .expect("never poisoned: no panics under it");
        r.texts = texts;
        r.timings = Some(*timings);
    }

    /// Notes the trace id.
    pub fn trace(&self, id: Option<String>) {
        self.0.rest.lock().expect("never poisoned").trace_id = id;
    }

    fn tokens(&self) -> u64 {
        self.0.tokens.load(Ordering::Relaxed)
    }
}

/// The trace id a request's line names: the caller's (`traceparent`'s second field), else the
/// id of the trace the server started for `span` when spans are exported.
pub fn trace_id(traceparent: Option<&str>, span: &tracing::Span) -> Option<String> {
    if let Some(id) = traceparent
        .and_then(|t| t.split('-').nth(1))
        .filter(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Some(id.to_ascii_lowercase());
    }
    if crate::telemetry::enabled() {
        use opentelemetry::trace::TraceContextExt as _;
        use tracing_opentelemetry::OpenTelemetrySpanExt as _;
        let id = span.context().span().span_context().trace_id();
        if id != opentelemetry::trace::TraceId::INVALID {
            return Some(id.to_string());
        }
    }
    None
}

/// One finished request, as its access line says it.
pub struct Line<'a> {
    /// `http` or `grpc`.
    pub transport: &'static str,
    /// The HTTP method (`POST`), or `grpc`'s service.
    pub method: &'a str,
    /// The route (the path, or the gRPC method).
    pub route: &'a str,
    /// The request id.
    pub request_id: &'a str,
    /// The caller's `traceparent`, when it sent one.
    pub traceparent: Option<&'a str>,
    /// The model and version it went to, if it got that far.
    pub model: Option<(String, String)>,
    /// The HTTP status, or the gRPC code's name.
    pub status: String,
    /// Whether it failed on the server's side (5xx, or a gRPC code that maps to one).
    pub server_error: bool,
    /// The error kind (`validation`, ...) and its message, when refused.
    pub error: Option<(&'a str, &'a str)>,
    /// What the call learnt on the way.
    pub detail: Option<&'a Detail>,
    /// Since the request arrived.
    pub elapsed: Duration,
    /// The client's address.
    pub client: Option<String>,
    /// A probe or a scrape: logged at DEBUG unless it failed with an internal error.
    pub quiet: bool,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

impl Line<'_> {
    /// Writes the line (and, for a server-side failure, the WARN/ERROR line with its cause).
    pub fn write(self) {
        let detail = self.detail.map(|d| {
            let r = d.0.rest.lock().expect("never poisoned");
            (d.tokens(), r.texts, r.timings, r.trace_id.clone())
        });
        let (tokens, texts, timings, trace) = detail.unwrap_or_default();
        let trace_id = trace
            .or_else(|| trace_id(self.traceparent, &tracing::Span::none()))
            .unwrap_or_default();
        let (model, version) = self.model.unwrap_or_default();
        let t = timings.unwrap_or_default();
        let (kind, message) = self.error.unwrap_or_default();
        macro_rules! line {
            ($level:expr) => {
                tracing::event!(
                    target: TARGET,
                    parent: None,
                    $level,
                    request_id = self.request_id,
                    trace_id = trace_id.as_str(),
                    transport = self.transport,
                    method = self.method,
                    route = self.route,
                    model = model.as_str(),
                    version = version.as_str(),
                    status = self.status.as_str(),
                    error = kind,
                    texts,
                    tokens,
                    total_ms = ms(self.elapsed),
                    tokenize_ms = ms(t.tokenize),
                    queue_ms = ms(t.queue),
                    inference_ms = ms(t.inference),
                    client = self.client.as_deref().unwrap_or(""),
                    "access"
                )
            };
        }
        if self.quiet && kind != "internal" {
            line!(tracing::Level::DEBUG);
        } else {
            line!(tracing::Level::INFO);
        }
        if self.server_error {
            // The cause: an internal error is a bug (ERROR); a deadline, a stop or an overload
            // is the server's state (WARN).
            if kind == "internal" {
                tracing::error!(target: TARGET, parent: None, request_id = self.request_id,
                    trace_id = trace_id.as_str(), route = self.route, error = kind,
                    "request failed: {message}");
            } else {
                tracing::warn!(target: TARGET, parent: None, request_id = self.request_id,
                    trace_id = trace_id.as_str(), route = self.route, error = kind,
                    "request failed: {message}");
            }
        }
    }
}

/// Whether a route is a probe or a scrape (logged at DEBUG).
pub fn quiet(route: &str) -> bool {
    matches!(
        route,
        "/health" | "/ping" | "/ready" | "/metrics" | "/v2/health/live" | "/v2/health/ready"
    )
}

/// When a request arrived (kept in its extensions until its line is written).
#[derive(Clone, Copy)]
pub struct Arrived(pub Instant);
