//! The shared pipeline every protocol's handlers go through, over either transport: the
//! [`Call`] (span, deadline, priority, the version chosen, what the access line will say),
//! building a [`Job`] once per request, the limits and admission control, sentence-transformers'
//! prompts, and [`ModelInfo`]. Handlers parse their wire format, call [`Shared::infer`] (or
//! [`Shared::tokenizer`]) and render the answer; nothing here knows HTTP or gRPC.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use crate::{
    actors::job::Job,
    actors::{
        metrics::Recorder,
        models::{Catalog, Lease, Pick, Served},
        router::{Embed, EmbedOutput, Timings, TokenizerWork, Tokens},
    },
    config::Priority,
    model::{Direction, Task, TextInput},
};

use super::tei::http::SimpleToken;
use super::{
    Shared, access,
    error::{ApiError, ErrorKind},
    quantized,
};
use crate::actors::{
    models::Served as Version,
    tokenizer::{Decode, Inspect},
};
/// One inference call as the front ends hand it down: its tracing span (which carries the
/// request id across actors and threads) and its deadline.
pub struct Call {
    /// The request's span.
    pub span: tracing::Span,
    /// When it must be answered by.
    pub deadline: Deadline,
    /// The model version the request went to, once chosen (its metrics label, the
    /// `X-Model-Version` header).
    pub chosen: Chosen,
    /// Its priority from the transport (`X-Priority`) or the route's default
    /// (`server.route_priorities`); a `priority` field in the body ([`Job::priority`]) wins.
    pub priority: Option<Priority>,
    /// What its access line will say (tokens, texts, timings, trace id).
    pub detail: access::Detail,
}

/// Where a [`Call`] notes the model version it went to.
#[derive(Clone, Default)]
pub struct Chosen(Arc<std::sync::OnceLock<Arc<Served>>>);

impl Chosen {
    /// The version chosen, if any.
    pub fn get(&self) -> Option<&Arc<Served>> {
        self.0.get()
    }

    /// The metric handles of the chosen model (`model=""` when none was chosen).
    pub fn recorder<'a>(&'a self, shared: &'a Shared) -> &'a Recorder {
        self.get().map_or(&shared.recorder, |m| &m.recorder)
    }
}

impl Call {
    /// A new call's opening.
    pub fn new(span: tracing::Span, deadline: Deadline) -> Call {
        Call {
            span,
            deadline,
            chosen: Chosen::default(),
            priority: None,
            detail: access::Detail::default(),
        }
    }

    /// [`Shared::model`], noting the version chosen for this call.
    pub fn model(&self, shared: &Shared, pick: Pick<'_>) -> Result<Lease, ApiError> {
        let lease = shared.model(pick)?;
        self.chose(&lease);
        Ok(lease)
    }

    /// Notes the version this call went to (the first noted stays).
    pub fn chose(&self, lease: &Lease) {
        let _ = self.chosen.0.set(lease.served());
    }
}

/// When a request must be answered by, and why.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    /// The instant.
    pub at: Instant,
    /// The timeout it came from.
    pub limit: Duration,
    /// Whose timeout it is (for the error message).
    pub source: &'static str,
}

impl Deadline {
    /// The error for a request past this deadline.
    pub fn exceeded(&self) -> ApiError {
        ApiError::deadline_exceeded(self.limit, self.source)
    }
}

/// Parses a request's priority as the `priority` field or the `X-Priority` header (`source`)
/// gives it: `interactive` (or `high`), `batch` (or `low`); `None` when absent. A
/// bad value is a validation error that names the accepted values.
pub fn priority(value: Option<&str>, source: &str) -> Result<Option<Priority>, ApiError> {
    value
        .map(|v| Priority::parse(v).map_err(|e| ApiError::validation(format!("{source}: {e}"))))
        .transpose()
}

/// Parses `truncation_direction`: `right` or `left`, or TEI's own spellings `Right` and `Left`
/// (what the OpenAPI document lists).
pub fn direction(s: Option<&str>) -> Result<Direction, ApiError> {
    match s {
        None | Some("right" | "Right") => Ok(Direction::Right),
        Some("left" | "Left") => Ok(Direction::Left),
        Some(other) => Err(ApiError::validation(format!(
            "truncation_direction `{other}` is not one of right, left, Right, Left"
        ))),
    }
}

