//! `actor-infer bench`: drive a running server over gRPC or HTTP and report throughput,
//! latency and the server's own stage breakdown; or, with `--raw`, run the same texts straight
//! through the model in this process, for each batch size, with the same thread settings:
//! the limit the server is measured against.

use std::{
    collections::BTreeMap,
    io::{IsTerminal, Write},
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use clap::Args;
use serde_json::{Value, json};

use super::cli::Cli;
use crate::{
    actors::supervisor::EXIT_CONFIG,
    api::grpc::pb::{InferRequest, inference_service_client::InferenceServiceClient},
    config::{Config, Transport, Workload},
    model::{Model, ModelSpec, TextTokenizer, bert::Padded},
};

/// A workload that cannot be run as given.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// `--tokens` is not `N` or `MIN-MAX` with N at least 3.
    #[error("--tokens `{0}`: expected N or MIN-MAX, N at least 3")]
    Tokens(String),
    /// The texts file cannot be read.
    #[error("{path}: {source}")]
    TextsFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The texts file holds no texts.
    #[error("{0} has no texts")]
    NoTexts(PathBuf),
}

/// The HTTP route `bench --transport http` drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HttpRoute {
    /// `POST /v1/embeddings`.
    Openai,
    /// `POST /embed`.
    Tei,
}

/// `actor-infer bench` options. An experiment's `workload:` section supplies defaults.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// gRPC or HTTP.
    #[arg(long, value_enum)]
    pub transport: Option<Transport>,
    /// Requests in flight at once.
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Run this long (seconds); ignored when --requests is given.
    #[arg(long)]
    pub duration_seconds: Option<f64>,
    /// Stop after this many requests (with --raw: this many batches of each size per round).
    #[arg(long)]
    pub requests: Option<u64>,
    /// Texts per request.
    #[arg(long)]
    pub texts_per_request: Option<usize>,
    /// Read texts from this file, one per line, instead of generating them.
    #[arg(long)]
    pub texts_file: Option<PathBuf>,
    /// Generated texts' length in tokens: `N` (about N each) or `MIN-MAX` (uniform).
    #[arg(long)]
    pub tokens: Option<String>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// HTTP route: `openai` (`POST /v1/embeddings`, reads `usage`) or `tei` (`POST /embed`,
    /// TEI's shape, which any TEI-compatible server answers).
    #[arg(long, value_enum, default_value = "openai")]
    pub http_route: HttpRoute,
    /// Meanwhile, this many connections scrape `GET /metrics` (JSON) back to back, the way a
    /// dashboard left open or a misconfigured scraper would: how much does that cost
    /// inference?
    #[arg(long, default_value_t = 0)]
    pub flood_metrics: usize,
    /// An HTTP header sent with every request, `NAME: VALUE` (repeatable), e.g.
    /// `--header 'X-Priority: interactive'`; HTTP only.
    #[arg(long = "header", value_name = "NAME: VALUE", value_parser = parse_header)]
    pub headers: Vec<(String, String)>,
    /// No server: the raw in-process forward of the experiment's model, per batch size.
    #[arg(long)]
    pub raw: bool,
    /// Batch sizes for --raw.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16,32,64")]
    pub batch_sizes: Vec<usize>,
}

/// Parses `--header NAME: VALUE`.
fn parse_header(s: &str) -> Result<(String, String), String> {
    let (name, value) = s
        .split_once(':')
        .ok_or_else(|| format!("`{s}` is not `NAME: VALUE`"))?;
    let (name, value) = (name.trim(), value.trim());
    reqwest::header::HeaderName::from_bytes(name.as_bytes())
        .map_err(|e| format!("`{name}` is not a header name: {e}"))?;
    reqwest::header::HeaderValue::from_str(value)
        .map_err(|e| format!("`{value}` is not a header value: {e}"))?;
    Ok((name.to_string(), value.to_string()))
}

/// The settled plan.
#[derive(Debug, Clone)]
struct Plan {
    transport: Transport,
    concurrency: usize,
    duration: Duration,
    requests: Option<u64>,
    texts_per_request: usize,
    texts: Vec<String>,
}

/// Common one-token English words: each is a single WordPiece token for BERT's vocabulary, so
/// a generated text of N-2 words is N tokens with [CLS] and [SEP].
const WORDS: &[&str] = &[
    "the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "server", "model", "fast",
    "time", "people", "water", "light", "house", "world", "small", "great", "music", "city",
    "night", "paper", "river", "green", "table", "money", "story", "plant", "stone", "heart",
    "train", "field", "black", "white", "voice", "dream", "sound", "space", "power",
];

