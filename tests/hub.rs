//! A model named by its Hugging Face id (docs/models.md "A model by its Hugging Face id"), against a Hub
//! stand-in on 127.0.0.1 (`tests/hub_server.py`: the Hub's URL layout, routes and headers) that
//! `HF_ENDPOINT` points at. The real Hub is never contacted.
//!
//! 1. huggingface_hub's own `snapshot_download` (the clients venv, `scripts/test-deps.sh`) fills
//!    a fresh cache; with the stand-in stopped and `HF_HUB_OFFLINE=1` the server serves the id
//!    from it with parity against sentence-transformers' reference, and says which id and
//!    commit it serves (`/info`, gRPC `ModelInfo`, the dashboard's JSON).
//! 2. The server's own download (hf-hub) fills an empty cache and serves; huggingface_hub then
//!    reads that cache offline (`snapshot_download(local_files_only=True)`,
//!    `try_to_load_from_cache`, `scan_cache_dir`): the layout is the library's.
//! 3. The refusals: not cached while offline or with downloads off, no such repository, no
//!    such revision, a missing file, a gated model without its token; each exits 2 before any
//!    port is bound (the test holds the ports: a server that tried to bind would exit 1).
//!
//! Every process a test starts (the stand-in, Python, the server) is stopped by the test.

mod common;

