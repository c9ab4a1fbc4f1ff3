//! The encoder on tiny random models: padding, prefixes, token rows, pooling.

use super::*;
use crate::{
    config,
    model::{Encoded, ModelSpec},
};

/// A tiny BERT with random weights, written to `dir` the way transformers lays it out.
fn tiny_model(dir: &std::path::Path, prefix: &str, skip: Option<&str>) {
    let (v, h, i, p, layers) = (50i64, 32i64, 64i64, 40i64, 2i64);
    std::fs::write(
        dir.join("config.json"),
        serde_json::json!({
            "model_type": "bert", "vocab_size": v, "hidden_size": h,
            "num_hidden_layers": layers, "num_attention_heads": 4, "intermediate_size": i,
            "max_position_embeddings": p, "type_vocab_size": 2, "layer_norm_eps": 1e-12,
            "hidden_act": "gelu", "pad_token_id": 0
        })
        .to_string(),
    )
    .unwrap();
    // The spec reads the vocabulary's size from the tokenizer, as the server does.
    let vocab: serde_json::Map<String, serde_json::Value> = (0..v)
        .map(|t| (format!("t{t}"), serde_json::json!(t)))
        .collect();
    std::fs::write(
        dir.join("tokenizer.json"),
        serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
            "normalizer": null, "pre_tokenizer": {"type": "Whitespace"},
            "post_processor": null, "decoder": null,
            "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "t1"}
        })
        .to_string(),
    )
    .unwrap();
    // Weights from a generator of its own, not libtorch's global one: tests run on several
    // threads of one process under `cargo test`, and another test's draws in between would
    // give two calls different weights.
    let mut state = 7u64;
    let mut uniform = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut r = |shape: &[i64]| {
        let n: i64 = shape.iter().product();
        // Box-Muller: normal values, as randn gave.
        let v: Vec<f32> = (0..n)
            .map(|_| {
                let (u1, u2) = (uniform().max(f64::MIN_POSITIVE), uniform());
                ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
            })
            .collect();
        Tensor::from_slice(&v).reshape(shape) * 0.2
    };
    let mut named: Vec<(String, Tensor)> = vec![
        ("embeddings.word_embeddings.weight".into(), r(&[v, h])),
        ("embeddings.position_embeddings.weight".into(), r(&[p, h])),
        ("embeddings.token_type_embeddings.weight".into(), r(&[2, h])),
        ("embeddings.LayerNorm.weight".into(), r(&[h]) + 1.0),
        ("embeddings.LayerNorm.bias".into(), r(&[h])),
    ];
    for l in 0..layers {
        let n = |s: &str| format!("encoder.layer.{l}.{s}");
        for proj in ["query", "key", "value"] {
            named.push((n(&format!("attention.self.{proj}.weight")), r(&[h, h])));
            named.push((n(&format!("attention.self.{proj}.bias")), r(&[h])));
        }
        named.push((n("attention.output.dense.weight"), r(&[h, h])));
        named.push((n("attention.output.dense.bias"), r(&[h])));
        named.push((n("attention.output.LayerNorm.weight"), r(&[h]) + 1.0));
        named.push((n("attention.output.LayerNorm.bias"), r(&[h])));
        named.push((n("intermediate.dense.weight"), r(&[i, h])));
        named.push((n("intermediate.dense.bias"), r(&[i])));
        named.push((n("output.dense.weight"), r(&[h, i])));
        named.push((n("output.dense.bias"), r(&[h])));
        named.push((n("output.LayerNorm.weight"), r(&[h]) + 1.0));
        named.push((n("output.LayerNorm.bias"), r(&[h])));
    }
    let named: Vec<(String, Tensor)> = named
        .into_iter()
        .filter(|(n, _)| Some(n.as_str()) != skip)
        .map(|(n, t)| (format!("{prefix}{n}"), t))
        .collect();
    Tensor::write_safetensors(&named, dir.join("model.safetensors")).unwrap();
}

fn spec(dir: &std::path::Path) -> ModelSpec {
    let cfg: config::Model = serde_yaml_like(&format!("path: {}\ndevice: cpu\n", dir.display()));
    ModelSpec::load(&cfg, tch::Device::Cpu).unwrap()
}

fn serde_yaml_like(yaml: &str) -> config::Model {
    config::Config::from_sources(
        &format!("model:\n  {}", yaml.replace('\n', "\n  ")),
        std::iter::empty(),
        &config::Overrides::default(),
    )
    .unwrap()
    .models
    .remove(0)
}

fn text(ids: &[i64]) -> Encoded {
    Encoded {
        ids: ids.to_vec(),
        type_ids: vec![0; ids.len()],
    }
}

