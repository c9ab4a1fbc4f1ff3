//! HTTP front end (actix-web): OpenAI `POST /v1/embeddings`, TEI `POST /embed`, TEI
//! `POST /predict` and `POST /rerank` (in `super::predict`), `GET /health`, `GET /ready`,
//! `GET /info`, `GET /metrics`.
//!
//! Every error, actix-web's own included (bad JSON, wrong content type, unknown route, wrong
//! method, oversized body), answers `{"error": "...", "error_type": "..."}`. actix-web's signal
//! handling is off: the Supervisor owns signals and stops this server through its handle.

use std::{net::TcpListener, sync::Arc, time::Duration};

use actix_web::{
    App, HttpRequest, HttpResponse, HttpServer, ResponseError, dev::Server, http::StatusCode, web,
};
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::{
    Call, Shared,
    error::{ApiError, ErrorKind},
    telemetry::TraceContext,
};
use crate::actors::{metrics::Render, router::Timings};

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    error_type: &'static str,
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.kind.http_status()).expect("the error table holds valid statuses")
    }

    fn error_response(&self) -> HttpResponse {
        let mut res = HttpResponse::build(self.status_code());
        if matches!(
            self.kind,
            ErrorKind::NotReady | ErrorKind::ShuttingDown | ErrorKind::Overloaded
        ) {
            res.insert_header(("Retry-After", "1"));
        }
        if self.kind == ErrorKind::Unauthenticated {
            res.insert_header(("WWW-Authenticate", "Bearer"));
        }
        res.json(ErrorBody {
            error: &self.message,
            error_type: self.kind.as_str(),
        })
    }
}

/// Text input: one string or a list of strings (OpenAI's `input`, TEI's `inputs`).
enum Input {
    One(String),
    Many(Vec<String>),
}

impl<'de> Deserialize<'de> for Input {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Input;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string or a list of strings")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Input, E> {
                Ok(Input::One(v.to_owned()))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Input, E> {
                Ok(Input::One(v))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Input, A::Error> {
                let mut texts = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
                while let Some(t) = seq.next_element::<String>()? {
                    texts.push(t);
                }
                Ok(Input::Many(texts))
            }
        }
        d.deserialize_any(V)
    }
}

/// Parses a JSON body into `T`, naming the field at fault (`inputs[2]: invalid type ...`).
pub(super) fn typed<T: for<'de> Deserialize<'de>>(body: serde_json::Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(body).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            ApiError::validation(format!("invalid request body: {inner}"))
        } else {
            ApiError::validation(format!("invalid request body at `{path}`: {inner}"))
        }
    })
}

impl Input {
    fn into_vec(self) -> Vec<String> {
        match self {
            Input::One(s) => vec![s],
            Input::Many(v) => v,
        }
    }
}

/// OpenAI's embeddings request.
#[derive(Deserialize)]
struct OpenAiRequest {
    input: Input,
    #[serde(default)]
    #[allow(dead_code)]
    model: Option<String>,
    #[serde(default)]
    encoding_format: Option<String>,
    #[serde(default)]
    dimensions: Option<usize>,
    #[serde(default)]
    #[allow(dead_code)]
    user: Option<String>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Vector {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Serialize)]
struct OpenAiEmbedding {
    object: &'static str,
    index: usize,
    embedding: Vector,
}

#[derive(Serialize)]
struct OpenAiUsage {
    prompt_tokens: u64,
    total_tokens: u64,
}

#[derive(Serialize)]
struct OpenAiResponse {
    object: &'static str,
    data: Vec<OpenAiEmbedding>,
    model: String,
    usage: OpenAiUsage,
}

/// TEI's `/embed` request.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TeiRequest {
    inputs: Input,
    #[serde(default)]
    normalize: Option<bool>,
    #[serde(default)]
    truncate: Option<bool>,
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

/// TEI-style timing headers, milliseconds.
pub(super) fn with_timings(res: &mut actix_web::HttpResponseBuilder, t: &Timings) {
    res.insert_header(("x-tokenization-time", ms(t.tokenize)))
        .insert_header(("x-queue-time", ms(t.queue)))
        .insert_header(("x-inference-time", ms(t.inference)))
        .insert_header(("x-total-time", ms(t.total)));
}

/// The client's socket, stored per connection so a handler can notice that its client has
/// gone: actix-web does not cancel a handler when an HTTP/1 client disconnects.
#[derive(Clone, Copy)]
struct PeerSocket(std::os::fd::RawFd);

/// How often a waiting handler checks whether its client is still there.
const PEER_CHECK_EVERY: Duration = Duration::from_millis(50);

