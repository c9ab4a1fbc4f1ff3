//! The Open Inference Protocol (KServe v2 / Triton) over HTTP, under `/v2`:
//!
//! | route | |
//! | --- | --- |
//! | `GET /v2` | server metadata: name, version, extensions |
//! | `GET /v2/health/live`, `GET /v2/health/ready` | 200 when live / ready (probes: no API key) |
//! | `GET /v2/models/{name}[/versions/{v}]` | model metadata: versions, platform, input and output tensors |
//! | `GET /v2/models/{name}[/versions/{v}]/ready` | 200 when the model is ready |
//! | `POST /v2/models/{name}[/versions/{v}]/infer` | inference |
//!
//! Inference takes JSON tensors, and the binary tensor extension Triton's clients use: an
//! `Inference-Header-Content-Length` header gives the JSON header's size, and inputs with a
//! `binary_data_size` parameter are read from the bytes after it, in order. Outputs are binary
//! when the request's `binary_data_output` parameter or the output's own `binary_data` parameter
//! says so (the output's wins), and the response then carries the header likewise. The model's
//! tensors are in [`crate::api::kserve`]. Errors are `{"error": "...", "error_type": "..."}`, the
//! protocol's `{"error": ...}` with this server's error type beside it.

use actix_web::{HttpRequest, HttpResponse, http::Method, web};
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::actors::models::Lease;

use crate::api::{
    Shared,
    error::{ApiError, ErrorKind},
    http::{inference_with, resource, typed},
    kserve::{self as oip, Data, InferRequest, InputTensor, Parameters},
    pipeline::Reply,
};

/// The header of the binary tensor extension: the JSON part's length in bytes.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// Routes that need no API key: the health probes always; the metadata routes unless
/// `server.api_key_protects_metrics` (as `/info`).
pub fn is_open_route(path: &str, protect_metrics: bool) -> bool {
    matches!(path, "/v2/health/live" | "/v2/health/ready")
        || (!protect_metrics
            && (path == "/v2" || path.starts_with("/v2/models/") && !path.ends_with("/infer")))
}

/// Registers the `/v2` routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/v2", Method::GET, web::get().to(server_metadata)))
        .service(resource(
            "/v2/health/live",
            Method::GET,
            web::get().to(live),
        ))
        .service(resource(
            "/v2/health/ready",
            Method::GET,
            web::get().to(server_ready),
        ))
        .service(resource(
            "/v2/models/{name}",
            Method::GET,
            web::get().to(model_metadata),
        ))
        .service(resource(
            "/v2/models/{name}/versions/{version}",
            Method::GET,
            web::get().to(model_metadata),
        ))
        .service(resource(
            "/v2/models/{name}/ready",
            Method::GET,
            web::get().to(model_ready),
        ))
        .service(resource(
            "/v2/models/{name}/versions/{version}/ready",
            Method::GET,
            web::get().to(model_ready),
        ))
        .service(resource(
            "/v2/models/{name}/infer",
            Method::POST,
            web::post().to(infer),
        ))
        .service(resource(
            "/v2/models/{name}/versions/{version}/infer",
            Method::POST,
            web::post().to(infer),
        ));
}

/// The model a `/v2/models/{name}[/versions/{version}]` path names.
fn model_of(shared: &Shared, req: &HttpRequest) -> Result<Lease, ApiError> {
    let m = req.match_info();
    oip::model(shared, m.get("name").unwrap_or(""), m.get("version"))
}

async fn server_metadata() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({
        "name": oip::SERVER_NAME,
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": oip::EXTENSIONS,
    }))
}

async fn live() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "live": true }))
}

/// 200 once the model is loaded and warmed up; the error table's `not_ready` / `shutting_down`
/// (503) otherwise.
fn readiness(shared: &Shared) -> Result<(), ApiError> {
    if shared.lifecycle.is_stopping() {
        Err(ApiError::shutting_down())
    } else if shared.lifecycle.is_ready() {
        Ok(())
    } else {
        Err(ApiError::not_ready())
    }
}

async fn server_ready(shared: web::Data<Shared>) -> Result<HttpResponse, ApiError> {
    readiness(&shared)?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "ready": true })))
}

async fn model_ready(
    shared: web::Data<Shared>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let m = model_of(&shared, &req)?;
    readiness(&shared)?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "name": m.name, "ready": true })))
}

async fn model_metadata(
    shared: web::Data<Shared>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let m = model_of(&shared, &req)?;
    Ok(HttpResponse::Ok().json(oip::metadata(&m)))
}

/// An inference request's JSON (the header, with the binary extension).
#[derive(Deserialize)]
struct RequestJson {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Map<String, Value>,
    inputs: Vec<InputJson>,
    #[serde(default)]
    outputs: Option<Vec<OutputRequestJson>>,
}