use std::{
    io::Read,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use actor_infer::api::grpc::pb::ModelInfoRequest;
use common::{
    Experiment, Server, TOLERANCE, floats, http_get, http_request, max_abs_diff, reference,
    run_to_exit_with,
};

const MINILM: &str = "sentence-transformers/all-MiniLM-L6-v2";

/// Environment variables for a run.
type Env<'a> = [(&'a str, &'a str)];

/// The Hub stand-in, stopped (and reaped) when dropped.
struct Hub {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`, what `HF_ENDPOINT` is set to.
    endpoint: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Hub {
    /// Serves each `(id, folder)`; `gated` ids need `Authorization: Bearer <token>`.
    fn start(repos: &[(&str, &Path)], gated: &[&str], token: &str) -> Hub {
        let dir = tempfile::tempdir().unwrap();
        let ports = dir.path().join("ports");
        let log = dir.path().join("requests.jsonl");
        let mut cmd = Command::new("python3");
        cmd.arg(common::root().join("tests/hub_server.py"))
            .arg("--port-file")
            .arg(&ports)
            .arg("--log")
            .arg(&log)
            .arg("--token")
            .arg(token)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (id, folder) in repos {
            cmd.arg("--repo").arg(format!("{id}={}", folder.display()));
        }
        for id in gated {
            cmd.arg("--gated").arg(id);
        }
        let mut child = cmd.spawn().expect("python3 runs tests/hub_server.py");
        // It hashes every file before it listens: 90 MB take a few seconds on a busy machine.
        let deadline = Instant::now() + Duration::from_secs(120);
        let port = loop {
            if let Ok(text) = std::fs::read_to_string(&ports) {
                break text.split_whitespace().next().unwrap().to_string();
            }
            if let Some(status) = child.try_wait().unwrap() {
                let mut err = String::new();
                child.stderr.take().unwrap().read_to_string(&mut err).ok();
                panic!("hub_server.py exited ({status}):\n{err}");
            }
            assert!(Instant::now() < deadline, "hub_server.py never listened");
            std::thread::sleep(Duration::from_millis(50));
        };
        Hub {
            child: Some(child),
            endpoint: format!("http://127.0.0.1:{port}"),
            log,
            _dir: dir,
        }
    }

    /// The requests it answered: one JSON object each (`server`, `method`, `path`, `status`,
    /// `auth`).
    fn requests(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The files fetched through `/resolve/` (their paths in the repository).
    fn resolved_files(&self) -> Vec<String> {
        self.requests()
            .iter()
            .filter(|r| r["method"] == "GET")
            .filter_map(|r| {
                let path = r["path"].as_str()?;
                let (_, rest) = path.split_once("/resolve/")?;
                Some(rest.split_once('/')?.1.to_string())
            })
            .collect()
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs `code` with huggingface_hub, the cache in `home`, and returns its last stdout line as
/// JSON. `env` adds variables (HF_ENDPOINT, HF_HUB_OFFLINE, ...).
fn hf(code: &str, home: &Path, env: &[(&str, &str)]) -> serde_json::Value {
    // The clients venv (`scripts/test-deps.sh`) has huggingface_hub 2.4.0.
    let mut cmd = Command::new(common::venv_python("clients-venv"));
    cmd.arg("-c")
        .arg(code)
        .env("HF_HOME", home)
        .env("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        .env("HF_HUB_DISABLE_TELEMETRY", "1")
        .env("NO_PROXY", "127.0.0.1")
        .env_remove("HF_HUB_CACHE")
        .env_remove("HF_TOKEN")
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("HF_ENDPOINT");
    for (k, v) in env {
        cmd.env(k, v);
    }
    common::run_json(&mut cmd, b"", Duration::from_secs(300))
}

/// An experiment serving `path` (an id, or a folder) on the CPU; `extra` is prepended.
fn id_experiment(path: &str, extra: &str) -> Experiment {
    common::experiment(&format!("{extra}model:\n  path: {path}\n  device: cpu\n"))
}

/// The environment of a server run: the cache in `home`, `HF_ENDPOINT` at `endpoint`.
fn hub_env<'a>(home: &'a str, endpoint: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("HF_HOME", home),
        ("HF_ENDPOINT", endpoint),
        ("HF_HUB_CACHE", ""),
        ("HF_TOKEN", ""),
        ("HF_HUB_OFFLINE", ""),
    ]
}

/// The 14 reference texts embedded over `/embed`, compared with sentence-transformers'.
fn assert_parity(server: &Server) {
    let cases = reference();
    let texts: Vec<&str> = cases.iter().map(|c| c.text.as_str()).collect();
    let body = serde_json::json!({ "inputs": texts }).to_string();
    let (status, text) = http_request(
        &server.http_addr,
        "POST",
        "/embed",
        Some("application/json"),
        body.as_bytes(),
    )
    .unwrap();
    assert_eq!(status, 200, "{text}");
    let rows: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut worst = 0f32;
    for (i, c) in cases.iter().enumerate() {
        let d = max_abs_diff(&floats(&rows[i]), &c.embedding);
        worst = worst.max(d);
        assert!(d < TOLERANCE, "text {i}: {d}");
    }
    println!("parity with sentence-transformers: worst difference {worst:e}");
}

/// Runs the server to its exit with the two ports held by this test, and returns the exit
/// code and the log. A refusal must come before binding: binding a held port exits 1.
fn refused(exp: &Experiment, env: &[(&str, &str)]) -> (i32, String) {
    let http = TcpListener::bind("127.0.0.1:0").unwrap();
    let grpc = TcpListener::bind("127.0.0.1:0").unwrap();
    let ports = [
        http.local_addr().unwrap().port(),
        grpc.local_addr().unwrap().port(),
    ];
    let (code, log) = run_to_exit_with(
        &[
            "--experiment",
            exp.path.to_str().unwrap(),
            "--http-port",
            &ports[0].to_string(),
            "--grpc-port",
            &ports[1].to_string(),
        ],
        env,
    );
    assert!(!log.contains("listening"), "{log}");
    (code, log)
}

/// `--check`'s resolved configuration (exit 0), or the exit code and log.
fn check(exp: &Experiment, env: &[(&str, &str)]) -> Result<serde_json::Value, (i32, String)> {
    let (code, log) = run_to_exit_with(
        &["--experiment", exp.path.to_str().unwrap(), "--check"],
        env,
    );
    if code != 0 {
        return Err((code, log));
    }
    let start = log.find("{\n").unwrap_or_else(|| panic!("no JSON:\n{log}"));
    let end = log.rfind("\n}").unwrap() + 2;
    Ok(serde_json::from_str(&log[start..end]).unwrap())
}

/// A copy of a committed tiny model, with `drop` left out and `add` files added.
fn tiny_variant(dir: &Path, drop: &[&str], add: &[(&str, &[u8])]) -> PathBuf {
    let src = common::fixture("roberta-mean");
    let out = dir.join(format!("variant-{}", drop.join("-")));
    copy_dir(&src, &out);
    for f in drop {
        std::fs::remove_file(out.join(f)).unwrap();
    }
    for (f, bytes) in add {
        std::fs::write(out.join(f), bytes).unwrap();
    }
    out
}

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        if std::fs::metadata(e.path()).unwrap().is_dir() {
            copy_dir(&e.path(), &to);
        } else if e.file_name() != "reference.json" {
            std::fs::copy(e.path(), &to).unwrap();
        }
    }
}

#[tokio::test]
async fn a_cache_made_by_huggingface_hub_serves_offline_with_parity() {
    let home = tempfile::tempdir().unwrap();
    let home_s = home.path().to_str().unwrap().to_string();
    let hub = Hub::start(&[(MINILM, &common::default_model())], &[], "");
    let made = hf(
        &format!(
            "import json; from huggingface_hub import snapshot_download as s\n\
             a = s('{MINILM}'); b = s('{MINILM}', revision='v1.0')\n\
             print(json.dumps([a, b]))"
        ),
        home.path(),
        &[("HF_ENDPOINT", &hub.endpoint)],
    );
    let snapshot = PathBuf::from(made[0].as_str().unwrap());
    assert_eq!(made[0], made[1], "main and v1.0 are one commit");
    let commit = snapshot.file_name().unwrap().to_str().unwrap().to_string();
    // No network from here on: the stand-in is gone, and the server is told it is offline.
    drop(hub);
    let dead = "http://127.0.0.1:9";
    let mut env = hub_env(&home_s, dead);
    env.push(("HF_HUB_OFFLINE", "1"));

    let server = Server::start_with(id_experiment(MINILM, ""), &env);
    assert!(
        server.log().contains("model from the Hugging Face cache")
            && server.log().contains(&commit),
        "{}",
        server.log()
    );
    assert_parity(&server);

    let (status, info) = http_get(&server.http_addr, "/info").unwrap();
    assert_eq!(status, 200);
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["model_id"], MINILM, "TEI's model_id is the Hub id");
    assert_eq!(
        info["model_sha"],
        commit.as_str(),
        "TEI's model_sha is the commit"
    );
    assert_eq!(info["model"], "all-MiniLM-L6-v2", "the name clients use");
    assert_eq!(info["hub"]["revision"], "main");

    let mut grpc = common::grpc(&server).await;
    let m = grpc
        .model_info(ModelInfoRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            m.name.as_str(),
            m.hub_id.as_str(),
            m.hub_revision.as_str(),
            m.hub_commit.as_str()
        ),
        ("all-MiniLM-L6-v2", MINILM, "main", commit.as_str())
    );

    // The live page's data: the dashboard's JSON names the source of each model.
    let (_, dash) = common::http_request_with(
        &server.http_addr,
        "GET",
        "/metrics",
        &[("accept", "application/json")],
        b"",
    )
    .map(|(s, b, _)| (s, b))
    .unwrap();
    let dash: serde_json::Value = serde_json::from_str(&dash).unwrap();
    assert_eq!(dash["models"][0]["hub"]["id"], MINILM, "{dash}");
    assert_eq!(dash["models"][0]["hub"]["commit"], commit.as_str());
    server.stop_clean();

    // A tag, a commit and the default branch resolve to that snapshot; `--check` shows it.
    for (written, revision) in [
        (format!("{MINILM}@v1.0"), "v1.0"),
        (format!("{MINILM}@{commit}"), commit.as_str()),
    ] {
        let c = check(&id_experiment(&written, ""), &env).unwrap();
        assert_eq!(c["models"][0]["path"], snapshot.to_str().unwrap(), "{c}");
        assert_eq!(c["models"][0]["hub"]["revision"], revision);
        assert_eq!(c["models"][0]["hub"]["commit"], commit.as_str());
    }
}

#[test]
fn the_server_downloads_into_the_cache_huggingface_hub_reads() {
    let home = tempfile::tempdir().unwrap();
    let home_s = home.path().to_str().unwrap().to_string();
    let hub = Hub::start(&[(MINILM, &common::default_model())], &[], "");
    let env = hub_env(&home_s, &hub.endpoint);
    let server = Server::start_with(id_experiment(MINILM, "hub:\n  download: true\n"), &env);
    let log = server.log();
    assert!(
        log.contains("actor-infer: hub: sentence-transformers/all-MiniLM-L6-v2@main: downloading model.safetensors"),
        "a progress line per file:\n{log}"
    );
    assert_parity(&server);
    let (_, info) = http_get(&server.http_addr, "/info").unwrap();
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    let commit = info["model_sha"].as_str().unwrap().to_string();
    server.stop_clean();

    // Only what the server reads was fetched (not README.md, vocab.txt, data_config.json).
    // (hf-hub asks for each file's first byte, then for its chunks of 10 MB.)
    let mut fetched = hub.resolved_files();
    fetched.sort();
    fetched.dedup();
    assert_eq!(
        fetched,
        [
            "1_Pooling/config.json",
            "config.json",
            "config_sentence_transformers.json",
            "model.safetensors",
            "modules.json",
            "sentence_bert_config.json",
            "tokenizer.json",
            "tokenizer_config.json"
        ],
        "{:?}",
        hub.requests()
    );

    // huggingface_hub reads that cache offline: the snapshot, each file, a clean scan.
    let read = hf(
        &format!(
            "import json, os, hashlib\n\
             from huggingface_hub import snapshot_download, try_to_load_from_cache, scan_cache_dir\n\
             snap = snapshot_download('{MINILM}', local_files_only=True)\n\
             files = {{f: try_to_load_from_cache('{MINILM}', f) for f in {fetched:?}}}\n\
             digest = {{f: hashlib.sha256(open(p, 'rb').read()).hexdigest() for f, p in files.items()}}\n\
             scan = scan_cache_dir()\n\
             repos = [dict(id=r.repo_id, refs=sorted(r.refs), revisions=[v.commit_hash for v in r.revisions], files=r.nb_files) for r in scan.repos]\n\
             print(json.dumps(dict(snapshot=snap, files=files, digest=digest, repos=repos, warnings=[str(w) for w in scan.warnings])))"
        ),
        home.path(),
        &[("HF_HUB_OFFLINE", "1")],
    );
    let snapshot = home
        .path()
        .join("hub/models--sentence-transformers--all-MiniLM-L6-v2/snapshots")
        .join(&commit);
    assert_eq!(read["snapshot"], snapshot.to_str().unwrap(), "{read}");
    for f in &fetched {
        assert_eq!(
            read["files"][f],
            snapshot.join(f).to_str().unwrap(),
            "{read}"
        );
        let want = sha256_of(&common::default_model().join(f));
        assert_eq!(
            read["digest"][f],
            want.as_str(),
            "{f} differs from the source"
        );
    }
    assert_eq!(read["warnings"], serde_json::json!([]), "{read}");
    assert_eq!(
        read["repos"],
        serde_json::json!([{"id": MINILM, "refs": ["main"], "revisions": [commit], "files": fetched.len()}])
    );

    // Once cached, a start goes to no network at all: the stand-in is gone.
    drop(hub);
    let env = hub_env(&home_s, "http://127.0.0.1:9");
    let server = Server::start_with(id_experiment(MINILM, "hub:\n  download: true\n"), &env);
    assert!(!server.log().contains("downloading"), "{}", server.log());
    server.stop_clean();
}

/// A file's sha256, through the system's `sha256sum`.
fn sha256_of(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn revisions_download_into_refs_as_huggingface_hub_writes_them() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = tiny_variant(dir.path(), &[], &[]);
    let hub = Hub::start(&[("org/tiny", &tiny)], &[], "");
    // A tag: refs/v1.0 records the commit. A commit: no ref at all (huggingface_hub writes none).
    let home = tempfile::tempdir().unwrap();
    let home_s = home.path().to_str().unwrap().to_string();
    let env = hub_env(&home_s, &hub.endpoint);
    let c = check(
        &id_experiment("org/tiny@v1.0", "hub:\n  download: true\n"),
        &env,
    )
    .unwrap();
    let commit = c["models"][0]["hub"]["commit"]
        .as_str()
        .unwrap()
        .to_string();
    let storage = home.path().join("hub/models--org--tiny");
    assert_eq!(
        std::fs::read_to_string(storage.join("refs/v1.0")).unwrap(),
        commit
    );
    let refs: Vec<String> = std::fs::read_dir(storage.join("refs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(refs, ["v1.0"]);

    let home2 = tempfile::tempdir().unwrap();
    let home2_s = home2.path().to_str().unwrap().to_string();
    let env2 = hub_env(&home2_s, &hub.endpoint);
    let c = check(
        &id_experiment(&format!("org/tiny@{commit}"), "hub:\n  download: true\n"),
        &env2,
    )
    .unwrap();
    assert_eq!(c["models"][0]["hub"]["commit"], commit.as_str());
    let storage2 = home2.path().join("hub/models--org--tiny");
    assert!(
        !storage2.join("refs").exists()
            || std::fs::read_dir(storage2.join("refs"))
                .unwrap()
                .next()
                .is_none()
    );
    let read = hf(
        &format!(
            "import json; from huggingface_hub import snapshot_download\n\
             print(json.dumps(snapshot_download('org/tiny', revision='{commit}', local_files_only=True)))"
        ),
        home2.path(),
        &[("HF_HUB_OFFLINE", "1")],
    );
    assert_eq!(
        read,
        storage2.join("snapshots").join(&commit).to_str().unwrap()
    );
}

#[test]
fn a_folder_that_exists_wins_over_an_id() {
    let exp = id_experiment("org/tiny", "");
    // The folder `org/tiny` beside the experiment file, shaped like an id.
    copy_dir(
        &common::fixture("roberta-mean"),
        &exp.dir.path().join("org/tiny"),
    );
    let empty = tempfile::tempdir().unwrap();
    let mut env = hub_env(empty.path().to_str().unwrap(), "http://127.0.0.1:9");
    env.push(("HF_HUB_OFFLINE", "1"));
    let c = check(&exp, &env).unwrap();
    assert_eq!(
        c["models"][0]["path"],
        exp.dir.path().join("org/tiny").to_str().unwrap()
    );
    assert!(c["models"][0].get("hub").is_none(), "{c}");
}

#[test]
fn refusals_name_the_id_the_revision_the_cache_and_what_to_run() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = tiny_variant(dir.path(), &[], &[]);
    let no_tokenizer = tiny_variant(dir.path(), &["tokenizer.json"], &[]);
    let pytorch_only = tiny_variant(
        dir.path(),
        &["model.safetensors"],
        &[("pytorch_model.bin", b"not read")],
    );
    let hub = Hub::start(
        &[
            ("org/tiny", &tiny),
            ("org/no-tokenizer", &no_tokenizer),
            ("org/pytorch-only", &pytorch_only),
            ("org/gated", &tiny),
        ],
        &["org/gated"],
        "hf_secret",
    );
    let home = tempfile::tempdir().unwrap();
    let home_s = home.path().to_str().unwrap().to_string();
    let cache = home.path().join("hub");
    let cache_s = cache.to_str().unwrap();
    let online = hub_env(&home_s, &hub.endpoint);
    let mut offline = online.clone();
    offline.push(("HF_HUB_OFFLINE", "1"));
    let download = "hub:\n  download: true\n";

    let cases: Vec<(&str, &str, &Env, Vec<String>)> = vec![
        // Not cached, offline.
        (
            "org/tiny",
            download,
            offline.as_slice(),
            vec![
                "`org/tiny` (revision `main`) is not in the Hugging Face cache".into(),
                format!("{cache_s}/models--org--tiny"),
                "HF_HUB_OFFLINE is set".into(),
                "hf download org/tiny --revision main".into(),
            ],
        ),
        // Not cached, downloads off (the default).
        (
            "org/tiny@v1.0",
            "",
            online.as_slice(),
            vec![
                "(revision `v1.0`) is not in the Hugging Face cache".into(),
                "downloading is off (hub.download: false)".into(),
                "hf download org/tiny --revision v1.0".into(),
            ],
        ),
        // No such repository.
        (
            "org/nope",
            download,
            online.as_slice(),
            vec![
                format!("no model repository `org/nope` on {}", hub.endpoint),
                "revision `main`".into(),
                cache_s.to_string(),
            ],
        ),
        // No such revision.
        (
            "org/tiny@v9",
            download,
            online.as_slice(),
            vec![
                format!("`org/tiny` has no revision `v9` on {}", hub.endpoint),
                cache_s.to_string(),
            ],
        ),
        // A file the server reads is not in the repository.
        (
            "org/no-tokenizer",
            download,
            online.as_slice(),
            vec![
                "`org/no-tokenizer` (revision `main`, commit".into(),
                "has no tokenizer.json".into(),
            ],
        ),
        (
            "org/pytorch-only",
            download,
            online.as_slice(),
            vec![
                "has no model.safetensors or model.pt".into(),
                "it has pytorch_model.bin, which actor-infer does not read".into(),
            ],
        ),
        // Gated, and no token.
        (
            "org/gated",
            download,
            online.as_slice(),
            vec![
                "`org/gated` (revision `main`) is gated or private".into(),
                "set HF_TOKEN".into(),
            ],
        ),
    ];
    for (path, extra, env, wants) in &cases {
        let (code, log) = refused(&id_experiment(path, extra), env);
        assert_eq!(code, 2, "{path}: exit 2 expected:\n{log}");
        for want in wants {
            assert!(
                log.contains(want.as_str()),
                "{path}: `{want}` missing in:\n{log}"
            );
        }
        assert!(
            log.contains("model.path: no folder") && log.contains("was read as a Hugging Face id"),
            "{log}"
        );
    }
    // The refusals above wrote nothing but what huggingface_hub would: no snapshot.
    assert!(!cache.join("models--org--tiny/snapshots").exists());

    // With its token the gated model downloads; the token was sent.
    let mut with_token = online.clone();
    with_token.push(("HF_TOKEN", "hf_secret"));
    let c = check(&id_experiment("org/gated", download), &with_token).unwrap();
    assert_eq!(c["models"][0]["hub"]["id"], "org/gated");
    assert!(
        hub.requests()
            .iter()
            .filter(|r| r["path"].as_str().unwrap().contains("org/gated"))
            .any(|r| r["auth"] == true && r["status"] == 200)
    );

    // A cached snapshot without weights (huggingface_hub told to fetch only the JSON files),
    // offline: the missing file is named with the snapshot it is missing from.
    hf(
        "import json; from huggingface_hub import snapshot_download\n\
         print(json.dumps(snapshot_download('org/tiny', allow_patterns=['*.json'])))",
        home.path(),
        &[("HF_ENDPOINT", &hub.endpoint)],
    );
    let (code, log) = refused(&id_experiment("org/tiny", download), &offline);
    assert_eq!(code, 2, "{log}");
    assert!(
        log.contains("has no model.safetensors or model.pt in")
            && log.contains(&format!("{cache_s}/models--org--tiny/snapshots/"))
            && log.contains("HF_HUB_OFFLINE is set")
            && log.contains("hf download org/tiny --revision main model.safetensors`"),
        "{log}"
    );
}
