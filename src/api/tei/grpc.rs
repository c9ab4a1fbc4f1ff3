//! TEI's gRPC API (`tei.v1`: `Info`, `Embed`, `Predict`, `Rerank`, `Tokenize`, with their
//! streaming variants) on the same port as `actor_infer.v1`, so TEI's gRPC clients work
//! unchanged (TEI itself serves gRPC or HTTP, not both from one binary). Each method goes
//! through the same path as the HTTP routes (`crate::api::tei`, `crate::api::predict`): admission,
//! limits, deadlines, the API key (the service is wrapped like `actor_infer.v1`) and the one
//! error table. A stream's messages are answered in order, up to [`STREAM_CONCURRENCY`] in
//! flight at once.

use std::{pin::Pin, sync::Arc, time::Duration};

use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::api::{
    Call, Job, Shared,
    error::ApiError,
    grpc::{self, WithRequestId, client_deadline, served, tei as pb},
    pipeline::Reply,
    predict,
};
use crate::telemetry::TraceContext;
use crate::{
    actors::models::Pick,
    actors::router::Timings,
    model::{Task, TextInput},
};

/// Messages of one stream in flight at once.
pub const STREAM_CONCURRENCY: usize = 32;

/// The `tei.v1` services.
#[derive(Clone)]
pub struct TeiApi {
    shared: Arc<Shared>,
}

impl TeiApi {
    /// TEI's services over `shared`.
    pub fn new(shared: Arc<Shared>) -> TeiApi {
        TeiApi { shared }
    }
}

type Answer<T> = Result<Reply<T>, ApiError>;
type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

fn ns(d: Duration) -> u64 {
    d.as_nanos().min(u128::from(u64::MAX)) as u64
}

fn metadata(chars: usize, tokens: u32, t: &Timings) -> pb::Metadata {
    pb::Metadata {
        compute_chars: chars.min(u32::MAX as usize) as u32,
        compute_tokens: tokens,
        total_time_ns: ns(t.total),
        tokenization_time_ns: ns(t.tokenize),
        queue_time_ns: ns(t.queue),
        inference_time_ns: ns(t.inference),
    }
}

fn direction(d: i32) -> Option<String> {
    match pb::TruncationDirection::try_from(d) {
        Ok(pb::TruncationDirection::Left) => Some("left".into()),
        _ => None,
    }
}

impl TeiApi {
    /// One unary call: [`grpc::unary`] (TEI's messages carry no request id: a new one).
    async fn unary<Req, Resp, Fut>(
        &self,
        request: Request<Req>,
        route: &'static str,
        work: impl FnOnce(Arc<Shared>, Req, Call) -> Fut,
    ) -> Result<Response<Resp>, Status>
    where
        Req: WithRequestId,
        Fut: std::future::Future<Output = Answer<Resp>>,
    {
        let shared = self.shared.clone();
        let (resp, _) = grpc::unary(&self.shared, request, route, |req, call| {
            work(shared, req, call)
        })
        .await?;
        Ok(resp)
    }

    /// A stream of calls: each message answered as its own call (its own deadline and request
    /// id), in order.
    fn stream<Req, Resp, Fut>(
        &self,
        request: Request<Streaming<Req>>,
        route: &'static str,
        work: fn(Arc<Shared>, Req, Call) -> Fut,
    ) -> ResponseStream<Resp>
    where
        Req: Send + 'static,
        Resp: Send + 'static,
        Fut: std::future::Future<Output = Answer<Resp>> + Send + 'static,
    {
        let shared = self.shared.clone();
        // Every message's call continues the stream's trace.
        let trace = TraceContext::from_grpc(request.metadata());
        let peer = request.remote_addr();
        let answers = request
            .into_inner()
            .map(move |message| {
                let shared = shared.clone();
                let trace = trace.clone();
                async move {
                    let req = message?;
                    let deadline = shared.deadline(None);
                    let id = crate::api::new_request_id();
                    let worker = shared.clone();
                    served(&shared, route, &id, deadline, trace, peer, |call| {
                        work(worker, req, call)
                    })
                    .await
                }
            })
            .buffered(STREAM_CONCURRENCY);
        Box::pin(answers)
    }
}

