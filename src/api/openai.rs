//! OpenAI's `POST /v1/embeddings` (also served at TEI's `/embeddings`), with its request and
//! response shapes, so the `openai` client works by changing only the base URL. The request
//! becomes the same [`Job`](crate::api::Job) as TEI's `/embed` ([`crate::api::pipeline::embed_quantized`]).

use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api::{
    Shared,
    error::ApiError,
    http::{Typed, inference},
    pipeline::{self, Reply},
    tei::http::{self as tei, Inputs, InputsDoc},
};
use crate::{actors::models::Pick, model::Task};

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
    #[serde(default, deserialize_with = "crate::api::http::whole_number")]
    pub dimensions: Option<usize>,
    /// Not OpenAI's (send it with `extra_body`): `float32` (default), `int8`, `uint8`,
    /// `binary` or `ubinary`, as sentence-transformers' `quantize_embeddings`.
    #[serde(default)]
    pub output_dtype: Option<String>,
    /// The end user (not used).
    #[serde(default)]
    #[allow(dead_code)]
    pub user: Option<String>,
    /// How urgent this request is: `interactive` (or `high`) or `batch` (or `low`); unset: the
    /// `X-Priority` header, else the route's default, else by size. An actor-infer addition.
    #[serde(default)]
    #[schema(example = "batch")]
    pub priority: Option<String>,
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
    pub embedding: crate::api::quantized::Json,
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

/// OpenAI's embeddings route (also at `/embeddings`, as TEI serves it).
#[utoipa::path(post, path = "/v1/embeddings", tag = "tei", params(crate::api::http::XPriority), request_body = OpenAiRequest,
    responses((status = 200, description = "Embeddings", body = OpenAiResponse),
              (status = 400, description = "Invalid request", body = crate::api::http::ErrorBody)))]
pub async fn openai_embeddings(
    shared: web::Data<Shared>,
    req: HttpRequest,
    body: Typed<OpenAiRequest>,
) -> Result<HttpResponse, ApiError> {
    inference(&shared, &req, "/v1/embeddings", |call| async {
        let body = body.0?;
        let base64 = tei::base64_format(body.encoding_format.as_deref())?;
        let priority = crate::api::priority(body.priority.as_deref(), "priority")?;
        // Any name is taken while one model is served, as TEI does: OpenAI clients send a
        // model name of their own.
        let m = match body.model.as_deref() {
            Some(name) => call.model(&shared, Pick::NamedOrOnly(name))?,
            None => call.model(&shared, Pick::Default(Task::Embedding))?,
        };
        let mut job = pipeline::embedding_job(&shared, &m, body.input.0, None, body.dimensions)?;
        job.priority = priority;
        let (out, rows) =
            pipeline::embed_quantized(&shared, &m, job, body.output_dtype.as_deref(), call).await?;
        let tokens: u64 = out.token_counts.iter().map(|&n| u64::from(n)).sum();
        let texts = rows.len();
        let data = rows
            .into_iter()
            .enumerate()
            .map(|(index, r)| OpenAiEmbedding {
                object: "embedding",
                index,
                embedding: r.json(base64),
            })
            .collect();
        Ok(Reply {
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
