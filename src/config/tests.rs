//! The configuration's unit tests: loading, precedence, validation and the words of refusals.

use super::*;

fn load(yaml: &str, env: &[(&str, &str)], o: &Overrides) -> Result<Config, ConfigError> {
    Config::from_sources(
        yaml,
        env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        o,
    )
}

const MIN: &str = "model:\n  path: m\n";

#[test]
fn a_refused_value_is_answered_with_what_the_key_accepts() {
    // (section YAML, the key named, the words the message must hold)
    let table: &[(&str, &str, &[&str])] = &[
        (
            "model:\n  path: m\n  dtype: f8\n",
            "model.dtype",
            &["`f8`", "one of f32, f16, bf16"],
        ),
        (
            "model:\n  path: m\n  kind: ranker\n",
            "model.kind",
            &[
                "`ranker`",
                "one of auto, embedding, classifier, reranker, torchscript",
            ],
        ),
        (
            "model:\n  path: m\n  pooling: avg\n",
            "model.pooling",
            &["`avg`", "mean, cls, max, mean_sqrt_len, last_token"],
        ),
        (
            "model:\n  path: m\n  instances: -2\n",
            "model.instances",
            &["`-2`", "a whole number of at least 1"],
        ),
        (
            "model:\n  path: m\n  instances: 2.5\n",
            "model.instances",
            &["`2.5`", "a whole number of at least 1"],
        ),
        (
            "model:\n  path: m\n  instances: many\n",
            "model.instances",
            &["`many`", "a whole number"],
        ),
        (
            "model:\n  path: m\nbatching:\n  max_batch_size: -3\n",
            "batching.max_batch_size",
            &["`-3`", "a whole number of at least 1"],
        ),
        (
            "model:\n  path: m\nbatching:\n  max_wait_ms: soon\n",
            "batching.max_wait_ms",
            &["`soon`", "a number from 0 to 10000"],
        ),
        (
            "model:\n  path: m\nserver:\n  grpc_port: -1\n",
            "server.grpc_port",
            &["`-1`", "from 0 to 65535"],
        ),
        (
            "model:\n  path: m\nserver:\n  max_client_batch_size: 1.5\n",
            "server.max_client_batch_size",
            &["`1.5`", "at least 1"],
        ),
        (
            "model:\n  path: m\nlogging:\n  format: xml\n",
            "logging.format",
            &["`xml`", "one of text, json"],
        ),
        (
            "model:\n  path: m\ntelemetry:\n  otlp_protocol: udp\n",
            "telemetry.otlp_protocol",
            &["`udp`", "grpc, http/protobuf, http"],
        ),
        (
            "model:\n  path: m\nmetrics:\n  window_seconds: abc\n",
            "metrics.window_seconds",
            &["`abc`", "a number from 1 to 86400"],
        ),
        (
            "model:\n  path: m\nworkload:\n  transport: udp\n",
            "workload.transport",
            &["`udp`", "one of grpc, http"],
        ),
        (
            "models:\n  - path: a\n  - path: b\n    dtype: f64\n",
            "models[1].dtype",
            &["`f64`", "one of f32, f16, bf16"],
        ),
        (
            "models:\n  - path: a\n    batching:\n      max_batch_tokens: -5\n",
            "models[0].batching.max_batch_tokens",
            &["`-5`", "at least 1"],
        ),
    ];
    for (yaml, key, words) in table {
        let e = load(yaml, &[], &Overrides::default()).unwrap_err();
        assert_eq!(e.key, *key, "{yaml}: {e:?}");
        for w in *words {
            assert!(e.problem.contains(w), "{yaml}: `{}` lacks `{w}`", e.problem);
        }
        // Nothing of serde's or the config crate's own wording is left.
        for jargon in ["variant constructor", "64 bit", "for key `", "invalid type"] {
            assert!(!e.problem.contains(jargon), "{yaml}: {}", e.problem);
        }
    }
    // From the environment too: a string where a number is taken.
    let e = load(
        MIN,
        &[("ACTOR_INFER__BATCHING__MAX_BATCH_SIZE", "lots")],
        &Overrides::default(),
    )
    .unwrap_err();
    assert_eq!(e.key, "batching.max_batch_size");
    assert!(
        e.problem
            .contains("`lots` is not accepted; give a whole number of at least 1"),
        "{}",
        e.problem
    );
    // A whole number written as a float is still that number.
    let c = load(
        "model:\n  path: m\n  instances: 2.0\n",
        &[],
        &Overrides::default(),
    )
    .unwrap();
    assert_eq!(c.model().instances, 2);
}

