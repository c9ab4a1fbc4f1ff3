//! The OpenAPI 3.1 document of the HTTP routes, served at `/api-doc/openapi.json`: one document
//! per served configuration. utoipa generates its skeleton from the handlers' annotations and
//! their request and response types (not written by hand); [`document`] then states what this
//! configuration accepts and answers, so that a request the document calls valid is served and
//! one it calls invalid is refused (schemathesis checks both ways in `tests/openapi.rs`):
//! - only the routes the served models can answer (`/rerank` with a reranker, `/predict` with a
//!   classifier or reranker, no `/embed_sparse`: no SPLADE model runs here);
//! - the limits fixed at start: texts per request (`server.max_client_batch_size`), characters
//!   per text (`server.max_input_chars`), token ids within the vocabulary, `dimensions` within
//!   the embedding's width, `prompt_name` among the model's prompts, `model` among the names
//!   served, and the closed sets (`truncation_direction`, `encoding_format`, ...) as enums;
//! - every status a route can answer, each with the error body and its `error_type`, and the
//!   bearer key where `server.api_key` is set.
//!
//! No `/docs` page: every OpenAPI viewer would have to be fetched from the internet, at build
//! or at run time.

use serde_json::{Map, Value, json};
use utoipa::OpenApi;

use crate::api::{Shared, error::ErrorKind, http, predict, tei::http as tei};
use crate::{actors::models::Pick, model::Task};

/// The spellings of a priority, in the `priority` field and the `X-Priority` header.
const PRIORITIES: [&str; 4] = ["interactive", "high", "batch", "low"];

/// The skeleton: every route of [`http::ROUTES`] but the document itself.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "actor-infer",
        description = "TEI's and OpenAI's routes for text embedding, classification and \
                       reranking models, plus health, readiness, model info and metrics. \
                       This document describes the models this server serves now."
    ),
    paths(
        tei::default_route,
        tei::invocations,
        tei::embed,
        tei::embed_all,
        tei::embed_sparse,
        tei::embeddings,
        crate::api::openai::openai_embeddings,
        tei::similarity,
        tei::tokenize,
        tei::decode,
        predict::predict,
        predict::rerank,
        http::ops::root,
        http::ops::health,
        http::ops::ping,
        http::ops::ready,
        http::ops::info,
        http::ops::list_models,
        http::ops::reload,
        http::ops::metrics,
    )
)]
struct ApiDoc;

/// One model's facts the document's bounds come from.
#[derive(Debug, Clone, PartialEq)]
pub struct Facts {
    /// Its name.
    pub name: String,
    /// What it serves.
    pub task: Task,
    /// The embedding's width (`dimensions` goes up to it).
    pub dim: usize,
    /// Token ids go up to one less.
    pub vocab: usize,
    /// The names `prompt_name` takes.
    pub prompts: Vec<String>,
    /// The names `output_dtype` takes (`int8`, `uint8` with calibration ranges).
    pub output_dtypes: Vec<&'static str>,
}

/// What one served configuration accepts: the models (in order) and the limits fixed at start.
#[derive(Debug, Clone, PartialEq)]
pub struct Contract {
    /// The models served, in order.
    pub models: Vec<Facts>,
    /// Which model each route without a model name uses (index into `models`): the embedder
    /// (TEI's embedding, tokenizer and similarity routes), the classifier (`/predict`), the
    /// reranker (`/rerank`), and the first (`POST /`).
    pub embedder: usize,
    /// `/predict`'s model.
    pub classifier: usize,
    /// `/rerank`'s model.
    pub reranker: usize,
    /// `server.max_client_batch_size`.
    pub max_client_batch_size: usize,
    /// `server.max_input_chars`.
    pub max_input_chars: usize,
    /// `server.api_key` is set.
    pub api_key: bool,
    /// `server.api_key_protects_metrics`.
    pub protects_metrics: bool,
}

