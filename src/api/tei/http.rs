//! TEI's and OpenAI's HTTP routes, with their request and response shapes (TEI 1.9's OpenAPI
//! document and router), so their clients — `huggingface_hub.InferenceClient`, LangChain's and
//! LlamaIndex's Hugging Face integrations, `openai` — work by changing only the URL:
//! `POST /` and `/invocations` (what the loaded model's kind answers), `/embed`, `/embed_all`,
//! `/embed_sparse` (refused: no SPLADE model here), `/embeddings` and `/v1/embeddings`,
//! `/similarity`, `/tokenize` and `/decode`. Classifiers and rerankers are in
//! [`crate::api::predict`].

use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api::pipeline::{
    decode_ids, embed_quantized, embedding_job, inspect, token_states, tokenize_texts,
};
use crate::api::{
    Shared,
    error::ApiError,
    http::{Object, Typed, inference, typed},
    pipeline::Reply,
    quantized,
};
use crate::{
    actors::models::Pick,
    model::{Task, TextInput},
};

/// TEI's `inputs` (and OpenAI's `input`): a text, token ids, or a list of either.
#[derive(Debug, Clone, PartialEq)]
pub struct Inputs(pub Vec<TextInput>);

/// How `inputs` is documented (what [`Inputs`] accepts).
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub(crate) enum InputsDoc {
    /// One text.
    Text(String),
    /// One input given as token ids.
    Ids(Vec<u32>),
    /// A batch of texts or of token-id lists.
    Batch(Vec<InputDoc>),
}

/// One input of a batch.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub(crate) enum InputDoc {
    /// A text.
    Text(String),
    /// Token ids.
    Ids(Vec<u32>),
}

impl<'de> Deserialize<'de> for Inputs {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        use serde_json::Value;
        let one = |v: Value| -> Result<TextInput, String> {
            match v {
                Value::String(s) => Ok(TextInput::Text(s)),
                Value::Array(ids) => ids
                    .iter()
                    .map(|x| token_id(x).ok_or_else(|| format!("{x} is not a token id")))
                    .collect::<Result<Vec<u32>, _>>()
                    .map(TextInput::Ids),
                other => Err(format!("{other} is not a text or a list of token ids")),
            }
        };
        let expected = "a string, a list of strings, a list of token ids, or a list of those";
        match Value::deserialize(d)? {
            Value::String(s) => Ok(Inputs(vec![TextInput::Text(s)])),
            // A list of numbers is one input of token ids (TEI), a list of anything else a batch.
            Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_number) => {
                one(Value::Array(items))
                    .map(|i| Inputs(vec![i]))
                    .map_err(D::Error::custom)
            }
            Value::Array(items) => items
                .into_iter()
                .enumerate()
                .map(|(i, v)| one(v).map_err(|e| format!("item {i}: {e}; expected {expected}")))
                .collect::<Result<Vec<_>, _>>()
                .map(Inputs)
                .map_err(D::Error::custom),
            other => Err(D::Error::custom(format!("{other} is not {expected}"))),
        }
    }
}

/// A JSON number as a token id: a whole number from 0 to 2³²−1, written as an integer or as
/// a float with no fraction (`10581.0`, which JSON Schema also counts as an integer).
fn token_id(x: &serde_json::Value) -> Option<u32> {
    match x.as_u64() {
        Some(n) => u32::try_from(n).ok(),
        None => x
            .as_f64()
            .filter(|f| f.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(f))
            .map(|f| f as u32),
    }
}

/// Token ids for `/decode`: one list or a list of lists, read as [`token_id`] reads each.
#[derive(Debug, Clone, PartialEq)]
pub enum InputIds {
    /// One list.
    Single(Vec<u32>),
    /// Several.
    Batch(Vec<Vec<u32>>),
}

impl<'de> Deserialize<'de> for InputIds {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        use serde_json::Value;
        let list = |v: &Value| -> Result<Vec<u32>, String> {
            v.as_array()
                .ok_or_else(|| format!("{v} is not a list of token ids"))?
                .iter()
                .map(|x| token_id(x).ok_or_else(|| format!("{x} is not a token id")))
                .collect()
        };
        match Value::deserialize(d)? {
            Value::Array(items) if items.iter().all(Value::is_array) && !items.is_empty() => items
                .iter()
                .enumerate()
                .map(|(i, v)| list(v).map_err(|e| format!("item {i}: {e}")))
                .collect::<Result<Vec<_>, _>>()
                .map(InputIds::Batch)
                .map_err(D::Error::custom),
            v => list(&v).map(InputIds::Single).map_err(D::Error::custom),
        }
    }
}