#[test]
fn defaults_fill_what_the_file_leaves_out() {
    let c = load(MIN, &[], &Overrides::default()).unwrap();
    assert_eq!(c.server.host, "127.0.0.1");
    assert_eq!(c.server.grpc_port, 50051);
    assert_eq!(c.server.http_port, 8080);
    assert_eq!(c.models[0].device, Device::Auto);
    assert_eq!(c.models[0].dtype, DType::F32);
    assert_eq!(c.models[0].instances, 1);
    assert_eq!(c.shutdown.timeout_seconds, 10.0);
}

#[test]
fn several_models_each_with_their_own_pools_share_the_cores() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["a", "b"] {
        let m = dir.path().join(name);
        std::fs::create_dir(&m).unwrap();
        for f in ["config.json", "tokenizer.json", "model.safetensors"] {
            std::fs::write(m.join(f), "{}").unwrap();
        }
    }
    let yaml = |b_name: &str, extra: &str| {
        format!(
            "server:\n  default_models:\n    reranker: r\n{extra}models:\n  - path: {0}/a\n    instances: 2\n  - path: {0}/b\n    name: {b_name}\n    tokenizer:\n      workers: 3\n    batching:\n      max_batch_size: 4\n",
            dir.path().display()
        )
    };
    let c = load(&yaml("r", ""), &[], &Overrides::default()).unwrap();
    c.validate().unwrap();
    assert_eq!(c.models.len(), 2);
    assert_eq!(c.model().served_name(), "a");
    let (a, b) = (c.settings(0), c.settings(1));
    assert_eq!((a.tokenizer.workers, a.batching.max_batch_size), (1, 64));
    assert_eq!((b.tokenizer.workers, b.batching.max_batch_size), (3, 4));
    assert_eq!(b.model.served_name(), "r");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(
        a.intra_op_threads,
        (cores / 3).max(1),
        "three instances in all share the cores"
    );
    // Two models of one name, a default naming no model, both `model:` and `models:`.
    let e = load(&yaml("a", ""), &[], &Overrides::default())
        .unwrap()
        .validate()
        .unwrap_err();
    assert_eq!(e.key, "models[1].name");
    assert!(e.problem.contains("models[0]"), "{e}");
    let e = load(&yaml("x", ""), &[], &Overrides::default())
        .unwrap()
        .validate()
        .unwrap_err();
    assert_eq!(e.key, "server.default_models.reranker");
    assert!(e.problem.contains("a, x"), "{e}");
    let e = load(
        &yaml("r", "model:\n  path: m\n"),
        &[],
        &Overrides::default(),
    )
    .unwrap_err();
    assert_eq!(e.key, "models");
    let e = load("server:\n  host: h\n", &[], &Overrides::default()).unwrap_err();
    assert_eq!(e.key, "model");
    // A model's own sections are checked under its key.
    let mut c = load(&yaml("r", ""), &[], &Overrides::default()).unwrap();
    c.models[1].batching.as_mut().unwrap().max_batch_size = 0;
    assert_eq!(
        c.validate().unwrap_err().key,
        "models[1].batching.max_batch_size"
    );
}

#[test]
fn unknown_key_is_named_with_its_path() {
    let e = load(
        "model:\n  path: m\n  instanses: 2\n",
        &[],
        &Overrides::default(),
    )
    .unwrap_err();
    assert_eq!(e.key, "model.instanses");
    assert!(e.problem.contains("unknown field"), "{e}");
}

#[test]
fn wrong_type_is_named_with_its_path() {
    let e = load(
        "model:\n  path: m\nserver:\n  grpc_port: lots\n",
        &[],
        &Overrides::default(),
    )
    .unwrap_err();
    assert_eq!(e.key, "server.grpc_port", "{e}");
}

#[test]
fn precedence_is_flags_then_env_then_yaml() {
    let yaml = "model:\n  path: m\nserver:\n  grpc_port: 1000\n  http_port: 1001\n";
    let env = [
        ("ACTOR_INFER__SERVER__GRPC_PORT", "2000"),
        ("ACTOR_INFER__SERVER__HTTP_PORT", "2001"),
        ("ACTOR_INFER__MODEL__INSTANCES", "3"),
    ];
    let o = Overrides {
        http_port: Some(3001),
        ..Default::default()
    };
    let c = load(yaml, &env, &o).unwrap();
    assert_eq!(c.server.grpc_port, 2000);
    assert_eq!(c.server.http_port, 3001);
    assert_eq!(c.models[0].instances, 3);
}

