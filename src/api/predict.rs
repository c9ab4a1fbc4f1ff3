//! Classifier and cross-encoder routes: TEI's `POST /predict` and `POST /rerank`, and the pure
//! functions both front ends use to turn a classifier's logits into scores.
//!
//! The model workers return one row of logits per input (the same path embeddings take);
//! scores are made here: softmax, sigmoid or the raw logits per `config.json`'s
//! `problem_type` (transformers' text-classification rule), sorted high to low with the
//! labels of `id2label`. Reranking always uses a sigmoid of the single logit (what
//! sentence-transformers' `CrossEncoder` and TEI do) unless `raw_scores` asks for the logit.

use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};

use utoipa::ToSchema;

use super::{
    Job, Shared,
    error::ApiError,
    http::{Object, Typed, inference},
    pipeline::Reply,
};
use crate::{
    actors::models::{Pick, Served as Version},
    model::{ProblemType, Task, TextInput},
};

/// The activation `problem_type` implies, as `/info` names it.
pub fn activation(problem: ProblemType) -> &'static str {
    match problem {
        ProblemType::SingleLabel => "softmax",
        ProblemType::MultiLabel => "sigmoid",
        ProblemType::Regression => "none",
    }
}

/// The logistic function.
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Softmax of `logits`, computed stably (shifted by the maximum).
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = logits.iter().map(|x| (x - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    exp.into_iter().map(|e| e / sum).collect()
}

/// One row of logits as scores: the raw logits, or the activation of `problem`.
pub fn scores(logits: &[f32], problem: ProblemType, raw: bool) -> Vec<f32> {
    match (raw, problem) {
        (true, _) | (false, ProblemType::Regression) => logits.to_vec(),
        (false, ProblemType::SingleLabel) => softmax(logits),
        (false, ProblemType::MultiLabel) => logits.iter().map(|&x| sigmoid(x)).collect(),
    }
}

/// A label and its score.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Prediction {
    /// The label's score.
    pub score: f32,
    /// From `id2label`.
    pub label: String,
}

/// Indices of `scores`, highest score first (ties keep index order).
pub fn order(scores: &[f32]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    idx
}

/// Scores with their labels, highest first (TEI's `/predict` item order).
pub fn ranked(scores: &[f32], labels: &[String]) -> Vec<Prediction> {
    order(scores)
        .into_iter()
        .map(|i| Prediction {
            score: scores[i],
            label: label(labels, i),
        })
        .collect()
}

/// Label `i` of the model's `id2label`, or transformers' default name for it.
pub fn label(labels: &[String], i: usize) -> String {
    labels
        .get(i)
        .cloned()
        .unwrap_or_else(|| format!("LABEL_{i}"))
}

/// A reranker's relevance from its output row (one logit): the sigmoid, or the logit if `raw`.
pub fn relevance(row: &[f32], raw: bool) -> f32 {
    let x = row.first().copied().unwrap_or(f32::NAN);
    if raw { x } else { sigmoid(x) }
}

/// A classifier's output row as labelled scores, highest first: the one conversion `/predict`
/// and gRPC `Infer` share.
pub fn predictions(logits: &[f32], spec: &crate::model::ModelSpec, raw: bool) -> Vec<Prediction> {
    ranked(&scores(logits, spec.problem_type, raw), &spec.labels)
}

/// One `/predict` input: a text or a (text, text pair).
#[derive(Debug, Clone, PartialEq)]
enum Sequence {
    Single(String),
    Pair(String, String),
}

/// `/predict`'s `inputs`: one sequence, or a list of them.
#[derive(Debug, PartialEq)]
enum PredictInput {
    One(Sequence),
    Batch(Vec<Sequence>),
}