/// TEI's `POST /embed`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmbedRequest {
    /// The texts (or token ids).
    #[schema(value_type = InputsDoc)]
    pub inputs: Inputs,
    /// L2-normalise (default: the model's, from `modules.json`).
    #[serde(default)]
    pub normalize: Option<bool>,
    /// Truncate over-long inputs (default true; false: such an input is a 400).
    #[serde(default)]
    pub truncate: Option<bool>,
    /// Which end truncation cuts: `right` (default) or `left`.
    #[serde(default)]
    pub truncation_direction: Option<String>,
    /// A prompt of the model's `config_sentence_transformers.json` to prepend.
    #[serde(default)]
    pub prompt_name: Option<String>,
    /// Matryoshka: keep the first N dimensions, then normalise (if normalising).
    #[serde(default, deserialize_with = "crate::api::http::whole_number")]
    pub dimensions: Option<usize>,
    /// `float` (default) or `base64` (each embedding as its little-endian f32 bytes in base64;
    /// `huggingface_hub`'s `feature_extraction` may ask for it).
    #[serde(default)]
    pub encoding_format: Option<String>,
    /// How urgent this request is: `interactive` (or `high`: someone waits, it goes first) or
    /// `batch` (or `low`: indexing, it fills what room is left and never starves). Unset: the
    /// `X-Priority` header, else the route's default, else interactive for at most
    /// `batching.interactive_max_texts` texts. An actor-infer addition.
    #[serde(default)]
    #[schema(example = "interactive")]
    pub priority: Option<String>,
    /// `float32` (default), `int8`, `uint8`, `binary` or `ubinary`: the embedding quantized as
    /// sentence-transformers' `quantize_embeddings` does (numbers, or their bytes in base64).
    #[serde(default)]
    pub output_dtype: Option<String>,
}

/// TEI's `POST /embed_all` (and `/embed_sparse`, refused).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmbedAllRequest {
    /// The texts (or token ids).
    #[schema(value_type = InputsDoc)]
    pub inputs: Inputs,
    /// Truncate over-long inputs (default true).
    #[serde(default)]
    pub truncate: Option<bool>,
    /// `right` (default) or `left`.
    #[serde(default)]
    pub truncation_direction: Option<String>,
    /// A prompt to prepend.
    #[serde(default)]
    pub prompt_name: Option<String>,
}

/// `POST /similarity`'s sentences.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SimilarityInput {
    /// The text the others are compared with.
    pub source_sentence: String,
    /// The texts compared with it.
    pub sentences: Vec<String>,
}

/// `POST /similarity`'s options.
#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct SimilarityParameters {
    /// Truncate over-long inputs (default true).
    #[serde(default)]
    pub truncate: Option<bool>,
    /// `right` (default) or `left`.
    #[serde(default)]
    pub truncation_direction: Option<String>,
    /// A prompt to prepend.
    #[serde(default)]
    pub prompt_name: Option<String>,
}

/// TEI's `POST /similarity` (Hugging Face's sentence-similarity task).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SimilarityRequest {
    /// The sentences.
    #[schema(value_type = SimilarityInput)]
    pub inputs: Object<SimilarityInput>,
    /// Options.
    #[serde(default)]
    #[schema(value_type = Option<SimilarityParameters>)]
    pub parameters: Option<Object<SimilarityParameters>>,
}

/// TEI's `POST /tokenize`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenizeRequest {
    /// A text or a list of texts.
    #[schema(value_type = InputsDoc)]
    pub inputs: Inputs,
    /// Add `[CLS]`, `[SEP]` and the like (default true).
    #[serde(default = "yes")]
    pub add_special_tokens: bool,
    /// A prompt to prepend.
    #[serde(default)]
    pub prompt_name: Option<String>,
}