impl Contract {
    /// The contract of what `shared` serves now.
    pub fn of(shared: &Shared) -> Contract {
        let catalog = shared.catalog();
        let index = |pick| {
            catalog
                .find(pick)
                .and_then(|m| {
                    catalog
                        .models
                        .iter()
                        .position(|x| std::sync::Arc::ptr_eq(x, m))
                })
                .unwrap_or(0)
        };
        let server = &shared.config.server;
        Contract {
            models: catalog
                .models
                .iter()
                .map(|m| Facts {
                    name: m.name.clone(),
                    task: m.spec.task,
                    dim: m.spec.dim(),
                    vocab: m.spec.vocab_size,
                    prompts: m.spec.prompts.keys().cloned().collect(),
                    output_dtypes: crate::api::quantized::offered(m),
                })
                .collect(),
            embedder: index(Pick::Default(Task::Embedding)),
            classifier: index(Pick::Default(Task::Classifier)),
            reranker: index(Pick::Default(Task::Reranker)),
            max_client_batch_size: server.max_client_batch_size,
            max_input_chars: server.max_input_chars,
            api_key: server.api_key.is_some(),
            protects_metrics: server.api_key_protects_metrics,
        }
    }

    fn model(&self, i: usize) -> Option<&Facts> {
        self.models.get(i)
    }

    /// The model of `i` if it serves one of `tasks`.
    fn serving(&self, i: usize, tasks: &[Task]) -> Option<&Facts> {
        self.model(i).filter(|m| tasks.contains(&m.task))
    }

    /// True when `path` can answer something other than `wrong_model_kind` here.
    fn serves(&self, path: &str) -> bool {
        match path {
            "/embed" | "/embed_all" | "/embeddings" | "/v1/embeddings" | "/similarity" => {
                self.serving(self.embedder, &[Task::Embedding]).is_some()
            }
            "/predict" => self
                .serving(self.classifier, &[Task::Classifier, Task::Reranker])
                .is_some(),
            "/rerank" => self.serving(self.reranker, &[Task::Reranker]).is_some(),
            "/embed_sparse" => false,
            _ => true,
        }
    }
}

/// The document of what `shared` serves now, as JSON.
pub fn document_json(shared: &Shared) -> String {
    serde_json::to_string_pretty(&document(&Contract::of(shared))).expect("a JSON value serialises")
}

/// The document for `contract`.
pub fn document(contract: &Contract) -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).expect("the OpenAPI document serialises");
    let paths = doc["paths"].as_object_mut().expect("paths");
    paths.retain(|path, _| contract.serves(path));
    for (path, item) in paths.iter_mut() {
        for (method, op) in item.as_object_mut().expect("a path item").iter_mut() {
            add_statuses(op, method, path, contract);
        }
    }
    // The `X-Priority` header takes the same closed set as the `priority` field.
    for item in paths.values_mut() {
        for op in item.as_object_mut().expect("a path item").values_mut() {
            let Some(params) = op.get_mut("parameters").and_then(Value::as_array_mut) else {
                continue;
            };
            for p in params.iter_mut().filter(|p| p["name"] == "X-Priority") {
                p["schema"] = json!({"type": "string", "enum": PRIORITIES});
            }
        }
    }
    let schemas = doc["components"]["schemas"]
        .as_object_mut()
        .expect("components.schemas");
    bound_requests(schemas, contract);
    let default_body = default_route_body(contract);
    for path in ["/", "/invocations"] {
        if let Some(body) =
            doc["paths"][path]["post"]["requestBody"]["content"]["application/json"].as_object_mut()
        {
            body.insert("schema".into(), default_body.clone());
        }
    }
    if contract.api_key {
        doc["components"]["securitySchemes"] = json!({
            "bearer": {"type": "http", "scheme": "bearer",
                       "description": "`server.api_key`, as `Authorization: Bearer <key>`"}
        });
    }
    doc
}

/// `text`: a string within `server.max_input_chars` characters.
fn text(c: &Contract) -> Value {
    json!({"type": "string", "maxLength": c.max_input_chars})
}

/// One input given as token ids of `m`'s vocabulary (at most `server.max_input_chars` of them,
/// which is how many characters a text may have).
fn token_ids(c: &Contract, m: &Facts) -> Value {
    json!({
        "type": "array",
        "minItems": 1,
        "maxItems": c.max_input_chars,
        "items": {"type": "integer", "minimum": 0, "maximum": m.vocab.saturating_sub(1)},
        "description": "One input given as token ids"
    })
}