#[test]
fn impossible_values_are_refused_by_key() {
    let mut c = load(MIN, &[], &Overrides::default()).unwrap();
    c.models[0].instances = 0;
    assert_eq!(c.validate().unwrap_err().key, "model.instances");
    let mut c = load(MIN, &[], &Overrides::default()).unwrap();
    c.server.http_port = 70000;
    assert_eq!(c.validate().unwrap_err().key, "server.http_port");
    let e = load(&format!("{MIN}  device: tpu\n"), &[], &Overrides::default()).unwrap_err();
    assert_eq!(e.key, "model.device");
    assert!(e.problem.contains("`tpu` is not a device"), "{}", e.problem);
    let c = load(
        MIN,
        &[("ACTOR_INFER__MODEL__DEVICE", "cuda:1")],
        &Overrides::default(),
    );
    assert_eq!(c.unwrap().models[0].device, Device::Cuda(1));
    let mut c = load(MIN, &[], &Overrides::default()).unwrap();
    c.models[0].path = "/nonexistent/model".into();
    let e = c.validate().unwrap_err();
    assert_eq!(e.key, "model.path");
    assert!(e.problem.contains("/nonexistent/model"));
    // The scheduling knobs (checked after the model's path, which MIN's does not have).
    let c = load(MIN, &[], &Overrides::default()).unwrap();
    let mut b = c.batching.clone();
    b.tail_share = 1.5;
    let e = validate_pools(&c.tokenizer, &b, "").unwrap_err();
    assert_eq!(e.key, "batching.tail_share");
    assert!(e.problem.contains("1.5"), "{}", e.problem);
    let mut b = c.batching.clone();
    b.tail_budget_ms = LatencyBudget::Millis(-1.0);
    let e = validate_pools(&c.tokenizer, &b, "").unwrap_err();
    assert_eq!(e.key, "batching.tail_budget_ms");
    assert!(validate_pools(&c.tokenizer, &c.batching, "").is_ok());
}

#[test]
fn telemetry_is_off_by_default_and_checked_by_key() {
    let c = load(MIN, &[], &Overrides::default()).unwrap();
    assert_eq!(c.telemetry.otlp_endpoint, None);
    assert_eq!(c.telemetry.otlp_protocol, OtlpProtocol::Grpc);
    assert_eq!(c.telemetry.sampling_ratio, 1.0);
    let c = load(
        &format!("{MIN}telemetry:\n  otlp_protocol: http\n  sampling_ratio: 0.25\n"),
        &[(
            "ACTOR_INFER__TELEMETRY__OTLP_ENDPOINT",
            "http://127.0.0.1:4318",
        )],
        &Overrides::default(),
    )
    .unwrap();
    assert_eq!(c.telemetry.otlp_protocol, OtlpProtocol::HttpProtobuf);
    assert_eq!(
        c.telemetry.otlp_endpoint.as_deref(),
        Some("http://127.0.0.1:4318")
    );
    assert_eq!(c.telemetry.sampling_ratio, 0.25);
    let mut t = c.telemetry.clone();
    t.sampling_ratio = 1.5;
    assert_eq!(t.validate().unwrap_err().key, "telemetry.sampling_ratio");
    t.sampling_ratio = 0.0;
    t.otlp_endpoint = Some("https://collector:4317".into());
    assert_eq!(t.validate().unwrap_err().key, "telemetry.otlp_endpoint");
    t.otlp_endpoint = Some("http://collector:4317".into());
    t.validate().unwrap();
    let e = load(
        &format!("{MIN}telemetry:\n  otlp_protocol: zipkin\n"),
        &[],
        &Overrides::default(),
    )
    .unwrap_err();
    assert_eq!(e.key, "telemetry.otlp_protocol", "{e}");
}

#[test]
fn model_kind_and_torchscript_inputs_are_checked_by_key() {
    let c = load(
        "model:\n  path: m\n  kind: reranker\n",
        &[],
        &Overrides::default(),
    )
    .unwrap();
    assert_eq!(c.models[0].kind, ModelKind::Reranker);
    let e = load(
        "model:\n  path: m\n  kind: ranker\n",
        &[],
        &Overrides::default(),
    )
    .unwrap_err();
    assert_eq!(e.key, "model.kind", "{e}");
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "tokenizer.json", "model.pt"] {
        std::fs::write(dir.path().join(f), "{}").unwrap();
    }
    let mut c = load(MIN, &[], &Overrides::default()).unwrap();
    c.models[0].path = dir.path().into();
    c.models[0].kind = ModelKind::Torchscript;
    c.validate()
        .expect("model.pt is enough for a TorchScript model");
    c.models[0].torchscript_inputs = Some(4);
    assert_eq!(c.validate().unwrap_err().key, "model.torchscript_inputs");
    std::fs::remove_file(dir.path().join("model.pt")).unwrap();
    c.models[0].torchscript_inputs = None;
    let e = c.validate().unwrap_err();
    assert!(
        e.key == "model.path" && e.problem.contains("model.pt"),
        "{e}"
    );
}