fn close(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn padding_never_changes_a_texts_embedding() {
    let dir = tempfile::tempdir().unwrap();
    tiny_model(dir.path(), "", None);
    let model = Bert::load(&spec(dir.path())).unwrap();
    let short = text(&[2, 7, 9, 3]);
    let long = text(&[2, 11, 12, 13, 14, 15, 16, 17, 18, 3]);
    for pooling in [
        Pooling::Mean,
        Pooling::Cls,
        Pooling::Max,
        Pooling::MeanSqrtLen,
        Pooling::LastToken,
    ] {
        let alone = model
            .embed(&Padded::new([&short], 0), pooling, &[])
            .unwrap();
        let batched = model
            .embed(&Padded::new([&long, &short], 0), pooling, &[false, false])
            .unwrap();
        assert_eq!(batched.len(), 2);
        assert_eq!(alone[0].len(), 32);
        let d = close(&alone[0], &batched[1]);
        assert!(d < 1e-5, "{pooling:?}: padding changed the result by {d}");
        assert!(
            close(&batched[0], &batched[1]) > 1e-3,
            "different texts differ"
        );
    }
}

#[test]
fn weights_load_with_or_without_the_bert_prefix() {
    let plain = tempfile::tempdir().unwrap();
    let prefixed = tempfile::tempdir().unwrap();
    tiny_model(plain.path(), "", None);
    tiny_model(prefixed.path(), "bert.", None);
    let t = text(&[2, 5, 6, 3]);
    let a = Bert::load(&spec(plain.path()))
        .unwrap()
        .embed(&Padded::new([&t], 0), Pooling::Mean, &[])
        .unwrap();
    let b = Bert::load(&spec(prefixed.path()))
        .unwrap()
        .embed(&Padded::new([&t], 0), Pooling::Mean, &[])
        .unwrap();
    assert_eq!(a, b);
}

#[test]
fn token_rows_hold_each_real_tokens_state_and_pool_to_the_embedding() {
    let dir = tempfile::tempdir().unwrap();
    tiny_model(dir.path(), "", None);
    let model = Bert::load(&spec(dir.path())).unwrap();
    let (short, long) = (text(&[2, 7, 9, 3]), text(&[2, 11, 12, 13, 14, 3]));
    let batch = Padded::new([&long, &short], 0);
    let pooled = model.embed(&batch, Pooling::Mean, &[false, false]).unwrap();
    let rows = model.embed(&batch, Pooling::Mean, &[false, true]).unwrap();
    assert_eq!(rows[0], pooled[0], "an unmarked row stays pooled");
    assert_eq!(
        rows[1].len(),
        4 * 32,
        "4 real tokens × hidden 32, no padding"
    );
    let mean: Vec<f32> = (0..32)
        .map(|d| (0..4).map(|t| rows[1][t * 32 + d]).sum::<f32>() / 4.0)
        .collect();
    assert!(
        close(&mean, &pooled[1]) < 1e-5,
        "mean of the token states is the pooled row"
    );
}

#[test]
fn a_truncated_or_garbled_weights_file_is_refused_with_the_file_named() {
    // The weights are read tensor by tensor (bert/weights.rs): a file cut short, or whose header
    // is not safetensors', fails the load with a message naming the file, never a panic or a
    // model with garbage weights.
    let dir = tempfile::tempdir().unwrap();
    tiny_model(dir.path(), "", None);
    let file = dir.path().join("model.safetensors");
    let whole = std::fs::read(&file).unwrap();
    std::fs::write(&file, &whole[..whole.len() - 100]).unwrap();
    let err = Bert::load(&spec(dir.path()))
        .err()
        .expect("a cut file must fail");
    assert!(err.to_string().contains("model.safetensors"), "{err}");
    std::fs::write(&file, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}").unwrap();
    let err = Bert::load(&spec(dir.path()))
        .err()
        .expect("garbage must fail");
    assert!(
        err.to_string().contains("not a safetensors header"),
        "{err}"
    );
    // And the intact file still loads.
    std::fs::write(&file, &whole).unwrap();
    Bert::load(&spec(dir.path())).unwrap();
}

#[test]
fn a_missing_tensor_is_named() {
    let dir = tempfile::tempdir().unwrap();
    tiny_model(dir.path(), "", Some("encoder.layer.1.output.dense.bias"));
    let err = Bert::load(&spec(dir.path())).err().expect("load must fail");
    assert!(
        err.to_string()
            .contains("encoder.layer.1.output.dense.bias"),
        "{err}"
    );
}

#[test]
fn pooling_follows_sentence_transformers() {
    // states [1, 3, 2]; the third token is padding.
    let states = Tensor::from_slice(&[1.0f32, 10.0, 3.0, -2.0, 100.0, 100.0]).view([1, 3, 2]);
    let mask = Tensor::from_slice(&[1i64, 1, 0]).view([1, 2 + 1]);
    let get = |p| Vec::<f32>::try_from(pool(&states, &mask, p).unwrap().flatten(0, -1)).unwrap();
    assert_eq!(get(Pooling::Mean), vec![2.0, 4.0]);
    assert_eq!(get(Pooling::Cls), vec![1.0, 10.0]);
    assert_eq!(get(Pooling::Max), vec![3.0, 10.0]);
    assert_eq!(get(Pooling::LastToken), vec![3.0, -2.0]);
    let s = get(Pooling::MeanSqrtLen);
    assert!((s[0] - 4.0 / 2f32.sqrt()).abs() < 1e-6 && (s[1] - 8.0 / 2f32.sqrt()).abs() < 1e-6);
}

#[test]
fn padded_batches_pad_to_the_longest_text_only() {
    let p = Padded::new([&text(&[2, 3]), &text(&[2, 9, 9, 3])], 0);
    assert_eq!((p.rows, p.cols), (2, 4));
    assert_eq!(p.ids, vec![2, 3, 0, 0, 2, 9, 9, 3]);
    assert_eq!(p.mask, vec![1, 1, 0, 0, 1, 1, 1, 1]);
    assert_eq!(p.padded_tokens(), 8);
}