async fn embed(
    shared: Arc<Shared>,
    req: pb::EmbedRequest,
    call: Call,
) -> Answer<pb::EmbedResponse> {
    let chars = req.inputs.chars().count();
    let priority = crate::api::priority(req.priority.as_deref(), "priority")?;
    let m = call.model(&shared, Pick::Default(Task::Embedding))?;
    let mut job = crate::api::pipeline::embedding_job(
        &shared,
        &m,
        vec![TextInput::Text(req.inputs)],
        req.prompt_name.as_deref(),
        None,
    )?;
    job.priority = priority;
    job.rows.normalize = Some(req.normalize);
    job.texts.direction = crate::api::direction(direction(req.truncation_direction).as_deref())?;
    let out = shared.embed(&m, job, call).await?;
    let tokens = out.token_counts.iter().sum();
    let resp = pb::EmbedResponse {
        metadata: Some(metadata(chars, tokens, &out.timings)),
        embeddings: out.embeddings.into_iter().next().unwrap_or_default(),
    };
    Ok(Reply {
        body: resp,
        texts: 1,
        timings: out.timings,
    })
}

async fn embed_all(
    shared: Arc<Shared>,
    req: pb::EmbedAllRequest,
    call: Call,
) -> Answer<pb::EmbedAllResponse> {
    let chars = req.inputs.chars().count();
    let m = call.model(&shared, Pick::Default(Task::Embedding))?;
    let (states, timings) = crate::api::pipeline::token_states(
        &shared,
        &m,
        vec![TextInput::Text(req.inputs)],
        Some(true),
        direction(req.truncation_direction).as_deref(),
        req.prompt_name.as_deref(),
        call,
    )
    .await?;
    let states = states.into_iter().next().unwrap_or_default();
    let resp = pb::EmbedAllResponse {
        metadata: Some(metadata(chars, states.len() as u32, &timings)),
        token_embeddings: states
            .into_iter()
            .map(|embeddings| pb::TokenEmbedding { embeddings })
            .collect(),
    };
    Ok(Reply {
        body: resp,
        texts: 1,
        timings,
    })
}

async fn embed_sparse(
    shared: Arc<Shared>,
    _req: pb::EmbedSparseRequest,
    _call: Call,
) -> Answer<pb::EmbedSparseResponse> {
    let m = shared.model(Pick::Default(Task::Embedding))?;
    Err(ApiError::wrong_model_kind(
        "EmbedSparse (SPLADE pooling)",
        m.spec.task.as_str(),
        m.spec.task.routes(),
    ))
}

/// Classifies one text or pair: the labelled scores, highest first.
async fn classify(
    shared: &Shared,
    text: String,
    pair: Option<String>,
    raw_scores: bool,
    truncation_direction: i32,
    call: Call,
) -> Answer<pb::PredictResponse> {
    let m = call.model(shared, Pick::Default(Task::Classifier))?;
    crate::api::require(
        &m,
        &[Task::Classifier, Task::Reranker],
        "Predict, PredictPair",
    )?;
    let chars = text.chars().count() + pair.as_ref().map_or(0, |p| p.chars().count());
    let mut job = Job::of(vec![TextInput::Text(text)]);
    job.texts.pairs = pair.map(|p| vec![p]);
    job.texts.direction = crate::api::direction(direction(truncation_direction).as_deref())?;
    let out = shared.infer(&m, job, call).await?;
    let tokens = out.token_counts.iter().sum();
    let row = out.embeddings.into_iter().next().unwrap_or_default();
    let resp = pb::PredictResponse {
        predictions: predict::predictions(&row, &m.spec, raw_scores)
            .into_iter()
            .map(|p| pb::Prediction {
                score: p.score,
                label: p.label,
            })
            .collect(),
        metadata: Some(metadata(chars, tokens, &out.timings)),
    };
    Ok(Reply {
        body: resp,
        texts: 1,
        timings: out.timings,
    })
}

