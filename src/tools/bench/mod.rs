//! `actor-infer bench`: drive a running server over gRPC or HTTP and report throughput,
//! latency and the server's own stage breakdown; or, with `--raw`, run the same texts straight
//! through the model in this process, for each batch size, with the same thread settings:
//! the limit the server is measured against.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use clap::Args;

use super::cli::Cli;

mod drive;
mod raw;

use crate::{
    actors::supervisor::EXIT_CONFIG,
    config::{Config, Transport, Workload},
};
use drive::drive;
use raw::raw;

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
