//! What each key accepts, in the words of the README's table, for refused values.

use serde::Deserialize;

use super::{ConfigError, DType, LogFormat, ModelKind, Pooling, Transport};

// ---------------------------------------------------------------- what each key accepts
//
// serde and the `config` crate word a refused value in their own terms (`enum DType does not
// have variant constructor f8`, `expected an unsigned 64 bit or less integer`) and round a
// fraction given for a count (`instances: 2.5` ran 3 workers). Every key whose values are a
// closed set or a number is listed here with what it accepts, in the words of the README's
// table; a refused value is answered with that.

/// What a key accepts: the variants of an enum-like key, or a number's range.
#[derive(Debug, Clone, PartialEq)]
enum Accepts {
    /// One of these spellings.
    OneOf(&'static [&'static str]),
    /// A whole number, within this range (said in words).
    Whole(&'static str),
    /// A number (fractions allowed), within this range (said in words).
    Number(&'static str),
}

impl std::fmt::Display for Accepts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Accepts::OneOf(names) => write!(f, "one of {}", names.join(", ")),
            Accepts::Whole(range) => write!(f, "a whole number {range}"),
            Accepts::Number(range) => write!(f, "a number {range}"),
        }
    }
}

/// The names serde reads for the enum `T`: the variant list serde hands a deserializer.
fn variants<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    use serde::de::{Error as _, value::Error};
    struct Probe<'a>(&'a std::cell::Cell<&'static [&'static str]>);
    impl<'de> serde::Deserializer<'de> for Probe<'_> {
        type Error = Error;
        fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Error> {
            Err(Error::custom("not an enum"))
        }
        fn deserialize_enum<V: serde::de::Visitor<'de>>(
            self,
            _: &'static str,
            variants: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Error> {
            self.0.set(variants);
            Err(Error::custom("probed"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map struct
            identifier ignored_any
        }
    }
    let seen = std::cell::Cell::new(&[][..]);
    let _ = T::deserialize(Probe(&seen));
    seen.get()
}

/// What the key at `key` accepts (`models[1].dtype` is read as `model.dtype`), if it is a
/// closed set or a number.
fn accepts(key: &str) -> Option<Accepts> {
    use Accepts::{Number, OneOf, Whole};
    // `models[1].batching.max_batch_size` → `model.batching.max_batch_size`; a model's own
    // `tokenizer:` and `batching:` sections take what the top-level ones take.
    let key = match key.strip_prefix("models[") {
        Some(rest) => format!("model{}", &rest[rest.find(']')? + 1..]),
        None => key.to_string(),
    };
    let key = key
        .strip_prefix("model.")
        .filter(|k| k.starts_with("tokenizer.") || k.starts_with("batching."))
        .map_or(key.clone(), str::to_string);
    Some(match key.as_str() {
        "model.dtype" => OneOf(variants::<DType>()),
        "model.kind" => OneOf(variants::<ModelKind>()),
        "model.pooling" => OneOf(variants::<Pooling>()),
        "logging.format" => OneOf(variants::<LogFormat>()),
        "telemetry.otlp_protocol" => OneOf(&["grpc", "http/protobuf", "http"]),
        "workload.transport" => OneOf(variants::<Transport>()),
        "server.grpc_port" | "server.http_port" => Whole("from 0 to 65535 (0 picks a free port)"),
        "server.http_workers"
        | "server.max_concurrent_requests"
        | "server.max_client_batch_size"
        | "server.max_input_chars"
        | "server.max_request_bytes"
        | "model.instances"
        | "model.intra_op_threads"
        | "model.max_seq_length"
        | "tokenizer.workers"
        | "batching.max_batch_size"
        | "batching.max_batch_tokens"
        | "batching.max_queue_texts"
        | "workload.concurrency"
        | "workload.requests"
        | "workload.texts_per_request" => Whole("of at least 1"),
        "model.torchscript_inputs" => {
            Whole("2 (input_ids, attention_mask) or 3 (plus token_type_ids)")
        }
        "supervision.max_restarts" => Whole("of at least 0"),
        "server.request_timeout_seconds" => Number("more than 0 and at most 86400"),
        "shutdown.timeout_seconds" => Number("more than 0 and at most 3600"),
        "metrics.window_seconds" => Number("from 1 to 86400"),
        "supervision.window_seconds" | "workload.duration_seconds" => Number("more than 0"),
        "batching.max_wait_ms" => Number("from 0 to 10000"),
        "telemetry.sampling_ratio" => Number("from 0 to 1"),
        _ => return None,
    })
}

/// The problem to report for a value serde refused at `key`: what was given and what the
/// key accepts, when the key is in [`accepts`]; else serde's words without the `config`
/// crate's repetition of the key and the file.
pub(super) fn refused(raw: &config::Config, key: &str, problem: &str) -> String {
    let problem = problem
        .split(" for key `")
        .next()
        .unwrap_or(problem)
        .to_string();
    let Some(accepted) = accepts(key) else {
        return problem;
    };
    match raw.get::<config::Value>(key) {
        Ok(v) => format!("`{v}` is not accepted; give {accepted}"),
        Err(_) => format!("{problem}; give {accepted}"),
    }
}

/// Refuses a fraction given for a key that takes a whole number (the `config` crate would
/// round it: `instances: 2.5` ran 3 workers).
pub(super) fn refuse_fractions(raw: &config::Config) -> Result<(), ConfigError> {
    fn walk(v: &serde_json::Value, key: &str) -> Result<(), ConfigError> {
        match v {
            serde_json::Value::Object(m) => m.iter().try_for_each(|(k, v)| {
                walk(
                    v,
                    &if key.is_empty() {
                        k.clone()
                    } else {
                        format!("{key}.{k}")
                    },
                )
            }),
            serde_json::Value::Array(items) => items
                .iter()
                .enumerate()
                .try_for_each(|(i, v)| walk(v, &format!("{key}[{i}]"))),
            serde_json::Value::Number(n) if n.is_f64() => match accepts(key) {
                Some(a @ Accepts::Whole(_)) if n.as_f64().is_some_and(|f| f.fract() != 0.0) => Err(
                    ConfigError::new(key, format!("`{n}` is not accepted; give {a}")),
                ),
                _ => Ok(()),
            },
            _ => Ok(()),
        }
    }
    // A tree the file cannot be read as is reported by the typed reading that follows.
    raw.clone()
        .try_deserialize::<serde_json::Value>()
        .map_or(Ok(()), |tree| walk(&tree, ""))
}
