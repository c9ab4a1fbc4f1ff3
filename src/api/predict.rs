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

use super::{
    Shared,
    error::ApiError,
    http::{Served, inference, resource, typed},
};
use crate::model::{ProblemType, Task};

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
#[derive(Debug, Clone, PartialEq, Serialize)]
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
            label: labels
                .get(i)
                .cloned()
                .unwrap_or_else(|| format!("LABEL_{i}")),
        })
        .collect()
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

/// Reads `inputs`: `"text"`, `["text", ...]` (a batch of texts), `[["a", "b"], ...]` (a batch
/// of pairs; `["a"]` is a single text). Unlike TEI, a list of two strings is two texts, not a
/// pair: pairs are always written as inner lists.
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
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PredictRequest {
    inputs: serde_json::Value,
    #[serde(default)]
    raw_scores: bool,
    #[serde(default)]
    truncate: Option<bool>,
}

/// TEI's `/rerank` request.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RerankRequest {
    query: String,
    texts: Vec<String>,
    #[serde(default)]
    raw_scores: bool,
    #[serde(default)]
    return_text: bool,
    #[serde(default)]
    truncate: Option<bool>,
}

/// One `/rerank` result.
#[derive(Debug, Serialize)]
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
    let scores: Vec<f32> = logits
        .iter()
        .map(|row| {
            let x = row.first().copied().unwrap_or(f32::NAN);
            if raw { x } else { sigmoid(x) }
        })
        .collect();
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
#[derive(Serialize)]
#[serde(untagged)]
enum PredictResponse {
    One(Vec<Prediction>),
    Many(Vec<Vec<Prediction>>),
}

async fn predict(
    shared: web::Data<Shared>,
    req: HttpRequest,
    body: web::Json<serde_json::Value>,
) -> Result<HttpResponse, ApiError> {
    inference(&shared, &req, "/predict", |call| async {
        shared.require(&[Task::Classifier, Task::Reranker], "/predict")?;
        let body: PredictRequest = typed(body.into_inner())?;
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
                    texts.push(t);
                }
                Sequence::Pair(a, b) => {
                    texts.push(a);
                    pairs.push(b);
                }
            }
        }
        let truncate = body.truncate.unwrap_or(true);
        let out = shared
            .infer(texts, any_pair.then_some(pairs), None, truncate, call)
            .await?;
        let spec = &shared.spec;
        let mut per_input: Vec<Vec<Prediction>> = out
            .embeddings
            .iter()
            .map(|logits| predictions(logits, spec, body.raw_scores))
            .collect();
        let texts = per_input.len();
        let body = if one {
            PredictResponse::One(per_input.pop().expect("one input gives one row"))
        } else {
            PredictResponse::Many(per_input)
        };
        Ok(Served {
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
    query: String,
    texts: Vec<String>,
    truncate: bool,
    call: super::Call,
) -> Result<crate::actors::router::EmbedOutput, ApiError> {
    shared.require(&[Task::Reranker], "/rerank, gRPC Rerank")?;
    let n = texts.len();
    shared
        .infer(vec![query; n], Some(texts), None, truncate, call)
        .await
}

async fn rerank(
    shared: web::Data<Shared>,
    req: HttpRequest,
    body: web::Json<serde_json::Value>,
) -> Result<HttpResponse, ApiError> {
    inference(&shared, &req, "/rerank", |call| async {
        let body: RerankRequest = typed(body.into_inner())?;
        let n = body.texts.len();
        let keep = body.return_text.then(|| body.texts.clone());
        let truncate = body.truncate.unwrap_or(true);
        let out = rerank_pairs(&shared, body.query, body.texts, truncate, call).await?;
        Ok(Served {
            body: rerank_results(&out.embeddings, body.raw_scores, keep),
            texts: n,
            timings: out.timings,
        })
    })
    .await
}

/// Registers `POST /predict` and `POST /rerank`.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/predict", web::post().to(predict)))
        .service(resource("/rerank", web::post().to(rerank)));
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
            PredictInput::Batch(vec![one("a"), one("b")])
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
