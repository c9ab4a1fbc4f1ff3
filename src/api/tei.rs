//! TEI's and OpenAI's HTTP routes, with their request and response shapes (TEI 1.9's OpenAPI
//! document and router), so their clients — `huggingface_hub.InferenceClient`, LangChain's and
//! LlamaIndex's Hugging Face integrations, `openai` — work by changing only the URL:
//! `POST /` and `/invocations` (what the loaded model's kind answers), `/embed`, `/embed_all`,
//! `/embed_sparse` (refused: no SPLADE model here), `/embeddings` and `/v1/embeddings`,
//! `/similarity`, `/tokenize` and `/decode`. Classifiers and rerankers are in
//! [`super::predict`].

use actix_web::{HttpRequest, HttpResponse, web};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{
    Job, Shared,
    error::ApiError,
    http::{Object, Served, inference, typed},
};
use crate::{
    actors::models::{Pick, Served as Version},
    actors::router::{TokenizerWork, Tokens},
    actors::tokenizer::{Decode, Inspect},
    model::{Task, TextInput, normalize_l2},
};

/// TEI's `inputs` (and OpenAI's `input`): a text, token ids, or a list of either.
#[derive(Debug, Clone, PartialEq)]
pub struct Inputs(pub Vec<TextInput>);

/// How `inputs` is documented (what [`Inputs`] accepts).
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum InputsDoc {
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
enum InputDoc {
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
    #[serde(default, deserialize_with = "super::http::whole_number")]
    pub dimensions: Option<usize>,
    /// `float` (default) or `base64` (each embedding as its little-endian f32 bytes in base64;
    /// `huggingface_hub`'s `feature_extraction` may ask for it).
    #[serde(default)]
    pub encoding_format: Option<String>,
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

/// OpenAI's `POST /v1/embeddings`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenAiRequest {
    /// The texts (or token ids).
    #[schema(value_type = InputsDoc)]
    pub input: Inputs,
    /// The model's name (any name is accepted while one model is served).
    #[serde(default)]
    pub model: Option<String>,
    /// `float` (default) or `base64` (little-endian f32, what the `openai` client asks for).
    #[serde(default)]
    pub encoding_format: Option<String>,
    /// Keep the first N dimensions, then normalise (if the model normalises).
    #[serde(default, deserialize_with = "super::http::whole_number")]
    pub dimensions: Option<usize>,
    /// The end user (not used).
    #[serde(default)]
    #[allow(dead_code)]
    pub user: Option<String>,
}

/// One embedding as OpenAI answers it.
#[derive(Serialize, ToSchema)]
pub struct OpenAiEmbedding {
    /// Always `embedding`.
    pub object: &'static str,
    /// Its input's position.
    pub index: usize,
    /// The vector, or its little-endian f32 bytes in base64.
    #[schema(value_type = Object)]
    pub embedding: serde_json::Value,
}

/// Token counts.
#[derive(Serialize, ToSchema)]
pub struct OpenAiUsage {
    /// Tokens in the inputs.
    pub prompt_tokens: u64,
    /// The same.
    pub total_tokens: u64,
}

/// OpenAI's embeddings response.
#[derive(Serialize, ToSchema)]
pub struct OpenAiResponse {
    /// Always `list`.
    pub object: &'static str,
    /// One embedding per input.
    pub data: Vec<OpenAiEmbedding>,
    /// The model's name.
    pub model: String,
    /// Token counts.
    pub usage: OpenAiUsage,
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

/// Keeps the first `dims` components of each row (Matryoshka), then L2-normalises them when
/// `normalize`. `dims` must be between 1 and the width.
pub fn shorten(
    rows: &mut [Vec<f32>],
    dims: Option<usize>,
    normalize: bool,
    width: usize,
) -> Result<(), ApiError> {
    if let Some(d) = dims
        && !(1..=width).contains(&d)
    {
        return Err(ApiError::validation(format!(
            "dimensions {d} is not available: this model's embeddings have {width} dimensions \
             (give 1 to {width})"
        )));
    }
    for row in rows.iter_mut() {
        if let Some(d) = dims {
            row.truncate(d);
        }
        if normalize {
            normalize_l2(row);
        }
    }
    Ok(())
}

/// Embeds for `/embed`, `/v1/embeddings` and gRPC `Embed`: the prompt prepended, then the
/// rows normalised after any Matryoshka cut (so the Router is asked not to normalise).
pub async fn embed_rows(
    shared: &Shared,
    m: &Version,
    inputs: Vec<TextInput>,
    options: EmbedOptions,
    call: super::Call,
) -> Result<crate::actors::router::EmbedOutput, ApiError> {
    super::require(m, &[Task::Embedding], "/embed, /v1/embeddings, gRPC Embed")?;
    let mut job = Job::of(shared.prompted(m, inputs, options.prompt_name.as_deref())?);
    job.normalize = Some(false);
    job.truncate = options.truncate.unwrap_or(true);
    job.direction = super::direction(options.truncation_direction.as_deref())?;
    // Checked before any work is queued.
    shorten(&mut [], options.dimensions, false, m.spec.dim())?;
    let mut out = shared.embed(m, job, call).await?;
    let normalize = options.normalize.unwrap_or(m.spec.normalize);
    shorten(
        &mut out.embeddings,
        options.dimensions,
        normalize,
        m.spec.dim(),
    )?;
    Ok(out)
}

/// The options `/embed`, `/v1/embeddings` and gRPC `Embed` share.
#[derive(Debug, Default, Clone)]
pub struct EmbedOptions {
    /// L2-normalise (default: the model's).
    pub normalize: Option<bool>,
    /// Truncate (default true).
    pub truncate: Option<bool>,
    /// `right` or `left`.
    pub truncation_direction: Option<String>,
    /// A prompt to prepend.
    pub prompt_name: Option<String>,
    /// Matryoshka width.
    pub dimensions: Option<usize>,
}

/// Get embeddings (TEI).
#[utoipa::path(post, path = "/embed", request_body = EmbedRequest,
    responses((status = 200, description = "One embedding per input", body = Vec<Vec<f32>>),
              (status = 400, description = "Invalid request", body = super::http::ErrorBody)))]