/// Reads `inputs` as TEI does: `"text"` (one text), `["a", "b"]` (one pair), `[[...], ...]`
/// (a batch: `["a"]` a text, `["a", "b"]` a pair). Beyond TEI, a list of strings of any other
/// length is a batch of texts, and a batch may mix bare strings with lists.
fn predict_input(v: serde_json::Value) -> Result<PredictInput, ApiError> {
    use serde_json::Value;
    let bad = |at: String| {
        ApiError::validation(format!(
            "invalid request body at `{at}`: expected a string or a list of one or two strings \
             ([text] or [text, text_pair])"
        ))
    };
    match v {
        Value::String(s) => Ok(PredictInput::One(Sequence::Single(s))),
        Value::Array(items) if items.len() == 2 && items.iter().all(Value::is_string) => {
            let mut it = items
                .into_iter()
                .filter_map(|v| v.as_str().map(str::to_owned));
            let (a, b) = (it.next(), it.next());
            Ok(PredictInput::One(Sequence::Pair(
                a.unwrap_or_default(),
                b.unwrap_or_default(),
            )))
        }
        Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::String(s) => Ok(Sequence::Single(s)),
                Value::Array(parts) => {
                    let strings: Option<Vec<String>> = parts
                        .into_iter()
                        .map(|p| p.as_str().map(str::to_owned))
                        .collect();
                    match strings.as_deref() {
                        Some([a]) => Ok(Sequence::Single(a.clone())),
                        Some([a, b]) => Ok(Sequence::Pair(a.clone(), b.clone())),
                        _ => Err(bad(format!("inputs[{i}]"))),
                    }
                }
                _ => Err(bad(format!("inputs[{i}]"))),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(PredictInput::Batch),
        _ => Err(ApiError::validation(
            "invalid request body at `inputs`: expected a string, a list of strings or a list \
             of [text, text_pair] lists",
        )),
    }
}

/// TEI's `/predict` request.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PredictRequest {
    /// `"text"`, `["text", "text_pair"]`, or a batch `[["text"], ["text", "text_pair"], ...]`.
    #[schema(value_type = Object)]
    pub inputs: serde_json::Value,
    /// The logits instead of softmax / sigmoid scores.
    #[serde(default)]
    pub raw_scores: bool,
    /// Truncate over-long inputs (default true).
    #[serde(default)]
    pub truncate: Option<bool>,
    /// `right` (default) or `left`.
    #[serde(default)]
    pub truncation_direction: Option<String>,
    /// Hugging Face's text-classification task parameters (what `huggingface_hub`'s
    /// `text_classification` sends). When present, the answer takes that task's shape: a list
    /// of labelled scores per input, for a single input too.
    #[serde(default)]
    #[schema(value_type = Option<ClassificationParameters>)]
    pub parameters: Option<Object<ClassificationParameters>>,
    /// How urgent this request is: `interactive` (or `high`) or `batch` (or `low`); unset: the
    /// `X-Priority` header, else the route's default, else by size. An actor-infer addition.
    #[serde(default)]
    #[schema(example = "interactive")]
    pub priority: Option<String>,
}

/// Hugging Face's text-classification parameters.
#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct ClassificationParameters {
    /// Keep the `top_k` best labels.
    #[serde(default, deserialize_with = "super::http::whole_number")]
    pub top_k: Option<usize>,
    /// `softmax`, `sigmoid` or `none` instead of the model's own activation.
    #[serde(default)]
    pub function_to_apply: Option<String>,
}

/// TEI's `/rerank` request.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RerankRequest {
    /// The query.
    pub query: String,
    /// The texts to rank against it.
    pub texts: Vec<String>,
    /// The logits instead of their sigmoid.
    #[serde(default)]
    pub raw_scores: bool,
    /// Echo each text in its result.
    #[serde(default)]
    pub return_text: bool,
    /// Truncate over-long pairs (default true).
    #[serde(default)]
    pub truncate: Option<bool>,
    /// `right` (default) or `left`.
    #[serde(default)]
    pub truncation_direction: Option<String>,
}

/// One `/rerank` result.
#[derive(Debug, Serialize, ToSchema)]
pub struct Ranked {
    /// The text's position in the request.
    pub index: usize,
    /// Its relevance to the query.
    pub score: f32,
    /// The text, when `return_text` asked for it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// Rerank results, highest score first: `scores` are one logit per text.
pub fn rerank_results(logits: &[Vec<f32>], raw: bool, texts: Option<Vec<String>>) -> Vec<Ranked> {
    let scores: Vec<f32> = logits.iter().map(|row| relevance(row, raw)).collect();
    let mut texts = texts.map(|t| t.into_iter().map(Some).collect::<Vec<_>>());
    order(&scores)
        .into_iter()
        .map(|index| Ranked {
            index,
            score: scores[index],
            text: texts.as_mut().and_then(|t| t[index].take()),
        })
        .collect()
}

/// `/predict`'s answer: one list of labelled scores for a single input, one per input for a
/// list.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum PredictResponse {
    /// For a single input.
    One(Vec<Prediction>),
    /// For a batch.
    Many(Vec<Vec<Prediction>>),
}

/// Classify texts or text pairs (TEI).
#[utoipa::path(post, path = "/predict", params(super::http::XPriority), request_body = PredictRequest,
    responses((status = 200, description = "Labelled scores, highest first", body = PredictResponse),
              (status = 400, description = "Invalid request", body = super::http::ErrorBody)))]
