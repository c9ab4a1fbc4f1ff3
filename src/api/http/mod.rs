//! HTTP front end (actix-web): TEI's and OpenAI's routes ([`crate::api::tei`], [`crate::api::predict`]),
//! `GET /health`, `/ping`, `/ready`, `/info`, `/metrics`, the live page at `GET /`, and the
//! OpenAPI document at `/api-doc/openapi.json`, generated from the handlers' types
//! ([`crate::api::http::openapi`]). [`ROUTES`] lists every route served; the OpenAPI document must list the
//! same ones (a test checks it).
//!
//! Every response carries `X-Request-Id` (the client's, if printable and at most 128
//! characters, else a new one), which the request's log lines carry too. Every error, actix-web's
//! own included (bad JSON, wrong content type, unknown route, wrong method, oversized body),
//! answers `{"error": "...", "error_type": "..."}`. actix-web's signal handling is off: the
//! Supervisor owns signals and stops this server through its handle.

pub mod openapi;
pub mod ops;

use std::{net::TcpListener, sync::Arc, time::Duration};

use actix_web::{
    App, HttpMessage, HttpRequest, HttpResponse, HttpServer, ResponseError, dev::Server, web,
};
use serde::{Deserialize, Serialize};

use crate::actors::router::Timings;
use crate::api::{
    Call, Shared,
    error::{ApiError, ErrorKind},
    pipeline::{self, Reply},
    predict,
    tei::http as tei,
};
use crate::telemetry::TraceContext;

pub use crate::api::error::ErrorBody;
use crate::api::error::Refused;

/// The `X-Priority` header every inference route takes, as the OpenAPI document lists it.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
pub struct XPriority {
    /// How urgent the request is: `interactive` (or `high`: someone waits for it; it goes
    /// first) or `batch` (or `low`: indexing; it fills what room is left, and aging keeps it
    /// from starving). A `priority` field in the body wins. Unset: the route's default
    /// (`server.route_priorities`), else interactive for at most
    /// `batching.interactive_max_texts` texts, batch beyond. Anything else is a 400.
    #[param(rename = "X-Priority", example = "interactive")]
    x_priority: Option<String>,
}

/// Parses a JSON value into `T`, naming the field at fault (`inputs[2]: invalid type ...`):
/// for the routes that must look into a body before they know its type (TEI's `/`, a
/// predict request's `inputs`, KServe's JSON header). The body must be a JSON object
/// ([`Object`]).
pub(crate) fn typed<T: for<'de> Deserialize<'de>>(body: serde_json::Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(body)
        .map(|Object(t)| t)
        .map_err(|e| {
            let path = e.path().to_string();
            refused_at(&path, &e.into_inner().to_string())
        })
}

/// A request's body not of the shape its route takes: `invalid request body at `path`: ...`.
fn refused_at(path: &str, message: &str) -> ApiError {
    if path == "." {
        ApiError::validation(format!("invalid request body: {message}"))
    } else {
        ApiError::validation(format!("invalid request body at `{path}`: {message}"))
    }
}

/// A JSON body parsed once, from its bytes straight into the route's request type `T` (no
/// `serde_json::Value` in between). What is not JSON at all (the content type, the size, the
/// syntax) refuses the request before the handler runs, as actix-web's `Json` would
/// ([`json_error`]'s messages); a body of the wrong shape is handed to the handler as its
/// error (`invalid request body at `path`: ...`, naming the field), so that it is answered
/// and counted as the route's own validation error.
pub struct Typed<T>(pub Result<T, ApiError>);