/// A list of `item` within `server.max_client_batch_size` (less `reserved`), at least one.
fn batch(c: &Contract, item: Value, reserved: usize) -> Value {
    json!({
        "type": "array",
        "minItems": 1,
        "maxItems": c.max_client_batch_size.saturating_sub(reserved),
        "items": item
    })
}

/// TEI's `inputs`: a text, token ids, or a batch of either.
fn inputs(c: &Contract, m: &Facts) -> Value {
    json!({"anyOf": [
        text(c),
        token_ids(c, m),
        batch(c, json!({"anyOf": [text(c), token_ids(c, m)]}), 0),
    ]})
}

/// `/predict`'s `inputs`: a text, a `[text, text_pair]`, or a batch of texts (each bare or as
/// `[text]`) or of pairs; singles and pairs do not mix.
fn predict_inputs(c: &Contract) -> Value {
    let pair = json!({"type": "array", "minItems": 2, "maxItems": 2, "items": text(c)});
    let single = json!({"anyOf": [
        text(c),
        {"type": "array", "minItems": 1, "maxItems": 1, "items": text(c)}
    ]});
    json!({"anyOf": [text(c), pair, batch(c, single, 0), batch(c, pair, 0)]})
}

/// Replaces the request schemas' loose shapes with this configuration's bounds.
fn bound_requests(schemas: &mut Map<String, Value>, c: &Contract) {
    let embedder = c.model(c.embedder).cloned().unwrap_or(Facts {
        name: String::new(),
        task: Task::Embedding,
        dim: 0,
        vocab: 0,
        prompts: Vec::new(),
        output_dtypes: Vec::new(),
    });
    let prop = |schemas: &mut Map<String, Value>, schema: &str, field: &str, value: Value| {
        if let Some(p) = schemas
            .get_mut(schema)
            .and_then(|s| s["properties"].as_object_mut())
        {
            let description = p.get(field).and_then(|f| f.get("description")).cloned();
            let mut value = value;
            if let (Some(d), Some(v)) = (description, value.as_object_mut()) {
                v.insert("description".into(), d);
            }
            p.insert(field.into(), value);
        }
    };
    schemas.remove("InputsDoc");
    schemas.remove("InputDoc");
    for schema in ["EmbedRequest", "EmbedAllRequest", "TokenizeRequest"] {
        prop(schemas, schema, "inputs", inputs(c, &embedder));
    }
    // /tokenize reads texts only.
    prop(
        schemas,
        "TokenizeRequest",
        "inputs",
        json!({"anyOf": [text(c), batch(c, text(c), 0)]}),
    );
    prop(schemas, "OpenAiRequest", "input", inputs(c, &embedder));
    let width = embedder.dim.max(1);
    for schema in ["EmbedRequest", "OpenAiRequest"] {
        prop(
            schemas,
            schema,
            "dimensions",
            json!({"type": ["integer", "null"], "minimum": 1, "maximum": width}),
        );
        prop(
            schemas,
            schema,
            "encoding_format",
            json!({"enum": ["float", "base64", null]}),
        );
    }
    // `/embed` quantizes for the default embedder; `/v1/embeddings` for any embedding model
    // it may name, so what every one of them offers.
    let dtypes = |offered: Vec<&'static str>| json!({"enum": offered.into_iter().map(Value::from).chain([Value::Null]).collect::<Vec<_>>()});
    prop(
        schemas,
        "EmbedRequest",
        "output_dtype",
        dtypes(embedder.output_dtypes.clone()),
    );
    let everywhere: Vec<&'static str> = embedder
        .output_dtypes
        .iter()
        .copied()
        .filter(|d| {
            c.models
                .iter()
                .filter(|m| m.task == Task::Embedding)
                .all(|m| m.output_dtypes.contains(d))
        })
        .collect();
    prop(schemas, "OpenAiRequest", "output_dtype", dtypes(everywhere));
    // The models `/v1/embeddings` can name: the embedding ones.
    let names: Vec<Value> = c
        .models
        .iter()
        .filter(|m| m.task == Task::Embedding)
        .map(|m| json!(m.name))
        .collect();
    let model = if c.models.len() > 1 {
        json!({"enum": names.into_iter().chain([Value::Null]).collect::<Vec<_>>()})
    } else {
        // One model: any name is taken, as TEI does (OpenAI clients send names of their own).
        json!({"type": ["string", "null"]})
    };
    prop(schemas, "OpenAiRequest", "model", model);
    let prompts: Vec<Value> = embedder
        .prompts
        .iter()
        .map(|p| json!(p))
        .chain([Value::Null])
        .collect();
    for schema in [
        "EmbedRequest",
        "EmbedAllRequest",
        "SimilarityParameters",
        "TokenizeRequest",
    ] {
        prop(schemas, schema, "prompt_name", json!({"enum": prompts}));
    }
    // TEI's spellings (`Left`, `Right`) and ours.
    let direction = json!({"enum": ["right", "left", "Right", "Left", null]});
    for schema in [
        "EmbedRequest",
        "EmbedAllRequest",
        "SimilarityParameters",
        "PredictRequest",
        "RerankRequest",
    ] {
        prop(schemas, schema, "truncation_direction", direction.clone());
    }
    // Priorities (`crate::config::Priority::parse`).
    let priority = json!({"enum": PRIORITIES.iter().map(|p| json!(p)).chain([Value::Null])
        .collect::<Vec<_>>()});
    for schema in ["EmbedRequest", "OpenAiRequest", "PredictRequest"] {
        prop(schemas, schema, "priority", priority.clone());
    }
    prop(schemas, "SimilarityInput", "source_sentence", text(c));
    prop(
        schemas,
        "SimilarityInput",
        "sentences",
        batch(c, text(c), 1),
    );
    let ids = json!({"type": "integer", "minimum": 0, "maximum": embedder.vocab.saturating_sub(1)});
    prop(
        schemas,
        "DecodeRequest",
        "ids",
        json!({"anyOf": [
            {"type": "array", "items": ids},
            batch(c, json!({"type": "array", "items": ids}), 0),
        ]}),
    );
    schemas.remove("InputIdsDoc");
    prop(schemas, "PredictRequest", "inputs", predict_inputs(c));
    prop(
        schemas,
        "ClassificationParameters",
        "function_to_apply",
        json!({"enum": ["softmax", "sigmoid", "none", null]}),
    );
    prop(schemas, "RerankRequest", "query", text(c));
    prop(schemas, "RerankRequest", "texts", batch(c, text(c), 0));
    schemas.insert(
        "Embedding".into(),
        json!({
            "description": "An embedding: its numbers, or with `encoding_format: base64` their \
                            little-endian f32 bytes in base64",
            "oneOf": [
                {"type": "array", "items": {"type": "number"}},
                {"type": "string", "contentEncoding": "base64"}
            ]
        }),
    );
    prop(
        schemas,
        "OpenAiEmbedding",
        "embedding",
        json!({"$ref": "#/components/schemas/Embedding"}),
    );
    prop(
        schemas,
        "ErrorBody",
        "error_type",
        json!({"enum": ErrorKind::ALL.iter().map(|k| k.as_str()).collect::<Vec<_>>()}),
    );
}

