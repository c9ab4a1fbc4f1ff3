//! Quantized embeddings (src/model/quantize.rs, src/model/calibrate.rs) against
//! sentence-transformers' own `quantize_embeddings`: the bytes it output for the same embeddings
//! and ranges are committed in tests/fixtures/quantize/ by `scripts/gen_quantize_fixtures.py`
//! (sentence-transformers 6.2.0; the tests need only the committed files, not Python).
//!
//! - `binary` / `ubinary` must match exactly; `int8` / `uint8` within one step (each test prints
//!   how many values differ at all);
//! - ranges files numpy wrote (`np.save`, float32 and float64, and JSON) are read as the ranges
//!   sentence-transformers used;
//! - a calibration file of texts gives, through our model, the ranges sentence-transformers
//!   computes from its own embeddings of those texts (within the parity tolerance);
//! - the server says which ranges it uses (`/info`), and refuses bad `model.quantization` keys;
//! - `recall_of_quantized_embeddings` (ignored: it prints figures, run it with
//!   `cargo nextest run --release --features fault-injection --run-ignored only -E
//!   'binary(quantize)' --no-capture`) measures recall@10 of int8 and binary against float32.

mod common;

use std::path::PathBuf;

use actor_infer::{
    config::Config,
    model::{
        Model, ModelSpec,
        quantize::{Precision, Ranges, quantize, values},
    },
};
use common::{Server, TOLERANCE, experiment, floats, http_get, run_to_exit};

fn fixtures() -> PathBuf {
    common::root().join("tests/fixtures/quantize")
}

