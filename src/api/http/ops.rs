//! The operational routes: health and readiness probes, `/info` and `/v1/models`, reloads,
//! `/metrics` (Prometheus text or the JSON dashboard), the live page at `GET /` and the OpenAPI
//! document. No model runs behind them.

use actix_web::{HttpRequest, HttpResponse, web};

use super::ErrorBody;
use crate::actors::{metrics::Render, models::Pick};
use crate::api::{
    Shared,
    error::{ApiError, ErrorKind},
};

/// The process is alive (TEI's `/health`; `/ping` is SageMaker's name for it).
#[utoipa::path(get, path = "/health", tag = "http", responses((status = 200, description = "Alive")))]
pub async fn health() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "alive"}))
}

/// SageMaker's health route.
#[utoipa::path(get, path = "/ping", tag = "http", responses((status = 200, description = "Alive")))]
pub async fn ping() -> HttpResponse {
    health().await
}

/// Ready: the model is loaded and warm and the server is not stopping.
#[utoipa::path(get, path = "/ready", tag = "http", responses((status = 200, description = "Ready"),
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
#[utoipa::path(get, path = "/info", tag = "http", responses((status = 200, description = "The model", body = crate::api::ModelInfo)))]
pub async fn info(shared: web::Data<Shared>) -> Result<HttpResponse, ApiError> {
    let m = shared.model(Pick::Default(crate::model::Task::Embedding))?;
    let mut body = serde_json::to_value(shared.info(&m))
        .map_err(|e| ApiError::internal(format!("cannot encode /info: {e}")))?;
    let models: Vec<crate::api::ModelInfo> = shared
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
#[utoipa::path(get, path = "/v1/models", tag = "http", responses((status = 200, description = "The models served")))]
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
#[utoipa::path(post, path = "/admin/reload", tag = "http", responses(
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
#[utoipa::path(get, path = "/metrics", tag = "http", responses((status = 200, description = "Prometheus text or the JSON dashboard")))]
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
        Ok(HttpResponse::Ok().json(crate::api::dashboard_json(&shared).await?))
    }
}

/// `GET /`: the live dashboard page for a browser (it polls `/metrics` as JSON); for other
/// clients, which probe `/` for health as with TEI, the health answer.
#[utoipa::path(get, path = "/", tag = "http", responses((status = 200, description = "The live page (text/html) or health")))]
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
        .body(crate::api::http::openapi::document_json(&shared))
}