pub async fn embed(
    shared: web::Data<Shared>,
    req: HttpRequest,
    body: web::Json<serde_json::Value>,
) -> Result<HttpResponse, ApiError> {
    inference(&shared, &req, "/embed", |call| async {
        let body: EmbedRequest = typed(body.into_inner())?;
        embed_body(&shared, body, call).await
    })
    .await
}

async fn embed_body(
    shared: &Shared,
    body: EmbedRequest,
    call: super::Call,
) -> Result<Served<Vec<serde_json::Value>>, ApiError> {
    let base64 = base64_format(body.encoding_format.as_deref())?;
    let options = EmbedOptions {
        normalize: body.normalize,
        truncate: body.truncate,
        truncation_direction: body.truncation_direction,
        prompt_name: body.prompt_name,
        dimensions: body.dimensions,
    };
    let m = call.model(shared, Pick::Default(Task::Embedding))?;
    let out = embed_rows(shared, &m, body.inputs.0, options, call).await?;
    Ok(Served {
        texts: out.embeddings.len(),
        timings: out.timings,
        body: out
            .embeddings
            .into_iter()
            .map(|v| encoded(v, base64))
            .collect(),
    })
}

/// `encoding_format`: `float` (default) or `base64`.
fn base64_format(format: Option<&str>) -> Result<bool, ApiError> {
    match format {
        None | Some("float") => Ok(false),
        Some("base64") => Ok(true),
        Some(other) => Err(ApiError::validation(format!(
            "encoding_format `{other}` is not supported; use `float` or `base64`"
        ))),
    }
}