/// `POST /`'s body: what the first model's kind answers there.
fn default_route_body(c: &Contract) -> Value {
    let r = |name: &str| json!({"$ref": format!("#/components/schemas/{name}")});
    match c.model(0).map(|m| m.task) {
        Some(Task::Embedding) | None => {
            json!({"anyOf": [r("EmbedRequest"), r("SimilarityRequest")]})
        }
        Some(Task::Classifier) => r("PredictRequest"),
        Some(Task::Reranker) => json!({"anyOf": [r("RerankRequest"), r("PredictRequest")]}),
    }
}

/// The error answers of one route, each with its cause.
fn error_statuses(method: &str, path: &str, c: &Contract) -> Vec<(ErrorKind, &'static str)> {
    use ErrorKind as K;
    let mut out = Vec::new();
    let inference = method == "post" && !matches!(path, "/admin/reload" | "/tokenize" | "/decode");
    if method == "post" && path != "/admin/reload" {
        out.extend([
            (K::Validation, "The body is not what this route reads; the message names the field"),
            (K::LimitExceeded, "Over `server.max_client_batch_size` texts or `server.max_input_chars` characters, or the body over `server.max_request_bytes` (`payload_too_large`)"),
            (K::UnsupportedMediaType, "The body is not `application/json`"),
            (K::Overloaded, "Over `server.max_concurrent_requests` texts in flight or `batching.max_queue_texts` queued (`Retry-After: 1`)"),
            (K::Internal, "A failure inside the server (a forward libtorch could not run)"),
            (K::NotReady, "Loading (`not_ready`) or stopping (`shutting_down`), with `Retry-After: 1`"),
        ]);
    }
    if inference {
        out.push((
            K::DeadlineExceeded,
            "Not answered within `server.request_timeout_seconds`",
        ));
    }
    if matches!(path, "/v1/embeddings" | "/embeddings") && c.models.len() > 1 {
        out.push((K::ModelNotFound, "`model` names no model served here"));
    }
    match path {
        "/ready" => out.push((
            K::NotReady,
            "Loading (`not_ready`) or stopping (`shutting_down`)",
        )),
        "/info" => out.push((K::NotReady, "No model is loaded yet")),
        "/metrics" => out.push((K::Internal, "The metrics actor could not answer")),
        "/admin/reload" => out.extend([
            (K::Conflict, "Another reload is running"),
            (K::ShuttingDown, "The server is stopping"),
        ]),
        _ => {}
    }
    let open = matches!(path, "/health" | "/ready" | "/ping")
        || (!c.protects_metrics
            && (matches!(path, "/metrics" | "/info") || (path == "/" && method == "get")));
    if c.api_key && !open {
        out.push((
            K::Unauthenticated,
            "No `Authorization: Bearer <server.api_key>`",
        ));
    }
    out
}

