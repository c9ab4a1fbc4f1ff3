//! The operators' view, for real: a real Prometheus server scrapes a running actor-infer, the
//! shipped configs pass promtool, the JSON dashboard keeps the original field names, and the
//! live page works in headless Chromium.

mod common;

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{Server, experiment, http_get, http_request};
use serde_json::Value;

fn load(server: &Server, n: usize) {
    for i in 0..n {
        let body =
            serde_json::json!({"inputs": [format!("text number {i}"), "another"]}).to_string();
        let (status, _) = http_request(
            &server.http_addr,
            "POST",
            "/embed",
            Some("application/json"),
            body.as_bytes(),
        )
        .unwrap();
        assert_eq!(status, 200);
    }
}

/// Kills and reaps a helper process when the test ends, however it ends.
struct Reap(std::process::Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn json_dashboard_answers_the_original_workflows_questions() {
    let server = Server::start(experiment(
        "experiment:\n  name: dash-json\nmetrics:\n  window_seconds: 30\n",
    ));
    load(&server, 10);
    // The original Step 0 one-liner sends no Accept header worth the name: it gets JSON.
    let (status, body) = http_get(&server.http_addr, "/metrics").unwrap();
    assert_eq!(status, 200);
    let d: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(d["experiment"], "dash-json");
    assert_eq!(d["requests"], 10);
    assert_eq!(d["errors"], 0);
    assert_eq!(d["window_s"], 30.0);
    assert!(d["throughput_qps"].as_f64().unwrap() > 0.0);
    for key in [
        "avg_ms",
        "p50_ms",
        "p95_ms",
        "p99_ms",
        "cpu_percent",
        "rss_mb",
    ] {
        assert!(d[key].as_f64().is_some(), "{key} in {d}");
    }
    let stages = &d["stage_timings"];
    for key in [
        "avg_tokenize_ms",
        "avg_inference_ms",
        "avg_queue_wait_ms",
        "mp_queue_receive_ms",
    ] {
        assert!(stages[key].as_f64().unwrap() >= 0.0, "{key} in {d}");
    }
    assert!(stages["avg_inference_ms"].as_f64().unwrap() > 0.0);
    assert!(
        d.get("gpu_memory_mb").is_some_and(Value::is_null),
        "present and null, not zero, without a GPU (the original server's field): {d}"
    );
    assert_eq!(d["gpu_devices"], serde_json::json!([]), "{d}");
    assert_eq!(d["workers"][0]["name"], "model-worker-0");
    assert_eq!(d["restarts"]["model_worker"], 0);
    // An error counts as an error.
    let (status, _) = http_request(
        &server.http_addr,
        "POST",
        "/embed",
        Some("application/json"),
        b"{\"inputs\": []}",
    )
    .unwrap();
    assert_eq!(status, 400);
    let d: Value =
        serde_json::from_str(&http_get(&server.http_addr, "/metrics").unwrap().1).unwrap();
    assert_eq!(d["errors"], 1);
    server.stop_clean();
}

#[test]
fn a_real_prometheus_scrapes_the_stage_histograms() {
    let server = Server::start(experiment("experiment:\n  name: scraped\n"));
    load(&server, 5);

    // What we expose passes promtool's linter.
    let (_, text) = http_get(&server.http_addr, "/metrics?format=prometheus").unwrap();
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (run `make test-deps`)");
    use std::io::Write;
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // A real Prometheus, on a loopback port it picks (port 0; it logs the one it bound),
    // scraping this server every second.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: actor-infer\n    \
             static_configs:\n      - targets: ['{}']\n",
            server.http_addr
        ),
    )
    .unwrap();
    let prom_log = dir.path().join("prometheus.log");
    let mut prom = Reap(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg("--web.listen-address=127.0.0.1:0")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&prom_log).unwrap())
            .spawn()
            .expect("prometheus (run `make test-deps`)"),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let prom_addr = loop {
        // `msg="Listening on" address=127.0.0.1:PORT`, once its listener is bound.
        let log = std::fs::read_to_string(&prom_log).unwrap_or_default();
        if let Some(addr) = log
            .lines()
            .filter(|l| l.contains("msg=\"Listening on\""))
            .find_map(|l| l.split("address=").nth(1))
            .and_then(|a| a.split_whitespace().next())
        {
            break addr.to_string();
        }
        if let Some(status) = prom.0.try_wait().unwrap() {
            panic!("prometheus exited ({status}):\n{log}");
        }
        assert!(
            Instant::now() < deadline,
            "prometheus never listened:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let query = |q: &str| -> Value {
        let path = format!("/api/v1/query?query={q}");
        http_get(&prom_addr, &path)
            .ok()
            .and_then(|(_, b)| serde_json::from_str(&b).ok())
            .unwrap_or(Value::Null)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let up = query("up%7Bjob%3D%22actor-infer%22%7D");
        let samples =
            query("actor_infer_stage_duration_seconds_count%7Bstage%3D%22inference%22%7D");
        let up_ok = up["data"]["result"][0]["value"][1] == "1";
        let count = samples["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        if up_ok && count >= 5.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never saw the target: up={up} samples={samples}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    drop(prom);
    server.stop_clean();
}

#[test]
fn shipped_prometheus_config_passes_promtool() {
    let out = Command::new("promtool")
        .args(["check", "config", "docker/prometheus.yml"])
        .current_dir(common::root())
        .output()
        .expect("promtool (run `make test-deps`)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The Grafana dashboard and its provisioning parse, and the dashboard has the live
    // page's panels.
    let f = common::root().join("docker/grafana/dashboards/actor-infer.json");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(f).unwrap()).unwrap();
    let titles: Vec<&str> = v["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["title"].as_str())
        .collect();
    assert!(titles.len() >= 6, "{titles:?}");
}

/// Loads the live page in headless Chromium for `ms` of page time and returns its DOM.
fn chromium_dom(url: &str, ms: u32) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1280,900",
            &format!("--user-data-dir={}", profile.path().display()),
            &format!("--virtual-time-budget={ms}"),
            "--dump-dom",
            url,
        ])
        .stderr(Stdio::null())
        .output()
        .expect("chromium (run `make test-deps`)");
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn attr(dom: &str, name: &str) -> Option<String> {
    let start = dom.find(&format!("{name}=\""))? + name.len() + 2;
    Some(dom[start..].split('"').next()?.to_string())
}

#[test]
fn live_page_draws_charts_and_follows_the_load_in_chromium() {
    let server = Server::start(experiment("experiment:\n  name: live-page\n"));
    load(&server, 3);
    let url = format!("http://{}/", server.http_addr);
    // The page polls /metrics every 2 s; Chromium's virtual time lets several polls happen.
    let dom = chromium_dom(&url, 9000);
    assert!(
        dom.contains("live-page"),
        "the page shows the experiment:\n{dom:.2000}"
    );
    let polls: u32 = attr(&dom, "data-polls")
        .expect("polled /metrics")
        .parse()
        .unwrap();
    assert!(polls >= 2, "polls {polls}");
    assert_eq!(
        attr(&dom, "data-requests").unwrap(),
        "3",
        "the page shows the server's count"
    );
    for chart in [
        "chart-throughput",
        "chart-latency",
        "chart-stages",
        "chart-cpu",
        "chart-memory",
    ] {
        let at = dom
            .find(&format!("id=\"{chart}\""))
            .unwrap_or_else(|| panic!("{chart} missing"));
        let tag_start = dom[..at].rfind('<').unwrap();
        let tag = &dom[tag_start..tag_start + dom[tag_start..].find('>').unwrap()];
        let points: u32 = attr(tag, "data-points")
            .unwrap_or_default()
            .parse()
            .unwrap_or(0);
        assert!(points >= 2, "{chart} drew {points} points: {tag}");
    }
    assert!(dom.contains("no GPU"), "no GPU here, and the page says so");
    // Under load the numbers move: more requests, a throughput above zero.
    load(&server, 25);
    let dom = chromium_dom(&url, 5000);
    assert_eq!(
        attr(&dom, "data-requests").unwrap(),
        "28",
        "the page follows the load"
    );
    let at = dom.find("id=\"tile-throughput\"").expect("throughput tile");
    let tile = &dom[at..at + dom[at..].find('<').unwrap()];
    let value: f64 = tile
        .rsplit('>')
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap_or(0.0);
    assert!(value > 0.0, "throughput tile: {tile}");
    server.stop_clean();
}

#[test]
fn json_logs_follow_one_request_across_actors() {
    let server = Server::start(experiment(
        "logging:\n  format: json\n  level: actor_infer=debug,info\n",
    ));
    let (status, out, _) = common::http_request_with(
        &server.http_addr,
        "POST",
        "/embed",
        &[
            ("content-type", "application/json"),
            ("x-request-id", "trace-me-42"),
        ],
        br#"{"inputs": "follow me"}"#,
    )
    .unwrap();
    assert_eq!(status, 200, "{out}");
    let log = server.log.clone();
    server.stop_clean();
    let log = log.lock().unwrap().clone();
    let targets: std::collections::BTreeSet<String> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["span"]["request_id"] == "trace-me-42")
        .map(|v| v["target"].as_str().unwrap().to_string())
        .collect();
    assert!(
        targets.contains("actor_infer::actors::tokenizer"),
        "{targets:?}\n{log}"
    );
    assert!(
        targets.contains("actor_infer::actors::router"),
        "{targets:?}"
    );
}