/// An embedding as a JSON array, or as its little-endian f32 bytes in base64.
fn encoded(v: Vec<f32>, base64: bool) -> serde_json::Value {
    if base64 {
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        base64::engine::general_purpose::STANDARD
            .encode(bytes)
            .into()
    } else {
        v.into()
    }
}

/// Get every token's embedding, without pooling (TEI).
#[utoipa::path(post, path = "/embed_all", request_body = EmbedAllRequest,
    responses((status = 200, description = "Per input, one vector per token", body = Vec<Vec<Vec<f32>>>),
              (status = 400, description = "Invalid request", body = super::http::ErrorBody)))]
pub async fn embed_all(
    shared: web::Data<Shared>,
    req: HttpRequest,
    body: web::Json<serde_json::Value>,
) -> Result<HttpResponse, ApiError> {
    inference(&shared, &req, "/embed_all", |call| async {
        let body: EmbedAllRequest = typed(body.into_inner())?;
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
        Ok(Served {
            texts: out.0.len(),
            timings: out.1,
            body: out.0,
        })
    })
    .await
}

/// Every real token's state per input, `[tokens][width]` (`/embed_all`, gRPC `EmbedAll`).
pub async fn token_states(
    shared: &Shared,
    m: &Version,
    inputs: Vec<TextInput>,
    truncate: Option<bool>,
    direction: Option<&str>,
    prompt_name: Option<&str>,
    call: super::Call,
) -> Result<(Vec<Vec<Vec<f32>>>, crate::actors::router::Timings), ApiError> {
    super::require(m, &[Task::Embedding], "/embed_all, gRPC EmbedAll")?;
    let mut job = Job::of(shared.prompted(m, inputs, prompt_name)?);
    job.truncate = truncate.unwrap_or(true);
    job.direction = super::direction(direction)?;
    job.all_tokens = true;
    let out = shared.infer(m, job, call).await?;
    let width = m.spec.dim().max(1);
    let states = out
        .embeddings
        .into_iter()
        .map(|row| row.chunks(width).map(<[f32]>::to_vec).collect())
        .collect();
    Ok((states, out.timings))
}

/// Sparse embeddings: for SPLADE models only, which this server does not run.
#[utoipa::path(post, path = "/embed_sparse", request_body = EmbedAllRequest,
    responses((status = 400, description = "Not a SPLADE model", body = super::http::ErrorBody)))]
pub async fn embed_sparse(shared: web::Data<Shared>) -> Result<HttpResponse, ApiError> {
    let m = shared.model(Pick::Default(Task::Embedding))?;
    Err(ApiError::wrong_model_kind(
        "/embed_sparse (SPLADE pooling)",
        m.spec.task.as_str(),
        m.spec.task.routes(),
    ))
}

/// OpenAI's embeddings route (also at `/embeddings`, as TEI serves it).
#[utoipa::path(post, path = "/v1/embeddings", request_body = OpenAiRequest,
    responses((status = 200, description = "Embeddings", body = OpenAiResponse),
              (status = 400, description = "Invalid request", body = super::http::ErrorBody)))]
