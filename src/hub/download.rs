//! Downloading what the server reads into the Hugging Face cache, with hf-hub (the crate TEI
//! uses), and the progress lines start-up prints.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde::Deserialize;

use super::*;

/// Downloads what the server reads into the cache (hf-hub writes blobs, snapshots and refs as
/// huggingface_hub does) and returns the snapshot. Runs on a runtime of its own: start-up is
/// not inside any runtime yet.
pub(super) fn fetch(
    id: &HubId,
    weights: Weights,
    env: &HubEnv,
    say: &Say,
) -> Result<(PathBuf, Resolved), HubError> {
    let revision = id.revision().to_string();
    let fail = |message: String| HubError::Download {
        id: id.repo.clone(),
        revision: revision.clone(),
        endpoint: env.endpoint.clone(),
        message,
        cache: env.cache_shown(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| fail(format!("cannot start a runtime: {e}")))?;
    runtime.block_on(fetch_async(id, weights, env, say, &fail))
}

async fn fetch_async(
    id: &HubId,
    weights: Weights,
    env: &HubEnv,
    say: &Say,
    fail: &(dyn Fn(String) -> HubError + Sync),
) -> Result<(PathBuf, Resolved), HubError> {
    use hf_hub::{Cache, Repo, RepoType, api::tokio::ApiBuilder};
    let revision = id.revision().to_string();
    let started = Instant::now();
    let api = ApiBuilder::from_cache(Cache::new(env.cache.clone()))
        .with_endpoint(env.endpoint.clone())
        .with_token(env.token.clone())
        .with_progress(false)
        .build()
        .map_err(|e| fail(e.to_string()))?;
    // The listing, asked directly so that the Hub's error code (`X-Error-Code`) can say
    // whether the repository or the revision is missing.
    let listing = api
        .repo(Repo::with_revision(
            id.repo.clone(),
            RepoType::Model,
            revision.clone(),
        ))
        .info_request()
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .map_err(|e| fail(error_chain(&e)))?;
    let status = listing.status();
    if !status.is_success() {
        let code = listing
            .headers()
            .get("x-error-code")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let cache = env.cache_shown();
        return Err(match (status.as_u16(), code.as_str()) {
            (_, "RevisionNotFound") => HubError::RevisionNotFound {
                id: id.repo.clone(),
                revision,
                endpoint: env.endpoint.clone(),
                cache,
            },
            (_, "GatedRepo") | (403, _) => HubError::Gated {
                id: id.repo.clone(),
                revision,
                endpoint: env.endpoint.clone(),
                status: status.as_u16(),
                cache,
            },
            (401 | 404, _) => HubError::RepoNotFound {
                id: id.repo.clone(),
                revision,
                endpoint: env.endpoint.clone(),
                cache,
            },
            (s, _) => fail(format!("the listing answered HTTP {s}")),
        });
    }
    let info: RepoInfo = listing
        .json()
        .await
        .map_err(|e| fail(format!("the listing is not the Hub's JSON: {e}")))?;
    if !is_commit(&info.sha) {
        return Err(fail(format!(
            "the listing's sha `{}` is not a commit hash",
            info.sha
        )));
    }
    let commit = info.sha.clone();
    let listed: BTreeSet<String> = info.siblings.into_iter().map(|s| s.rfilename).collect();
    let snapshot_dir = env
        .cache
        .join(id.folder_name())
        .join("snapshots")
        .join(&commit);
    let place = format!("{} (on {})", id.repo, env.endpoint);
    let missing_file = |missing: Vec<String>, why: &str| {
        HubError::missing_file(id, &commit, &place, &missing, weights, why)
    };
    // What to fetch: the required files (all of them must be listed), then what is listed of
    // the optional ones.
    let absent: Vec<String> = ["config.json", "tokenizer.json"]
        .into_iter()
        .filter(|f| !listed.contains(*f))
        .map(str::to_owned)
        .collect();
    let weight = weights.files().iter().find(|f| listed.contains(**f));
    if !absent.is_empty() || weight.is_none() {
        let mut missing = absent;
        if weight.is_none() {
            missing.push(weights.files().join(" or "));
        }
        let why = if weight.is_none() && listed.contains("pytorch_model.bin") {
            " (it has pytorch_model.bin, which actor-infer does not read: convert it to \
             safetensors, e.g. with the Hub's convert space, and serve that revision)"
        } else {
            ""
        };
        return Err(missing_file(missing, why));
    }
    let mut wanted: Vec<String> = vec!["config.json".into(), "tokenizer.json".into()];
    wanted.push(weight.expect("checked above").to_string());
    wanted.extend(
        OPTIONAL
            .iter()
            .filter(|f| listed.contains(**f))
            .map(|f| f.to_string()),
    );
    let repo = api.repo(Repo::with_revision(
        id.repo.clone(),
        RepoType::Model,
        commit.clone(),
    ));
    let storage = env.cache.join(id.folder_name());
    // hf-hub records a ref named after the revision it downloads, even when that revision is
    // a commit; huggingface_hub writes none for a commit. Note whether one was there already.
    let commit_ref = storage.join("refs").join(&commit);
    let commit_ref_existed = commit_ref.exists();
    let label = format!("{}@{revision}", id.repo);
    let mut bytes = 0u64;
    let mut count = 0usize;
    let mut i = 0;
    while i < wanted.len() {
        let file = wanted[i].clone();
        i += 1;
        let local = snapshot_dir.join(&file);
        if !local.is_file() {
            let meter = Meter::new(say.clone(), label.clone());
            repo.download_with_progress(&file, meter)
                .await
                .map_err(|e| match e {
                    hf_hub::api::tokio::ApiError::RequestError(r)
                        if r.status().is_some_and(|s| s.as_u16() == 404) =>
                    {
                        missing_file(vec![file.clone()], "")
                    }
                    other => fail(format!("{file}: {}", error_chain(&other))),
                })?;
            count += 1;
            bytes += std::fs::metadata(&local).map(|m| m.len()).unwrap_or(0);
        }
        if file == "modules.json" {
            // Each module's own config (`1_Pooling/config.json`, ...) when the repo has it.
            for path in module_configs(&local) {
                if listed.contains(&path) && !wanted.contains(&path) {
                    wanted.push(path);
                }
            }
        }
    }
    if !commit_ref_existed {
        let _ = std::fs::remove_file(&commit_ref);
    }
    if revision != commit {
        write_ref(&storage, &revision, &commit).map_err(|e| {
            fail(format!(
                "cannot record refs/{revision} in {}: {e}",
                storage.display()
            ))
        })?;
    }
    say(&format!(
        "{label}: commit {commit} in {}: {count} file(s), {:.1} MB downloaded in {:.1} s",
        snapshot_dir.display(),
        bytes as f64 / 1e6,
        started.elapsed().as_secs_f64()
    ));
    let missing = missing_required(&snapshot_dir, weights);
    if !missing.is_empty() {
        return Err(missing_file(missing, ""));
    }
    Ok((
        snapshot_dir,
        Resolved {
            id: id.repo.clone(),
            revision,
            commit,
        },
    ))
}

/// `refs/<revision>` holding `commit`, written as huggingface_hub does: only when it changed,
/// through a temporary file and a rename so a reader never sees half of it.
fn write_ref(storage: &Path, revision: &str, commit: &str) -> std::io::Result<()> {
    let path = storage.join("refs").join(revision);
    if std::fs::read_to_string(&path).is_ok_and(|c| c == commit) {
        return Ok(());
    }
    std::fs::create_dir_all(path.parent().expect("refs/<revision> has a parent"))?;
    let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
    std::fs::write(&tmp, commit)?;
    std::fs::rename(&tmp, &path)
}

/// The `config.json` of each module `modules.json` lists with a folder of its own.
fn module_configs(modules_json: &Path) -> Vec<String> {
    #[derive(Deserialize)]
    struct Module {
        #[serde(default)]
        path: String,
    }
    std::fs::read_to_string(modules_json)
        .ok()
        .and_then(|t| serde_json::from_str::<Vec<Module>>(&t).ok())
        .unwrap_or_default()
        .into_iter()
        .filter(|m| !m.path.is_empty() && !m.path.contains(".."))
        .map(|m| format!("{}/config.json", m.path.trim_end_matches('/')))
        .collect()
}

/// An error with its causes, `a: b: c` (reqwest's own message hides the connection error).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// The progress of one file's download: a line when it starts, at most one every two seconds
/// while it runs, and one when it ends. hf-hub clones it per chunk; the clones share the count.
#[derive(Clone)]
struct Meter {
    say: Say,
    label: String,
    state: Arc<Mutex<MeterState>>,
}

struct MeterState {
    file: String,
    total: usize,
    done: usize,
    last: Instant,
}

impl Meter {
    fn new(say: Say, label: String) -> Meter {
        Meter {
            say,
            label,
            state: Arc::new(Mutex::new(MeterState {
                file: String::new(),
                total: 0,
                done: 0,
                last: Instant::now(),
            })),
        }
    }

    fn line(&self, s: &MeterState) -> String {
        format!(
            "{}: downloading {}: {:.1} of {:.1} MB",
            self.label,
            s.file,
            s.done as f64 / 1e6,
            s.total as f64 / 1e6
        )
    }
}

impl hf_hub::api::tokio::Progress for Meter {
    async fn init(&mut self, size: usize, filename: &str) {
        let line = {
            let mut s = self
                .state
                .lock()
                .expect("the meter's lock is never poisoned");
            s.file = filename.to_string();
            s.total = size;
            s.last = Instant::now();
            self.line(&s)
        };
        (self.say)(&line);
    }

    async fn update(&mut self, size: usize) {
        let line = {
            let mut s = self
                .state
                .lock()
                .expect("the meter's lock is never poisoned");
            s.done += size;
            if s.last.elapsed() < Duration::from_secs(2) {
                return;
            }
            s.last = Instant::now();
            self.line(&s)
        };
        (self.say)(&line);
    }

    async fn finish(&mut self) {
        let line = {
            let s = self
                .state
                .lock()
                .expect("the meter's lock is never poisoned");
            self.line(&s)
        };
        (self.say)(&line);
    }
}
