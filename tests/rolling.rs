//! Scale-out, on loopback and without a container engine: three real actor-infer replicas
//! behind a real nginx (Debian's, HTTP and gRPC upstreams), steady HTTP and gRPC load through
//! nginx, and a rolling restart (SIGTERM one replica, wait for its clean exit, start it again on
//! the same ports, wait until it serves again, then the next). No client request may fail and
//! every answer must be the reference embedding: a draining replica flips readiness, finishes
//! what it holds and answers new work with 503 (HTTP) or HTTP 503 + `UNAVAILABLE` (gRPC),
//! which nginx retries on another replica, and a closed port is a connect error nginx retries.
//! gRPC callers retry `UNAVAILABLE` as gRPC's retry policy does (at most twice), because
//! Debian 12's nginx sometimes sends an invalid retry (deploy/nginx/actor-infer.conf); such
//! client retries are counted and must stay rare.
//!
//! nginx and every replica are stopped when the test ends, even when it panics (Drop guards).

mod common;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use actor_infer::api::grpc::pb::{InferRequest, inference_service_client::InferenceServiceClient};
use common::{
    TOLERANCE, http_get, http_request, listening, max_abs_diff, spawn, unused_port, wait_for_ports,
};

/// One replica. Its first start binds port 0 and says which ports it got (`--port-file`); a
/// restart asks for the same ones again (it must come back where nginx expects it).
struct Replica {
    name: String,
    http_port: u16,
    grpc_port: u16,
    port_file: tempfile::TempDir,
    child: Option<Child>,
    log: Arc<Mutex<String>>,
}

impl Replica {
    fn new(name: &str) -> Replica {
        Replica {
            name: name.to_string(),
            http_port: 0,
            grpc_port: 0,
            port_file: tempfile::tempdir().unwrap(),
            child: None,
            log: Arc::new(Mutex::new(String::new())),
        }
    }

    /// A replica that never runs: nothing listens on its ports.
    fn absent(name: &str) -> Replica {
        let mut r = Replica::new(name);
        (r.http_port, r.grpc_port) = (unused_port(), unused_port());
        r
    }

    fn http_addr(&self) -> String {
        format!("127.0.0.1:{}", self.http_port)
    }

    fn ports_path(&self) -> PathBuf {
        self.port_file.path().join("ports.json")
    }

