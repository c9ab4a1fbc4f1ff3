//! HTTP front end (actix-web): TEI's and OpenAI's routes ([`super::tei`], [`super::predict`]),
//! `GET /health`, `/ping`, `/ready`, `/info`, `/metrics`, the live page at `GET /`, and the
//! OpenAPI document at `/api-doc/openapi.json`, generated from the handlers' types
//! ([`super::openapi`]). [`ROUTES`] lists every route served; the OpenAPI document must list the
//! same ones (a test checks it).
//!
//! Every response carries `X-Request-Id` (the client's, if printable and at most 128
//! characters, else a new one), which the request's log lines carry too. Every error, actix-web's
//! own included (bad JSON, wrong content type, unknown route, wrong method, oversized body),
//! answers `{"error": "...", "error_type": "..."}`. actix-web's signal handling is off: the
//! Supervisor owns signals and stops this server through its handle.

use std::{net::TcpListener, sync::Arc, time::Duration};

use actix_web::{
    App, HttpMessage, HttpRequest, HttpResponse, HttpServer, ResponseError, dev::Server,
    http::StatusCode, web,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{
    Call, Shared,
    error::{ApiError, ErrorKind},
    predict, tei,
    telemetry::TraceContext,
};
use crate::actors::{metrics::Render, models::Pick, router::Timings};

/// Every error's body.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    /// What is wrong, naming the field, limit or state at fault.
    pub error: String,
    /// The kind (`validation`, `overloaded`, ...; the README's table).
    pub error_type: &'static str,
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
            error: self.message.clone(),
            error_type: self.kind.as_str(),
        })
    }
}

/// Parses a JSON body into `T`, naming the field at fault (`inputs[2]: invalid type ...`).
/// The body must be a JSON object ([`Object`]).
pub(super) fn typed<T: for<'de> Deserialize<'de>>(body: serde_json::Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(body)
        .map(|Object(t)| t)
        .map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if path == "." {
                ApiError::validation(format!("invalid request body: {inner}"))
            } else {
                ApiError::validation(format!("invalid request body at `{path}`: {inner}"))
            }
        })
}

/// A JSON object read into `T`. serde's derived structs also take a JSON array of their
/// fields in order (`"parameters": [null, true]`); a request's objects are objects only, as the
/// OpenAPI document says. Nested request structs are read through it too.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Object<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Fields<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Fields<T> {
            type Value = T;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_map(Fields(std::marker::PhantomData))
            .map(Object)
    }
}

/// Reads an optional count written as an integer or as a float with no fraction (`57.0`,
/// which JSON Schema counts as an integer too), for `#[serde(deserialize_with)]`. A count past
/// `usize::MAX` reads as `usize::MAX` (as many as there are); the route checks its own bound.
pub(super) fn whole_number<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<usize>, D::Error> {
    use serde::de::Error;
    match Option::<serde_json::Number>::deserialize(d)? {
        None => Ok(None),
        Some(n) => n
            .as_u64()
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
            .or_else(|| {
                // `as` saturates: a whole number past usize::MAX reads as usize::MAX.
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && *f >= 0.0)
                    .map(|f| f as usize)
            })
            .map(Some)
            .ok_or_else(|| D::Error::custom(format!("{n} is not a whole number from 0"))),
    }
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

/// A request's id (`X-Request-Id`), set by [`request_id`] for every request.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Longest `X-Request-Id` taken from a client.
const MAX_REQUEST_ID: usize = 128;

/// The client's `X-Request-Id` if it is 1 to 128 printable ASCII characters, else a new one
/// (a client's id ends up in logs and headers: nothing that could forge a log line).
fn id_of(header: Option<&[u8]>) -> String {
    match header {
        Some(v)
            if (1..=MAX_REQUEST_ID).contains(&v.len())
                && v.iter().all(|b| (0x21..=0x7e).contains(b)) =>
        {
            String::from_utf8_lossy(v).into_owned()
        }
        _ => super::new_request_id(),
    }
}