pub async fn predict(
    shared: web::Data<Shared>,
    req: HttpRequest,
    body: Typed<PredictRequest>,
) -> Result<HttpResponse, ApiError> {
    predict_route(&shared, &req, "/predict", body.0).await
}

/// `/predict` (and `/`, `/invocations` on a classifier).
pub async fn predict_route(
    shared: &Shared,
    req: &HttpRequest,
    route: &'static str,
    body: Result<PredictRequest, ApiError>,
) -> Result<HttpResponse, ApiError> {
    inference(shared, req, route, |call| async {
        let m = call.model(shared, Pick::Default(Task::Classifier))?;
        super::require(&m, &[Task::Classifier, Task::Reranker], "/predict")?;
        let body = body?;
        let has_parameters = body.parameters.is_some();
        let input = predict_input(body.inputs)?;
        let (one, seqs) = match input {
            PredictInput::One(s) => (true, vec![s]),
            PredictInput::Batch(v) => (false, v),
        };
        let any_pair = seqs.iter().any(|s| matches!(s, Sequence::Pair(..)));
        let mut texts = Vec::with_capacity(seqs.len());
        let mut pairs = Vec::with_capacity(seqs.len());
        for s in seqs {
            match s {
                Sequence::Single(t) => {
                    if any_pair {
                        return Err(ApiError::validation(
                            "inputs mixes single texts and [text, text_pair] pairs; send one \
                             kind per request",
                        ));
                    }
                    texts.push(TextInput::Text(t));
                }
                Sequence::Pair(a, b) => {
                    texts.push(TextInput::Text(a));
                    pairs.push(b);
                }
            }
        }
        let mut job = Job::of(texts);
        job.priority = super::priority(body.priority.as_deref(), "priority")?;
        job.texts.pairs = any_pair.then_some(pairs);
        job.texts.truncate = body.truncate.unwrap_or(true);
        job.texts.direction = super::direction(body.truncation_direction.as_deref())?;
        let out = shared.infer(&m, job, call).await?;
        let spec = &m.spec;
        let hf = body.parameters.unwrap_or_default().0;
        let (problem, raw) = match hf.function_to_apply.as_deref() {
            None => (spec.problem_type, body.raw_scores),
            Some("softmax") => (ProblemType::SingleLabel, false),
            Some("sigmoid") => (ProblemType::MultiLabel, false),
            Some("none") => (ProblemType::Regression, false),
            Some(other) => {
                return Err(ApiError::validation(format!(
                    "parameters.function_to_apply `{other}` is not softmax, sigmoid or none"
                )));
            }
        };
        let hf_shape = hf.top_k.is_some() || hf.function_to_apply.is_some() || has_parameters;
        let mut per_input: Vec<Vec<Prediction>> = out
            .embeddings
            .iter()
            .map(|logits| {
                let mut p = ranked(&scores(logits, problem, raw), &spec.labels);
                p.truncate(hf.top_k.unwrap_or(usize::MAX));
                p
            })
            .collect();
        let texts = per_input.len();
        let body = if one && !hf_shape {
            PredictResponse::One(per_input.pop().expect("one input gives one row"))
        } else {
            PredictResponse::Many(per_input)
        };
        Ok(Reply {
            body,
            texts,
            timings: out.timings,
        })
    })
    .await
}

/// Scores each of `texts` against `query` with the cross-encoder: the one path `/rerank` and
/// gRPC `Rerank` share (a reranker model only; one (query, text) pair per text).
pub async fn rerank_pairs(
    shared: &Shared,
    m: &Version,
    query: String,
    texts: Vec<String>,
    truncate: bool,
    direction: Option<&str>,
    call: super::Call,
) -> Result<crate::actors::router::EmbedOutput, ApiError> {
    super::require(m, &[Task::Reranker], "/rerank, gRPC Rerank")?;
    let n = texts.len();
    let mut job = Job::of(vec![TextInput::Text(query); n]);
    job.texts.pairs = Some(texts);
    job.texts.truncate = truncate;
    job.texts.direction = super::direction(direction)?;
    shared.infer(m, job, call).await
}

/// Rank texts by relevance to a query with the cross-encoder (TEI).
#[utoipa::path(post, path = "/rerank", params(super::http::XPriority), request_body = RerankRequest,
    responses((status = 200, description = "Highest score first", body = Vec<Ranked>),
              (status = 400, description = "Invalid request", body = super::http::ErrorBody)))]