/// One token, as `/tokenize` answers it.
#[derive(Serialize, ToSchema)]
pub struct SimpleToken {
    /// Its id.
    pub id: u32,
    /// The text it covers (a special token's own string).
    pub text: String,
    /// A special token.
    pub special: bool,
    /// First character it covers (none for a special token).
    pub start: Option<usize>,
    /// One past the last character.
    pub stop: Option<usize>,
}

/// How `ids` is documented (what [`InputIds`] accepts; the served document bounds it).
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum InputIdsDoc {
    /// One list.
    Single(Vec<u32>),
    /// Several.
    Batch(Vec<Vec<u32>>),
}

/// TEI's `POST /decode`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DecodeRequest {
    /// The ids.
    #[schema(value_type = InputIdsDoc)]
    pub ids: InputIds,
    /// Leave special tokens out (default true).
    #[serde(default = "yes")]
    pub skip_special_tokens: bool,
}

fn yes() -> bool {
    true
}

/// Get embeddings (TEI).
#[utoipa::path(post, path = "/embed", tag = "tei", params(crate::api::http::XPriority), request_body = EmbedRequest,
    responses((status = 200, description = "One embedding per input", body = Vec<Vec<f32>>),
              (status = 400, description = "Invalid request", body = crate::api::http::ErrorBody)))]
pub async fn embed(
    shared: web::Data<Shared>,
    req: HttpRequest,
    body: Typed<EmbedRequest>,
) -> Result<HttpResponse, ApiError> {
    inference(&shared, &req, "/embed", |call| async {
        embed_body(&shared, body.0?, call).await
    })
    .await
}

async fn embed_body(
    shared: &Shared,
    body: EmbedRequest,
    call: crate::api::Call,
) -> Result<Reply<Vec<quantized::Json>>, ApiError> {
    let base64 = base64_format(body.encoding_format.as_deref())?;
    let priority = crate::api::priority(body.priority.as_deref(), "priority")?;
    let m = call.model(shared, Pick::Default(Task::Embedding))?;
    let mut job = embedding_job(
        shared,
        &m,
        body.inputs.0,
        body.prompt_name.as_deref(),
        body.dimensions,
    )?;
    job.priority = priority;
    job.rows.normalize = body.normalize;
    job.texts.truncate = body.truncate.unwrap_or(true);
    job.texts.direction = crate::api::direction(body.truncation_direction.as_deref())?;
    let (out, rows) = embed_quantized(shared, &m, job, body.output_dtype.as_deref(), call).await?;
    Ok(Reply {
        texts: rows.len(),
        timings: out.timings,
        body: rows.into_iter().map(|r| r.json(base64)).collect(),
    })
}

/// Get every token's embedding, without pooling (TEI).
#[utoipa::path(post, path = "/embed_all", tag = "tei", params(crate::api::http::XPriority), request_body = EmbedAllRequest,
    responses((status = 200, description = "Per input, one vector per token", body = Vec<Vec<Vec<f32>>>),
              (status = 400, description = "Invalid request", body = crate::api::http::ErrorBody)))]
pub async fn embed_all(
    shared: web::Data<Shared>,
    req: HttpRequest,
    body: Typed<EmbedAllRequest>,
) -> Result<HttpResponse, ApiError> {
    inference(&shared, &req, "/embed_all", |call| async {
        let body = body.0?;
        let m = call.model(&shared, Pick::Default(Task::Embedding))?;
        let out = token_states(
            &shared,
            &m,
            body.inputs.0,
            body.truncate,
            body.truncation_direction.as_deref(),
            body.prompt_name.as_deref(),
            call,
        )
        .await?;
        Ok(Reply {
            texts: out.0.len(),
            timings: out.1,
            body: out.0,
        })
    })
    .await
}

/// Sparse embeddings: for SPLADE models only, which this server does not run.
#[utoipa::path(post, path = "/embed_sparse", tag = "tei", request_body = EmbedAllRequest,
    responses((status = 400, description = "Not a SPLADE model", body = crate::api::http::ErrorBody)))]
pub async fn embed_sparse(shared: web::Data<Shared>) -> Result<HttpResponse, ApiError> {
    let m = shared.model(Pick::Default(Task::Embedding))?;
    Err(ApiError::wrong_model_kind(
        "/embed_sparse (SPLADE pooling)",
        m.spec.task.as_str(),
        m.spec.task.routes(),
    ))
}