#[test]
fn bad_enum_value_names_the_key() {
    let e = load(
        "model:\n  path: m\n  dtype: f64\n",
        &[],
        &Overrides::default(),
    )
    .unwrap_err();
    assert_eq!(e.key, "model.dtype", "{e}");
}

#[test]
fn secrets_match_exactly_and_never_print() {
    let k = Secret::new("s3cret");
    assert!(k.matches(b"s3cret"));
    for wrong in [&b""[..], b"s3cre", b"s3cret ", b"S3cret", b"s3cret\0"] {
        assert!(!k.matches(wrong), "{wrong:?}");
    }
    assert_eq!(format!("{k:?}"), "<redacted>");
    assert_eq!(serde_json::to_string(&k).unwrap(), "\"<redacted>\"");
}

#[test]
fn a_numeric_api_key_from_the_environment_is_still_a_string() {
    let c = load(
        MIN,
        &[("ACTOR_INFER__SERVER__API_KEY", "12345")],
        &Overrides::default(),
    )
    .unwrap();
    assert!(c.server.api_key.unwrap().matches(b"12345"));
}

#[test]
fn limits_that_could_never_admit_a_request_are_refused() {
    let mut c = load(MIN, &[], &Overrides::default()).unwrap();
    c.server.max_client_batch_size = c.server.max_concurrent_requests + 1;
    assert_eq!(
        c.validate().unwrap_err().key,
        "server.max_client_batch_size"
    );
    let mut c = load(MIN, &[], &Overrides::default()).unwrap();
    c.server.request_timeout_seconds = 0.0;
    assert_eq!(
        c.validate().unwrap_err().key,
        "server.request_timeout_seconds"
    );
    let mut c = load(MIN, &[], &Overrides::default()).unwrap();
    c.server.api_key = Some(Secret::new(" "));
    assert_eq!(c.validate().unwrap_err().key, "server.api_key");
}

mod fuzz {
    //! Fuzzing of the YAML loader (property tests): arbitrary text and arbitrary mixes of
    //! real keys and odd values either load or fail with an error naming a key; nothing
    //! panics.
    use super::*;
    use proptest::prelude::*;

    const KEYS: &[&str] = &[
        "server.host",
        "server.grpc_port",
        "server.http_port",
        "server.http_workers",
        "server.max_concurrent_requests",
        "server.max_client_batch_size",
        "server.max_input_chars",
        "server.max_request_bytes",
        "server.request_timeout_seconds",
        "server.api_key",
        "model.path",
        "model.device",
        "model.dtype",
        "model.instances",
        "model.pooling",
        "model.max_seq_length",
        "batching.max_batch_size",
        "batching.max_wait_ms",
        "shutdown.timeout_seconds",
        "logging.format",
        "metrics.window_seconds",
        "workload.concurrency",
        "telemetry.otlp_endpoint",
        "telemetry.sampling_ratio",
        "nonsense.key",
    ];

    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<i64>().prop_map(|v| v.to_string()),
            any::<f64>().prop_map(|v| v.to_string()),
            Just("-1".to_string()),
            Just("~".to_string()),
            Just("[1, 2]".to_string()),
            Just("{a: 1}".to_string()),
            Just("\"\"".to_string()),
            "[a-z0-9:._/-]{0,12}",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        #[test]
        fn arbitrary_text_never_panics(yaml in "\\PC{0,200}") {
            if let Ok(c) = Config::from_sources(&yaml, std::iter::empty(), &Overrides::default()) {
                let _ = c.validate();
            }
        }

        #[test]
        fn real_keys_with_odd_values_load_or_name_a_key(
            pairs in proptest::collection::vec((proptest::sample::select(KEYS), value()), 0..8)
        ) {
            let mut yaml = String::from("model:\n  path: m\n");
            let mut sections: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
            for (key, v) in &pairs {
                let (section, field) = key.split_once('.').unwrap();
                sections.entry(section).or_default().push(format!("  {field}: {v}\n"));
            }
            for (section, fields) in &sections {
                let body: String = fields.concat();
                if *section == "model" {
                    yaml = format!("model:\n  path: m\n{body}");
                } else {
                    yaml.push_str(&format!("{section}:\n{body}"));
                }
            }
            match Config::from_sources(&yaml, std::iter::empty(), &Overrides::default()) {
                Ok(c) => {
                    if let Err(e) = c.validate() {
                        prop_assert!(!e.key.is_empty() && !e.problem.is_empty());
                    }
                }
                Err(e) => prop_assert!(!e.key.is_empty() && !e.problem.is_empty(), "{e}"),
            }
        }
    }
}