#[derive(Deserialize)]
struct InputJson {
    name: String,
    datatype: String,
    shape: Vec<i64>,
    #[serde(default)]
    parameters: Map<String, Value>,
    #[serde(default)]
    data: Option<Value>,
}

#[derive(Deserialize)]
struct OutputRequestJson {
    name: String,
    #[serde(default)]
    parameters: Map<String, Value>,
}

#[derive(Serialize)]
struct ResponseJson {
    model_name: String,
    model_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    outputs: Vec<OutputJson>,
}

#[derive(Serialize)]
struct OutputJson {
    name: &'static str,
    datatype: &'static str,
    shape: Vec<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<Value>,
}

/// A boolean parameter, or an error naming it.
fn bool_param(params: &Map<String, Value>, key: &str, at: &str) -> Result<Option<bool>, ApiError> {
    match params.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(ApiError::validation(format!(
            "parameter `{key}` {at}must be true or false, not {other}"
        ))),
    }
}

/// Flattens JSON tensor data (flat or nested row-major) into BYTES elements: strings only.
fn json_elements(name: &str, data: Value, out: &mut Vec<Vec<u8>>) -> Result<(), ApiError> {
    match data {
        Value::String(s) => out.push(s.into_bytes()),
        Value::Array(items) => {
            for item in items {
                json_elements(name, item, out)?;
            }
        }
        other => {
            return Err(ApiError::validation(format!(
                "input `{name}`: BYTES data must be strings, not {other}"
            )));
        }
    }
    Ok(())
}

/// The response body: the JSON part and, with binary outputs, the bytes after it.
struct Body {
    json: Vec<u8>,
    binary: Option<Vec<u8>>,
}

fn respond(res: &mut actix_web::HttpResponseBuilder, body: Body) -> HttpResponse {
    match body.binary {
        None => res.content_type("application/json").body(body.json),
        Some(binary) => {
            res.insert_header((HEADER_LENGTH, body.json.len().to_string()));
            let mut all = body.json;
            all.extend_from_slice(&binary);
            res.content_type("application/octet-stream").body(all)
        }
    }
}