/// `encoding_format`: `float` (default) or `base64`.
pub(crate) fn base64_format(format: Option<&str>) -> Result<bool, ApiError> {
    match format {
        None | Some("float") => Ok(false),
        Some("base64") => Ok(true),
        Some(other) => Err(ApiError::validation(format!(
            "encoding_format `{other}` is not supported; use `float` or `base64`"
        ))),
    }
}

/// Cosine similarity of `source` with each of `others`.
fn cosines(rows: &[Vec<f32>]) -> Vec<f32> {
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    let (source, others) = rows.split_first().expect("at least the source sentence");
    let ns = norm(source);
    others
        .iter()
        .map(|o| source.iter().zip(o).map(|(a, b)| a * b).sum::<f32>() / (ns * norm(o)))
        .collect()
}

/// Sentence similarity (TEI; Hugging Face's task): the cosine of the source sentence with each
/// of the others.
#[utoipa::path(post, path = "/similarity", tag = "tei", params(crate::api::http::XPriority), request_body = SimilarityRequest,
    responses((status = 200, description = "One cosine similarity per sentence", body = Vec<f32>),
              (status = 400, description = "Invalid request", body = crate::api::http::ErrorBody)))]
pub async fn similarity(
    shared: web::Data<Shared>,
    req: HttpRequest,
    body: Typed<SimilarityRequest>,
) -> Result<HttpResponse, ApiError> {
    inference(&shared, &req, "/similarity", |call| async {
        similarity_body(&shared, body.0?, call).await
    })
    .await
}

async fn similarity_body(
    shared: &Shared,
    body: SimilarityRequest,
    call: crate::api::Call,
) -> Result<Reply<Vec<f32>>, ApiError> {
    let p = body.parameters.unwrap_or_default().0;
    let inputs = body.inputs.0;
    if inputs.sentences.is_empty() {
        return Err(ApiError::validation(
            "inputs.sentences is empty; give at least one sentence",
        ));
    }
    let mut texts = vec![TextInput::Text(inputs.source_sentence)];
    texts.extend(inputs.sentences.into_iter().map(TextInput::Text));
    let m = call.model(shared, Pick::Default(Task::Embedding))?;
    let mut job = embedding_job(shared, &m, texts, p.prompt_name.as_deref(), None)?;
    job.texts.truncate = p.truncate.unwrap_or(true);
    job.texts.direction = crate::api::direction(p.truncation_direction.as_deref())?;
    let out = shared.embed(&m, job, call).await?;
    Ok(Reply {
        body: cosines(&out.embeddings),
        texts: out.embeddings.len(),
        timings: out.timings,
    })
}

/// Tokenize texts (TEI): every token with its id, text, speciality and character offsets.
#[utoipa::path(post, path = "/tokenize", tag = "tei", request_body = TokenizeRequest,
    responses((status = 200, description = "Per text, its tokens", body = Vec<Vec<SimpleToken>>),
              (status = 400, description = "Invalid request", body = crate::api::http::ErrorBody)))]
pub async fn tokenize(
    shared: web::Data<Shared>,
    body: Typed<TokenizeRequest>,
) -> Result<HttpResponse, ApiError> {
    let body = body.0?;
    let m = shared.model(Pick::Default(Task::Embedding))?;
    let texts = tokenize_texts(&shared, &m, body.inputs.0, body.prompt_name.as_deref())?;
    let tokens = inspect(&shared, &m, texts, body.add_special_tokens).await?;
    Ok(HttpResponse::Ok().json(tokens))
}

/// Decode token ids (TEI).
#[utoipa::path(post, path = "/decode", tag = "tei", request_body = DecodeRequest,
    responses((status = 200, description = "Per list of ids, its text", body = Vec<String>),
              (status = 400, description = "Invalid request", body = crate::api::http::ErrorBody)))]
pub async fn decode(
    shared: web::Data<Shared>,
    body: Typed<DecodeRequest>,
) -> Result<HttpResponse, ApiError> {
    let body = body.0?;
    let ids = match body.ids {
        InputIds::Single(ids) => vec![ids],
        InputIds::Batch(ids) => ids,
    };
    let m = shared.model(Pick::Default(Task::Embedding))?;
    Ok(HttpResponse::Ok().json(decode_ids(&shared, &m, ids, body.skip_special_tokens).await?))
}