    /// Spawns the binary (does not wait for readiness).
    fn spawn(&mut self, exp: &Path) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let _ = std::fs::remove_file(self.ports_path());
        let (child, log) = spawn(
            &[
                "--experiment",
                exp.to_str().unwrap(),
                "--http-port",
                &self.http_port.to_string(),
                "--grpc-port",
                &self.grpc_port.to_string(),
                "--port-file",
                self.ports_path().to_str().unwrap(),
            ],
            &[],
        );
        self.child = Some(child);
        self.log = log;
    }

    /// Waits until it has bound its ports (learning them on its first start) and `/ready`
    /// answers 200.
    fn wait_ready(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        let ports = wait_for_ports(
            &self.ports_path(),
            self.child.as_mut().unwrap(),
            &self.log,
            deadline,
        );
        if self.http_port == 0 {
            (self.http_port, self.grpc_port) = (ports.http, ports.grpc);
        }
        assert_eq!(
            (ports.http, ports.grpc),
            (self.http_port, self.grpc_port),
            "{} came back on other ports",
            self.name
        );
        loop {
            if let Ok((200, _)) = http_get(&self.http_addr(), "/ready") {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "{} exited while starting ({status}):\n{}",
                    self.name,
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} never ready:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then waits for the exit.
    fn terminate(&mut self, limit: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("running");
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not stop within {limit:?}:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Inference requests this run of the replica has answered (its JSON dashboard).
    fn served(&self) -> u64 {
        http_get(&self.http_addr(), "/metrics")
            .ok()
            .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok())
            .and_then(|v| v["requests"].as_u64())
            .unwrap_or(0)
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// nginx in the foreground, in its own prefix: one process (`master_process off`), so killing
/// it leaves no worker behind.
struct Nginx {
    child: Child,
    dir: PathBuf,
}

impl Nginx {
    /// Starts nginx in `dir` in front of `replicas`, listening on loopback ports that were
    /// unused a moment before. nginx cannot bind port 0 and say which it got, so a port taken
    /// in between (nginx exits: "Address already in use") is retried with others.
    fn start(dir: &Path, replicas: &[Replica]) -> (Nginx, u16, u16) {
        for _ in 0..5 {
            let (http_port, grpc_port) = (unused_port(), unused_port());
            let conf = nginx_conf(dir, replicas, http_port, grpc_port);
            if let Some(n) = Nginx::try_start(dir, &conf, http_port) {
                return (n, http_port, grpc_port);
            }
        }
        panic!("nginx found its ports taken five times");
    }

    /// nginx on `conf`, once it listens on `http_port`; `None` if a port was taken.
    fn try_start(dir: &Path, conf: &str, http_port: u16) -> Option<Nginx> {
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let _ = std::fs::remove_file(dir.join("error.log"));
        let nginx = nginx_binary();
        let check = Command::new(&nginx)
            .args(["-t", "-q", "-p"])
            .arg(dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(&conf_path)
            .output()
            .expect("run nginx -t");
        assert!(
            check.status.success(),
            "nginx -t refused the generated config:\n{}\n{conf}",
            String::from_utf8_lossy(&check.stderr)
        );
        let child = Command::new(&nginx)
            .arg("-p")
            .arg(dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nginx");
        let mut n = Nginx {
            child,
            dir: dir.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !listening(&format!("127.0.0.1:{http_port}")) {
            if let Some(status) = n.child.try_wait().unwrap() {
                let log = n.error_log();
                if log.contains("Address already in use") {
                    return None;
                }
                panic!("nginx exited at start ({status}):\n{log}");
            }
            assert!(Instant::now() < deadline, "nginx never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(n)
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }

    fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nginx_binary() -> PathBuf {
    for p in ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"] {
        if Path::new(p).is_file() {
            return PathBuf::from(p);
        }
    }
    panic!("nginx is not installed: run `make test-deps` (scripts/test-deps.sh)");
}

/// The balancer: `deploy/nginx/actor-infer.conf` as shipped (docs/deploy.md), with this test's
/// listen ports and replica addresses, inside a main config that keeps nginx in `dir`.
fn nginx_conf(dir: &Path, replicas: &[Replica], http_port: u16, grpc_port: u16) -> String {
    let shipped = common::root().join("deploy/nginx/actor-infer.conf");
    let mut conf = std::fs::read_to_string(&shipped).expect("deploy/nginx/actor-infer.conf");
    let mut replace = |from: &str, to: &str| {
        assert!(conf.contains(from), "{} lacks `{from}`", shipped.display());
        conf = conf.replacen(from, to, 1);
    };
    replace("listen 8080;", &format!("listen 127.0.0.1:{http_port};"));
    replace(
        "listen 50051 http2;",
        &format!("listen 127.0.0.1:{grpc_port} http2;"),
    );
    // Last line first and gRPC before HTTP: a free port that happens to equal an example port
    // (50053, say) is then never taken for the example it replaced.
    for (i, r) in replicas.iter().enumerate().rev() {
        replace(
            &format!("server 127.0.0.1:{} ", 50052 + i),
            &format!("server 127.0.0.1:{} ", r.grpc_port),
        );
    }
    for (i, r) in replicas.iter().enumerate().rev() {
        replace(
            &format!("server 127.0.0.1:{} ", 8081 + i),
            &format!("server 127.0.0.1:{} ", r.http_port),
        );
    }
    let site = dir.join("actor-infer.conf");
    std::fs::write(&site, conf).unwrap();
    let d = dir.display();
    format!(
        r#"daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  log_format upstreams '$status $request_uri upstream=[$upstream_addr] upstream_status=[$upstream_status]';
  access_log {d}/access.log upstreams;
  client_body_temp_path {d}/client_body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  include {site};
}}
"#,
        site = site.display()
    )
}

/// What the clients saw.
#[derive(Default)]
struct Tally {
    http_ok: AtomicUsize,
    grpc_ok: AtomicUsize,
    /// UNAVAILABLE answers a gRPC client retried (gRPC's retry policy), with their messages.
    grpc_client_retries: Mutex<Vec<String>>,
    failures: Mutex<Vec<String>>,
}

impl Tally {
    fn ok(&self) -> usize {
        self.http_ok.load(Ordering::Relaxed) + self.grpc_ok.load(Ordering::Relaxed)
    }
    fn fail(&self, what: String) {
        self.failures.lock().unwrap().push(what);
    }
}

#[test]
fn a_rolling_restart_behind_nginx_fails_no_request() {
    let cases = common::reference();
    let case = |i: usize| &cases[i % 4]; // short texts: many requests, fast restarts
    let exp = common::experiment(&format!(
        "shutdown:\n  timeout_seconds: 10\nmodel:\n  path: {}\n  device: cpu\n  intra_op_threads: 1\n",
        common::default_model().display()
    ));
    let mut replicas: Vec<Replica> = (0..3)
        .map(|i| Replica::new(&format!("replica-{i}")))
        .collect();
    for r in &mut replicas {
        r.spawn(&exp.path);
    }
    for r in &mut replicas {
        r.wait_ready(Duration::from_secs(120));
    }

    let lb_dir = tempfile::tempdir().unwrap();
    let (nginx, lb_http, lb_grpc) = Nginx::start(lb_dir.path(), &replicas);
    let lb_http_addr = format!("127.0.0.1:{lb_http}");

    let done = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());

    // HTTP clients: TEI and OpenAI routes, one new connection to nginx per request.
    let mut threads = Vec::new();
    for c in 0..2 {
        let (done, tally, addr) = (done.clone(), tally.clone(), lb_http_addr.clone());
        let cases: Vec<(String, Vec<f32>)> = (0..4)
            .map(|i| (case(i).text.clone(), case(i).embedding.clone()))
            .collect();
        threads.push(std::thread::spawn(move || {
            let mut n = 0usize;
            while !done.load(Ordering::Relaxed) {
                let (text, want) = &cases[(n + c) % cases.len()];
                n += 1;
                let openai = n.is_multiple_of(2);
                let (path, body) = if openai {
                    ("/v1/embeddings", serde_json::json!({ "input": [text] }))
                } else {
                    ("/embed", serde_json::json!({ "inputs": [text] }))
                };
                let got = http_request(
                    &addr,
                    "POST",
                    path,
                    Some("application/json"),
                    body.to_string().as_bytes(),
                );
                match got {
                    Ok((200, body)) => {
                        let v: serde_json::Value = match serde_json::from_str(&body) {
                            Ok(v) => v,
                            Err(e) => {
                                tally.fail(format!("HTTP {path}: bad JSON ({e}): {body}"));
                                continue;
                            }
                        };
                        let emb = if openai {
                            &v["data"][0]["embedding"]
                        } else {
                            &v[0]
                        };
                        let emb: Vec<f32> = emb
                            .as_array()
                            .map(|a| a.iter().map(|x| x.as_f64().unwrap() as f32).collect())
                            .unwrap_or_default();
                        if emb.len() != want.len() || max_abs_diff(&emb, want) > TOLERANCE {
                            tally.fail(format!("HTTP {path}: wrong embedding for {text:?}"));
                        } else {
                            tally.http_ok.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok((status, body)) => tally.fail(format!("HTTP {path}: {status} {body}")),
                    Err(e) => tally.fail(format!("HTTP {path}: {e}")),
                }
            }
        }));
    }

    // gRPC clients: one HTTP/2 connection to nginx, three concurrent callers on it.
    let grpc_thread = {
        let (done, tally) = (done.clone(), tally.clone());
        let cases: Vec<(String, Vec<f32>)> = (0..4)
            .map(|i| (case(i).text.clone(), case(i).embedding.clone()))
            .collect();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let client = InferenceServiceClient::connect(format!("http://127.0.0.1:{lb_grpc}"))
                    .await
                    .expect("connect to nginx over gRPC");
                let mut tasks = Vec::new();
                for c in 0..3 {
                    let (done, tally, cases) = (done.clone(), tally.clone(), cases.clone());
                    let mut client = client.clone();
                    tasks.push(tokio::spawn(async move {
                        let mut n = c;
                        while !done.load(Ordering::Relaxed) {
                            let (text, want) = &cases[n % cases.len()];
                            n += 1;
                            // gRPC's retry policy for UNAVAILABLE (the call did no work),
                            // at most twice: Debian 12's nginx sometimes fails its own retry
                            // (see deploy/nginx/actor-infer.conf). Counted and bounded below.
                            let mut attempt = 0;
                            let result = loop {
                                let req = InferRequest {
                                    texts: vec![text.clone()],
                                    ..Default::default()
                                };
                                match client.infer(req).await {
                                    Err(s)
                                        if s.code() == tonic::Code::Unavailable && attempt < 2 =>
                                    {
                                        attempt += 1;
                                        tally.grpc_client_retries.lock().unwrap().push(format!(
                                            "{:?} {:?}",
                                            s.code(),
                                            s.message()
                                        ));
                                        tokio::time::sleep(Duration::from_millis(50)).await;
                                    }
                                    other => break other,
                                }
                            };
                            match result {
                                Ok(resp) => {
                                    let out = resp.into_inner();
                                    let ok = out.outputs.len() == 1
                                        && out.outputs[0].embedding.len() == want.len()
                                        && max_abs_diff(&out.outputs[0].embedding, want)
                                            <= TOLERANCE;
                                    if ok {
                                        tally.grpc_ok.fetch_add(1, Ordering::Relaxed);
                                    } else {
                                        tally.fail(format!("gRPC: wrong embedding for {text:?}"));
                                    }
                                }
                                Err(s) => tally.fail(format!(
                                    "gRPC: {:?} {:?} {:?}",
                                    s.code(),
                                    s.message(),
                                    s.metadata()
                                )),
                            }
                        }
                    }));
                }
                for t in tasks {
                    t.await.unwrap();
                }
            });
        })
    };

    // Steady load first, through all three.
    let deadline = Instant::now() + Duration::from_secs(60);
    while tally.ok() == 0 || !replicas.iter().all(|r| r.served() > 0) {
        assert!(
            Instant::now() < deadline,
            "no request succeeded through nginx ({}), or nginx did not spread the load \
             (served: {:?}); failures: {:?}",
            tally.ok(),
            replicas.iter().map(Replica::served).collect::<Vec<_>>(),
            tally.failures.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let mut phases = Vec::new();
    for r in &mut replicas {
        let before = tally.ok();
        let status = r.terminate(Duration::from_secs(15));
        let log = r.log();
        assert_eq!(
            status.code(),
            Some(0),
            "{} did not stop cleanly:\n{log}",
            r.name
        );
        assert!(log.contains("Shutdown complete"), "{log}");
        let drained = tally.ok() - before;
        let exited = tally.ok();
        // Down for a moment: the others carry the load.
        let deadline = Instant::now() + Duration::from_secs(20);
        while tally.ok() == exited {
            assert!(
                Instant::now() < deadline,
                "no request was served while {} was down",
                r.name
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        r.spawn(&exp.path);
        r.wait_ready(Duration::from_secs(120));
        let down = tally.ok() - exited;
        // It rejoins: nginx sends it work again before the next one goes down.
        let deadline = Instant::now() + Duration::from_secs(20);
        while r.served() == 0 {
            assert!(
                Instant::now() < deadline,
                "{} never got traffic again after its restart",
                r.name
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        phases.push((r.name.clone(), drained, down));
    }
    // Load goes on after the last restart.
    let (after, deadline) = (tally.ok(), Instant::now() + Duration::from_secs(20));
    while tally.ok() < after + 20 {
        assert!(Instant::now() < deadline, "no load after the last restart");
        std::thread::sleep(Duration::from_millis(10));
    }
    done.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("an HTTP client thread panicked");
    }
    grpc_thread.join().expect("the gRPC client thread panicked");

    let access = nginx.access_log();
    // What nginx retried on another replica: after a 503 (a replica loading or draining), and
    // after a refused or closed connection (nginx logs those as 502 for the failed try).
    let retried = |status: &str| {
        access
            .lines()
            .filter(|l| l.starts_with("200 ") && l.contains(&format!("[{status},")))
            .count()
    };
    let (retried_503, retried_conn) = (retried("503"), retried("502"));
    // nginx < 1.29.5's invalid HTTP/2 requests after switching upstream (deploy/nginx/ notes).
    let refused_retries = nginx
        .error_log()
        .lines()
        .filter(|l| {
            l.contains("grpc://")
                && (l.contains("upstream rejected request")
                    || l.contains("upstream prematurely closed connection"))
        })
        .count();
    let failures = tally.failures.lock().unwrap().clone();
    eprintln!(
        "http ok {}, grpc ok {}, failed {}, gRPC client retries {:?}; retried by nginx on another \
         replica: {retried_503} after a 503, {retried_conn} after a connection error (gRPC tries \
         the next replica refused: {refused_retries}); per restart \
         (name, ok while it drained, ok while it was down and starting): {phases:?}",
        tally.http_ok.load(Ordering::Relaxed),
        tally.grpc_ok.load(Ordering::Relaxed),
        failures.len(),
        tally.grpc_client_retries.lock().unwrap()
    );
    assert!(
        failures.is_empty(),
        "{} client requests failed during the rolling restart:\n{}\n\nnginx error log:\n{}\n\
         nginx access log, requests not answered 200:\n{}",
        failures.len(),
        failures[..failures.len().min(20)].join("\n"),
        nginx.error_log(),
        access
            .lines()
            .filter(|l| !l.starts_with("200 "))
            .take(40)
            .collect::<Vec<_>>()
            .join("\n")
    );
    for (name, _, down) in &phases {
        assert!(*down > 0, "no request was served while {name} was down");
    }
    // Client retries stay rare: nginx retries loading and draining replicas' 503s itself. (With
    // gRPC refusals sent as HTTP 200 + UNAVAILABLE, as tonic does by default, every one of them
    // reached the client: tens per run.)
    let retries = tally.grpc_client_retries.lock().unwrap().clone();
    let grpc_calls = tally.grpc_ok.load(Ordering::Relaxed);
    assert!(
        retries.len() <= 2.max(grpc_calls / 200),
        "{} of {grpc_calls} gRPC calls needed a client retry:\n{}\n\nnginx error log:\n{}",
        retries.len(),
        retries.join("\n"),
        nginx.error_log()
    );
    assert!(tally.http_ok.load(Ordering::Relaxed) > 0 && tally.grpc_ok.load(Ordering::Relaxed) > 0);

    drop(nginx);
    for r in &mut replicas {
        let status = r.terminate(Duration::from_secs(15));
        assert_eq!(status.code(), Some(0), "{}:\n{}", r.name, r.log());
    }
}

#[test]
fn with_no_replica_left_grpc_clients_get_unavailable_and_http_clients_502() {
    // Replicas that are not running: every try fails to connect.
    let replicas: Vec<Replica> = (0..3)
        .map(|i| Replica::absent(&format!("gone-{i}")))
        .collect();
    let lb_dir = tempfile::tempdir().unwrap();
    let (nginx, lb_http, lb_grpc) = Nginx::start(lb_dir.path(), &replicas);
    let (status, _) = http_request(
        &format!("127.0.0.1:{lb_http}"),
        "POST",
        "/embed",
        Some("application/json"),
        br#"{"inputs": "hello"}"#,
    )
    .unwrap();
    assert_eq!(status, 502);
    // gRPC: a status the client understands (and may retry), not an HTML error page.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let status = rt.block_on(async {
        let mut client = InferenceServiceClient::connect(format!("http://127.0.0.1:{lb_grpc}"))
            .await
            .expect("connect to nginx over gRPC");
        client
            .infer(InferRequest {
                texts: vec!["hello".into()],
                ..Default::default()
            })
            .await
            .expect_err("no replica runs")
    });
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("retry"), "{status:?}");
    drop(nginx);
}