/// Resolves once the client of `req` has closed its connection (never, if that cannot be
/// known). It peeks at the socket: zero bytes readable means the peer closed; pipelined bytes
/// or "would block" mean it is still there. The socket stays open while the handler runs
/// (the connection outlives its handler), so the descriptor cannot have been reused.
async fn client_gone(req: &HttpRequest) {
    let Some(&PeerSocket(fd)) = req.conn_data::<PeerSocket>() else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(PEER_CHECK_EVERY).await;
        let mut byte = 0u8;
        // SAFETY: recv into a valid one-byte buffer on a socket this connection owns.
        let n = unsafe {
            libc::recv(
                fd,
                (&raw mut byte).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        let error = std::io::Error::last_os_error().raw_os_error();
        if n == 0 || (n < 0 && !matches!(error, Some(libc::EAGAIN | libc::EINTR))) {
            return;
        }
    }
}

/// Runs `work` unless the client disconnects first; then `work` is dropped (so the Router
/// skips the request's queued texts and counts them) and the outcome is `client_gone`.
async fn unless_client_gone<T>(
    req: &HttpRequest,
    work: impl std::future::Future<Output = Result<T, ApiError>>,
) -> Result<T, ApiError> {
    tokio::select! {
        out = work => out,
        () = client_gone(req) => Err(ApiError::new(ErrorKind::ClientGone, "the client closed the connection")),
    }
}

/// What an inference route's work answers: the JSON body, the texts it served, and where the
/// time went.
pub(super) struct Served<T> {
    /// The response body.
    pub body: T,
    /// Texts answered (for the dashboard's throughput).
    pub texts: usize,
    /// Where the request's time went (the timing headers).
    pub timings: Timings,
}

/// The opening and closing every HTTP inference route shares: the request's span (with its
/// `X-Request-Id`), its deadline, dropping the work when the client leaves, TEI's timing
/// headers, and the outcome in the metrics. `work` gets the request's [`Call`].
pub(super) async fn inference<T, Fut>(
    shared: &Shared,
    req: &HttpRequest,
    route: &'static str,
    work: impl FnOnce(Call) -> Fut,
) -> Result<HttpResponse, ApiError>
where
    T: Serialize,
    Fut: std::future::Future<Output = Result<Served<T>, ApiError>>,
{
    inference_with(shared, req, route, work, |res, body| res.json(body)).await
}

/// [`inference`] for a route that writes its own body (`respond`), such as the Open Inference
/// Protocol's binary tensors.
pub(super) async fn inference_with<T, Fut>(
    shared: &Shared,
    req: &HttpRequest,
    route: &'static str,
    work: impl FnOnce(Call) -> Fut,
    respond: impl FnOnce(&mut actix_web::HttpResponseBuilder, T) -> HttpResponse,
) -> Result<HttpResponse, ApiError>
where
    Fut: std::future::Future<Output = Result<Served<T>, ApiError>>,
{
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .unwrap_or_else(super::new_request_id);
    let call = Call {
        span: tracing::info_span!("request", transport = "http", route, request_id = %id, traceparent = tracing::field::Empty),
        deadline: shared.deadline(None),
    };
    super::telemetry::continue_trace(&call.span, TraceContext::from_http(req.headers()));
    let result = unless_client_gone(req, work(call))
        .await
        .map(|s| (s.body, s.texts, s.timings));
    super::record(&shared.recorder, "http", &result);
    let (body, _, timings) = result?;
    let mut res = HttpResponse::Ok();
    with_timings(&mut res, &timings);
    Ok(respond(&mut res, body))
}

async fn openai_embeddings(
    shared: web::Data<Shared>,
    req: HttpRequest,
    body: web::Json<serde_json::Value>,
) -> Result<HttpResponse, ApiError> {
    inference(&shared, &req, "/v1/embeddings", |call| async {
        let body: OpenAiRequest = typed(body.into_inner())?;
        let base64 = match body.encoding_format.as_deref() {
            None | Some("float") => false,
            Some("base64") => true,
            Some(other) => {
                return Err(ApiError::validation(format!(
                    "encoding_format `{other}` is not supported; use `float` or `base64`"
                )));
            }
        };
        if let Some(d) = body.dimensions
            && d != shared.spec.dim()
        {
            return Err(ApiError::validation(format!(
                "dimensions {d} is not available: this model's embeddings have {} dimensions",
                shared.spec.dim()
            )));
        }
        let out = shared
            .embed(body.input.into_vec(), None, true, call)
            .await?;
        let tokens: u64 = out.token_counts.iter().map(|&n| u64::from(n)).sum();
        let texts = out.embeddings.len();
        let data = out
            .embeddings
            .into_iter()
            .enumerate()
            .map(|(index, v)| OpenAiEmbedding {
                object: "embedding",
                index,
                embedding: if base64 {
                    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                    Vector::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
                } else {
                    Vector::Float(v)
                },
            })
            .collect();
        Ok(Served {
            body: OpenAiResponse {
                object: "list",
                data,
                model: shared.spec.name.clone(),
                usage: OpenAiUsage {
                    prompt_tokens: tokens,
                    total_tokens: tokens,
                },
            },
            texts,
            timings: out.timings,
        })
    })
    .await
}

async fn tei_embed(
    shared: web::Data<Shared>,
    req: HttpRequest,
    body: web::Json<serde_json::Value>,
) -> Result<HttpResponse, ApiError> {
    inference(&shared, &req, "/embed", |call| async {
        let body: TeiRequest = typed(body.into_inner())?;
        let out = shared
            .embed(
                body.inputs.into_vec(),
                body.normalize,
                body.truncate.unwrap_or(true),
                call,
            )
            .await?;
        Ok(Served {
            texts: out.embeddings.len(),
            timings: out.timings,
            body: out.embeddings,
        })
    })
    .await
}

async fn health() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "alive"}))
}

