//! TEI's HTTP surface beyond what the client packages exercise (tests/clients.rs): every
//! documented route answers, request ids travel, `/info` carries TEI's fields and no path, and
//! the TEI-only routes (`/embed_all`, `/tokenize`, `/decode`, `/similarity`, token-id inputs,
//! `POST /` by model kind) give the reference's numbers.

mod common;

use serde_json::{Value, json};

use common::{Server, experiment, floats, http_request_with, max_abs_diff, post_json, reference};

fn embedding(server: &Server, body: Value) -> Vec<f32> {
    let (status, v) = post_json(server, "/embed", body);
    assert_eq!(status, 200, "{v}");
    floats(&v[0])
}

#[test]
fn every_documented_route_is_served() {
    let server = Server::start(experiment(""));
    let (status, doc, _) =
        http_request_with(&server.http_addr, "GET", "/api-doc/openapi.json", &[], b"").unwrap();
    assert_eq!(status, 200);
    let doc: Value = serde_json::from_str(&doc).unwrap();
    assert_eq!(doc["openapi"].as_str().unwrap().chars().next(), Some('3'));
    let mut seen = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let (status, body, _) = http_request_with(
                &server.http_addr,
                &method.to_uppercase(),
                path,
                &[("content-type", "application/json")],
                b"{}",
            )
            .unwrap();
            assert!(
                status != 404 && status != 405,
                "{method} {path} is documented but answers {status}: {body}"
            );
            seen += 1;
        }
    }
    // The routes an embedding model serves: TEI's and OpenAI's embedding routes, /tokenize,
    // /decode, the operational ones (not /predict, /rerank or /embed_sparse: tests/openapi.rs).
    assert!(seen >= 17, "{seen} routes documented");
    server.stop_clean();
}

#[test]
fn request_ids_are_echoed_kept_or_replaced() {
    let server = Server::start(experiment("server:\n  api_key: sesame\n"));
    let get = |path: &str, headers: &[(&str, &str)]| {
        http_request_with(&server.http_addr, "GET", path, headers, b"").unwrap()
    };
    let (_, _, h) = get("/health", &[("x-request-id", "abc-123")]);
    assert_eq!(h["x-request-id"], "abc-123");
    let (_, _, h) = get("/health", &[]);
    assert!(!h["x-request-id"].is_empty(), "one is made");
    let (_, _, h) = get("/health", &[("x-request-id", &"x".repeat(300))]);
    assert_ne!(
        h["x-request-id"],
        "x".repeat(300).as_str(),
        "too long: replaced"
    );
    // Errors carry it too, the API key's refusal included.
    let (status, _, h) = http_request_with(
        &server.http_addr,
        "POST",
        "/embed",
        &[
            ("content-type", "application/json"),
            ("x-request-id", "denied-1"),
        ],
        br#"{"inputs": "x"}"#,
    )
    .unwrap();
    assert_eq!(status, 401);
    assert_eq!(h["x-request-id"], "denied-1");
    let (status, _, h) = get(
        "/nowhere",
        &[
            ("x-request-id", "lost-2"),
            ("authorization", "Bearer sesame"),
        ],
    );
    assert_eq!(status, 404);
    assert_eq!(h["x-request-id"], "lost-2");
    server.stop_clean();
}

#[test]
fn info_has_teis_fields_and_no_path_unless_configured() {
    let server = Server::start(experiment(""));
    let (_, info, _) = http_request_with(&server.http_addr, "GET", "/info", &[], b"").unwrap();
    let info: Value = serde_json::from_str(&info).unwrap();
    for key in [
        "model_id",
        "model_dtype",
        "model_type",
        "max_concurrent_requests",
        "max_input_length",
        "max_batch_tokens",
        "max_client_batch_size",
        "tokenization_workers",
        "version",
        "auto_truncate",
    ] {
        assert!(!info[key].is_null(), "{key} missing: {info}");
    }
    assert_eq!(info["model_id"], "all-MiniLM-L6-v2");
    assert_eq!(info["model_dtype"], "float32");
    assert_eq!(
        info["model_type"],
        json!({"embedding": {"pooling": "mean"}})
    );
    assert_eq!(info["max_input_length"], 256);
    assert!(info.get("path").is_none(), "no file system path: {info}");
    server.stop_clean();
    let server = Server::start(experiment("server:\n  expose_model_path: true\n"));
    let (_, info, _) = http_request_with(&server.http_addr, "GET", "/info", &[], b"").unwrap();
    let info: Value = serde_json::from_str(&info).unwrap();
    assert!(
        info["path"].as_str().unwrap().ends_with("all-MiniLM-L6-v2"),
        "{info}"
    );
    server.stop_clean();
}