/// TEI's default route: what the loaded model's kind answers — `/embed` for an embedding model
/// (or `/similarity` when the body is a sentence-similarity request, which TEI only does when
/// started with `TASK=sentence-similarity`), `/predict` for a classifier, `/rerank` for a
/// reranker (or `/predict` when the body has `inputs`). Also at `/invocations` (SageMaker).
#[utoipa::path(post, path = "/", tag = "tei", params(crate::api::http::XPriority), request_body = serde_json::Value,
    responses((status = 200, description = "What /embed, /similarity, /predict or /rerank answers"),
              (status = 400, description = "Invalid request", body = crate::api::http::ErrorBody)))]
pub async fn default_route(
    shared: web::Data<Shared>,
    req: HttpRequest,
    body: web::Json<serde_json::Value>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let route = match req.path() {
        "/invocations" => "/invocations",
        _ => "/",
    };
    // The model the bare route serves: the first listed.
    let task = shared.model(Pick::First)?.spec.task;
    match task {
        Task::Embedding if body["inputs"].get("source_sentence").is_some() => {
            inference(&shared, &req, route, |call| async {
                similarity_body(&shared, typed(body)?, call).await
            })
            .await
        }
        Task::Embedding => {
            inference(&shared, &req, route, |call| async {
                embed_body(&shared, typed(body)?, call).await
            })
            .await
        }
        Task::Reranker if body.get("query").is_some() => {
            crate::api::predict::rerank_route(&shared, &req, route, typed(body)).await
        }
        Task::Classifier | Task::Reranker => {
            crate::api::predict::predict_route(&shared, &req, route, typed(body)).await
        }
    }
}

/// SageMaker's name for [`default_route`].
#[utoipa::path(post, path = "/invocations", tag = "tei", params(crate::api::http::XPriority), request_body = serde_json::Value,
    responses((status = 200, description = "As POST /"),
              (status = 400, description = "Invalid request", body = crate::api::http::ErrorBody)))]
pub async fn invocations(
    shared: web::Data<Shared>,
    req: HttpRequest,
    body: web::Json<serde_json::Value>,
) -> Result<HttpResponse, ApiError> {
    default_route(shared, req, body).await
}

/// OpenAI's embeddings route without its `/v1` (as TEI serves it too).
#[utoipa::path(post, path = "/embeddings", tag = "tei", params(crate::api::http::XPriority), request_body = crate::api::openai::OpenAiRequest,
    responses((status = 200, description = "Embeddings", body = crate::api::openai::OpenAiResponse),
              (status = 400, description = "Invalid request", body = crate::api::http::ErrorBody)))]
pub async fn embeddings(
    shared: web::Data<Shared>,
    req: HttpRequest,
    body: Typed<crate::api::openai::OpenAiRequest>,
) -> Result<HttpResponse, ApiError> {
    crate::api::openai::openai_embeddings(shared, req, body).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn inputs(v: serde_json::Value) -> Result<Vec<TextInput>, String> {
        serde_json::from_value::<Inputs>(v)
            .map(|i| i.0)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn inputs_read_texts_ids_and_batches_of_either_as_tei_does() {
        let t = |s: &str| TextInput::Text(s.into());
        assert_eq!(inputs(json!("a")).unwrap(), [t("a")]);
        assert_eq!(inputs(json!(["a", "b"])).unwrap(), [t("a"), t("b")]);
        assert_eq!(
            inputs(json!([101, 7592, 102])).unwrap(),
            [TextInput::Ids(vec![101, 7592, 102])]
        );
        assert_eq!(
            inputs(json!(["a", [1, 2]])).unwrap(),
            [t("a"), TextInput::Ids(vec![1, 2])]
        );
        assert_eq!(inputs(json!([])).unwrap(), []);
        assert!(inputs(json!([1.5])).unwrap_err().contains("not a token id"));
        assert!(inputs(json!(["a", {}])).unwrap_err().contains("item 1"));
        assert!(inputs(json!(3)).is_err());
    }

    #[test]
    fn similarity_is_the_cosine_with_the_source() {
        let c = cosines(&[
            vec![1.0, 0.0],
            vec![2.0, 0.0],
            vec![0.0, 3.0],
            vec![-1.0, 0.0],
        ]);
        assert_eq!(c, [1.0, 0.0, -1.0]);
    }
}