/// Middleware: every request gets an id ([`RequestId`]) and every response echoes it, an
/// inner middleware's refusal (the API key) included.
async fn request_id(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody + 'static>,
) -> Result<actix_web::dev::ServiceResponse, actix_web::Error> {
    let id = id_of(req.headers().get("x-request-id").map(|v| v.as_bytes()));
    req.extensions_mut().insert(RequestId(id.clone()));
    // Handlers' errors arrive here as responses; so do the API key's (see require_api_key).
    let mut res = next.call(req).await?.map_into_boxed_body();
    res.headers_mut().insert(
        actix_web::http::header::HeaderName::from_static("x-request-id"),
        actix_web::http::header::HeaderValue::from_str(&id).expect("ids are printable ASCII"),
    );
    Ok(res)
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
        .extensions()
        .get::<RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_else(super::new_request_id);
    let call = Call::new(
        tracing::info_span!("request", transport = "http", route, request_id = %id, traceparent = tracing::field::Empty),
        shared.deadline(None),
    );
    let chosen = call.chosen.clone();
    super::telemetry::continue_trace(&call.span, TraceContext::from_http(req.headers()));
    let result = unless_client_gone(req, work(call))
        .await
        .map(|s| (s.body, s.texts, s.timings));
    super::record(chosen.recorder(shared), "http", &result);
    let (body, _, timings) = result?;
    let mut res = HttpResponse::Ok();
    with_timings(&mut res, &timings);
    if let Some(m) = chosen.get() {
        res.insert_header(("x-model-version", m.tag()));
    }
    Ok(respond(&mut res, body))
}

/// The process is alive (TEI's `/health`; `/ping` is SageMaker's name for it).
#[utoipa::path(get, path = "/health", responses((status = 200, description = "Alive")))]
pub async fn health() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "alive"}))
}

/// SageMaker's health route.
#[utoipa::path(get, path = "/ping", responses((status = 200, description = "Alive")))]
pub async fn ping() -> HttpResponse {
    health().await
}

/// Ready: the model is loaded and warm and the server is not stopping.
#[utoipa::path(get, path = "/ready", responses((status = 200, description = "Ready"),
    (status = 503, description = "Loading or stopping", body = ErrorBody)))]
pub async fn ready(shared: web::Data<Shared>) -> Result<HttpResponse, ApiError> {
    if shared.lifecycle.is_stopping() {
        Err(ApiError::shutting_down())
    } else if shared.lifecycle.is_ready() {
        Ok(HttpResponse::Ok().json(serde_json::json!({"status": "ready"})))
    } else {
        Err(ApiError::not_ready())
    }
}

/// What is served: TEI's `/info` fields for the default embedding model (the first model
/// when none embeds), and ours; `models` lists every model served, each with the same fields.
#[utoipa::path(get, path = "/info", responses((status = 200, description = "The model", body = super::ModelInfo)))]
pub async fn info(shared: web::Data<Shared>) -> Result<HttpResponse, ApiError> {
    let m = shared.model(Pick::Default(crate::model::Task::Embedding))?;
    let mut body = serde_json::to_value(shared.info(&m))
        .map_err(|e| ApiError::internal(format!("cannot encode /info: {e}")))?;
    let models: Vec<super::ModelInfo> = shared
        .catalog()
        .models
        .iter()
        .map(|m| shared.info(m))
        .collect();
    body["models"] = serde_json::to_value(models)
        .map_err(|e| ApiError::internal(format!("cannot encode /info: {e}")))?;
    Ok(HttpResponse::Ok().json(body))
}

/// OpenAI's model list: every model served (`id` is the name `model` takes).
#[utoipa::path(get, path = "/v1/models", responses((status = 200, description = "The models served")))]
pub async fn list_models(shared: web::Data<Shared>) -> HttpResponse {
    let data: Vec<serde_json::Value> = shared
        .catalog()
        .models
        .iter()
        .map(|m| {
            serde_json::json!({
                "id": m.name,
                "object": "model",
                "created": 0,
                "owned_by": "actor-infer",
                "kind": m.spec.task.as_str(),
                "version": m.version,
            })
        })
        .collect();
    HttpResponse::Ok().json(serde_json::json!({"object": "list", "data": data}))
}

/// Re-reads the experiment file and applies its models (as SIGHUP does): new and changed
/// models load and warm up beside the running ones, then take over; replaced and removed ones
/// drain and stop. Answers the report once the old versions have stopped: 200 when every
/// model loaded, 500 `reload_failed`-style report with `ok: false` when one did not (the old
/// version keeps serving), 409 while another reload runs.
#[utoipa::path(post, path = "/admin/reload", responses(
    (status = 200, description = "Every model of the file serves"),
    (status = 409, description = "A reload is running", body = ErrorBody),
    (status = 500, description = "A model failed to load; its old version keeps serving")))]