async fn predict_one(
    shared: Arc<Shared>,
    req: pb::PredictRequest,
    call: Call,
) -> Answer<pb::PredictResponse> {
    classify(
        &shared,
        req.inputs,
        None,
        req.raw_scores,
        req.truncation_direction,
        call,
    )
    .await
}

async fn predict_pair(
    shared: Arc<Shared>,
    req: pb::PredictPairRequest,
    call: Call,
) -> Answer<pb::PredictResponse> {
    let mut inputs = req.inputs.into_iter();
    let (Some(a), Some(b), None) = (inputs.next(), inputs.next(), inputs.next()) else {
        return Err(ApiError::validation(
            "PredictPair's inputs must be exactly two texts (text, text_pair)",
        ));
    };
    classify(
        &shared,
        a,
        Some(b),
        req.raw_scores,
        req.truncation_direction,
        call,
    )
    .await
}

/// Ranks `texts` against `query` (Rerank, and RerankStream's collected messages).
async fn rank(
    shared: &Shared,
    query: String,
    texts: Vec<String>,
    raw_scores: bool,
    return_text: bool,
    truncation_direction: i32,
    call: Call,
) -> Answer<pb::RerankResponse> {
    let chars = (query.chars().count() * texts.len())
        + texts.iter().map(|t| t.chars().count()).sum::<usize>();
    let n = texts.len();
    let keep = return_text.then(|| texts.clone());
    let dir = direction(truncation_direction);
    let m = call.model(shared, Pick::Default(Task::Reranker))?;
    let out = predict::rerank_pairs(shared, &m, query, texts, true, dir.as_deref(), call).await?;
    let tokens = out.token_counts.iter().sum();
    let resp = pb::RerankResponse {
        ranks: predict::rerank_results(&out.embeddings, raw_scores, keep)
            .into_iter()
            .map(|r| pb::Rank {
                index: r.index as u32,
                text: r.text,
                score: r.score,
            })
            .collect(),
        metadata: Some(metadata(chars, tokens, &out.timings)),
    };
    Ok(Reply {
        body: resp,
        texts: n,
        timings: out.timings,
    })
}

async fn encode(
    shared: Arc<Shared>,
    req: pb::EncodeRequest,
    _call: Call,
) -> Answer<pb::EncodeResponse> {
    let m = shared.model(Pick::Default(Task::Embedding))?;
    let texts = crate::api::pipeline::tokenize_texts(
        &shared,
        &m,
        vec![TextInput::Text(req.inputs)],
        req.prompt_name.as_deref(),
    )?;
    let tokens = crate::api::pipeline::inspect(&shared, &m, texts, req.add_special_tokens)
        .await?
        .into_iter()
        .next()
        .unwrap_or_default();
    let resp = pb::EncodeResponse {
        tokens: tokens
            .into_iter()
            .map(|t| pb::SimpleToken {
                id: t.id,
                text: t.text,
                special: t.special,
                start: t.start.map(|s| s as u32),
                stop: t.stop.map(|s| s as u32),
            })
            .collect(),
    };
    Ok(Reply {
        body: resp,
        texts: 1,
        timings: Timings::default(),
    })
}

async fn decode(
    shared: Arc<Shared>,
    req: pb::DecodeRequest,
    _call: Call,
) -> Answer<pb::DecodeResponse> {
    let m = shared.model(Pick::Default(Task::Embedding))?;
    let text =
        crate::api::pipeline::decode_ids(&shared, &m, vec![req.ids], req.skip_special_tokens)
            .await?
            .into_iter()
            .next()
            .unwrap_or_default();
    Ok(Reply {
        body: pb::DecodeResponse { text },
        texts: 1,
        timings: Timings::default(),
    })
}

/// TEI's messages carry no request id: every call gets a new one.
macro_rules! new_request_id {
    ($($t:ty),*) => {$(
        impl WithRequestId for $t {
            fn take_request_id(&mut self) -> String {
                String::new()
            }
        }
    )*};
}
new_request_id!(
    pb::EmbedRequest,
    pb::EmbedSparseRequest,
    pb::EmbedAllRequest,
    pb::PredictRequest,
    pb::PredictPairRequest,
    pb::RerankRequest,
    pb::EncodeRequest,
    pb::DecodeRequest
);