pub async fn openai_embeddings(
    shared: web::Data<Shared>,
    req: HttpRequest,
    body: web::Json<serde_json::Value>,
) -> Result<HttpResponse, ApiError> {
    inference(&shared, &req, "/v1/embeddings", |call| async {
        let body: OpenAiRequest = typed(body.into_inner())?;
        let base64 = base64_format(body.encoding_format.as_deref())?;
        let options = EmbedOptions {
            dimensions: body.dimensions,
            ..Default::default()
        };
        // Any name is taken while one model is served, as TEI does: OpenAI clients send a
        // model name of their own.
        let m = match body.model.as_deref() {
            Some(name) => call.model(&shared, Pick::NamedOrOnly(name))?,
            None => call.model(&shared, Pick::Default(Task::Embedding))?,
        };
        let out = embed_rows(&shared, &m, body.input.0, options, call).await?;
        let tokens: u64 = out.token_counts.iter().map(|&n| u64::from(n)).sum();
        let texts = out.embeddings.len();
        let data = out
            .embeddings
            .into_iter()
            .enumerate()
            .map(|(index, v)| OpenAiEmbedding {
                object: "embedding",
                index,
                embedding: encoded(v, base64),
            })
            .collect();
        Ok(Served {
            body: OpenAiResponse {
                object: "list",
                data,
                model: m.name.clone(),
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
#[utoipa::path(post, path = "/similarity", request_body = SimilarityRequest,
    responses((status = 200, description = "One cosine similarity per sentence", body = Vec<f32>),
              (status = 400, description = "Invalid request", body = super::http::ErrorBody)))]
pub async fn similarity(
    shared: web::Data<Shared>,
    req: HttpRequest,
    body: web::Json<serde_json::Value>,
) -> Result<HttpResponse, ApiError> {
    inference(&shared, &req, "/similarity", |call| async {
        let body: SimilarityRequest = typed(body.into_inner())?;
        similarity_body(&shared, body, call).await
    })
    .await
}

async fn similarity_body(
    shared: &Shared,
    body: SimilarityRequest,
    call: super::Call,
) -> Result<Served<Vec<f32>>, ApiError> {
    let p = body.parameters.unwrap_or_default().0;
    let inputs = body.inputs.0;
    if inputs.sentences.is_empty() {
        return Err(ApiError::validation(
            "inputs.sentences is empty; give at least one sentence",
        ));
    }
    let mut texts = vec![TextInput::Text(inputs.source_sentence)];
    texts.extend(inputs.sentences.into_iter().map(TextInput::Text));
    let options = EmbedOptions {
        truncate: p.truncate,
        truncation_direction: p.truncation_direction,
        prompt_name: p.prompt_name,
        ..Default::default()
    };
    let m = call.model(shared, Pick::Default(Task::Embedding))?;
    let out = embed_rows(shared, &m, texts, options, call).await?;
    Ok(Served {
        body: cosines(&out.embeddings),
        texts: out.embeddings.len(),
        timings: out.timings,
    })
}

/// Tokenize texts (TEI): every token with its id, text, speciality and character offsets.
#[utoipa::path(post, path = "/tokenize", request_body = TokenizeRequest,
    responses((status = 200, description = "Per text, its tokens", body = Vec<Vec<SimpleToken>>),
              (status = 400, description = "Invalid request", body = super::http::ErrorBody)))]
pub async fn tokenize(
    shared: web::Data<Shared>,
    body: web::Json<serde_json::Value>,
) -> Result<HttpResponse, ApiError> {
    let body: TokenizeRequest = typed(body.into_inner())?;
    let m = shared.model(Pick::Default(Task::Embedding))?;
    let texts = tokenize_texts(&shared, &m, body.inputs.0, body.prompt_name.as_deref())?;
    let tokens = inspect(&shared, &m, texts, body.add_special_tokens).await?;
    Ok(HttpResponse::Ok().json(tokens))
}

/// The texts `/tokenize` (and gRPC `Tokenize`) takes: texts only, prompted, within limits.
pub fn tokenize_texts(
    shared: &Shared,
    m: &Version,
    inputs: Vec<TextInput>,
    prompt_name: Option<&str>,
) -> Result<Vec<String>, ApiError> {
    shared
        .prompted(m, inputs, prompt_name)?
        .into_iter()
        .enumerate()
        .map(|(i, input)| match input {
            TextInput::Text(t) => Ok(t),
            TextInput::Ids(_) => Err(ApiError::validation(format!(
                "inputs[{i}] is token ids; /tokenize takes texts"
            ))),
        })
        .collect()
}

/// Every token of each text, through the tokenizer pool.
pub async fn inspect(
    shared: &Shared,
    m: &Version,
    texts: Vec<String>,
    add_special_tokens: bool,
) -> Result<Vec<Vec<SimpleToken>>, ApiError> {
    shared.check_lengths(texts.iter().map(|t| (t.len(), || t.chars().count())))?;
    let n = texts.len();
    let work = TokenizerWork::Inspect(Inspect {
        texts,
        add_special_tokens,
    });
    match shared.tokenizer(m, work, n).await? {
        Tokens::Inspected(per_text) => Ok(per_text
            .into_iter()
            .map(|tokens| {
                tokens
                    .into_iter()
                    .map(|t| SimpleToken {
                        id: t.id,
                        text: t.text,
                        special: t.special,
                        start: t.span.map(|s| s.0),
                        stop: t.span.map(|s| s.1),
                    })
                    .collect()
            })
            .collect()),
        Tokens::Decoded(_) => Err(ApiError::internal(
            "the tokenizer answered another question",
        )),
    }
}

/// The texts of token ids, through the tokenizer pool.
pub async fn decode_ids(
    shared: &Shared,
    m: &Version,
    ids: Vec<Vec<u32>>,
    skip_special_tokens: bool,
) -> Result<Vec<String>, ApiError> {
    let n = ids.len();
    let work = TokenizerWork::Decode(Decode {
        ids,
        skip_special_tokens,
    });
    match shared.tokenizer(m, work, n).await? {
        Tokens::Decoded(texts) => Ok(texts),
        Tokens::Inspected(_) => Err(ApiError::internal(
            "the tokenizer answered another question",
        )),
    }
}

/// Decode token ids (TEI).
#[utoipa::path(post, path = "/decode", request_body = DecodeRequest,
    responses((status = 200, description = "Per list of ids, its text", body = Vec<String>),
              (status = 400, description = "Invalid request", body = super::http::ErrorBody)))]