fn reference() -> serde_json::Value {
    let text = std::fs::read_to_string(fixtures().join("reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn matrix(v: &serde_json::Value) -> Vec<Vec<f32>> {
    v.as_array().unwrap().iter().map(floats).collect()
}

fn ranges_of(v: &serde_json::Value) -> Ranges {
    let m = matrix(v);
    Ranges {
        min: m[0].clone(),
        max: m[1].clone(),
    }
}

#[test]
fn quantized_bytes_match_sentence_transformers() {
    let doc = reference();
    assert_eq!(doc["versions"]["sentence_transformers"], "6.2.0");
    let mut compared = 0usize;
    let mut off_by_one = 0usize;
    for case in doc["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let rows = matrix(&case["embeddings"]);
        let ranges = ranges_of(&case["ranges"]);
        if !case["calibration"].is_null() {
            // `calibration_embeddings=`: the ranges are their per-dimension extremes.
            let ours = Ranges::of(&matrix(&case["calibration"])).unwrap();
            assert_eq!(ours, ranges, "{name}: calibration ranges");
        }
        for p in ["int8", "uint8", "binary", "ubinary"] {
            let precision = Precision::parse(p).unwrap();
            let want = &case["outputs"][p];
            for (i, row) in rows.iter().enumerate() {
                let got = values(&quantize(row, precision, Some(&ranges)).unwrap(), precision);
                let want: Vec<i16> = want[i]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_i64().unwrap() as i16)
                    .collect();
                assert_eq!(got.len(), want.len(), "{name} {p} row {i}: width");
                assert_eq!(got.len(), precision.row_bytes(row.len()));
                if precision.needs_ranges() {
                    for (d, (g, w)) in got.iter().zip(&want).enumerate() {
                        assert!(
                            (g - w).abs() <= 1,
                            "{name} {p} row {i} dim {d}: {g} vs sentence-transformers' {w}"
                        );
                        off_by_one += usize::from(g != w);
                    }
                    compared += got.len();
                } else {
                    assert_eq!(got, want, "{name} {p} row {i}");
                }
            }
        }
    }
    println!("int8/uint8: {off_by_one} of {compared} values one step off, the rest equal");
}

#[test]
fn ranges_files_numpy_and_json_wrote_are_the_ranges_sentence_transformers_used() {
    let doc = reference();
    let want = ranges_of(&doc["cases"][0]["ranges"]);
    for file in [
        "minilm-ranges-f32.npy",
        "minilm-ranges-f64.npy",
        "minilm-ranges.json",
    ] {
        assert_eq!(
            Ranges::read(&fixtures().join(file)).unwrap(),
            want,
            "{file}"
        );
    }
}

/// The reference texts written to `minilm-texts.txt`, with sentence-transformers' embeddings.
fn calibration_texts() -> (Vec<String>, Vec<Vec<f32>>) {
    let texts: Vec<String> = std::fs::read_to_string(fixtures().join("minilm-texts.txt"))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let cases = common::reference();
    let rows = texts
        .iter()
        .map(|t| {
            cases
                .iter()
                .find(|c| &c.text == t)
                .unwrap_or_else(|| panic!("{t:?} is not a reference text"))
                .embedding
                .clone()
        })
        .collect();
    (texts, rows)
}

/// The default model's spec with `quantization` (a YAML mapping body), loaded in this process.
fn spec_with(quantization: &str) -> ModelSpec {
    let yaml = format!(
        "model:\n  path: {}\n  device: cpu\n  quantization: {quantization}\n",
        common::default_model().display()
    );
    let config = Config::from_sources(&yaml, std::iter::empty(), &Default::default()).unwrap();
    ModelSpec::load(config.model(), tch::Device::Cpu).unwrap()
}

fn max_diff(a: &Ranges, b: &Ranges) -> f32 {
    assert_eq!(a.dim(), b.dim());
    common::max_abs_diff(&a.min, &b.min).max(common::max_abs_diff(&a.max, &b.max))
}

#[test]
fn calibration_texts_give_the_ranges_sentence_transformers_computes() {
    let file = fixtures().join("minilm-texts.txt");
    let spec = spec_with(&format!("{{calibration_file: {}}}", file.display()));
    let model = Model::load(&spec).unwrap();
    let calibrator = spec.calibration.clone().unwrap();
    assert!(
        calibrator.get().is_none(),
        "texts are embedded after the load"
    );
    calibrator.ensure(&spec, &model).unwrap();
    let c = calibrator.get().unwrap();
    let (texts, st) = calibration_texts();
    assert_eq!(c.info().texts, texts.len());
    assert!(c.info().normalized);

    // Full width, normalised (the default output): sentence-transformers' ranges of its own
    // embeddings of the texts, within the parity tolerance.
    let want = Ranges::of(&st).unwrap();
    let d = max_diff(&c.ranges, &want);
    println!("calibration ranges vs sentence-transformers': worst difference {d:e}");
    assert!(d < TOLERANCE, "{d}");
    // A Matryoshka cut to 128 dimensions, normalised after the cut, as the API outputs it.
    let cut: Vec<Vec<f32>> = st
        .iter()
        .map(|r| {
            let mut r = r[..128].to_vec();
            actor_infer::model::normalize_l2(&mut r);
            r
        })
        .collect();
    let d = max_diff(
        &c.ranges_for(128, true).unwrap(),
        &Ranges::of(&cut).unwrap(),
    );
    assert!(d < TOLERANCE, "128 dimensions: {d}");

    // Quantized with our ranges or with sentence-transformers', int8 codes agree within a step
    // wherever the two ranges differ by less than a quarter of a step. That is every dimension
    // but all-MiniLM-L6-v2's dead ones (127, 223, 319): sentence-transformers' embeddings hold
    // -0.0, 0.0 (or -1e-7) there, ours values near 1e-32; a range of width 0 makes numpy's step
    // of 1 (every code the lowest), a range of 1e-32 a step of 1e-34 that spreads that noise
    // over every code. The test names them rather than hiding them.
    let step = |r: &Ranges, d: usize| {
        let width = (r.max[d] - r.min[d]) / 255.0;
        if width == 0.0 { 1.0 } else { width }
    };
    let comparable: Vec<usize> = (0..want.dim())
        .filter(|&d| {
            let delta = (c.ranges.min[d] - want.min[d])
                .abs()
                .max((c.ranges.max[d] - want.max[d]).abs());
            delta * 4.0 < step(&c.ranges, d).min(step(&want, d))
        })
        .collect();
    let excluded: Vec<usize> = (0..want.dim())
        .filter(|d| !comparable.contains(d))
        .collect();
    let mut off = 0;
    for (i, row) in st.iter().enumerate() {
        let a = values(
            &quantize(row, Precision::Int8, Some(&c.ranges)).unwrap(),
            Precision::Int8,
        );
        let b = values(
            &quantize(row, Precision::Int8, Some(&want)).unwrap(),
            Precision::Int8,
        );
        for &d in &comparable {
            assert!(
                (a[d] - b[d]).abs() <= 1,
                "row {i} dim {d}: {} vs {}",
                a[d],
                b[d]
            );
            off += usize::from(a[d] != b[d]);
        }
    }
    println!(
        "int8 with our calibration vs sentence-transformers' ranges: {off} of {} values one step \
         off; dimensions whose ranges differ by more than a quarter step: {excluded:?}",
        comparable.len() * st.len()
    );
    // They are exactly the dimensions whose whole range is narrower than the parity tolerance:
    // there a difference that parity allows moves the codes by many steps.
    let narrow: Vec<usize> = (0..want.dim())
        .filter(|&d| want.max[d] - want.min[d] < TOLERANCE)
        .collect();
    assert_eq!(
        excluded, narrow,
        "only dimensions narrower than the parity tolerance differ"
    );

    // A ranges file covers only the default output.
    let spec = spec_with(&format!(
        "{{ranges_file: {}}}",
        fixtures().join("minilm-ranges.json").display()
    ));
    let c = spec.calibration.clone().unwrap().get().unwrap();
    assert_eq!(c.ranges_for(384, true).unwrap().dim(), 384);
    let e = c.ranges_for(128, true).unwrap_err().to_string();
    assert!(
        e.contains("default output (384 dimensions, normalised), not for 128 dimensions")
            && e.contains("model.quantization.calibration_file"),
        "{e}"
    );
}

fn info(server: &Server) -> serde_json::Value {
    let (status, body) = http_get(&server.http_addr, "/info").unwrap();
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

#[test]
fn the_server_says_which_ranges_it_uses() {
    let npy = fixtures().join("minilm-ranges-f32.npy");
    let server = Server::start(experiment(&format!(
        "model:\n  path: {}\n  device: cpu\n  quantization:\n    ranges_file: {}\n",
        common::default_model().display(),
        npy.display()
    )));
    let q = &info(&server)["quantization"]["ranges"];
    let want = Ranges::read(&npy).unwrap().fingerprint();
    assert_eq!(
        q,
        &serde_json::json!({"source": "ranges_file", "file": "minilm-ranges-f32.npy", "texts": 0,
                            "dim": 384, "normalized": true, "fingerprint": want})
    );
    server.stop_clean();

    // A relative path is read from the experiment file's folder.
    let exp = experiment(&format!(
        "model:\n  path: {}\n  device: cpu\n  quantization:\n    calibration_file: texts.txt\n",
        common::default_model().display()
    ));
    std::fs::copy(
        fixtures().join("minilm-texts.txt"),
        exp.dir.path().join("texts.txt"),
    )
    .unwrap();
    let server = Server::start(exp);
    let q = info(&server)["quantization"]["ranges"].clone();
    assert_eq!(q["source"], "calibration_file");
    assert_eq!(q["file"], "texts.txt");
    assert_eq!(q["texts"], calibration_texts().0.len());
    assert_eq!(q["fingerprint"].as_str().unwrap().len(), 16);
    assert!(
        server
            .log()
            .contains("int8/uint8 calibration ranges computed"),
        "{}",
        server.log()
    );
    // A model without `quantization` says nothing about it.
    server.stop_clean();
    let server = Server::start(experiment(""));
    assert!(info(&server).get("quantization").is_none());
    server.stop_clean();
}

#[test]
fn bad_quantization_keys_stop_the_start_naming_them() {
    let model = common::default_model();
    let texts = fixtures().join("minilm-texts.txt");
    let run = |body: String| {
        let exp = experiment(&body);
        let (code, log) = run_to_exit(&["--experiment", exp.path.to_str().unwrap()]);
        (code, log)
    };
    let (code, log) = run(format!(
        "model:\n  path: {}\n  quantization:\n    ranges_file: {}\n    calibration_file: {}\n",
        model.display(),
        texts.display(),
        texts.display()
    ));
    assert_eq!(code, 2, "{log}");
    assert!(
        log.contains("model.quantization: give exactly one of ranges_file"),
        "{log}"
    );
    let (code, log) = run(format!(
        "model:\n  path: {}\n  quantization:\n    ranges_file: nowhere.npy\n",
        model.display()
    ));
    assert_eq!(code, 2, "{log}");
    assert!(
        log.contains("model.quantization.ranges_file: ")
            && log.contains("nowhere.npy does not exist"),
        "{log}"
    );
    // Ranges of another width: the load stops (exit 1), naming both widths.
    let dir = tempfile::tempdir().unwrap();
    let narrow = dir.path().join("narrow.json");
    std::fs::write(&narrow, "[[0, 0, 0], [1, 1, 1]]").unwrap();
    let (code, log) = run(format!(
        "model:\n  path: {}\n  device: cpu\n  quantization:\n    ranges_file: {}\n",
        model.display(),
        narrow.display()
    ));
    assert_eq!(code, 1, "{log}");
    assert!(
        log.contains("has ranges for 3 dimensions; this model's embeddings have 384"),
        "{log}"
    );
    // Only embeddings are quantized.
    let (code, log) = run(format!(
        "model:\n  path: {}\n  device: cpu\n  quantization:\n    calibration_file: {}\n",
        common::fixture("bert-classifier").display(),
        texts.display()
    ));
    assert_eq!(code, 1, "{log}");
    assert!(
        log.contains("only an embedding model's outputs are quantized"),
        "{log}"
    );
}

/// Embeds `texts` over `/embed` in requests of 64.
fn embed_all(server: &Server, texts: &[String]) -> Vec<Vec<f32>> {
    let mut out = Vec::new();
    for chunk in texts.chunks(64) {
        let body = serde_json::json!({ "inputs": chunk }).to_string();
        let (status, text) = common::http_request(
            &server.http_addr,
            "POST",
            "/embed",
            Some("application/json"),
            body.as_bytes(),
        )
        .unwrap();
        assert_eq!(status, 200, "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        out.extend(v.as_array().unwrap().iter().map(floats));
    }
    out
}

/// The indices of the `k` highest scores, highest first (ties by index).
fn top(scores: &[f64], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

/// recall@10 of int8 and binary embeddings against float32, on the labelled pairs of
/// tests/fixtures/retrieval/pairs.jsonl (`scripts/gen_retrieval_pairs.py`) served by
/// all-MiniLM-L6-v2: every document is the corpus, every query has one relevant document. The
/// int8 ranges are calibrated on the corpus. Scores as sentence-transformers' own search
/// (`semantic_search_usearch` / `_faiss`) computes them: float32 dot product; int8 inner
/// product of the codes; binary Hamming distance; "+ rescore": the top 20 re-ranked by the
/// float32 query against the dequantized codes (int8) or the unpacked bits (binary), its default
/// `rescore_multiplier` of 2.
#[test]
#[ignore = "prints figures (README); run with --run-ignored only"]
fn recall_of_quantized_embeddings() {
    let pairs: Vec<serde_json::Value> =
        std::fs::read_to_string(common::root().join("tests/fixtures/retrieval/pairs.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
    let queries: Vec<String> = pairs
        .iter()
        .map(|p| p["query"].as_str().unwrap().into())
        .collect();
    let docs: Vec<String> = pairs
        .iter()
        .map(|p| p["document"].as_str().unwrap().into())
        .collect();
    let server = Server::start(experiment(""));
    let q = embed_all(&server, &queries);
    let d = embed_all(&server, &docs);
    server.stop_clean();
    let ranges = Ranges::of(&d).unwrap();
    let code = |rows: &[Vec<f32>], p: Precision| -> Vec<Vec<i16>> {
        rows.iter()
            .map(|r| values(&quantize(r, p, Some(&ranges)).unwrap(), p))
            .collect()
    };
    let (qi8, di8) = (code(&q, Precision::Int8), code(&d, Precision::Int8));
    let (qb, db) = (code(&q, Precision::Ubinary), code(&d, Precision::Ubinary));
    let dot = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| f64::from(*x) * f64::from(*y))
            .sum::<f64>()
    };
    let steps: Vec<f64> = ranges
        .min
        .iter()
        .zip(&ranges.max)
        .map(|(lo, hi)| {
            // float32, as sentence-transformers' _dequantize_embeddings; 0 → 1.
            let s = (hi - lo) / 255.0;
            if s == 0.0 { 1.0 } else { f64::from(s) }
        })
        .collect();
    let dequantized: Vec<Vec<f32>> = di8
        .iter()
        .map(|r| {
            r.iter()
                .enumerate()
                .map(|(i, &v)| {
                    ((f64::from(v) + 128.0) * steps[i] + f64::from(ranges.min[i])) as f32
                })
                .collect()
        })
        .collect();
    let bits: Vec<Vec<f32>> = db
        .iter()
        .map(|r| {
            (0..q[0].len())
                .map(|i| f32::from((r[i / 8] >> (7 - i % 8)) & 1 == 1))
                .collect()
        })
        .collect();
    let k = 10;
    let names = [
        "float32",
        "int8",
        "int8 + rescore",
        "binary",
        "binary + rescore",
    ];
    let mut hits = [0usize; 5];
    let mut firsts = [0usize; 5];
    let mut overlap = [0usize; 5];
    for (i, qrow) in q.iter().enumerate() {
        let f32_scores: Vec<f64> = d.iter().map(|r| dot(qrow, r)).collect();
        let i8_scores: Vec<f64> = di8
            .iter()
            .map(|r| {
                r.iter()
                    .zip(&qi8[i])
                    .map(|(a, b)| f64::from(*a) * f64::from(*b))
                    .sum()
            })
            .collect();
        let hamming: Vec<f64> = db
            .iter()
            .map(|r| {
                -f64::from(
                    r.iter()
                        .zip(&qb[i])
                        .map(|(a, b)| ((*a as u8) ^ (*b as u8)).count_ones())
                        .sum::<u32>(),
                )
            })
            .collect();
        let rescore = |first: &[f64], docs: &[Vec<f32>]| -> Vec<usize> {
            let pool = top(first, 2 * k);
            let scores: Vec<f64> = pool.iter().map(|&j| dot(qrow, &docs[j])).collect();
            top(&scores, k).into_iter().map(|p| pool[p]).collect()
        };
        let reference = top(&f32_scores, k);
        let lists = [
            reference.clone(),
            top(&i8_scores, k),
            rescore(&i8_scores, &dequantized),
            top(&hamming, k),
            rescore(&hamming, &bits),
        ];
        for (m, list) in lists.iter().enumerate() {
            hits[m] += usize::from(list.contains(&i));
            firsts[m] += usize::from(list[0] == i);
            overlap[m] += list.iter().filter(|j| reference.contains(j)).count();
        }
    }
    let n = q.len();
    println!(
        "recall@{k} on {n} labelled pairs (tests/fixtures/retrieval/pairs.jsonl), \
         all-MiniLM-L6-v2, corpus {} documents; int8 ranges calibrated on the corpus",
        d.len()
    );
    println!(
        "{:<18} {:>9} {:>10} {:>28}",
        "precision", "recall@1", "recall@10", "top-10 overlap with float32"
    );
    for m in 0..names.len() {
        println!(
            "{:<18} {:>9.3} {:>10.3} {:>28.3}",
            names[m],
            firsts[m] as f64 / n as f64,
            hits[m] as f64 / n as f64,
            overlap[m] as f64 / (n * k) as f64
        );
    }
    // Sanity, not a target: float32 finds most paraphrases, quantization keeps most of it.
    assert!(
        hits[0] as f64 / n as f64 > 0.8,
        "float32 recall {}",
        hits[0]
    );
}

fn ints(v: &serde_json::Value) -> Vec<i16> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| i16::try_from(x.as_i64().unwrap()).unwrap())
        .collect()
}

/// How many values of `got` differ from `want`, asserting none by more than `step`.
fn differing(got: &[i16], want: &[i16], step: i16, what: &str) -> usize {
    assert_eq!(got.len(), want.len(), "{what}: widths");
    let mut n = 0;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= step, "{what}[{i}]: {g} against {w}");
        n += usize::from(g != w);
    }
    n
}

