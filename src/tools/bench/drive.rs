//! Driving a running server: the requests, the `/metrics` flood, the server's own stage
//! breakdown read from its metrics, and the report.

use std::{
    io::IsTerminal,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::{
    api::grpc::pb::{InferRequest, inference_service_client::InferenceServiceClient},
    config::Transport,
};

use super::*;

/// Scrapes `GET /metrics` back to back until `stop`; returns how many were answered.
async fn flood_metrics(http: reqwest::Client, base: String, stop: Arc<AtomicBool>) -> u64 {
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let answered = http
            .get(format!("{base}/metrics"))
            .header("accept", "application/json")
            .send()
            .await;
        if let Ok(res) = answered
            && res.bytes().await.is_ok()
        {
            n += 1;
        }
    }
    n
}

pub(super) async fn drive(
    args: &BenchArgs,
    plan: Plan,
    host: String,
    http_port: u16,
    grpc_port: u16,
) -> i32 {
    let json_out = args.json;
    let route = args.http_route;
    let http_base = format!("http://{host}:{http_port}");
    let grpc_url = format!("http://{host}:{grpc_port}");
    let before = server_metrics(&http_base).await;
    let tally = Arc::new(Mutex::new(Tally::default()));
    let sent = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let plan = Arc::new(plan);
    let start = Instant::now();
    let headers: reqwest::header::HeaderMap = args
        .headers
        .iter()
        .map(|(n, v)| {
            (
                reqwest::header::HeaderName::from_bytes(n.as_bytes()).expect("checked by clap"),
                reqwest::header::HeaderValue::from_str(v).expect("checked by clap"),
            )
        })
        .collect();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(plan.concurrency)
        .tcp_nodelay(true)
        .default_headers(headers)
        .build()
        .expect("an HTTP client");
    let mut channels = Vec::new();
    if plan.transport == Transport::Grpc {
        for _ in 0..plan.concurrency.min(4) {
            match tonic::transport::Endpoint::from_shared(grpc_url.clone())
                .expect("a valid URL")
                .tcp_nodelay(true)
                .connect()
                .await
            {
                Ok(c) => channels.push(c),
                Err(e) => {
                    eprintln!("actor-infer bench: cannot connect to {grpc_url}: {e}");
                    return 1;
                }
            }
        }
    }
    let mut tasks = Vec::new();
    for worker in 0..plan.concurrency {
        let (plan, tally, sent, done, stop, http, base) = (
            plan.clone(),
            tally.clone(),
            sent.clone(),
            done.clone(),
            stop.clone(),
            http.clone(),
            http_base.clone(),
        );
        let channel = channels.get(worker % channels.len().max(1)).cloned();
        tasks.push(tokio::spawn(async move {
            let mut grpc = channel.map(InferenceServiceClient::new);
            let mut cursor = worker * 7919;
            loop {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let n = sent.fetch_add(1, Ordering::Relaxed);
                if plan.requests.is_some_and(|r| n >= r)
                    || (plan.requests.is_none() && start.elapsed() >= plan.duration)
                {
                    break;
                }
                let texts: Vec<String> = (0..plan.texts_per_request)
                    .map(|i| plan.texts[(cursor + i) % plan.texts.len()].clone())
                    .collect();
                cursor += plan.texts_per_request;
                let t0 = Instant::now();
                // Err: (the kind, counted; the detail, kept for the first failure).
                let result: Result<u64, (String, String)> = match grpc.as_mut() {
                    Some(client) => client
                        .infer(InferRequest {
                            texts,
                            ..Default::default()
                        })
                        .await
                        .map(|r| {
                            r.into_inner()
                                .outputs
                                .iter()
                                .map(|o| u64::from(o.token_count))
                                .sum()
                        })
                        .map_err(|s| (format!("grpc {:?}", s.code()), excerpt(s.message()))),
                    None => match match route {
                        HttpRoute::Openai => http
                            .post(format!("{base}/v1/embeddings"))
                            .json(&json!({"input": texts})),
                        HttpRoute::Tei => http
                            .post(format!("{base}/embed"))
                            .json(&json!({"inputs": texts})),
                    }
                    .send()
                    .await
                    {
                        // The whole body is read (as a client must) but only OpenAI's
                        // `usage` is parsed; TEI's shape carries no token count.
                        Ok(res) if res.status().is_success() => match route {
                            HttpRoute::Openai => res
                                .json::<Value>()
                                .await
                                .map(|v| v["usage"]["prompt_tokens"].as_u64().unwrap_or(0))
                                .map_err(|e| ("http body".into(), e.to_string())),
                            HttpRoute::Tei => res
                                .bytes()
                                .await
                                .map(|_| 0)
                                .map_err(|e| ("http body".into(), e.to_string())),
                        },
                        Ok(res) => {
                            let status = res.status().as_u16();
                            let body = res.text().await.unwrap_or_default();
                            Err((format!("http {status}"), excerpt(&body)))
                        }
                        Err(e) if e.is_connect() => Err(("http connect".into(), e.to_string())),
                        Err(e) => Err(("http transport".into(), e.to_string())),
                    },
                };
                let us = t0.elapsed().as_micros() as u64;
                let mut t = tally.lock().unwrap_or_else(|p| p.into_inner());
                match result {
                    Ok(tokens) => {
                        t.latencies_us.push(us);
                        t.texts += plan.texts_per_request as u64;
                        t.tokens += tokens;
                    }
                    Err((kind, detail)) => {
                        if t.first_error.is_none() {
                            t.first_error = Some(format!("{kind}: {detail}"));
                        }
                        *t.errors.entry(kind).or_default() += 1;
                    }
                }
                drop(t);
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let floods: Vec<_> = (0..args.flood_metrics)
        .map(|_| {
            let client = reqwest::Client::builder()
                .tcp_nodelay(true)
                .build()
                .expect("an HTTP client");
            tokio::spawn(flood_metrics(client, http_base.clone(), stop.clone()))
        })
        .collect();
    // Progress bar on stderr.
    let progress = {
        let (plan, done, stop) = (plan.clone(), done.clone(), stop.clone());
        tokio::spawn(async move {
            let tty = std::io::stderr().is_terminal();
            let mut last_print = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let n = done.load(Ordering::Relaxed);
                let elapsed = start.elapsed().as_secs_f64();
                let frac = match plan.requests {
                    Some(r) => n as f64 / r.max(1) as f64,
                    None => elapsed / plan.duration.as_secs_f64(),
                }
                .min(1.0);
                let filled = (frac * 30.0) as usize;
                let line = format!(
                    "[{}{}] {:>3.0}% {n} requests, {:.1} req/s",
                    "#".repeat(filled),
                    ".".repeat(30 - filled),
                    frac * 100.0,
                    n as f64 / elapsed.max(1e-3)
                );
                if tty {
                    eprint!("\r{line}");
                } else if last_print.elapsed() >= Duration::from_secs(5) {
                    eprintln!("{line}");
                    last_print = Instant::now();
                }
            }
            if tty {
                eprintln!();
            }
        })
    };
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let _ = progress.await;
    let mut scrapes = 0;
    for f in floods {
        scrapes += f.await.unwrap_or(0);
    }
    let after = server_metrics(&http_base).await;
    let mut t = std::mem::take(&mut *tally.lock().unwrap_or_else(|p| p.into_inner()));
    t.latencies_us.sort_unstable();
    let pct = |q: f64| -> f64 {
        if t.latencies_us.is_empty() {
            return f64::NAN;
        }
        let i = ((t.latencies_us.len() as f64 - 1.0) * q).round() as usize;
        t.latencies_us[i] as f64 / 1000.0
    };
    let ok = t.latencies_us.len() as f64;
    let report = json!({
        "transport": plan.transport,
        "concurrency": plan.concurrency,
        "texts_per_request": plan.texts_per_request,
        "seconds": elapsed,
        "requests": t.latencies_us.len(),
        "requests_per_s": ok / elapsed,
        "texts_per_s": t.texts as f64 / elapsed,
        "tokens_per_s": t.tokens as f64 / elapsed,
        "latency_ms": {"p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99), "max": pct(1.0)},
        "errors": t.errors,
        "first_error": t.first_error,
        "server": stage_breakdown(before.as_ref(), after.as_ref()),
        "flood_metrics": args.flood_metrics,
        "metrics_scrapes_per_s": scrapes as f64 / elapsed,
    });
    if json_out {
        println!("{report}");
    } else {
        print_report(&report);
    }
    i32::from(ok == 0.0)
}

/// The start of an error's text, on one line (what a report row can hold).
fn excerpt(text: &str) -> String {
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match one_line.char_indices().nth(160) {
        Some((i, _)) => format!("{}...", &one_line[..i]),
        None => one_line,
    }
}

async fn server_metrics(base: &str) -> Option<Value> {
    reqwest::Client::new()
        .get(format!("{base}/metrics?format=prometheus"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()
        .map(|text| parse_stage_sums(&text))
}

/// `{stage: [sum_seconds, count]}` from the Prometheus text, added up over the models.
fn parse_stage_sums(text: &str) -> Value {
    let mut out = serde_json::Map::new();
    for line in text.lines() {
        for (suffix, idx) in [("_sum{", 0), ("_count{", 1)] {
            let prefix = format!("actor_infer_stage_duration_seconds{suffix}");
            let Some(rest) = line.strip_prefix(&prefix) else {
                continue;
            };
            let Some((labels, value)) = rest.split_once("} ") else {
                continue;
            };
            let stage = labels
                .split(',')
                .find_map(|l| l.strip_prefix("stage=\""))
                .map(|s| s.trim_end_matches('"'));
            if let (Some(stage), Ok(v)) = (stage, value.trim().parse::<f64>()) {
                let e = out.entry(stage.to_string()).or_insert(json!([0.0, 0.0]));
                e[idx] = json!(e[idx].as_f64().unwrap_or(0.0) + v);
            }
        }
    }
    Value::Object(out)
}

/// Average per stage over the benchmark (difference of the server's histograms).
fn stage_breakdown(before: Option<&Value>, after: Option<&Value>) -> Value {
    let (Some(b), Some(a)) = (before, after) else {
        return Value::Null;
    };
    let mut out = serde_json::Map::new();
    for stage in ["tokenize", "queue", "handoff", "inference", "total"] {
        let get = |v: &Value, i: usize| v[stage][i].as_f64().unwrap_or(0.0);
        let (sum, count) = (get(a, 0) - get(b, 0), get(a, 1) - get(b, 1));
        if count > 0.0 {
            out.insert(format!("avg_{stage}_ms"), json!(sum / count * 1e3));
        }
    }
    Value::Object(out)
}

fn print_report(r: &Value) {
    let f = |v: &Value| {
        v.as_f64()
            .map(|x| format!("{x:.2}"))
            .unwrap_or_else(|| "n/a".into())
    };
    println!(
        "{} · concurrency {} · {} texts/request · {:.1} s",
        r["transport"].as_str().unwrap_or("?"),
        r["concurrency"],
        r["texts_per_request"],
        r["seconds"].as_f64().unwrap_or(0.0)
    );
    println!(
        "requests/s {}   texts/s {}   tokens/s {}   ({} requests)",
        f(&r["requests_per_s"]),
        f(&r["texts_per_s"]),
        f(&r["tokens_per_s"]),
        r["requests"]
    );
    let l = &r["latency_ms"];
    println!(
        "latency ms  p50 {}  p90 {}  p99 {}  max {}",
        f(&l["p50"]),
        f(&l["p90"]),
        f(&l["p99"]),
        f(&l["max"])
    );
    println!("errors      {}", r["errors"]);
    if let Some(e) = r["first_error"].as_str() {
        println!("first error {e}");
    }
    if let Some(s) = r["server"].as_object() {
        let parts: Vec<String> = s.iter().map(|(k, v)| format!("{k} {}", f(v))).collect();
        println!("server      {}", parts.join("  "));
    }
}
