//! OpenTelemetry against a real receiver: an OTLP collector the test starts (the collector's
//! `TraceService` over gRPC with tonic, or OTLP/HTTP on a plain socket, both decoding the
//! protobuf the server sends), asserting that one request yields one trace continuing the
//! caller's `traceparent`, with the expected spans, parents, attributes and resource; that the
//! sampling ratio holds; and that a collector that is down costs no request. The cost of export
//! (off / collector up / collector down) is a benchmark, not a timed test:
//! `cargo nextest run --release --features fault-injection -E 'binary(telemetry)' --run-ignored only --no-capture`.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{BufRead, BufReader, Read, Write},
    net::TcpListener,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use common::{Server, experiment, http_request_with};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{KeyValue, any_value::Value as Any},
};
use prost::Message as _;

/// A span as received, with its resource's attributes.
#[derive(Debug, Clone)]
struct Got {
    trace_id: String,
    span_id: String,
    parent: String,
    name: String,
    trace_state: String,
    attributes: BTreeMap<String, String>,
    resource: BTreeMap<String, String>,
    links: Vec<String>,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| {
            let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Any::StringValue(s)) => s.clone(),
                Some(Any::IntValue(i)) => i.to_string(),
                Some(Any::BoolValue(b)) => b.to_string(),
                Some(Any::DoubleValue(d)) => d.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), v)
        })
        .collect()
}

/// What a collector received.
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<Got>>>);

impl Received {
    fn add(&self, req: ExportTraceServiceRequest) {
        let mut all = self.0.lock().unwrap();
        for rs in req.resource_spans {
            let resource = attributes(&rs.resource.map(|r| r.attributes).unwrap_or_default());
            for ss in rs.scope_spans {
                for s in ss.spans {
                    all.push(Got {
                        trace_id: hex(&s.trace_id),
                        span_id: hex(&s.span_id),
                        parent: hex(&s.parent_span_id),
                        name: s.name,
                        trace_state: s.trace_state,
                        attributes: attributes(&s.attributes),
                        resource: resource.clone(),
                        links: s.links.iter().map(|l| hex(&l.span_id)).collect(),
                    });
                }
            }
        }
    }

    fn spans(&self) -> Vec<Got> {
        self.0.lock().unwrap().clone()
    }

    /// Waits (20 s at most) until trace `trace_id` holds spans of every name in `names`.
    fn wait_for(&self, trace_id: &str, names: &[&str]) -> Vec<Got> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let spans: Vec<Got> = self
                .spans()
                .into_iter()
                .filter(|s| s.trace_id == trace_id)
                .collect();
            let have: BTreeSet<&str> = spans.iter().map(|s| s.name.as_str()).collect();
            if names.iter().all(|n| have.contains(n)) {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "trace {trace_id} never held {names:?}; received: {:#?}",
                self.spans()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[tonic::async_trait]
impl TraceService for Received {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.add(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// An OTLP collector on a free loopback port, on threads of its own; stopped on drop.
struct Collector {
    endpoint: String,
    received: Received,
    stop: Arc<AtomicBool>,
    grpc_stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Collector {
    /// OTLP/gRPC: the collector's TraceService, served by tonic.
    fn grpc() -> Collector {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        listener.set_nonblocking(true).unwrap();
        let received = Received::default();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let service = TraceServiceServer::new(received.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                tonic::transport::Server::builder()
                    .add_service(service)
                    .serve_with_incoming_shutdown(
                        tonic::transport::server::TcpIncoming::from(listener),
                        async {
                            let _ = rx.await;
                        },
                    )
                    .await
                    .unwrap();
            });
        });
        Collector {
            endpoint,
            received,
            stop: Arc::new(AtomicBool::new(false)),
            grpc_stop: Some(tx),
            thread: Some(thread),
        }
    }

    /// OTLP/HTTP with protobuf bodies: `POST /v1/traces`, answered 200 with an empty
    /// `ExportTraceServiceResponse`.
    fn http() -> Collector {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        listener.set_nonblocking(true).unwrap();
        let received = Received::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s) = (received.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let r = r.clone();
                        std::thread::spawn(move || serve_http(conn, &r));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Collector {
            endpoint,
            received,
            stop,
            grpc_stop: None,
            thread: Some(thread),
        }
    }
}

/// One OTLP/HTTP connection: requests until the client closes it.
fn serve_http(conn: std::net::TcpStream, received: &Received) {
    conn.set_nonblocking(false).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut writer = conn.try_clone().unwrap();
    let mut reader = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
        let mut length = 0usize;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        assert_eq!(path, "/v1/traces", "OTLP/HTTP posts traces to /v1/traces");
        received.add(ExportTraceServiceRequest::decode(body.as_slice()).unwrap());
        let _ = writer.write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n",
        );
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(tx) = self.grpc_stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Export every 100 ms rather than every 5 s.
const FAST_EXPORT: &[(&str, &str)] = &[("OTEL_BSP_SCHEDULE_DELAY", "100")];

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";

fn traceparent() -> String {
    format!("00-{TRACE_ID}-{PARENT_ID}-01")
}

fn serve_with(collector_endpoint: &str, extra: &str) -> Server {
    Server::start_with(
        experiment(&format!(
            "experiment:\n  name: traced\ntelemetry:\n  otlp_endpoint: {collector_endpoint}\n{extra}\
             logging:\n  level: actor_infer=debug,info\n"
        )),
        FAST_EXPORT,
    )
}

fn by_name<'a>(spans: &'a [Got], name: &str) -> &'a Got {
    let found: Vec<&Got> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(found.len(), 1, "one {name} span: {spans:#?}");
    found[0]
}