/// What sentence-transformers' quantize_embeddings gives for `rows` (the committed fixtures
/// prove `quantize` byte for byte against it), as the numbers a JSON client reads.
fn expected(rows: &[Vec<f32>], p: Precision, ranges: Option<&Ranges>) -> Vec<Vec<i16>> {
    rows.iter()
        .map(|r| values(&quantize(r, p, ranges).unwrap(), p))
        .collect()
}

/// A server calibrated from the fixture texts, asked for each output type over every protocol
/// that returns embeddings: what comes back is the quantization of what the same server serves
/// as float32, with the ranges of the calibration texts' own embeddings (cut and normalised
/// like the output when `dimensions` asks), one step of int8 allowed for the last bit of a
/// float; and a type the model cannot give is refused naming what it offers.
#[tokio::test(flavor = "multi_thread")]
async fn every_protocol_returns_the_quantized_bytes_of_what_it_serves() {
    use actor_infer::api::grpc::pb::{
        InferRequest, inference_service_client::InferenceServiceClient,
    };
    let texts: Vec<String> = common::reference()
        .into_iter()
        .take(6)
        .map(|c| c.text)
        .collect();
    let exp = experiment(&format!(
        "model:\n  path: {}\n  device: cpu\n  quantization:\n    calibration_file: {}\n",
        common::default_model().display(),
        fixtures().join("minilm-texts.txt").display()
    ));
    let server = Server::start(exp);
    let (calibration, _) = calibration_texts();
    let served = embed_all(&server, &calibration);
    let floats_of = |body: serde_json::Value| -> Vec<Vec<f32>> {
        body.as_array().unwrap().iter().map(floats).collect()
    };
    let (status, body) =
        common::post_json(&server, "/embed", serde_json::json!({ "inputs": texts }));
    assert_eq!(status, 200, "{body}");
    let rows = floats_of(body);
    let full = Ranges::of(&served).unwrap();
    let mut steps = 0;
    for p in [
        Precision::Int8,
        Precision::Uint8,
        Precision::Binary,
        Precision::Ubinary,
    ] {
        let want = expected(&rows, p, Some(&full));
        let (status, body) = common::post_json(
            &server,
            "/embed",
            serde_json::json!({ "inputs": texts, "output_dtype": p.as_str() }),
        );
        assert_eq!(status, 200, "{p:?}: {body}");
        let step = i16::from(p.needs_ranges());
        for (i, (got, want)) in body.as_array().unwrap().iter().zip(&want).enumerate() {
            assert_eq!(got.as_array().unwrap().len(), p.row_bytes(384), "{p:?}");
            steps += differing(&ints(got), want, step, &format!("/embed {p:?} text {i}"));
        }
        // OpenAI, as the `openai` client sends it through extra_body.
        let (status, body) = common::post_json(
            &server,
            "/v1/embeddings",
            serde_json::json!({ "input": texts, "model": "m", "output_dtype": p.as_str(),
                                 "encoding_format": "float" }),
        );
        assert_eq!(status, 200, "{p:?}: {body}");
        for (i, d) in body["data"].as_array().unwrap().iter().enumerate() {
            differing(
                &ints(&d["embedding"]),
                &want[i],
                step,
                &format!("openai {p:?} {i}"),
            );
        }
        // base64: the bytes themselves.
        let (status, body) = common::post_json(
            &server,
            "/embed",
            serde_json::json!({ "inputs": texts, "output_dtype": p.as_str(),
                                 "encoding_format": "base64" }),
        );
        assert_eq!(status, 200, "{p:?}: {body}");
        for (i, b) in body.as_array().unwrap().iter().enumerate() {
            use base64::Engine as _;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b.as_str().unwrap())
                .unwrap();
            differing(
                &values(&bytes, p),
                &want[i],
                step,
                &format!("base64 {p:?} {i}"),
            );
        }
    }
    println!("int8/uint8 values one step off the float32 rows' quantization: {steps}");
    assert!(steps < 20, "{steps} values a step off");

    // Matryoshka: cut to 128 and normalised, then quantized with the ranges of the
    // calibration embeddings cut and normalised the same way.
    let cut: Vec<Vec<f32>> = served
        .iter()
        .map(|r| {
            let mut r = r[..128].to_vec();
            let n = r.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
            r.iter_mut().for_each(|x| *x /= n);
            r
        })
        .collect();
    let (status, body) = common::post_json(
        &server,
        "/embed",
        serde_json::json!({ "inputs": texts, "dimensions": 128 }),
    );
    assert_eq!(status, 200, "{body}");
    let rows128 = floats_of(body);
    let want = expected(&rows128, Precision::Int8, Some(&Ranges::of(&cut).unwrap()));
    let (status, body) = common::post_json(
        &server,
        "/embed",
        serde_json::json!({ "inputs": texts, "dimensions": 128, "output_dtype": "int8" }),
    );
    assert_eq!(status, 200, "{body}");
    for (i, got) in body.as_array().unwrap().iter().enumerate() {
        differing(&ints(got), &want[i], 1, &format!("dimensions 128 int8 {i}"));
    }

    // gRPC Infer: the bytes in `quantized`, no floats.
    let mut grpc = InferenceServiceClient::connect(server.grpc.clone())
        .await
        .unwrap();
    let res = grpc
        .infer(InferRequest {
            texts: texts.clone(),
            output_dtype: Some("ubinary".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let want = expected(&rows, Precision::Ubinary, None);
    for (i, o) in res.outputs.iter().enumerate() {
        assert!(o.embedding.is_empty());
        assert!(o.token_count > 0);
        differing(
            &values(&o.quantized, Precision::Ubinary),
            &want[i],
            0,
            "grpc",
        );
    }
    let err = grpc
        .infer(InferRequest {
            texts: texts.clone(),
            output_dtype: Some("f16".into()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message()
            .contains("`f16` is not one of float32, int8, uint8, binary, ubinary"),
        "{}",
        err.message()
    );

    // KServe v2: the quantized outputs when named, with their datatypes and shapes.
    let (status, meta) = common::http_get(&server.http_addr, "/v2/models/all-MiniLM-L6-v2")
        .map(|(s, b)| (s, serde_json::from_str::<serde_json::Value>(&b).unwrap()))
        .unwrap();
    assert_eq!(status, 200);
    let outputs: Vec<(String, String, serde_json::Value)> = meta["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["name"].as_str().unwrap().to_string(),
                o["datatype"].as_str().unwrap().to_string(),
                o["shape"].clone(),
            )
        })
        .collect();
    assert_eq!(
        outputs,
        vec![
            (
                "embedding".into(),
                "FP32".into(),
                serde_json::json!([-1, 384])
            ),
            (
                "embedding_int8".into(),
                "INT8".into(),
                serde_json::json!([-1, 384])
            ),
            (
                "embedding_uint8".into(),
                "UINT8".into(),
                serde_json::json!([-1, 384])
            ),
            (
                "embedding_binary".into(),
                "INT8".into(),
                serde_json::json!([-1, 48])
            ),
            (
                "embedding_ubinary".into(),
                "UINT8".into(),
                serde_json::json!([-1, 48])
            ),
        ]
    );
    let request = |names: &[&str]| {
        serde_json::json!({
            "inputs": [{"name": "text", "datatype": "BYTES", "shape": [texts.len()],
                        "data": texts}],
            "outputs": names.iter().map(|n| serde_json::json!({"name": n})).collect::<Vec<_>>(),
        })
    };
    let (status, body) = common::post_json(
        &server,
        "/v2/models/all-MiniLM-L6-v2/infer",
        request(&["embedding_int8", "embedding_binary"]),
    );
    assert_eq!(status, 200, "{body}");
    let outs = body["outputs"].as_array().unwrap();
    assert_eq!(outs.len(), 2, "{body}");
    for (o, p, width) in [
        (&outs[0], Precision::Int8, 384),
        (&outs[1], Precision::Binary, 48),
    ] {
        assert_eq!(o["datatype"], "INT8");
        assert_eq!(o["shape"], serde_json::json!([texts.len(), width]));
        let flat: Vec<i16> = expected(&rows, p, Some(&full)).concat();
        differing(
            &ints(&o["data"]),
            &flat,
            i16::from(p.needs_ranges()),
            "kserve",
        );
    }
    // Without `outputs`: the float32 embedding only.
    let (status, body) = common::post_json(
        &server,
        "/v2/models/all-MiniLM-L6-v2/infer",
        serde_json::json!({"inputs": request(&[])["inputs"]}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["outputs"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(body["outputs"][0]["name"], "embedding");
    server.stop_clean();

    // Without calibration ranges, int8 and uint8 are refused naming what is missing; the
    // binary types still work.
    let server = Server::start(experiment(""));
    for (path, body) in [
        (
            "/embed",
            serde_json::json!({"inputs": "a", "output_dtype": "int8"}),
        ),
        (
            "/v1/embeddings",
            serde_json::json!({"input": "a", "output_dtype": "uint8"}),
        ),
        (
            "/v2/models/all-MiniLM-L6-v2/infer",
            serde_json::json!({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1],
                                           "data": ["a"]}],
                               "outputs": [{"name": "embedding_int8"}]}),
        ),
    ] {
        let (status, answer) = common::post_json(&server, path, body);
        assert_eq!(status, 400, "{path}: {answer}");
        let message = answer["error"].as_str().unwrap();
        assert!(
            message.contains("needs calibration ranges")
                && message.contains("model.quantization")
                && message.contains("float32, binary, ubinary"),
            "{path}: {message}"
        );
    }
    let (status, body) = common::post_json(
        &server,
        "/embed",
        serde_json::json!({"inputs": texts, "output_dtype": "binary"}),
    );
    assert_eq!(status, 200, "{body}");
    let want = expected(&rows, Precision::Binary, None);
    for (i, got) in body.as_array().unwrap().iter().enumerate() {
        differing(&ints(got), &want[i], 0, "uncalibrated binary");
    }
    server.stop_clean();
}
