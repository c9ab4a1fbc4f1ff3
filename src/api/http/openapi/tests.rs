//! The document's contract: what each configuration accepts, bounds and answers.

use super::*;

fn facts(name: &str, task: Task) -> Facts {
    Facts {
        name: name.into(),
        task,
        dim: 384,
        vocab: 30522,
        prompts: vec!["query".into()],
        output_dtypes: vec!["float32", "binary", "ubinary"],
    }
}

fn contract(models: Vec<Facts>) -> Contract {
    let at = |t: Task| models.iter().position(|m| m.task == t).unwrap_or(0);
    Contract {
        embedder: at(Task::Embedding),
        classifier: models
            .iter()
            .position(|m| m.task == Task::Classifier)
            .unwrap_or(at(Task::Reranker)),
        reranker: at(Task::Reranker),
        models,
        max_client_batch_size: 256,
        max_input_chars: 100_000,
        api_key: false,
        protects_metrics: false,
    }
}

fn routes(doc: &Value) -> Vec<(String, String)> {
    let mut documented: Vec<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .map(|m| (m.to_uppercase(), path.clone()))
                .collect::<Vec<_>>()
        })
        .collect();
    documented.sort();
    documented
}

#[test]
fn the_document_lists_the_routes_the_served_models_answer() {
    let all = contract(vec![
        facts("e", Task::Embedding),
        facts("c", Task::Classifier),
        facts("r", Task::Reranker),
    ]);
    let doc = document(&all);
    // Every route served is documented, but the document itself and /embed_sparse (no
    // SPLADE model runs here: it always answers wrong_model_kind).
    let mut served: Vec<(String, String)> = http::ROUTES
        .iter()
        .filter(|(_, p)| !matches!(*p, "/api-doc/openapi.json" | "/embed_sparse"))
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    served.sort();
    assert_eq!(routes(&doc), served);
    // An embedding model alone: no /predict, no /rerank.
    let doc = document(&contract(vec![facts("e", Task::Embedding)]));
    let got = routes(&doc);
    assert!(got.contains(&("POST".into(), "/embed".into())));
    assert!(!got.iter().any(|(_, p)| p == "/predict" || p == "/rerank"));
    // A reranker alone: /predict and /rerank, no embedding routes.
    let got = routes(&document(&contract(vec![facts("r", Task::Reranker)])));
    assert!(got.contains(&("POST".into(), "/rerank".into())));
    assert!(got.contains(&("POST".into(), "/predict".into())));
    assert!(
        !got.iter()
            .any(|(_, p)| p == "/embed" || p == "/v1/embeddings")
    );
    for schema in [
        "EmbedRequest",
        "OpenAiRequest",
        "RerankRequest",
        "ModelInfo",
        "ErrorBody",
    ] {
        assert!(doc["components"]["schemas"][schema].is_object(), "{schema}");
    }
}

#[test]
fn bounds_come_from_the_configuration_and_the_model() {
    let mut c = contract(vec![
        facts("a", Task::Embedding),
        facts("b", Task::Embedding),
    ]);
    c.max_client_batch_size = 7;
    c.max_input_chars = 99;
    let doc = document(&c);
    let s = &doc["components"]["schemas"];
    let inputs = &s["EmbedRequest"]["properties"]["inputs"]["anyOf"];
    assert_eq!(inputs[0]["maxLength"], 99);
    assert_eq!(inputs[1]["items"]["maximum"], 30521);
    assert_eq!(inputs[2]["maxItems"], 7);
    assert_eq!(
        s["EmbedRequest"]["properties"]["dimensions"]["maximum"],
        384
    );
    assert_eq!(
        s["EmbedRequest"]["properties"]["prompt_name"]["enum"],
        json!(["query", null])
    );
    assert_eq!(
        s["OpenAiRequest"]["properties"]["model"]["enum"],
        json!(["a", "b", null])
    );
    assert_eq!(
        s["SimilarityInput"]["properties"]["sentences"]["maxItems"],
        6
    );
    assert_eq!(
        s["EmbedRequest"]["properties"]["truncation_direction"]["enum"],
        json!(["right", "left", "Right", "Left", null])
    );
    // An embedding is a list of numbers or a base64 string, in both answers.
    assert_eq!(s["Embedding"]["oneOf"][0]["type"], "array");
    assert_eq!(s["Embedding"]["oneOf"][1]["type"], "string");
    assert_eq!(
        s["OpenAiEmbedding"]["properties"]["embedding"]["$ref"],
        "#/components/schemas/Embedding"
    );
    assert_eq!(
        doc["paths"]["/embed"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
            ["items"]["$ref"],
        "#/components/schemas/Embedding"
    );
    // Every inference route lists its error answers with the error body.
    let embed = &doc["paths"]["/embed"]["post"]["responses"];
    for status in ["400", "413", "415", "429", "500", "503", "504"] {
        assert_eq!(
            embed[status]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/ErrorBody",
            "{status}"
        );
    }
    assert!(
        embed["413"]["description"]
            .as_str()
            .unwrap()
            .contains("limit_exceeded")
    );
    // Several models: a wrong `model` is a 404; a key: 401 where it is asked for.
    assert!(doc["paths"]["/v1/embeddings"]["post"]["responses"]["404"].is_object());
    assert!(embed.get("401").is_none());
    c.api_key = true;
    let doc = document(&c);
    assert!(doc["paths"]["/embed"]["post"]["responses"]["401"].is_object());
    assert!(
        doc["paths"]["/health"]["get"]["responses"]
            .get("401")
            .is_none()
    );
    assert_eq!(
        doc["paths"]["/embed"]["post"]["security"],
        json!([{"bearer": []}])
    );
    // Priorities: the body field where bodies refuse unknown fields, and the header on
    // every inference route served, each as the closed set `Priority::parse` takes.
    for schema in ["EmbedRequest", "OpenAiRequest", "PredictRequest"] {
        let field = &doc["components"]["schemas"][schema]["properties"]["priority"];
        assert!(
            field["description"]
                .as_str()
                .is_some_and(|d| d.contains("`interactive`") && d.contains("`batch`")),
            "{schema}: {field}"
        );
        assert_eq!(
            field["enum"],
            json!(["interactive", "high", "batch", "low", null]),
            "{schema}"
        );
    }
    let reranker = document(&contract(vec![facts("r", Task::Reranker)]));
    for (doc, path) in [
        (&doc, "/embed"),
        (&doc, "/v1/embeddings"),
        (&doc, "/similarity"),
        (&reranker, "/predict"),
        (&reranker, "/rerank"),
    ] {
        let params = doc["paths"][path]["post"]["parameters"]
            .as_array()
            .unwrap_or_else(|| panic!("{path} has parameters"));
        let header = params
            .iter()
            .find(|p| p["name"] == "X-Priority" && p["in"] == "header")
            .unwrap_or_else(|| panic!("{path}: {params:?}"));
        assert_eq!(
            header["schema"]["enum"],
            json!(["interactive", "high", "batch", "low"]),
            "{path}"
        );
    }
}