#[tonic::async_trait]
impl pb::info_server::Info for TeiApi {
    async fn info(
        &self,
        _request: Request<pb::InfoRequest>,
    ) -> Result<Response<pb::InfoResponse>, Status> {
        let m = self
            .shared
            .model(Pick::Default(Task::Embedding))
            .map_err(Status::from)?;
        let i = self.shared.info(&m);
        let u = |n: usize| n.min(u32::MAX as usize) as u32;
        Ok(Response::new(pb::InfoResponse {
            version: i.version.to_string(),
            sha: None,
            docker_label: None,
            model_id: i.model_id,
            model_sha: i.model_sha,
            model_dtype: i.model_dtype.to_string(),
            model_type: match m.spec.task {
                Task::Embedding => pb::ModelType::Embedding,
                Task::Classifier => pb::ModelType::Classifier,
                Task::Reranker => pb::ModelType::Reranker,
            } as i32,
            max_concurrent_requests: u(i.max_concurrent_requests),
            max_input_length: u(i.max_input_length),
            max_batch_tokens: u(i.max_batch_tokens),
            max_batch_requests: i.max_batch_requests.map(u),
            max_client_batch_size: u(i.max_client_batch_size),
            tokenization_workers: u(i.tokenization_workers),
        }))
    }
}

#[tonic::async_trait]
impl pb::embed_server::Embed for TeiApi {
    async fn embed(
        &self,
        request: Request<pb::EmbedRequest>,
    ) -> Result<Response<pb::EmbedResponse>, Status> {
        self.unary(request, "tei.v1.Embed/Embed", embed).await
    }

    type EmbedStreamStream = ResponseStream<pb::EmbedResponse>;

    async fn embed_stream(
        &self,
        request: Request<Streaming<pb::EmbedRequest>>,
    ) -> Result<Response<Self::EmbedStreamStream>, Status> {
        Ok(Response::new(self.stream(
            request,
            "tei.v1.Embed/EmbedStream",
            embed,
        )))
    }

    async fn embed_sparse(
        &self,
        request: Request<pb::EmbedSparseRequest>,
    ) -> Result<Response<pb::EmbedSparseResponse>, Status> {
        self.unary(request, "tei.v1.Embed/EmbedSparse", embed_sparse)
            .await
    }

    type EmbedSparseStreamStream = ResponseStream<pb::EmbedSparseResponse>;

    async fn embed_sparse_stream(
        &self,
        request: Request<Streaming<pb::EmbedSparseRequest>>,
    ) -> Result<Response<Self::EmbedSparseStreamStream>, Status> {
        Ok(Response::new(self.stream(
            request,
            "tei.v1.Embed/EmbedSparseStream",
            embed_sparse,
        )))
    }

    async fn embed_all(
        &self,
        request: Request<pb::EmbedAllRequest>,
    ) -> Result<Response<pb::EmbedAllResponse>, Status> {
        self.unary(request, "tei.v1.Embed/EmbedAll", embed_all)
            .await
    }

    type EmbedAllStreamStream = ResponseStream<pb::EmbedAllResponse>;

    async fn embed_all_stream(
        &self,
        request: Request<Streaming<pb::EmbedAllRequest>>,
    ) -> Result<Response<Self::EmbedAllStreamStream>, Status> {
        Ok(Response::new(self.stream(
            request,
            "tei.v1.Embed/EmbedAllStream",
            embed_all,
        )))
    }
}

#[tonic::async_trait]
impl pb::predict_server::Predict for TeiApi {
    async fn predict(
        &self,
        request: Request<pb::PredictRequest>,
    ) -> Result<Response<pb::PredictResponse>, Status> {
        self.unary(request, "tei.v1.Predict/Predict", predict_one)
            .await
    }

    async fn predict_pair(
        &self,
        request: Request<pb::PredictPairRequest>,
    ) -> Result<Response<pb::PredictResponse>, Status> {
        self.unary(request, "tei.v1.Predict/PredictPair", predict_pair)
            .await
    }