impl Shared {
    /// A lease on the model `pick` chooses, for one request: it is not stopped by a reload
    /// until the lease is dropped. A name no model has answers `model_not_found`, listing the
    /// models served.
    pub fn model(&self, pick: Pick<'_>) -> Result<Lease, ApiError> {
        self.directory.lease(pick).map_err(|catalog| {
            if self.lifecycle.is_stopping() {
                ApiError::shutting_down()
            } else if catalog.models.is_empty() {
                ApiError::not_ready()
            } else {
                let name = match pick {
                    Pick::Named(n) | Pick::NamedOrOnly(n) => n,
                    _ => "",
                };
                ApiError::new(
                    ErrorKind::ModelNotFound,
                    format!(
                        "model `{name}` is not served here; the models are: {}",
                        catalog.names().join(", ")
                    ),
                )
            }
        })
    }

    /// The models serving now.
    pub fn catalog(&self) -> Arc<Catalog> {
        self.directory.catalog()
    }

    /// Embeds through the Router: [`Shared::infer`] for embedding models only (a classifier
    /// answers `wrong_model_kind`).
    pub async fn embed(&self, m: &Served, job: Job, call: Call) -> Result<EmbedOutput, ApiError> {
        require(m, &[Task::Embedding], "embeddings (/embed, /v1/embeddings)")?;
        self.infer(m, job, call).await
    }

    /// Prepends sentence-transformers' prompt to each text: the one `prompt_name` names, else
    /// the model's default prompt (none: the texts as they are). An unknown name is refused,
    /// listing the prompts there are.
    pub fn prompted(
        &self,
        m: &Served,
        inputs: Vec<TextInput>,
        prompt_name: Option<&str>,
    ) -> Result<Vec<TextInput>, ApiError> {
        let prompts = &m.spec.prompts;
        let prompt = match prompt_name {
            Some(name) => Some(prompts.get(name).ok_or_else(|| {
                ApiError::validation(format!(
                    "prompt_name `{name}` is not one of this model's prompts ({}; \
                     config_sentence_transformers.json)",
                    if prompts.is_empty() {
                        "it has none".to_string()
                    } else {
                        prompts.keys().cloned().collect::<Vec<_>>().join(", ")
                    }
                ))
            })?),
            None => m.spec.default_prompt.as_ref().and_then(|n| prompts.get(n)),
        };
        let Some(prompt) = prompt.filter(|p| !p.is_empty()) else {
            return Ok(inputs);
        };
        inputs
            .into_iter()
            .map(|i| match i {
                TextInput::Text(t) => Ok(TextInput::Text(format!("{prompt}{t}"))),
                TextInput::Ids(_) if prompt_name.is_some() => Err(ApiError::validation(
                    "prompt_name applies to texts, not to token ids",
                )),
                ids => Ok(ids),
            })
            .collect()
    }

    /// Runs a job through the Router within the call's deadline: one row per input, an
    /// embedding, a classifier's logits, or token states. Checks, in order: the input is not
    /// empty and within `server.max_client_batch_size` inputs of `server.max_input_chars`
    /// characters each; the server is ready and not stopping; the inputs fit under
    /// `server.max_concurrent_requests` (admission control, before any queue). Dropping the
    /// returned future cancels the request's queued work.
    pub async fn infer(&self, m: &Served, job: Job, call: Call) -> Result<EmbedOutput, ApiError> {
        let Call {
            span,
            deadline,
            priority,
            detail,
            ..
        } = call;
        if let Some(p) = &job.texts.pairs {
            if p.len() != job.texts.inputs.len() {
                return Err(ApiError::validation(format!(
                    "{} second segments for {} texts; give one per text",
                    p.len(),
                    job.texts.inputs.len()
                )));
            }
            self.check_count(p.len())?;
            self.check_lengths(p.iter().map(|t| (t.len(), || t.chars().count())))?;
        }
        let n = job.texts.inputs.len();
        self.check_count(n)?;
        self.check_lengths(
            job.texts
                .inputs
                .iter()
                .map(|t| (t.len_bound(), || t.chars())),
        )?;
        let permit = self.admit(n)?;
        let receiver = m
            .router
            .send(Embed {
                job,
                span,
                sent: Instant::now(),
                deadline: deadline.at,
                permit,
                priority,
            })
            .await
            .map_err(|_| ApiError::shutting_down())??;
        let out = match tokio::time::timeout_at(deadline.at.into(), receiver).await {
            Ok(Ok(answer)) => answer?,
            Ok(Err(_)) => {
                return Err(ApiError::internal(
                    "the request was dropped inside the server",
                ));
            }
            // Dropping the receiver here makes the Router skip whatever is still queued.
            Err(_) => return Err(deadline.exceeded()),
        };
        if out.embeddings.len() != n {
            return Err(ApiError::internal(format!(
                "{} rows came back for {n} inputs",
                out.embeddings.len()
            )));
        }
        detail.add_tokens(out.token_counts.iter().map(|&t| u64::from(t)).sum());
        Ok(out)
    }