impl<T: serde::de::DeserializeOwned + 'static> actix_web::FromRequest for Typed<T> {
    type Error = actix_web::Error;
    type Future = futures::future::LocalBoxFuture<'static, Result<Typed<T>, actix_web::Error>>;

    fn from_request(req: &HttpRequest, payload: &mut actix_web::dev::Payload) -> Self::Future {
        use actix_web::error::JsonPayloadError as E;
        use futures::StreamExt as _;
        let req = req.clone();
        let mut payload = payload.take();
        Box::pin(async move {
            let refuse = |e: E| Err(json_error(e, &req));
            let json =
                req.mime_type().ok().flatten().is_some_and(|m| {
                    m.subtype() == "json" || m.suffix().is_some_and(|s| s == "json")
                });
            if !json {
                return refuse(E::ContentType);
            }
            let limit = req
                .app_data::<web::Data<Shared>>()
                .map_or(usize::MAX, |s| s.config.server.max_request_bytes);
            let length = req
                .headers()
                .get(actix_web::http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<usize>().ok());
            if let Some(length) = length.filter(|&l| l > limit) {
                return refuse(E::OverflowKnownLength { length, limit });
            }
            let mut body = web::BytesMut::with_capacity(length.unwrap_or(0).min(limit));
            while let Some(chunk) = payload.next().await {
                let chunk = chunk.map_err(|e| json_error(E::Payload(e), &req))?;
                if body.len() + chunk.len() > limit {
                    return refuse(E::Overflow { limit });
                }
                body.extend_from_slice(&chunk);
            }
            let mut de = serde_json::Deserializer::from_slice(&body);
            let parsed = serde_path_to_error::deserialize(&mut de).map(|Object(t): Object<T>| t);
            match parsed {
                Ok(t) => match de.end() {
                    Ok(()) => Ok(Typed(Ok(t))),
                    Err(e) => refuse(E::Deserialize(e)),
                },
                Err(e) if e.inner().is_data() => {
                    let path = e.path().to_string();
                    Ok(Typed(Err(refused_at(&path, &without_position(e.inner())))))
                }
                Err(e) => refuse(E::Deserialize(e.into_inner())),
            }
        })
    }
}

/// A serde_json error's message without the `at line L column C` a parse from bytes adds.
fn without_position(e: &serde_json::Error) -> String {
    let message = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    match message.strip_suffix(&suffix) {
        Some(m) if e.line() > 0 => m.to_string(),
        _ => message,
    }
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
        _ => crate::api::new_request_id(),
    }
}

/// Writes `res`'s access line ([`crate::api::access`]).
fn access_line(res: &actix_web::dev::ServiceResponse, id: &str, elapsed: std::time::Duration) {
    let req = res.request();
    let refused = res.response().extensions().get::<Refused>().cloned();
    let detail = req
        .extensions()
        .get::<crate::api::access::Detail>()
        .cloned();
    let model = req
        .extensions()
        .get::<crate::api::Chosen>()
        .and_then(|c| c.get().map(|m| (m.name.clone(), m.version.to_string())));
    let route = req
        .match_pattern()
        .unwrap_or_else(|| req.path().to_string());
    let traceparent = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok());
    let status = res.status();
    crate::api::access::Line {
        transport: "http",
        method: req.method().as_str(),
        route: &route,
        request_id: id,
        traceparent,
        model,
        status: status.as_u16().to_string(),
        server_error: status.is_server_error(),
        error: refused.as_ref().map(|r| (r.kind, r.message.as_str())),
        detail: detail.as_ref(),
        elapsed,
        client: req.peer_addr().map(|a| a.to_string()),
        quiet: crate::api::access::quiet(&route),
    }
    .write();
}

/// Middleware: every request gets an id ([`RequestId`]) and every response echoes it, an
/// inner middleware's refusal (the API key) included.
async fn request_id(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody + 'static>,
) -> Result<actix_web::dev::ServiceResponse, actix_web::Error> {
    let arrived = std::time::Instant::now();
    let id = id_of(req.headers().get("x-request-id").map(|v| v.as_bytes()));
    req.extensions_mut().insert(RequestId(id.clone()));
    let log = req
        .app_data::<web::Data<Shared>>()
        .is_none_or(|s| s.config.logging.access_log);
    // Handlers' errors arrive here as responses; so do the API key's (see require_api_key).
    let mut res = next.call(req).await?.map_into_boxed_body();
    if log {
        access_line(&res, &id, arrived.elapsed());
    }
    res.headers_mut().insert(
        actix_web::http::header::HeaderName::from_static("x-request-id"),
        actix_web::http::header::HeaderValue::from_str(&id).expect("ids are printable ASCII"),
    );
    Ok(res)
}