/// Reads the body, refusing one over `limit` bytes (413 `payload_too_large`).
async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<Vec<u8>, ApiError> {
    let too_large = || {
        ApiError::new(
            ErrorKind::PayloadTooLarge,
            format!(
                "the body is larger than the limit of {limit} bytes (server.max_request_bytes)"
            ),
        )
    };
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let mut body = Vec::with_capacity(declared.unwrap_or(0));
    while let Some(chunk) = payload.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::validation(format!("cannot read the body: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Decodes an inference body (JSON, or JSON + binary tensors) into the protocol's request, the
/// client's id, and which outputs go back binary.
fn decode(
    req: &HttpRequest,
    body: &[u8],
) -> Result<(InferRequest, Option<String>, Binary), ApiError> {
    let header_len = match req.headers().get(HEADER_LENGTH) {
        None => body.len(),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|n| *n <= body.len())
            .ok_or_else(|| {
                ApiError::validation(format!(
                    "Inference-Header-Content-Length must be the JSON header's length in bytes, \
                     at most the body's {} bytes",
                    body.len()
                ))
            })?,
    };
    let (json, mut binary) = body.split_at(header_len);
    let json: Value = serde_json::from_slice(json)
        .map_err(|e| ApiError::validation(format!("invalid JSON body: {e}")))?;
    let request: RequestJson = typed(json)?;
    let mut inputs = Vec::with_capacity(request.inputs.len());
    for input in request.inputs {
        let name = input.name;
        let size = match input.parameters.get("binary_data_size") {
            None | Some(Value::Null) => None,
            Some(v) => Some(v.as_u64().ok_or_else(|| {
                ApiError::validation(format!(
                    "input `{name}`: parameter binary_data_size must be a byte count, not {v}"
                ))
            })? as usize),
        };
        let elements = match (size, input.data) {
            (Some(size), None) => {
                if binary.len() < size {
                    return Err(ApiError::validation(format!(
                        "input `{name}` has binary_data_size {size}, but only {} bytes of \
                         binary data are left in the body",
                        binary.len()
                    )));
                }
                let (mine, rest) = binary.split_at(size);
                binary = rest;
                if input.datatype == "BYTES" {
                    oip::split_raw_bytes(&name, mine)?
                } else {
                    // The datatype check in `oip` refuses it, naming the tensor.
                    Vec::new()
                }
            }
            (None, Some(data)) => {
                let mut out = Vec::new();
                json_elements(&name, data, &mut out)?;
                out
            }
            (Some(_), Some(_)) => {
                return Err(ApiError::validation(format!(
                    "input `{name}` has both `data` and binary_data_size; send one"
                )));
            }
            (None, None) => {
                return Err(ApiError::validation(format!(
                    "input `{name}` has no `data` (nor binary_data_size)"
                )));
            }
        };
        inputs.push(InputTensor {
            name,
            datatype: input.datatype,
            shape: input.shape,
            elements,
        });
    }
    if !binary.is_empty() {
        return Err(ApiError::validation(format!(
            "{} bytes of binary data follow the JSON header that no input claims",
            binary.len()
        )));
    }
    let p = &request.parameters;
    let default_binary = bool_param(p, "binary_data_output", "")?.unwrap_or(false);
    let mut binary_outputs = Binary {
        default: default_binary,
        named: Vec::new(),
    };
    let outputs = match request.outputs {
        None => None,
        Some(outputs) => {
            let mut names = Vec::with_capacity(outputs.len());
            for o in outputs {
                let at = format!("of output `{}` ", o.name);
                if let Some(b) = bool_param(&o.parameters, "binary_data", &at)? {
                    binary_outputs.named.push((o.name.clone(), b));
                }
                names.push(o.name);
            }
            Some(names)
        }
    };
    let parameters = Parameters {
        normalize: bool_param(p, "normalize", "")?,
        truncate: bool_param(p, "truncate", "")?,
        raw_scores: bool_param(p, "raw_scores", "")?,
    };
    Ok((
        InferRequest {
            inputs,
            outputs,
            parameters,
        },
        request.id,
        binary_outputs,
    ))
}

/// Which outputs are sent as binary data.
struct Binary {
    /// `binary_data_output`.
    default: bool,
    /// Outputs' own `binary_data`.
    named: Vec<(String, bool)>,
}

impl Binary {
    fn of(&self, name: &str) -> bool {
        self.named
            .iter()
            .find(|(n, _)| n == name)
            .map_or(self.default, |(_, b)| *b)
    }
}

/// Encodes the outputs: JSON `data`, or `binary_data_size` and the bytes after the header.
fn encode(
    m: &crate::actors::models::Served,
    id: Option<String>,
    outputs: Vec<oip::OutputTensor>,
    binary: &Binary,
) -> Result<Body, ApiError> {
    let mut bytes: Option<Vec<u8>> = None;
    let mut json = Vec::with_capacity(outputs.len());
    for o in outputs {
        let datatype = o.data.datatype();
        if binary.of(o.name) {
            let raw = o.data.to_raw();
            let size = raw.len();
            bytes.get_or_insert_with(Vec::new).extend_from_slice(&raw);
            json.push(OutputJson {
                name: o.name,
                datatype,
                shape: o.shape,
                parameters: Some(serde_json::json!({ "binary_data_size": size })),
                data: None,
            });
        } else {
            let data = match o.data {
                Data::Fp32(v) => Value::from(v),
                Data::Int8(v) => Value::from(v.into_iter().map(|b| b as i8).collect::<Vec<_>>()),
                Data::Uint8(v) => Value::from(v),
                Data::Bytes(v) => Value::from(
                    v.into_iter()
                        .map(|e| String::from_utf8_lossy(&e).into_owned())
                        .collect::<Vec<_>>(),
                ),
            };
            json.push(OutputJson {
                name: o.name,
                datatype,
                shape: o.shape,
                parameters: None,
                data: Some(data),
            });
        }
    }
    let json = serde_json::to_vec(&ResponseJson {
        model_name: m.name.clone(),
        model_version: m.version.to_string(),
        id,
        outputs: json,
    })
    .map_err(|e| ApiError::internal(format!("cannot encode the response: {e}")))?;
    Ok(Body {
        json,
        binary: bytes,
    })
}

async fn infer(
    shared: web::Data<Shared>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    inference_with(
        &shared,
        &req,
        "/v2/models/{name}/infer",
        |call| async {
            let m = model_of(&shared, &req)?;
            call.chose(&m);
            let body = read_body(&req, payload, shared.config.server.max_request_bytes).await?;
            let (request, id, binary) = decode(&req, &body)?;
            drop(body);
            let out = oip::infer(&shared, &m, request, call).await?;
            Ok(Reply {
                body: encode(&m, id, out.outputs, &binary)?,
                texts: out.texts,
                timings: out.timings,
            })
        },
        respond,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_are_open_and_inference_is_not() {
        assert!(is_open_route("/v2/health/ready", true));
        assert!(is_open_route("/v2/health/live", true));
        assert!(is_open_route("/v2/models/m", false));
        assert!(!is_open_route("/v2/models/m", true));
        assert!(!is_open_route("/v2/models/m/infer", false));
        assert!(!is_open_route("/v2/models/m/versions/1/infer", false));
    }

    #[test]
    fn json_data_flattens_nested_strings_only() {
        let mut out = Vec::new();
        json_elements("text", serde_json::json!([["a"], ["b"]]), &mut out).unwrap();
        assert_eq!(out, vec![b"a".to_vec(), b"b".to_vec()]);
        let e = json_elements("text", serde_json::json!([1]), &mut out).unwrap_err();
        assert!(e.message.contains("`text`"), "{}", e.message);
    }
}