    type PredictStreamStream = ResponseStream<pb::PredictResponse>;

    async fn predict_stream(
        &self,
        request: Request<Streaming<pb::PredictRequest>>,
    ) -> Result<Response<Self::PredictStreamStream>, Status> {
        Ok(Response::new(self.stream(
            request,
            "tei.v1.Predict/PredictStream",
            predict_one,
        )))
    }

    type PredictPairStreamStream = ResponseStream<pb::PredictResponse>;

    async fn predict_pair_stream(
        &self,
        request: Request<Streaming<pb::PredictPairRequest>>,
    ) -> Result<Response<Self::PredictPairStreamStream>, Status> {
        Ok(Response::new(self.stream(
            request,
            "tei.v1.Predict/PredictPairStream",
            predict_pair,
        )))
    }
}

#[tonic::async_trait]
impl pb::rerank_server::Rerank for TeiApi {
    async fn rerank(
        &self,
        request: Request<pb::RerankRequest>,
    ) -> Result<Response<pb::RerankResponse>, Status> {
        self.unary(
            request,
            "tei.v1.Rerank/Rerank",
            |shared, req, call| async move {
                rank(
                    &shared,
                    req.query,
                    req.texts,
                    req.raw_scores,
                    req.return_text,
                    req.truncation_direction,
                    call,
                )
                .await
            },
        )
        .await
    }

    /// The stream's (query, text) messages ranked together, once the client closes its side;
    /// `raw_scores`, `return_text` and the query come from the first message (as TEI).
    async fn rerank_stream(
        &self,
        request: Request<Streaming<pb::RerankStreamRequest>>,
    ) -> Result<Response<pb::RerankResponse>, Status> {
        let deadline = client_deadline(&self.shared, &request);
        let trace = TraceContext::from_grpc(request.metadata());
        let peer = request.remote_addr();
        let mut incoming = request.into_inner();
        let mut texts = Vec::new();
        let mut first: Option<pb::RerankStreamRequest> = None;
        while let Some(message) = incoming.next().await {
            let message = message?;
            texts.push(message.text.clone());
            first.get_or_insert(message);
        }
        let Some(first) = first else {
            return Err(ApiError::validation("RerankStream received no message").into());
        };
        let id = crate::api::new_request_id();
        let shared = self.shared.clone();
        let resp = served(
            &self.shared,
            "tei.v1.Rerank/RerankStream",
            &id,
            deadline,
            trace,
            peer,
            |call| async move {
                rank(
                    &shared,
                    first.query,
                    texts,
                    first.raw_scores,
                    first.return_text,
                    first.truncation_direction,
                    call,
                )
                .await
            },
        )
        .await?;
        Ok(Response::new(resp))
    }
}

#[tonic::async_trait]
impl pb::tokenize_server::Tokenize for TeiApi {
    async fn tokenize(
        &self,
        request: Request<pb::EncodeRequest>,
    ) -> Result<Response<pb::EncodeResponse>, Status> {
        self.unary(request, "tei.v1.Tokenize/Tokenize", encode)
            .await
    }

    type TokenizeStreamStream = ResponseStream<pb::EncodeResponse>;

    async fn tokenize_stream(
        &self,
        request: Request<Streaming<pb::EncodeRequest>>,
    ) -> Result<Response<Self::TokenizeStreamStream>, Status> {
        Ok(Response::new(self.stream(
            request,
            "tei.v1.Tokenize/TokenizeStream",
            encode,
        )))
    }

    async fn decode(
        &self,
        request: Request<pb::DecodeRequest>,
    ) -> Result<Response<pb::DecodeResponse>, Status> {
        self.unary(request, "tei.v1.Tokenize/Decode", decode).await
    }

    type DecodeStreamStream = ResponseStream<pb::DecodeResponse>;

    async fn decode_stream(
        &self,
        request: Request<Streaming<pb::DecodeRequest>>,
    ) -> Result<Response<Self::DecodeStreamStream>, Status> {
        Ok(Response::new(self.stream(
            request,
            "tei.v1.Tokenize/DecodeStream",
            decode,
        )))
    }
}