pub async fn rerank(
    shared: web::Data<Shared>,
    req: HttpRequest,
    body: Typed<RerankRequest>,
) -> Result<HttpResponse, ApiError> {
    rerank_route(&shared, &req, "/rerank", body.0).await
}

/// `/rerank` (and `/`, `/invocations` on a reranker).
pub async fn rerank_route(
    shared: &Shared,
    req: &HttpRequest,
    route: &'static str,
    body: Result<RerankRequest, ApiError>,
) -> Result<HttpResponse, ApiError> {
    inference(shared, req, route, |call| async {
        let body = body?;
        let n = body.texts.len();
        let keep = body.return_text.then(|| body.texts.clone());
        let truncate = body.truncate.unwrap_or(true);
        let direction = body.truncation_direction.as_deref();
        let m = call.model(shared, Pick::Default(Task::Reranker))?;
        let out = rerank_pairs(
            shared, &m, body.query, body.texts, truncate, direction, call,
        )
        .await?;
        Ok(Reply {
            body: rerank_results(&out.embeddings, body.raw_scores, keep),
            texts: n,
            timings: out.timings,
        })
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn softmax_sums_to_one_and_survives_large_logits() {
        let s = softmax(&[1000.0, 1000.0, 999.0]);
        assert!((s.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!((s[0] - s[1]).abs() < 1e-7 && s[0] > s[2]);
        let s = softmax(&[0.0, (2f32).ln()]);
        assert!((s[0] - 1.0 / 3.0).abs() < 1e-6 && (s[1] - 2.0 / 3.0).abs() < 1e-6);
    }

    #[test]
    fn scores_follow_problem_type_unless_raw() {
        let l = [2.0, -1.0];
        assert_eq!(scores(&l, ProblemType::SingleLabel, true), l.to_vec());
        assert_eq!(scores(&l, ProblemType::Regression, false), l.to_vec());
        assert_eq!(scores(&l, ProblemType::SingleLabel, false), softmax(&l));
        let m = scores(&l, ProblemType::MultiLabel, false);
        assert!((m[0] - 0.880_797).abs() < 1e-6 && (m[1] - 0.268_941).abs() < 1e-6);
    }

    #[test]
    fn predictions_are_sorted_high_to_low_with_their_labels() {
        let labels = vec!["a".to_string(), "b".into(), "c".into()];
        let r = ranked(&[0.2, 0.5, 0.3], &labels);
        let got: Vec<(&str, f32)> = r.iter().map(|p| (p.label.as_str(), p.score)).collect();
        assert_eq!(got, vec![("b", 0.5), ("c", 0.3), ("a", 0.2)]);
        assert_eq!(
            order(&[1.0, 1.0, 2.0]),
            vec![2, 0, 1],
            "ties keep request order"
        );
    }

    #[test]
    fn rerank_sorts_by_sigmoid_and_returns_texts_when_asked() {
        let rows = vec![vec![-1.0], vec![3.0], vec![0.0]];
        let r = rerank_results(&rows, false, Some(vec!["x".into(), "y".into(), "z".into()]));
        assert_eq!(r.iter().map(|x| x.index).collect::<Vec<_>>(), vec![1, 2, 0]);
        assert!((r[1].score - 0.5).abs() < 1e-7);
        assert_eq!(r[0].text.as_deref(), Some("y"));
        let raw = rerank_results(&rows, true, None);
        assert_eq!(raw[0].score, 3.0);
        assert!(raw[0].text.is_none());
    }

    #[test]
    fn predict_inputs_read_texts_batches_and_pairs() {
        let one = |s: &str| Sequence::Single(s.into());
        assert_eq!(
            predict_input(json!("t")).unwrap(),
            PredictInput::One(one("t"))
        );
        assert_eq!(
            predict_input(json!(["a", "b"])).unwrap(),
            PredictInput::One(Sequence::Pair("a".into(), "b".into())),
            "two strings are one pair, as in TEI"
        );
        assert_eq!(
            predict_input(json!(["a", "b", "c"])).unwrap(),
            PredictInput::Batch(vec![one("a"), one("b"), one("c")])
        );
        assert_eq!(
            predict_input(json!([["q", "d"], ["x"]])).unwrap(),
            PredictInput::Batch(vec![Sequence::Pair("q".into(), "d".into()), one("x")])
        );
        let e = predict_input(json!(["a", ["b", "c", "d"]])).unwrap_err();
        assert!(e.message.contains("inputs[1]"), "{}", e.message);
        assert!(predict_input(json!(3)).is_err());
    }
}