async fn ready(shared: web::Data<Shared>) -> Result<HttpResponse, ApiError> {
    if shared.lifecycle.is_stopping() {
        Err(ApiError::shutting_down())
    } else if shared.lifecycle.is_ready() {
        Ok(HttpResponse::Ok().json(serde_json::json!({"status": "ready"})))
    } else {
        Err(ApiError::not_ready())
    }
}

async fn info(shared: web::Data<Shared>) -> HttpResponse {
    HttpResponse::Ok().json(shared.info())
}

/// True when the client asks for Prometheus's text format (Prometheus's own scrapes name
/// `text/plain` or `application/openmetrics-text` in `Accept`; `curl` sends `*/*`, browsers
/// and the original dashboard's scripts get JSON).
fn wants_prometheus(req: &HttpRequest) -> bool {
    let accept = req
        .headers()
        .get(actix_web::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    accept.contains("application/openmetrics-text") || accept.contains("text/plain")
}

/// `GET /metrics`: Prometheus text when asked for, else the JSON dashboard; `?format=json`
/// or `?format=prometheus` force one.
async fn metrics(shared: web::Data<Shared>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let prometheus = match req.query_string() {
        q if q.contains("format=prometheus") => true,
        q if q.contains("format=json") => false,
        _ => wants_prometheus(&req),
    };
    if prometheus {
        let text = shared
            .metrics
            .send(Render)
            .await
            .ok()
            .flatten()
            .ok_or_else(|| ApiError::internal("the metrics actor could not answer; retry"))?;
        Ok(HttpResponse::Ok()
            .content_type("text/plain; version=0.0.4; charset=utf-8")
            .body(text))
    } else {
        Ok(HttpResponse::Ok().json(super::dashboard_json(&shared).await?))
    }
}

/// `GET /`: the live dashboard page (self-contained; it polls `/metrics` as JSON).
async fn dashboard() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(include_str!("dashboard.html"))
}

async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::new(
        ErrorKind::NotFound,
        format!("no route {} {}", req.method(), req.path()),
    ))
}

async fn method_not_allowed(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::new(
        ErrorKind::MethodNotAllowed,
        format!("{} is not allowed on {}", req.method(), req.path()),
    ))
}

/// actix-web's JSON extractor errors, as our error shape with a message that names the fault.
fn json_error(err: actix_web::error::JsonPayloadError, _req: &HttpRequest) -> actix_web::Error {
    use actix_web::error::JsonPayloadError as E;
    let e = match &err {
        E::OverflowKnownLength { length, limit } => ApiError::new(
            ErrorKind::PayloadTooLarge,
            format!("the body is {length} bytes; the limit is {limit}"),
        ),
        E::Overflow { limit } => ApiError::new(
            ErrorKind::PayloadTooLarge,
            format!("the body is larger than the limit of {limit} bytes"),
        ),
        E::ContentType => ApiError::new(
            ErrorKind::UnsupportedMediaType,
            "the body must be JSON: send `Content-Type: application/json`",
        ),
        E::Deserialize(e) if e.to_string().contains("invalid unicode code point") => {
            ApiError::validation(format!("invalid JSON body: text must be UTF-8 ({e})"))
        }
        E::Deserialize(e) => ApiError::validation(format!("invalid JSON body: {e}")),
        other => ApiError::validation(format!("cannot read the body: {other}")),
    };
    actix_web::error::InternalError::from_response(err, e.error_response()).into()
}

/// Routes that never need the API key: probes, always; metrics, info and the dashboard
/// unless `server.api_key_protects_metrics`.
fn is_open_route(path: &str, protect_metrics: bool) -> bool {
    matches!(path, "/health" | "/ready")
        || (!protect_metrics && matches!(path, "/metrics" | "/info" | "/"))
        || super::v2::is_open_route(path, protect_metrics)
}