/// Texts of `spec` tokens (`N` or `MIN-MAX`), deterministic.
pub fn generate_texts(spec: &str, count: usize) -> Result<Vec<String>, PlanError> {
    let (lo, hi) = match spec.split_once('-') {
        Some((a, b)) => (a.trim().parse::<usize>(), b.trim().parse::<usize>()),
        None => (spec.trim().parse(), spec.trim().parse()),
    };
    let (lo, hi) = match (lo, hi) {
        (Ok(l), Ok(h)) if l >= 3 && h >= l => (l, h),
        _ => return Err(PlanError::Tokens(spec.to_string())),
    };
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    Ok((0..count)
        .map(|_| {
            let n = lo + (next() as usize) % (hi - lo + 1);
            (0..n - 2)
                .map(|_| WORDS[(next() as usize) % WORDS.len()])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect())
}

fn plan(
    args: &BenchArgs,
    workload: &Workload,
    folder: Option<&std::path::Path>,
) -> Result<Plan, PlanError> {
    let texts_file = args.texts_file.clone().or_else(|| {
        workload
            .texts_file
            .as_ref()
            .map(|p| folder.map(|f| f.join(p)).unwrap_or_else(|| p.clone()))
    });
    let texts = match texts_file {
        Some(f) => {
            let t: Vec<String> = std::fs::read_to_string(&f)
                .map_err(|source| PlanError::TextsFile {
                    path: f.clone(),
                    source,
                })?
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(str::to_owned)
                .collect();
            if t.is_empty() {
                return Err(PlanError::NoTexts(f));
            }
            t
        }
        None => generate_texts(
            args.tokens
                .as_deref()
                .or(workload.tokens.as_deref())
                .unwrap_or("12"),
            1024,
        )?,
    };
    Ok(Plan {
        transport: args
            .transport
            .or(workload.transport)
            .unwrap_or(Transport::Grpc),
        concurrency: args
            .concurrency
            .or(workload.concurrency)
            .unwrap_or(1)
            .max(1),
        duration: Duration::from_secs_f64(
            args.duration_seconds
                .or(workload.duration_seconds)
                .unwrap_or(10.0)
                .max(0.1),
        ),
        requests: args.requests.or(workload.requests),
        texts_per_request: args
            .texts_per_request
            .or(workload.texts_per_request)
            .unwrap_or(1)
            .max(1),
        texts,
    })
}

/// What every client task adds to.
#[derive(Default)]
struct Tally {
    latencies_us: Vec<u64>,
    texts: u64,
    tokens: u64,
    errors: BTreeMap<String, u64>,
    /// The first failure in full (status and the start of the server's answer), so a report
    /// can say why a scenario failed, not only how often.
    first_error: Option<String>,
}

/// Runs the benchmark; returns the process exit code.
pub fn run(
    args: BenchArgs,
    experiment: Option<PathBuf>,
    config: Option<Config>,
    http_port: u16,
    grpc_port: u16,
    host: String,
) -> i32 {
    let workload = config
        .as_ref()
        .map(|c| c.workload.clone())
        .unwrap_or_default();
    let folder = experiment
        .as_ref()
        .and_then(|p| p.parent().map(|f| f.to_path_buf()));
    let plan = match plan(&args, &workload, folder.as_deref()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("actor-infer bench: {e}");
            return 2;
        }
    };
    if args.raw {
        let Some(config) = config else {
            eprintln!("actor-infer bench --raw needs --experiment (the model to load)");
            return 2;
        };
        return raw(&args, &plan, &config);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    rt.block_on(drive(&args, plan, host, http_port, grpc_port))
}

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

async fn drive(args: &BenchArgs, plan: Plan, host: String, http_port: u16, grpc_port: u16) -> i32 {
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

/// The limit: tokenize + pad + forward in this process, one thread of control, for each
/// batch size, with the experiment's intra-op threads.
fn raw(args: &BenchArgs, plan: &Plan, config: &Config) -> i32 {
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

/// `actor-infer bench ...`; returns the exit code.
pub fn main(cli: &Cli, args: BenchArgs) -> i32 {
    let config = match &cli.experiment {
        Some(path) => match Config::load(path, &cli.overrides()) {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("actor-infer bench: configuration error: {e}");
                return EXIT_CONFIG;
            }
        },
        None => None,
    };
    let target =
        match super::doctor::Target::from_config(cli.experiment.as_deref(), &cli.overrides()) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("actor-infer bench: {e}");
                return EXIT_CONFIG;
            }
        };
    run(
        args,
        cli.experiment.clone(),
        config,
        target.http_port,
        target.grpc_port,
        target.host,
    )
}