#[test]
fn one_http_request_yields_one_trace_continuing_its_traceparent() {
    let collector = Collector::grpc();
    let server = serve_with(&collector.endpoint, "");
    let tp = traceparent();
    let (status, body, _) = http_request_with(
        &server.http_addr,
        "POST",
        "/embed",
        &[
            ("content-type", "application/json"),
            ("x-request-id", "otel-1"),
            ("traceparent", &tp),
            ("tracestate", "vendor=abc"),
        ],
        br#"{"inputs": ["trace me", "and me"]}"#,
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    collector.received.wait_for(
        TRACE_ID,
        &["request", "tokenize", "queue", "inference", "batch"],
    );
    // Nothing else was traced: one request, one trace. The stop sends the exporter's last
    // spans before the process ends, so once it has exited the collector holds all there is.
    let log = server.log.clone();
    server.stop_clean();
    let spans = collector.received.spans();
    let traces: BTreeSet<&str> = spans.iter().map(|s| s.trace_id.as_str()).collect();
    assert_eq!(traces, BTreeSet::from([TRACE_ID]), "{spans:#?}");
    assert_eq!(spans.len(), 5, "{spans:#?}");

    let request = by_name(&spans, "request");
    assert_eq!(request.parent, PARENT_ID, "the caller's span is the parent");
    assert_eq!(request.trace_state, "vendor=abc");
    for (k, v) in [
        ("transport", "http"),
        ("route", "/embed"),
        ("request_id", "otel-1"),
        ("traceparent", tp.as_str()),
    ] {
        assert_eq!(
            request.attributes.get(k).map(String::as_str),
            Some(v),
            "{request:#?}"
        );
    }
    for name in ["tokenize", "queue", "inference"] {
        let s = by_name(&spans, name);
        assert_eq!(
            s.parent, request.span_id,
            "{name} is a child of the request"
        );
    }
    assert_eq!(by_name(&spans, "tokenize").attributes["texts"], "2");
    let batch = by_name(&spans, "batch");
    assert_eq!(batch.parent, by_name(&spans, "inference").span_id);
    assert_eq!(batch.attributes["texts"], "2", "{batch:#?}");
    assert_eq!(batch.attributes["worker"], "0");
    assert!(batch.attributes.contains_key("padded_tokens"), "{batch:#?}");
    let ids: BTreeSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    assert_eq!(ids.len(), 5, "five distinct spans");
    // The resource says who sent them.
    let r = &request.resource;
    assert_eq!(r["service.name"], "actor-infer");
    assert_eq!(r["service.version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(r["actor_infer.experiment"], "traced");
    // The traceparent is logged with the request id.
    let log = log.lock().unwrap().clone();
    assert!(
        log.lines()
            .any(|l| l.contains("request_id=otel-1") && l.contains(&tp)),
        "{log}"
    );
    assert!(
        log.contains("OpenTelemetry: exporting traces over OTLP"),
        "{log}"
    );
}

#[test]
fn a_batch_serving_two_requests_is_in_the_oldest_ones_trace_and_links_the_other() {
    let collector = Collector::grpc();
    let server = Server::start_with(
        experiment(&format!(
            "telemetry:\n  otlp_endpoint: {}\n",
            collector.endpoint
        )),
        &[FAST_EXPORT[0], (actor_infer::fault::ENV, "1")],
    );
    // A slow text holds the only worker, so the next two requests queue and share a batch.
    let addr = server.http_addr.clone();
    let slow = std::thread::spawn(move || {
        common::embed(&addr, actor_infer::fault::Fault::WorkerSlow.text()).unwrap()
    });
    common::wait_worker_busy(&server);
    let traces = [
        "0af7651916cd43dd8448eb211c80319c",
        "1bf7651916cd43dd8448eb211c80319d",
    ];
    let mut sent: Vec<std::thread::JoinHandle<u16>> = Vec::new();
    for (i, trace) in traces.iter().enumerate() {
        let addr = server.http_addr.clone();
        let tp = format!("00-{trace}-{PARENT_ID}-01");
        sent.push(std::thread::spawn(move || {
            http_request_with(
                &addr,
                "POST",
                "/embed",
                &[("content-type", "application/json"), ("traceparent", &tp)],
                format!(r#"{{"inputs": "queued {i}"}}"#).as_bytes(),
            )
            .unwrap()
            .0
        }));
        // The first is queued (tokenized, waiting for the worker) before the second is sent.
        let deadline = Instant::now() + Duration::from_secs(20);
        while common::scrape(&server, "actor_infer_queue_depth") < (i + 1) as f64 {
            assert!(
                Instant::now() < deadline,
                "request {i} never queued:\n{}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    for s in sent {
        assert_eq!(s.join().unwrap(), 200);
    }
    assert_eq!(slow.join().unwrap().0, 200);
    let first = collector
        .received
        .wait_for(traces[0], &["request", "inference", "batch"]);
    let second = collector
        .received
        .wait_for(traces[1], &["request", "inference"]);
    let batch = by_name(&first, "batch");
    assert_eq!(
        batch.attributes["texts"], "2",
        "both requests in one batch: {batch:#?}"
    );
    assert_eq!(batch.parent, by_name(&first, "inference").span_id);
    assert_eq!(
        batch.links,
        vec![by_name(&second, "request").span_id.clone()],
        "the batch links the other request it served"
    );
    assert!(
        !second.iter().any(|s| s.name == "batch"),
        "the batch belongs to one trace"
    );
    server.stop_clean();
}

#[tokio::test]
async fn a_grpc_call_continues_the_traceparent_in_its_metadata() {
    use actor_infer::api::grpc::pb::InferRequest;
    let collector = Collector::grpc();
    let server = serve_with(&collector.endpoint, "");
    let mut client = common::grpc(&server).await;
    let mut request = tonic::Request::new(InferRequest {
        texts: vec!["over gRPC".into()],
        request_id: "otel-grpc".into(),
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("traceparent", traceparent().parse().unwrap());
    client.infer(request).await.unwrap();
    let received = collector.received.clone();
    let spans = tokio::task::spawn_blocking(move || {
        received.wait_for(
            TRACE_ID,
            &["request", "tokenize", "queue", "inference", "batch"],
        )
    })
    .await
    .unwrap();
    let request = by_name(&spans, "request");
    assert_eq!(request.parent, PARENT_ID);
    assert_eq!(request.attributes["transport"], "grpc");
    assert_eq!(request.attributes["route"], "Infer");
    assert_eq!(request.attributes["request_id"], "otel-grpc");
    server.stop_clean();
}

#[test]
fn otlp_over_http_exports_a_new_trace_for_a_request_without_traceparent() {
    let collector = Collector::http();
    let server = serve_with(&collector.endpoint, "  otlp_protocol: http/protobuf\n");
    let body = serde_json::json!({
        "inputs": [{ "name": "text", "datatype": "BYTES", "shape": [1], "data": ["untraced caller"] }]
    });
    let (status, out, _) = http_request_with(
        &server.http_addr,
        "POST",
        "/v2/models/all-MiniLM-L6-v2/infer",
        &[("content-type", "application/json")],
        body.to_string().as_bytes(),
    )
    .unwrap();
    assert_eq!(status, 200, "{out}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let request = loop {
        if let Some(s) = collector
            .received
            .spans()
            .into_iter()
            .find(|s| s.name == "request")
        {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "no request span arrived over OTLP/HTTP"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(request.parent, "", "a root span: no traceparent came");
    assert_eq!(request.attributes["route"], "/v2/models/{name}/infer");
    assert!(!request.attributes.contains_key("traceparent"));
    collector.received.wait_for(
        &request.trace_id,
        &["tokenize", "queue", "inference", "batch"],
    );
    server.stop_clean();
}

#[test]
fn sampling_ratio_zero_keeps_only_traces_the_caller_sampled() {
    let collector = Collector::grpc();
    let server = serve_with(&collector.endpoint, "  sampling_ratio: 0.0\n");
    for _ in 0..5 {
        let (status, _) = common::embed(&server.http_addr, "not sampled").unwrap();
        assert_eq!(status, 200);
    }
    let tp = traceparent();
    let (status, _, _) = http_request_with(
        &server.http_addr,
        "POST",
        "/embed",
        &[("content-type", "application/json"), ("traceparent", &tp)],
        br#"{"inputs": "sampled upstream"}"#,
    )
    .unwrap();
    assert_eq!(status, 200);
    collector.received.wait_for(TRACE_ID, &["request", "batch"]);
    // Once the server has stopped, every span it would ever export has been exported.
    server.stop_clean();
    let traces: BTreeSet<String> = collector
        .received
        .spans()
        .into_iter()
        .map(|s| s.trace_id)
        .collect();
    assert_eq!(
        traces,
        BTreeSet::from([TRACE_ID.to_string()]),
        "only the caller's trace"
    );
}

#[test]
fn a_collector_that_is_down_costs_no_request() {
    // Nothing listens there.
    let endpoint = format!("http://127.0.0.1:{}", common::unused_port());
    let server = serve_with(&endpoint, "");
    let tp = traceparent();
    for i in 0..40 {
        let (status, body, _) = http_request_with(
            &server.http_addr,
            "POST",
            "/embed",
            &[("content-type", "application/json"), ("traceparent", &tp)],
            format!(r#"{{"inputs": "request {i}"}}"#).as_bytes(),
        )
        .unwrap();
        assert_eq!(status, 200, "{body}");
    }
    // Exports fail in the background; the server says so once, then stops cleanly (the last
    // flush is bounded).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.log().contains("cannot export spans") {
        assert!(
            Instant::now() < deadline,
            "no export failure logged:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(server.log().matches("cannot export spans").count(), 1);
    let started = Instant::now();
    server.stop_clean();
    println!(
        "stopped in {:.2} s with the collector down",
        started.elapsed().as_secs_f64()
    );
}

/// Runs `tests/kserve_client.py` (Triton's clients, from the venv `make test-deps` makes).
fn tritonclient(args: &[&str], stdin: &str) -> serde_json::Value {
    common::run_json(
        std::process::Command::new(common::venv_python("tritonclient-venv"))
            .arg(common::root().join("tests/kserve_client.py"))
            .args(args),
        stdin.as_bytes(),
        Duration::from_secs(180),
    )
}

/// What `make run` serves (configs/default.yaml, ports moved to free ones), with tracing turned
/// on by environment as the README says: Triton's clients are answered and the collector gets
/// the trace.
#[test]
fn make_runs_config_serves_tritonclient_and_exports_its_trace() {
    let collector = Collector::grpc();
    let exp = common::Experiment {
        dir: tempfile::tempdir().unwrap(),
        path: common::root().join("configs/default.yaml"),
    };
    let server = Server::start_with(
        exp,
        &[
            FAST_EXPORT[0],
            ("ACTOR_INFER__TELEMETRY__OTLP_ENDPOINT", &collector.endpoint),
        ],
    );
    let grpc = server.grpc.trim_start_matches("http://").to_string();
    let model = "all-MiniLM-L6-v2";
    let probe = tritonclient(&["probe", &server.http_addr, &grpc, model], "");
    assert_eq!(probe["http"]["model_ready"], true, "{probe}");
    assert_eq!(probe["grpc"]["model_ready"], true, "{probe}");
    let out = tritonclient(
        &["infer", &server.http_addr, &grpc, model],
        r#"{"inputs": {"text": ["Hello world, this is a test."]}, "outputs": ["embedding"]}"#,
    );
    for t in ["http_json", "http_binary", "grpc"] {
        assert_eq!(
            out[t]["outputs"]["embedding"]["shape"],
            serde_json::json!([1, 384]),
            "{t}"
        );
    }
    // Three inference requests (one per transport), each its own trace with its five spans.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let spans = collector.received.spans();
        let requests: Vec<&Got> = spans.iter().filter(|s| s.name == "request").collect();
        let batches = spans.iter().filter(|s| s.name == "batch").count();
        if requests.len() == 3 && batches == 3 {
            let routes: BTreeSet<&str> = requests
                .iter()
                .map(|r| r.attributes["route"].as_str())
                .collect();
            assert_eq!(
                routes,
                BTreeSet::from(["/v2/models/{name}/infer", "ModelInfer"]),
                "{requests:#?}"
            );
            let traces: BTreeSet<&str> = requests.iter().map(|r| r.trace_id.as_str()).collect();
            assert_eq!(traces.len(), 3, "one trace per request");
            assert_eq!(requests[0].resource["actor_infer.experiment"], "default");
            break;
        }
        assert!(Instant::now() < deadline, "spans received: {spans:#?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    server.stop_clean();
}

#[test]
fn telemetry_off_exports_nothing_but_logs_the_traceparent() {
    let server = Server::start(experiment("logging:\n  level: actor_infer=debug,info\n"));
    let tp = traceparent();
    let (status, _, _) = http_request_with(
        &server.http_addr,
        "POST",
        "/embed",
        &[
            ("content-type", "application/json"),
            ("x-request-id", "no-otel"),
            ("traceparent", &tp),
        ],
        br#"{"inputs": "plain"}"#,
    )
    .unwrap();
    assert_eq!(status, 200);
    let log = server.log();
    assert!(!log.contains("OpenTelemetry"), "{log}");
    assert!(
        log.lines()
            .any(|l| l.contains("request_id=no-otel") && l.contains(&tp)),
        "{log}"
    );
    server.stop_clean();
}

/// The figure behind the README's "never slows serving": the same gRPC load on a server with
/// telemetry off, exporting to a collector that is up, and to one that is down (every span
/// traced: sampling 1.0, the caller's traceparent absent). Run it alone:
/// `cargo nextest run --release --features fault-injection -E 'binary(telemetry)' --run-ignored only --no-capture`.
#[test]
#[ignore = "a benchmark: run it alone, see the doc comment"]
fn otlp_export_cost_benchmark() {
    let seconds = std::env::var("OTLP_BENCH_SECONDS").unwrap_or_else(|_| "15".into());
    let collector = Collector::grpc();
    let down = format!("http://127.0.0.1:{}", common::unused_port());
    let rounds: usize = std::env::var("OTLP_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let mut rows = Vec::new();
    let mut by_case: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
    for round in 0..rounds {
        for (case, endpoint) in [
            ("off", None),
            ("collector up", Some(collector.endpoint.as_str())),
            ("collector down", Some(down.as_str())),
        ] {
            let yaml = match endpoint {
                None => String::new(),
                Some(e) => format!("telemetry:\n  otlp_endpoint: {e}\n"),
            };
            let server = Server::start(experiment(&yaml));
            let http = server.http_addr.rsplit(':').next().unwrap().to_string();
            let grpc = server.grpc.rsplit(':').next().unwrap().to_string();
            let r = common::run_json(
                common::binary().args([
                    "bench",
                    "--json",
                    "--http-port",
                    &http,
                    "--grpc-port",
                    &grpc,
                    "--transport",
                    "grpc",
                    "--concurrency",
                    "8",
                    "--duration-seconds",
                    &seconds,
                    "--texts-per-request",
                    "1",
                    "--tokens",
                    "12",
                ]),
                b"",
                Duration::from_secs(300),
            );
            assert_eq!(r["errors"], serde_json::json!({}), "{r}");
            let (tps, p50) = (
                r["texts_per_s"].as_f64().unwrap(),
                r["latency_ms"]["p50"].as_f64().unwrap(),
            );
            by_case.entry(case).or_default().push((tps, p50));
            rows.push(format!(
                "| {round} | {case:<14} | {tps:>8.1} texts/s | p50 {p50:>6.2} ms | p99 {:>6.2} ms |",
                r["latency_ms"]["p99"].as_f64().unwrap(),
            ));
            server.stop_clean();
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let medians: Vec<String> = by_case
        .into_iter()
        .map(|(case, runs)| {
            format!(
                "| median | {case:<14} | {:>8.1} texts/s | p50 {:>6.2} ms |",
                median(runs.iter().map(|r| r.0).collect()),
                median(runs.iter().map(|r| r.1).collect()),
            )
        })
        .collect();
    println!(
        "gRPC Infer, concurrency 8, 1 text of ~12 tokens, {seconds} s per run, rounds \
         interleaved, every request traced (5 spans each):\n{}\n{}\nspans received by the \
         collector: {}",
        rows.join("\n"),
        medians.join("\n"),
        collector.received.spans().len()
    );
}