/// Middleware: with `server.api_key` set, every route but the open ones needs
/// `Authorization: Bearer <key>`; otherwise 401 with our error shape.
async fn require_api_key(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody + 'static>,
) -> Result<actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>, actix_web::Error> {
    let shared = req
        .app_data::<web::Data<Shared>>()
        .expect("the app always holds Shared")
        .clone();
    let server = &shared.config.server;
    if server.api_key.is_some() && !is_open_route(req.path(), server.api_key_protects_metrics) {
        let header = req
            .headers()
            .get(actix_web::http::header::AUTHORIZATION)
            .map(|v| v.as_bytes());
        if let Err(e) = super::check_api_key(server, header) {
            super::record::<()>(&shared.recorder, "http", &Err(e.clone()));
            return Err(e.into());
        }
    }
    next.call(req).await
}

/// A route whose other methods answer 405 in our error shape.
pub(super) fn resource(path: &str, route: actix_web::Route) -> actix_web::Resource {
    web::resource(path)
        .route(route)
        .default_service(web::to(method_not_allowed))
}

/// Builds the HTTP server on `listener`. Signals are off (the Supervisor owns them); the
/// returned server runs until its handle's `stop` is called.
pub fn serve(listener: TcpListener, shared: Arc<Shared>) -> std::io::Result<Server> {
    let workers = shared.config.server.http_workers;
    let grace = shared.config.shutdown.timeout_seconds.ceil() as u64;
    let limit = shared.config.server.max_request_bytes;
    let data = web::Data::from(shared);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .app_data(
                web::JsonConfig::default()
                    .limit(limit)
                    .error_handler(json_error),
            )
            .service(resource(
                "/v1/embeddings",
                web::post().to(openai_embeddings),
            ))
            .service(resource("/embed", web::post().to(tei_embed)))
            .configure(super::predict::routes)
            .configure(super::v2::routes)
            .service(resource("/health", web::get().to(health)))
            .service(resource("/ready", web::get().to(ready)))
            .service(resource("/info", web::get().to(info)))
            .service(resource("/metrics", web::get().to(metrics)))
            .service(resource("/", web::get().to(dashboard)))
            .default_service(web::to(not_found))
            .wrap(actix_web::middleware::from_fn(require_api_key))
    })
    .on_connect(|conn, ext| {
        use std::os::fd::AsRawFd;
        if let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
            ext.insert(PeerSocket(tcp.as_raw_fd()));
        }
    })
    .workers(workers)
    .disable_signals()
    .shutdown_timeout(grace)
    .listen(listener)?
    .run();
    Ok(server)
}

#[cfg(test)]
mod tests {
    //! Fuzzing of the request decoding (property tests: thousands of generated bodies per
    //! run): whatever arrives, decoding answers a value or a validation error, never panics.
    use super::*;
    use proptest::prelude::*;

    /// Decodes `body` the way the routes do: JSON, then the route's typed request.
    fn decode(body: &serde_json::Value) -> [Option<ApiError>; 2] {
        [
            typed::<TeiRequest>(body.clone()).err(),
            typed::<OpenAiRequest>(body.clone()).err(),
        ]
    }

    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let key = prop_oneof![
            Just("inputs".to_string()),
            Just("input".to_string()),
            Just("normalize".to_string()),
            Just("truncate".to_string()),
            Just("encoding_format".to_string()),
            Just("dimensions".to_string()),
            ".{0,8}",
        ];
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>().prop_map(serde_json::Value::from),
            ".{0,16}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(4, 64, 8, move |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..8).prop_map(serde_json::Value::from),
                proptest::collection::btree_map(key.clone(), inner, 0..6)
                    .prop_map(|m| { serde_json::Value::Object(m.into_iter().collect()) }),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        #[test]
        fn arbitrary_bytes_decode_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) {
                for e in decode(&v).into_iter().flatten() {
                    prop_assert_eq!(e.kind, ErrorKind::Validation);
                    prop_assert!(!e.message.is_empty());
                }
            }
        }

        #[test]
        fn arbitrary_json_decodes_or_names_what_is_wrong(v in json_value()) {
            for e in decode(&v).into_iter().flatten() {
                prop_assert_eq!(e.kind, ErrorKind::Validation);
                prop_assert!(e.message.starts_with("invalid request body"), "{}", e.message);
            }
        }

        #[test]
        fn any_list_of_strings_is_accepted_as_inputs(texts in proptest::collection::vec(".{0,32}", 0..16)) {
            let body = serde_json::json!({ "inputs": texts.clone() });
            let parsed: TeiRequest = typed(body).unwrap();
            prop_assert_eq!(parsed.inputs.into_vec(), texts);
        }
    }
}