/// Adds every status `op` can answer, beside those its annotation lists.
fn add_statuses(op: &mut Value, method: &str, path: &str, c: &Contract) {
    let responses = op["responses"]
        .as_object_mut()
        .expect("every operation lists responses");
    let error = json!({"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}});
    for (kind, why) in error_statuses(method, path, c) {
        let status = kind.http_status().to_string();
        let entry = responses
            .entry(status)
            .or_insert_with(|| json!({"description": ""}));
        let text = entry["description"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let line = format!("`{}`: {why}", kind.as_str());
        entry["description"] = json!(if text.is_empty() || text == "Invalid request" {
            line
        } else if text.contains(&line) {
            text
        } else {
            format!("{text}; {line}")
        });
        entry["content"] = error.clone();
    }
    if let Some(ok) = responses.get_mut("200") {
        match (method, path) {
            ("post", "/embed") => {
                ok["content"] = json!({"application/json": {"schema": {"type": "array",
                    "items": {"$ref": "#/components/schemas/Embedding"}}}})
            }
            ("get", "/") => {
                ok["content"] = json!({
                    "application/json": {"schema": {"type": "object",
                        "properties": {"status": {"enum": ["alive"]}}}},
                    "text/html": {"schema": {"type": "string"}}
                })
            }
            ("get", "/health" | "/ping") => {
                ok["content"] = json!({"application/json": {"schema": {"type": "object",
                    "properties": {"status": {"enum": ["alive"]}}}}})
            }
            ("get", "/ready") => {
                ok["content"] = json!({"application/json": {"schema": {"type": "object",
                    "properties": {"status": {"enum": ["ready"]}}}}})
            }
            ("get", "/metrics") => {
                ok["content"] = json!({
                    "application/json": {"schema": {"type": "object"}},
                    "text/plain": {"schema": {"type": "string"}}
                })
            }
            ("get", "/v1/models") | ("post", "/admin/reload") => {
                ok["content"] = json!({"application/json": {"schema": {"type": "object"}}})
            }
            _ => {}
        }
    }
    if c.api_key
        && error_statuses(method, path, c)
            .iter()
            .any(|(k, _)| *k == ErrorKind::Unauthenticated)
    {
        op["security"] = json!([{"bearer": []}]);
    }
}

#[cfg(test)]
mod tests;