    /// Admission control: room for `texts` more texts under `server.max_concurrent_requests`,
    /// unless the server is stopping.
    fn admit(&self, texts: usize) -> Result<crate::actors::Permit, ApiError> {
        if self.lifecycle.is_stopping() {
            return Err(ApiError::shutting_down());
        }
        self.admission.try_admit(texts).map_err(|held| {
            ApiError::new(
                ErrorKind::Overloaded,
                format!(
                    "{held} texts are in flight and this request adds {texts}, over \
                     server.max_concurrent_requests = {}; retry later",
                    self.admission.limit()
                ),
            )
        })
    }

    /// Tokenizer work (`/tokenize`, `/decode`) on the tokenizer pool, through the Router, under
    /// the same limits and admission as inference.
    pub async fn tokenizer(
        &self,
        m: &Served,
        work: TokenizerWork,
        count: usize,
    ) -> Result<Tokens, ApiError> {
        self.check_count(count)?;
        let _permit = self.admit(count)?;
        Ok(m.router
            .send(work)
            .await
            .map_err(|_| ApiError::shutting_down())??)
    }

    /// Refuses an empty list and one over `server.max_client_batch_size`.
    pub fn check_count(&self, n: usize) -> Result<(), ApiError> {
        let s = &self.config.server;
        if n == 0 {
            return Err(ApiError::validation(
                "the input is an empty list; give at least one text (an empty string is fine)",
            ));
        }
        if n > s.max_client_batch_size {
            return Err(ApiError::new(
                ErrorKind::LimitExceeded,
                format!(
                    "the request has {n} texts; server.max_client_batch_size is {}: split it",
                    s.max_client_batch_size
                ),
            ));
        }
        Ok(())
    }