#[test]
fn teis_embedding_routes_give_the_references_numbers() {
    let server = Server::start(experiment(""));
    let cases = reference();
    let case = &cases[0];
    // POST /, /invocations, /embed, /embeddings: the same embedding.
    for path in ["/", "/invocations"] {
        let (status, v) = post_json(&server, path, json!({"inputs": case.text}));
        assert_eq!(status, 200, "{path}: {v}");
        assert!(
            max_abs_diff(&floats(&v[0]), &case.embedding) < common::TOLERANCE,
            "{path}"
        );
    }
    let (status, v) = post_json(&server, "/embeddings", json!({"input": [case.text]}));
    assert_eq!(status, 200, "{v}");
    assert!(max_abs_diff(&floats(&v["data"][0]["embedding"]), &case.embedding) < common::TOLERANCE);
    // Token ids as input: what /tokenize gives, embedded, is the text's embedding.
    let (status, tokens) = post_json(&server, "/tokenize", json!({"inputs": case.text}));
    assert_eq!(status, 200, "{tokens}");
    let ids: Vec<u64> = tokens[0]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids.len() as u32, case.tokens);
    let by_ids = embedding(&server, json!({"inputs": ids}));
    assert!(max_abs_diff(&by_ids, &case.embedding) < common::TOLERANCE);
    let (status, texts) = post_json(&server, "/decode", json!({"ids": [ids]}));
    assert_eq!(status, 200, "{texts}");
    assert_eq!(
        texts[0],
        case.text.to_lowercase().trim_end_matches('.').to_string() + "."
    );
    // /embed_all: one vector per token, whose mean normalises to the embedding.
    let (status, all) = post_json(&server, "/embed_all", json!({"inputs": case.text}));
    assert_eq!(status, 200, "{all}");
    let states = all[0].as_array().unwrap();
    assert_eq!(states.len() as u32, case.tokens);
    let mut mean = vec![0f32; 384];
    for s in states {
        for (m, x) in mean.iter_mut().zip(floats(s)) {
            *m += x / states.len() as f32;
        }
    }
    let norm = mean.iter().map(|x| x * x).sum::<f32>().sqrt();
    mean.iter_mut().for_each(|x| *x /= norm);
    assert!(max_abs_diff(&mean, &case.embedding) < common::TOLERANCE);
    // /similarity: cosines of the reference embeddings.
    let (status, sims) = post_json(
        &server,
        "/similarity",
        json!({"inputs": {"source_sentence": cases[0].text, "sentences": [cases[1].text, cases[2].text]}}),
    );
    assert_eq!(status, 200, "{sims}");
    let cos = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    let want = [
        cos(&cases[0].embedding, &cases[1].embedding),
        cos(&cases[0].embedding, &cases[2].embedding),
    ];
    assert!(
        max_abs_diff(&floats(&sims), &want) < common::TOLERANCE,
        "{sims}"
    );
    // base64 on /embed: the same floats.
    let (status, b) = post_json(
        &server,
        "/embed",
        json!({"inputs": case.text, "encoding_format": "base64"}),
    );
    assert_eq!(status, 200, "{b}");
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b[0].as_str().unwrap())
        .unwrap();
    let decoded: Vec<f32> = bytes
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert!(max_abs_diff(&decoded, &case.embedding) < common::TOLERANCE);
    server.stop_clean();
}

#[test]
fn teis_fields_are_checked_naming_what_is_wrong() {
    let server = Server::start(experiment(""));
    for (body, needle) in [
        (
            json!({"inputs": "x", "prompt_name": "query"}),
            "prompt_name `query` is not one of this model's prompts (it has none",
        ),
        (
            json!({"inputs": "x", "truncation_direction": "up"}),
            "truncation_direction `up`",
        ),
        (
            json!({"inputs": "x", "dimensions": 0}),
            "dimensions 0 is not available",
        ),
        (
            json!({"inputs": "word ".repeat(300), "truncate": false}),
            "truncate is false",
        ),
        (
            json!({"inputs": [[101, 999999, 102]]}),
            "token id 999999, outside the vocabulary of 30522",
        ),
        (json!({"inputs": "x", "colour": "blue"}), "colour"),
    ] {
        let (status, v) = post_json(&server, "/embed", body.clone());
        assert_eq!(status, 400, "{body}: {v}");
        assert!(v["error"].as_str().unwrap().contains(needle), "{body}: {v}");
    }
    let (status, v) = post_json(&server, "/embed_sparse", json!({"inputs": "x"}));
    assert_eq!(
        (status, v["error_type"].as_str()),
        (400, Some("wrong_model_kind")),
        "{v}"
    );
    let (status, v) = post_json(&server, "/predict", json!({"inputs": "x"}));
    assert_eq!(
        (status, v["error_type"].as_str()),
        (400, Some("wrong_model_kind")),
        "{v}"
    );
    // Still serving.
    assert_eq!(embedding(&server, json!({"inputs": "ok"})).len(), 384);
    server.stop_clean();
}

#[test]
fn a_classifiers_default_route_and_hugging_faces_parameters() {
    let fixture = common::root().join("tests/fixtures/models/bert-classifier");
    let server = Server::start(experiment(&format!(
        "model:\n  path: {}\n  device: cpu\n",
        fixture.display()
    )));
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture.join("reference.json")).unwrap())
            .unwrap();
    // POST / on a classifier is /predict; TEI's shape for one input: a flat list.
    let (status, v) = post_json(&server, "/", json!({"inputs": r["texts"][0]}));
    assert_eq!(status, 200, "{v}");
    assert_eq!(v[0]["label"], r["scores"][0][0]["label"]);
    assert!(
        (v[0]["score"].as_f64().unwrap() - r["scores"][0][0]["score"].as_f64().unwrap()).abs()
            < 1e-4
    );
    // Two strings are one pair, as in TEI.
    let (status, v) = post_json(&server, "/predict", json!({"inputs": r["pairs"][0]}));
    assert_eq!(status, 200, "{v}");
    let logits = r["pair_logits"][0].as_array().unwrap();
    let best = logits
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.as_f64().unwrap().total_cmp(&b.1.as_f64().unwrap()))
        .unwrap()
        .0;
    assert_eq!(
        v[0]["label"],
        r["labels"].get(best).cloned().unwrap_or(json!("positive"))
    );
    // Hugging Face's task parameters: the nested shape, top_k.
    let (status, v) = post_json(
        &server,
        "/predict",
        json!({"inputs": r["texts"][0], "parameters": {"top_k": 2, "function_to_apply": "softmax"}}),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(v[0].as_array().unwrap().len(), 2);
    server.stop_clean();
}