pub async fn reload(shared: web::Data<Shared>) -> Result<HttpResponse, ApiError> {
    use crate::actors::supervisor::{Reload, ReloadRefused};
    match shared.supervisor.send(Reload).await {
        Ok(Ok(report)) if report.ok => Ok(HttpResponse::Ok().json(report)),
        Ok(Ok(report)) => Ok(HttpResponse::InternalServerError().json(report)),
        Ok(Err(ReloadRefused::Stopping)) | Err(_) => Err(ApiError::shutting_down()),
        Ok(Err(refused)) => Err(ApiError::new(ErrorKind::Conflict, refused.to_string())),
    }
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
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text or the JSON dashboard")))]
pub async fn metrics(
    shared: web::Data<Shared>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
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

/// `GET /`: the live dashboard page for a browser (it polls `/metrics` as JSON); for other
/// clients, which probe `/` for health as with TEI, the health answer.
#[utoipa::path(get, path = "/", responses((status = 200, description = "The live page (text/html) or health")))]
pub async fn root(req: HttpRequest) -> HttpResponse {
    let html = req
        .headers()
        .get(actix_web::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"));
    if html {
        HttpResponse::Ok()
            .content_type("text/html; charset=utf-8")
            .body(include_str!("dashboard.html"))
    } else {
        health().await
    }
}

/// The OpenAPI 3.1 document of these routes for the models served now.
pub async fn openapi_json(shared: web::Data<Shared>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(super::openapi::document_json(&shared))
}

async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::new(
        ErrorKind::NotFound,
        format!("no route {} {}", req.method(), req.path()),
    ))
}

/// A single-method route whose other methods answer 405 in our error shape, with `Allow`;
/// `OPTIONS` answers 204 with the same `Allow`.
pub(super) fn resource(
    path: &str,
    method: actix_web::http::Method,
    route: actix_web::Route,
) -> actix_web::Resource {
    with_allow(web::resource(path).route(route), vec![method])
}

/// Adds to `resource` (whose routes answer `methods`) the answers RFC 9110 asks of the methods
/// it does not serve: `OPTIONS` is 204 with `Allow` listing them (and itself), any other
/// method 405 in our error shape with the same `Allow`.
fn with_allow(
    resource: actix_web::Resource,
    mut methods: Vec<actix_web::http::Method>,
) -> actix_web::Resource {
    use actix_web::http::Method;
    methods.push(Method::OPTIONS);
    let allow = methods
        .iter()
        .map(Method::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    resource.default_service(web::to(move |req: HttpRequest| {
        let allow = allow.clone();
        async move {
            if req.method() == Method::OPTIONS {
                return HttpResponse::NoContent()
                    .insert_header((actix_web::http::header::ALLOW, allow))
                    .finish();
            }
            let mut res = ApiError::new(
                ErrorKind::MethodNotAllowed,
                format!(
                    "{} is not allowed on {}; it answers {allow}",
                    req.method(),
                    req.path()
                ),
            )
            .error_response();
            res.headers_mut().insert(
                actix_web::http::header::ALLOW,
                actix_web::http::header::HeaderValue::from_str(&allow)
                    .expect("method names are header-safe"),
            );
            res
        }
    }))
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

/// Routes that never need the API key: probes, always; metrics, info, the OpenAPI document
/// and the live page unless `server.api_key_protects_metrics`; the Open Inference Protocol's
/// own probes and metadata likewise.
///
/// A method a route does not serve needs no key either: its answer (405 with `Allow`, or
/// `OPTIONS`' 204) runs nothing and tells only what [`ROUTES`] says.
fn is_open_route(method: &actix_web::http::Method, path: &str, protect_metrics: bool) -> bool {
    let served_path = ROUTES.iter().any(|(_, p)| *p == path);
    let served_method = ROUTES
        .iter()
        .any(|(m, p)| *p == path && *m == method.as_str());
    (served_path && !served_method)
        || matches!(path, "/health" | "/ready" | "/ping")
        || (!protect_metrics
            && (matches!(path, "/metrics" | "/info" | "/api-doc/openapi.json")
                || (path == "/" && method == actix_web::http::Method::GET)))
        || super::v2::is_open_route(path, protect_metrics)
}

/// Middleware: with `server.api_key` set, every route but the open ones needs
/// `Authorization: Bearer <key>`; otherwise 401 with our error shape.
async fn require_api_key(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody + 'static>,
) -> Result<actix_web::dev::ServiceResponse, actix_web::Error> {
    let shared = req
        .app_data::<web::Data<Shared>>()
        .expect("the app always holds Shared")
        .clone();
    let server = &shared.config.server;
    if server.api_key.is_some()
        && !is_open_route(req.method(), req.path(), server.api_key_protects_metrics)
    {
        let header = req
            .headers()
            .get(actix_web::http::header::AUTHORIZATION)
            .map(|v| v.as_bytes());
        if let Err(e) = super::check_api_key(server, header) {
            super::record::<()>(&shared.recorder, "http", &Err(e.clone()));
            // A response, not an error, so the middleware around this one adds its headers.
            return Ok(req.into_response(e.error_response()));
        }
    }
    Ok(next.call(req).await?.map_into_boxed_body())
}

/// Every route served: method and path. The OpenAPI document lists exactly these (but
/// itself), which a test checks.
pub const ROUTES: &[(&str, &str)] = &[
    ("POST", "/"),
    ("POST", "/invocations"),
    ("POST", "/embed"),
    ("POST", "/embed_all"),
    ("POST", "/embed_sparse"),
    ("POST", "/embeddings"),
    ("POST", "/v1/embeddings"),
    ("POST", "/similarity"),
    ("POST", "/tokenize"),
    ("POST", "/decode"),
    ("POST", "/predict"),
    ("POST", "/rerank"),
    ("GET", "/"),
    ("GET", "/health"),
    ("GET", "/ping"),
    ("GET", "/ready"),
    ("GET", "/info"),
    ("GET", "/v1/models"),
    ("POST", "/admin/reload"),
    ("GET", "/metrics"),
    ("GET", "/api-doc/openapi.json"),
];

/// The handler of one of [`ROUTES`].
fn handler(method: &str, path: &str) -> actix_web::Route {
    match (method, path) {
        ("POST", "/") => web::post().to(tei::default_route),
        ("POST", "/invocations") => web::post().to(tei::invocations),
        ("POST", "/embed") => web::post().to(tei::embed),
        ("POST", "/embed_all") => web::post().to(tei::embed_all),
        ("POST", "/embed_sparse") => web::post().to(tei::embed_sparse),
        ("POST", "/embeddings") => web::post().to(tei::embeddings),
        ("POST", "/v1/embeddings") => web::post().to(tei::openai_embeddings),
        ("POST", "/similarity") => web::post().to(tei::similarity),
        ("POST", "/tokenize") => web::post().to(tei::tokenize),
        ("POST", "/decode") => web::post().to(tei::decode),
        ("POST", "/predict") => web::post().to(predict::predict),
        ("POST", "/rerank") => web::post().to(predict::rerank),
        ("GET", "/") => web::get().to(root),
        ("GET", "/health") => web::get().to(health),
        ("GET", "/ping") => web::get().to(ping),
        ("GET", "/ready") => web::get().to(ready),
        ("GET", "/info") => web::get().to(info),
        ("GET", "/v1/models") => web::get().to(list_models),
        ("POST", "/admin/reload") => web::post().to(reload),
        ("GET", "/metrics") => web::get().to(metrics),
        ("GET", "/api-doc/openapi.json") => web::get().to(openapi_json),
        _ => unreachable!("{method} {path} is in ROUTES without a handler"),
    }
}

/// Registers [`ROUTES`], one resource per path; other methods on a path answer 405 in our
/// error shape with `Allow`, and `OPTIONS` answers 204 with it.
fn routes(cfg: &mut web::ServiceConfig) {
    let mut paths: Vec<&str> = ROUTES.iter().map(|(_, p)| *p).collect();
    paths.dedup();
    let mut seen = std::collections::BTreeSet::new();
    for path in paths.into_iter().filter(|p| seen.insert(*p)) {
        let mut resource = web::resource(path);
        let mut methods = Vec::new();
        for (method, _) in ROUTES.iter().filter(|(_, p)| *p == path) {
            resource = resource.route(handler(method, path));
            methods.push(
                actix_web::http::Method::from_bytes(method.as_bytes()).expect("ROUTES' methods"),
            );
        }
        cfg.service(with_allow(resource, methods));
    }
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
            .configure(routes)
            .configure(super::v2::routes)
            .default_service(web::to(not_found))
            .wrap(actix_web::middleware::from_fn(require_api_key))
            .wrap(actix_web::middleware::from_fn(request_id))
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

    #[test]
    fn client_request_ids_are_kept_only_when_printable_and_short() {
        assert_eq!(id_of(Some(b"trace-me-42")), "trace-me-42");
        for bad in [
            &b""[..],
            b"a b",
            b"line\nbreak",
            &[b'x'; 129][..],
            "é".as_bytes(),
        ] {
            let id = id_of(Some(bad));
            assert_ne!(id.as_bytes(), bad);
            assert!(id.bytes().all(|b| (0x21..=0x7e).contains(&b)), "{id}");
        }
    }

    /// Decodes `body` the way the routes do: JSON, then the route's typed request.
    fn decode(body: &serde_json::Value) -> [Option<ApiError>; 2] {
        [
            typed::<tei::EmbedRequest>(body.clone()).err(),
            typed::<tei::OpenAiRequest>(body.clone()).err(),
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
            let parsed: tei::EmbedRequest = typed(body).unwrap();
            let want: Vec<crate::model::TextInput> = texts.into_iter().map(Into::into).collect();
            prop_assert_eq!(parsed.inputs.0, want);
        }
    }
}