    /// Refuses a text over `server.max_input_chars` characters; each item is a cheap upper
    /// bound and the exact count, computed only when the bound is over.
    pub fn check_lengths<F: FnOnce() -> usize>(
        &self,
        lengths: impl Iterator<Item = (usize, F)>,
    ) -> Result<(), ApiError> {
        let max = self.config.server.max_input_chars;
        for (i, (bound, exact)) in lengths.enumerate() {
            if bound > max {
                let n = exact();
                if n > max {
                    return Err(ApiError::new(
                        ErrorKind::LimitExceeded,
                        format!("text {i} has {n} characters; server.max_input_chars is {max}"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The deadline of a request arriving now: `server.request_timeout_seconds`, or the
    /// client's own timeout when that is sooner.
    pub fn deadline(&self, client: Option<Duration>) -> Deadline {
        let server = Duration::from_secs_f64(self.config.server.request_timeout_seconds);
        let (limit, source) = match client {
            Some(c) if c < server => (c, "the client's timeout"),
            _ => (server, "server.request_timeout_seconds"),
        };
        Deadline {
            at: Instant::now() + limit,
            limit,
            source,
        }
    }

    /// The priority `server.route_priorities` gives requests of `route` that name none.
    pub fn route_priority(&self, route: &str) -> Option<Priority> {
        self.config.server.route_priorities.get(route).copied()
    }
}

/// Refuses a route model `m` does not serve (`wrong_model_kind`, naming what it serves).
pub fn require(m: &Served, tasks: &[Task], route: &str) -> Result<(), ApiError> {
    if tasks.contains(&m.spec.task) {
        Ok(())
    } else {
        Err(ApiError::wrong_model_kind(
            route,
            m.spec.task.as_str(),
            m.spec.task.routes(),
        ))
    }
}

/// Records an inference request's outcome over `transport` (counter and dashboard window).
pub fn record<T>(recorder: &Recorder, transport: &str, result: &Result<Reply<T>, ApiError>) {
    match result {
        Ok(r) => recorder.request(transport, Ok((r.texts, &r.timings))),
        Err(e) => recorder.request(transport, Err(e.kind.as_str())),
    }
}

/// What an inference call answers, over either transport: the protocol's response, the texts
/// it served (the dashboard's throughput) and where the time went (timing headers, metadata).
pub struct Reply<T> {
    /// The protocol's response body or message.
    pub body: T,
    /// Texts answered.
    pub texts: usize,
    /// Where the request's time went.
    pub timings: Timings,
}

/// How a transport opens an inference call: what it read from its wire before the body.
pub struct Opening<'a> {
    /// `http` or `grpc` (the span's and the metrics' label).
    pub transport: &'static str,
    /// The route or method.
    pub route: &'static str,
    /// The request id (the client's, or a new one).
    pub request_id: &'a str,
    /// When it must be answered by.
    pub deadline: Deadline,
    /// The caller's W3C trace context, parsed.
    pub trace: Option<crate::telemetry::TraceContext>,
    /// The caller's `traceparent` as sent (the access line's trace id).
    pub traceparent: Option<&'a str>,
    /// The transport's priority (`X-Priority`; gRPC has none), or why it is refused; `None`:
    /// the route's default (`server.route_priorities`).
    pub priority: Result<Option<Priority>, ApiError>,
}

/// A closed call: its outcome, the version it went to and what its access line says.
pub struct Closed<T> {
    /// The reply or the error, already recorded in the metrics.
    pub result: Result<Reply<T>, ApiError>,
    /// The model version the call went to, if one was chosen.
    pub chosen: Chosen,
    /// Texts, tokens, timings and trace id for the access line.
    pub detail: access::Detail,
}

/// Records a call dropped before its answer (a gRPC client cancelled it: hyper drops the
/// future mid-way) as `client_gone`.
struct DroppedGuard<'a>(Option<(&'a Shared, &'a Chosen, &'static str)>);

impl Drop for DroppedGuard<'_> {
    fn drop(&mut self) {
        if let Some((shared, chosen, transport)) = self.0 {
            chosen
                .recorder(shared)
                .request(transport, Err(ErrorKind::ClientGone.as_str()));
        }
    }
}

/// The opening and closing of every inference call, over both transports: the request's span
/// (with its request id, continuing the caller's trace), its deadline and priority, dropping
/// the work when `gone` resolves first (the client left), the outcome in the metrics (a call
/// dropped mid-way included) and the access line's detail. `work` gets the [`Call`]; the
/// transport renders the [`Closed`] result (headers, status, access line).
pub async fn call<T, Fut>(
    shared: &Shared,
    opening: Opening<'_>,
    gone: impl std::future::Future<Output = ()>,
    work: impl FnOnce(Call) -> Fut,
) -> Closed<T>
where
    Fut: std::future::Future<Output = Result<Reply<T>, ApiError>>,
{
    let Opening {
        transport,
        route,
        request_id,
        deadline,
        trace,
        traceparent,
        priority,
    } = opening;
    let mut call = Call::new(
        tracing::info_span!("request", transport, route, request_id = %request_id, traceparent = tracing::field::Empty),
        deadline,
    );
    let chosen = call.chosen.clone();
    let detail = call.detail.clone();
    crate::telemetry::continue_trace(&call.span, trace);
    detail.trace(access::trace_id(traceparent, &call.span));
    let mut dropped = DroppedGuard(Some((shared, &chosen, transport)));
    let result = match priority {
        Ok(priority) => {
            call.priority = priority.or_else(|| shared.route_priority(route));
            tokio::select! {
                out = work(call) => out,
                () = gone => Err(ApiError::new(ErrorKind::ClientGone, "the client closed the connection")),
            }
        }
        Err(e) => Err(e),
    };
    dropped.0 = None;
    drop(dropped);
    if let Ok(r) = &result {
        detail.served(r.texts, &r.timings);
    }
    record(chosen.recorder(shared), transport, &result);
    Closed {
        result,
        chosen,
        detail,
    }
}

/// A short id for requests whose client gave none.
pub fn new_request_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let pid = std::process::id();
    format!("{pid:x}-{:x}", NEXT.fetch_add(1, Ordering::Relaxed))
}

// The shared core of the embedding, token-state and tokenizer routes, over every protocol.

/// Checks a Matryoshka width (`dimensions`): between 1 and the embedding's `width`. The cut
/// itself, and the normalisation after it, are the Router's ([`crate::actors::job::Rows`]).
pub fn check_dimensions(dims: Option<usize>, width: usize) -> Result<(), ApiError> {
    if let Some(d) = dims
        && !(1..=width).contains(&d)
    {
        return Err(ApiError::validation(format!(
            "dimensions {d} is not available: this model's embeddings have {width} dimensions \
             (give 1 to {width})"
        )));
    }
    Ok(())
}

/// The [`Job`] of an embedding request (`/embed`, `/v1/embeddings`, gRPC `Embed`) for model
/// `m`: its texts with the prompt `prompt_name` names (else the model's default) prepended,
/// and the Matryoshka width checked before any work is queued. The protocol sets the rest from
/// its own request.
pub fn embedding_job(
    shared: &Shared,
    m: &Version,
    inputs: Vec<TextInput>,
    prompt_name: Option<&str>,
    dimensions: Option<usize>,
) -> Result<Job, ApiError> {
    crate::api::require(m, &[Task::Embedding], "/embed, /v1/embeddings, gRPC Embed")?;
    let mut job = Job::of(shared.prompted(m, inputs, prompt_name)?);
    check_dimensions(dimensions, m.spec.dim())?;
    job.rows.dimensions = dimensions;
    Ok(job)
}

/// Embeds `job` and serves its rows in the request's `output_dtype` (checked before any work
/// is queued; `None`: float32), quantized after the cut and the normalisation.
pub async fn embed_quantized(
    shared: &Shared,
    m: &Version,
    job: Job,
    output_dtype: Option<&str>,
    call: crate::api::Call,
) -> Result<(crate::actors::router::EmbedOutput, Vec<quantized::Row>), ApiError> {
    let precision = quantized::precision(m, output_dtype)?;
    let normalized = job.rows.normalized(&m.spec);
    let mut out = shared.embed(m, job, call).await?;
    let rows = quantized::rows(
        m,
        std::mem::take(&mut out.embeddings),
        precision,
        normalized,
    )?;
    Ok((out, rows))
}

/// Every real token's state per input, `[tokens][width]` (`/embed_all`, gRPC `EmbedAll`).
pub async fn token_states(
    shared: &Shared,
    m: &Version,
    inputs: Vec<TextInput>,
    truncate: Option<bool>,
    direction: Option<&str>,
    prompt_name: Option<&str>,
    call: crate::api::Call,
) -> Result<(Vec<Vec<Vec<f32>>>, crate::actors::router::Timings), ApiError> {
    crate::api::require(m, &[Task::Embedding], "/embed_all, gRPC EmbedAll")?;
    let mut job = Job::of(shared.prompted(m, inputs, prompt_name)?);
    job.texts.truncate = truncate.unwrap_or(true);
    job.texts.direction = crate::api::direction(direction)?;
    job.rows.all_tokens = true;
    let out = shared.infer(m, job, call).await?;
    let width = m.spec.dim().max(1);
    let states = out
        .embeddings
        .into_iter()
        .map(|row| row.chunks(width).map(<[f32]>::to_vec).collect())
        .collect();
    Ok((states, out.timings))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matryoshka_widths_outside_the_embedding_are_refused() {
        check_dimensions(Some(2), 3).unwrap();
        let e = check_dimensions(Some(4), 3).unwrap_err();
        assert!(
            e.message.contains("dimensions 4 is not available"),
            "{}",
            e.message
        );
        assert!(check_dimensions(Some(0), 3).is_err());
    }
}