/// An HTTP inference route: [`pipeline::call`] with the request's `X-Request-Id`, the server's
/// deadline, `X-Priority` and `traceparent`, dropping the work when the client closes its
/// connection; then TEI's timing headers and `X-Model-Version`. `work` gets the request's
/// [`Call`].
pub(crate) async fn inference<T, Fut>(
    shared: &Shared,
    req: &HttpRequest,
    route: &'static str,
    work: impl FnOnce(Call) -> Fut,
) -> Result<HttpResponse, ApiError>
where
    T: Serialize,
    Fut: std::future::Future<Output = Result<Reply<T>, ApiError>>,
{
    inference_with(shared, req, route, work, |res, body| res.json(body)).await
}

/// [`inference`] for a route that writes its own body (`respond`), such as the Open Inference
/// Protocol's binary tensors.
pub(crate) async fn inference_with<T, Fut>(
    shared: &Shared,
    req: &HttpRequest,
    route: &'static str,
    work: impl FnOnce(Call) -> Fut,
    respond: impl FnOnce(&mut actix_web::HttpResponseBuilder, T) -> HttpResponse,
) -> Result<HttpResponse, ApiError>
where
    Fut: std::future::Future<Output = Result<Reply<T>, ApiError>>,
{
    let id = req
        .extensions()
        .get::<RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_else(crate::api::new_request_id);
    let header = |name: &str| req.headers().get(name);
    let priority = header("x-priority").map(|v| v.to_str().unwrap_or("(not ASCII)"));
    let opening = pipeline::Opening {
        transport: "http",
        route,
        request_id: &id,
        deadline: shared.deadline(None),
        trace: TraceContext::from_http(req.headers()),
        traceparent: header("traceparent").and_then(|v| v.to_str().ok()),
        priority: crate::api::priority(priority, "the X-Priority header"),
    };
    let closed = pipeline::call(shared, opening, client_gone(req), work).await;
    // The access line (written by the middleware once this returns) reads these.
    req.extensions_mut().insert(closed.detail);
    req.extensions_mut().insert(closed.chosen.clone());
    let Reply { body, timings, .. } = closed.result?;
    let mut res = HttpResponse::Ok();
    with_timings(&mut res, &timings);
    if let Some(m) = closed.chosen.get() {
        res.insert_header(("x-model-version", m.tag()));
    }
    Ok(respond(&mut res, body))
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
        || crate::api::kserve::http::is_open_route(path, protect_metrics)
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
        if let Err(e) = crate::api::check_api_key(server, header) {
            crate::api::record::<()>(&shared.recorder, "http", &Err(e.clone()));
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
        ("POST", "/v1/embeddings") => web::post().to(crate::api::openai::openai_embeddings),
        ("POST", "/similarity") => web::post().to(tei::similarity),
        ("POST", "/tokenize") => web::post().to(tei::tokenize),
        ("POST", "/decode") => web::post().to(tei::decode),
        ("POST", "/predict") => web::post().to(predict::predict),
        ("POST", "/rerank") => web::post().to(predict::rerank),
        ("GET", "/") => web::get().to(ops::root),
        ("GET", "/health") => web::get().to(ops::health),
        ("GET", "/ping") => web::get().to(ops::ping),
        ("GET", "/ready") => web::get().to(ops::ready),
        ("GET", "/info") => web::get().to(ops::info),
        ("GET", "/v1/models") => web::get().to(ops::list_models),
        ("POST", "/admin/reload") => web::post().to(ops::reload),
        ("GET", "/metrics") => web::get().to(ops::metrics),
        ("GET", "/api-doc/openapi.json") => web::get().to(ops::openapi_json),
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
            .configure(crate::api::kserve::http::routes)
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
            typed::<crate::api::openai::OpenAiRequest>(body.clone()).err(),
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
