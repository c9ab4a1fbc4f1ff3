//! `--raw`: the same texts straight through the model in this process, per batch size, with
//! the server's thread settings: the limit the server is measured against.

use std::{io::Write, time::Instant};

use serde_json::{Value, json};

use crate::{
    config::Config,
    model::{Model, ModelSpec, TextTokenizer, bert::Padded},
};

use super::*;

/// The limit: tokenize + pad + forward in this process, one thread of control, for each
/// batch size, with the experiment's intra-op threads.
pub(super) fn raw(args: &BenchArgs, plan: &Plan, config: &Config) -> i32 {
    let (device, bf16) = match crate::model::device::select(config.model()) {
        Ok(choice) => (choice.device, choice.bf16),
        Err(e) => {
            eprintln!("actor-infer bench --raw: configuration error: {e}");
            return 2;
        }
    };
    let spec = match ModelSpec::load(config.model(), device) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("actor-infer bench --raw: {e}");
            return 1;
        }
    };
    let tokenizer = match TextTokenizer::load(&spec.path, spec.max_seq_length) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("actor-infer bench --raw: {e}");
            return 1;
        }
    };
    let threads = config.settings(0).intra_op_threads;
    tch::set_num_threads(threads as i32);
    let model = match Model::load(&spec) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("actor-infer bench --raw: {e}");
            return 1;
        }
    };
    let pad = spec.encoder.pad_token_id;
    // Batch sizes are measured in interleaved rounds, so a slow spell of a shared machine
    // spreads over all of them instead of skewing one.
    const ROUNDS: usize = 4;
    let sizes: Vec<usize> = args.batch_sizes.iter().map(|&b| b.max(1)).collect();
    let slice = plan.duration.as_secs_f64() / (sizes.len().max(1) * ROUNDS) as f64;
    let mut cursor = 0;
    let mut run_batch = |bs: usize| -> usize {
        let enc: Vec<_> = (0..bs)
            .map(|i| {
                let text = &plan.texts[(cursor + i) % plan.texts.len()];
                tokenizer
                    .encode(i, text, true)
                    .expect("bench texts tokenize")
            })
            .collect();
        cursor += bs;
        let tokens = enc.iter().map(|e| e.len()).sum();
        let batch = Padded::new(&enc, pad);
        let _ = model.run(&batch, spec.pooling, &[]);
        tokens
    };
    // Per size. Tokenization is timed too.
    let mut acc: Vec<RawTally> = vec![RawTally::default(); sizes.len()];
    for &bs in &sizes {
        for _ in 0..3 {
            run_batch(bs); // warm up every shape first
        }
    }
    for _ in 0..ROUNDS {
        for (k, &bs) in sizes.iter().enumerate() {
            let start = Instant::now();
            let mut n = 0;
            // --requests N: N batches of each size per round instead of a share of the time.
            while match plan.requests {
                Some(r) => n < r.max(1),
                None => start.elapsed().as_secs_f64() < slice || n < 2,
            } {
                let (t0, c0) = (Instant::now(), process_cpu_ms());
                let tokens = run_batch(bs);
                let a = &mut acc[k];
                a.texts += bs;
                a.tokens += tokens;
                a.batch_ms.push(t0.elapsed().as_secs_f64() * 1e3);
                a.cpu_ms.push(process_cpu_ms() - c0);
                n += 1;
            }
            acc[k].seconds += start.elapsed().as_secs_f64();
        }
    }
    let mut rows = Vec::new();
    for (k, &bs) in sizes.iter().enumerate() {
        let RawTally {
            texts,
            tokens,
            seconds: secs,
            batch_ms: lat,
            cpu_ms: cpu,
        } = &mut acc[k];
        lat.sort_by(f64::total_cmp);
        cpu.sort_by(f64::total_cmp);
        let p50 = lat[lat.len() / 2];
        rows.push(json!({
            "batch_size": bs,
            "texts_per_s": *texts as f64 / *secs,
            "tokens_per_s": *tokens as f64 / *secs,
            "batch_ms_p50": p50,
            "cpu_ms_p50": cpu[cpu.len() / 2],
            "batches": lat.len(),
        }));
        if !args.json {
            eprintln!(
                "raw batch {bs:>3}: {:>8.1} texts/s  p50 {p50:.2} ms/batch",
                *texts as f64 / *secs
            );
        }
    }
    let best = rows
        .iter()
        .max_by(|a, b| {
            a["texts_per_s"]
                .as_f64()
                .unwrap_or(0.0)
                .total_cmp(&b["texts_per_s"].as_f64().unwrap_or(0.0))
        })
        .cloned()
        .unwrap_or(Value::Null);
    let report = json!({
        "raw": true,
        "intra_op_threads": threads,
        "device": crate::model::device_name(spec.device),
        "dtype": spec.dtype.as_str(),
        "bf16": bf16.map(|b| b.to_string()),
        "batches": rows,
        "best": best,
    });
    if args.json {
        println!("{report}");
    } else {
        println!(
            "raw limit: best {:.1} texts/s at batch {} ({} intra-op threads)",
            best["texts_per_s"].as_f64().unwrap_or(0.0),
            best["batch_size"],
            threads
        );
    }
    let _ = std::io::stdout().flush();
    0
}

/// What `--raw` adds up for one batch size.
#[derive(Clone, Default)]
struct RawTally {
    texts: usize,
    tokens: usize,
    seconds: f64,
    /// Each batch's wall time.
    batch_ms: Vec<f64>,
    /// Each batch's CPU time (every thread of the process): what a batch costs whatever else
    /// the machine runs (with one intra-op thread; with more it includes teammates spinning at
    /// barriers), so on a shared machine it tells two builds apart where wall times cannot.
    cpu_ms: Vec<f64>,
}

/// CPU time this process has used (every thread), in ms.
fn process_cpu_ms() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given; the clock id is always valid.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 * 1e3 + t.tv_nsec as f64 / 1e6
}