pub async fn decode(
    shared: web::Data<Shared>,
    body: web::Json<serde_json::Value>,
) -> Result<HttpResponse, ApiError> {
    let body: DecodeRequest = typed(body.into_inner())?;
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
#[utoipa::path(post, path = "/", request_body = serde_json::Value,
    responses((status = 200, description = "What /embed, /similarity, /predict or /rerank answers"),
              (status = 400, description = "Invalid request", body = super::http::ErrorBody)))]
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
            super::predict::rerank_route(&shared, &req, route, body).await
        }
        Task::Classifier | Task::Reranker => {
            super::predict::predict_route(&shared, &req, route, body).await
        }
    }
}

/// SageMaker's name for [`default_route`].
#[utoipa::path(post, path = "/invocations", request_body = serde_json::Value,
    responses((status = 200, description = "As POST /"),
              (status = 400, description = "Invalid request", body = super::http::ErrorBody)))]
pub async fn invocations(
    shared: web::Data<Shared>,
    req: HttpRequest,
    body: web::Json<serde_json::Value>,
) -> Result<HttpResponse, ApiError> {
    default_route(shared, req, body).await
}

/// OpenAI's embeddings route without its `/v1` (as TEI serves it too).
#[utoipa::path(post, path = "/embeddings", request_body = OpenAiRequest,
    responses((status = 200, description = "Embeddings", body = OpenAiResponse),
              (status = 400, description = "Invalid request", body = super::http::ErrorBody)))]
pub async fn embeddings(
    shared: web::Data<Shared>,
    req: HttpRequest,
    body: web::Json<serde_json::Value>,
) -> Result<HttpResponse, ApiError> {
    openai_embeddings(shared, req, body).await
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
    fn matryoshka_keeps_the_first_dimensions_then_normalises() {
        let mut rows = vec![vec![3.0, 4.0, 12.0]];
        shorten(&mut rows, Some(2), true, 3).unwrap();
        assert_eq!(rows, [vec![0.6, 0.8]]);
        let e = shorten(&mut rows, Some(4), true, 3).unwrap_err();
        assert!(
            e.message.contains("dimensions 4 is not available"),
            "{}",
            e.message
        );
        assert!(shorten(&mut [], Some(0), false, 3).is_err());
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
