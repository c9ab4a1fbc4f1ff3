//! A model named by its Hugging Face Hub id (`org/name`, optionally `@revision`) instead of a
//! folder: found in the local Hugging Face cache, or downloaded into it when that is allowed.
//!
//! The cache is the one `huggingface_hub`, `sentence-transformers` and TEI share:
//! `$HF_HUB_CACHE` (else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`) holds
//! `models--org--name/` with `refs/<branch or tag>` (a commit hash), `snapshots/<commit>/<file>`
//! (links to `blobs/<etag>`) and `blobs/`. Resolution reads `refs/` to the snapshot without any
//! network. Only when the model is not cached (or a file the server reads is missing), the
//! experiment allows it (`hub.download: true`) and `HF_HUB_OFFLINE` is not set, the files the
//! server reads are downloaded from `$HF_ENDPOINT` (default `https://huggingface.co`, with
//! `HF_TOKEN` for gated models) by `hf-hub`, the crate TEI uses, into that same cache.
//!
//! Called by the configuration's loading ([`crate::config::Config::load_at_start`]) before
//! anything starts; every error names the id, the revision, the cache folder searched and what to
//! run, and the caller exits 2.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

/// The revision used when an id names none.
pub const DEFAULT_REVISION: &str = "main";

/// A Hub model id as written in `model.path`: `org/name` (or a legacy `name`), optionally
/// `@revision` (a branch, a tag or a commit hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubId {
    /// `org/name`.
    pub repo: String,
    /// The revision asked for; `None` means [`DEFAULT_REVISION`].
    pub revision: Option<String>,
}

impl HubId {
    /// Reads `text` as a Hub id, or `None` when it cannot be one (a path with more than one
    /// `/`, an absolute path, `./x`, a name with characters the Hub does not allow).
    pub fn parse(text: &str) -> Option<HubId> {
        let (repo, revision) = match text.split_once('@') {
            Some((r, rev)) => (r, Some(rev)),
            None => (text, None),
        };
        if let Some(rev) = revision
            && (rev.is_empty()
                || rev.contains("..")
                || rev.starts_with('/')
                || rev.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return None;
        }
        let parts: Vec<&str> = repo.split('/').collect();
        if parts.len() > 2 || !parts.iter().all(|p| valid_part(p)) {
            return None;
        }
        Some(HubId {
            repo: repo.to_string(),
            revision: revision.map(str::to_owned),
        })
    }

    /// The revision asked for, or `main`.
    pub fn revision(&self) -> &str {
        self.revision.as_deref().unwrap_or(DEFAULT_REVISION)
    }

    /// The repository's folder in the cache: `models--org--name`.
    pub fn folder_name(&self) -> String {
        format!("models--{}", self.repo.replace('/', "--"))
    }
}

impl std::fmt::Display for HubId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.repo, self.revision())
    }
}

/// One part of a repo id as the Hub allows it: letters, digits, `-`, `_`, `.`; not starting
/// with `-` or `.`, not ending with `.`, no `--` or `..`, at most 96 characters.
fn valid_part(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 96
        && p.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !p.starts_with(['-', '.'])
        && !p.ends_with('.')
        && !p.contains("--")
        && !p.contains("..")
}

/// True for a 40-hex-digit commit hash.
pub fn is_commit(revision: &str) -> bool {
    revision.len() == 40 && revision.chars().all(|c| c.is_ascii_hexdigit())
}

/// Where a resolved model came from: shown by `--check`, `/info` (`model_id`, `model_sha`),
/// gRPC `ModelInfo` and the live page.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolved {
    /// The repo id, `org/name`.
    pub id: String,
    /// The revision asked for (`main` when none was).
    pub revision: String,
    /// The commit that revision resolved to (the snapshot's folder name).
    pub commit: String,
}

impl Resolved {
    /// The model's default name for clients: the id's last part (`all-MiniLM-L6-v2`).
    pub fn name(&self) -> String {
        self.id.rsplit('/').next().unwrap_or(&self.id).to_string()
    }
}

/// What the environment says, read once: the variables `huggingface_hub` reads, with its
/// precedence.
#[derive(Debug, Clone)]
pub struct HubEnv {
    /// The hub cache folder.
    pub cache: PathBuf,
    /// Which variable chose it (for error messages), e.g. `HF_HOME`, or `default`.
    pub cache_from: &'static str,
    /// `HF_HUB_OFFLINE` (or `TRANSFORMERS_OFFLINE`) is 1, ON, YES or TRUE.
    pub offline: bool,
    /// `HF_ENDPOINT` without a trailing `/`, else `https://huggingface.co`.
    pub endpoint: String,
    /// `HF_TOKEN` (else `HUGGING_FACE_HUB_TOKEN`, else the token file `hf auth login` writes).
    /// Never logged.
    token: Option<String>,
}

impl HubEnv {
    /// Reads the process's environment.
    pub fn from_env() -> HubEnv {
        Self::from_vars(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
    }

    /// Reads the variables through `var` (tests give their own).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> HubEnv {
        let home = || var("HOME").map(PathBuf::from).unwrap_or_else(|| ".".into());
        let expand = |v: String| match v.strip_prefix("~/") {
            Some(rest) => home().join(rest),
            None if v == "~" => home(),
            None => PathBuf::from(v),
        };
        let hf_home = var("HF_HOME").map(expand).unwrap_or_else(|| {
            var("XDG_CACHE_HOME")
                .map(expand)
                .unwrap_or_else(|| home().join(".cache"))
                .join("huggingface")
        });
        let (cache, cache_from) = if let Some(c) = var("HF_HUB_CACHE") {
            (expand(c), "HF_HUB_CACHE")
        } else if let Some(c) = var("HUGGINGFACE_HUB_CACHE") {
            (expand(c), "HUGGINGFACE_HUB_CACHE")
        } else if var("HF_HOME").is_some() {
            (hf_home.join("hub"), "HF_HOME")
        } else if var("XDG_CACHE_HOME").is_some() {
            (hf_home.join("hub"), "XDG_CACHE_HOME")
        } else {
            (hf_home.join("hub"), "default")
        };
        let truthy = |k: &str| {
            var(k).is_some_and(|v| ["1", "ON", "YES", "TRUE"].contains(&v.to_uppercase().as_str()))
        };
        let token = var("HF_TOKEN")
            .or_else(|| var("HUGGING_FACE_HUB_TOKEN"))
            .or_else(|| {
                let file = var("HF_TOKEN_PATH")
                    .map(expand)
                    .unwrap_or_else(|| hf_home.join("token"));
                std::fs::read_to_string(file)
                    .ok()
                    .map(|t| t.trim().to_string())
                    .filter(|t| !t.is_empty())
            });
        HubEnv {
            cache,
            cache_from,
            offline: truthy("HF_HUB_OFFLINE") || truthy("TRANSFORMERS_OFFLINE"),
            endpoint: var("HF_ENDPOINT")
                .map(|e| e.trim_end_matches('/').to_string())
                .unwrap_or_else(|| "https://huggingface.co".into()),
            token,
        }
    }

    /// The cache folder and what chose it, as error messages say it.
    fn cache_shown(&self) -> String {
        match self.cache_from {
            "default" => format!("{} (the default cache)", self.cache.display()),
            var => format!("{} (from {var})", self.cache.display()),
        }
    }
}

/// Which weights the model needs: what `model.kind` allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Weights {
    /// `model.safetensors`, else a TorchScript `model.pt`.
    Any,
    /// `model.pt` only (`model.kind: torchscript`).
    TorchScript,
}

impl Weights {
    fn files(self) -> &'static [&'static str] {
        match self {
            Weights::Any => &["model.safetensors", "model.pt"],
            Weights::TorchScript => &["model.pt"],
        }
    }
}

/// Files the server reads when the repository has them (besides config.json, tokenizer.json
/// and the weights, which it must have): src/model's metadata and sentence-transformers'
/// module files. A module's own `config.json` (`1_Pooling/config.json`, ...) is added from
/// `modules.json`.
const OPTIONAL: &[&str] = &[
    "tokenizer_config.json",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "1_Pooling/config.json",
];

/// Why a Hub id could not be served. Every message names the id, the revision, the cache
/// folder and what to do.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// Not in the cache, and downloading is not allowed.
    #[error(
        "`{id}` (revision `{revision}`) is not in the Hugging Face cache: {searched} has no \
         snapshot for it, and {why}. Fetch it with network access \
         (`hf download {id} --revision {revision}`, which huggingface_hub installs), or let the \
         server download it (`hub.download: true` in the experiment, HF_HUB_OFFLINE unset)"
    )]
    NotCached {
        /// The repo id.
        id: String,
        /// The revision.
        revision: String,
        /// The folder searched.
        searched: String,
        /// Why nothing was downloaded.
        why: &'static str,
    },
    /// The snapshot (cached or just downloaded) lacks a file the server must read.
    #[error("`{id}` (revision `{revision}`, commit {commit}) has no {detail}")]
    MissingFile {
        /// The repo id.
        id: String,
        /// The revision.
        revision: String,
        /// The commit.
        commit: String,
        /// What is missing where, what the server needs and what to do
        /// ([`HubError::missing_file`]).
        detail: String,
    },
    /// The Hub says there is no such repository (or it is private and no token may read it).
    #[error(
        "no model repository `{id}` on {endpoint} (revision `{revision}`; it does not exist, or \
         it is private and HF_TOKEN does not give access); nothing was found in the cache {cache} \
         either. Check the id (`org/name`)"
    )]
    RepoNotFound {
        /// The repo id.
        id: String,
        /// The revision.
        revision: String,
        /// The Hub asked.
        endpoint: String,
        /// The cache searched.
        cache: String,
    },
    /// The repository exists, the revision does not.
    #[error(
        "`{id}` has no revision `{revision}` on {endpoint} (no branch, tag or commit of that \
         name); nothing was found in the cache {cache} either. Give an existing branch, tag or \
         commit after `@`"
    )]
    RevisionNotFound {
        /// The repo id.
        id: String,
        /// The revision.
        revision: String,
        /// The Hub asked.
        endpoint: String,
        /// The cache searched.
        cache: String,
    },
    /// The repository needs a token (or a better one).
    #[error(
        "`{id}` (revision `{revision}`) is gated or private on {endpoint} and the request was \
         refused ({status}): accept its terms on the Hub and set HF_TOKEN to a token that may \
         read it; nothing was found in the cache {cache}"
    )]
    Gated {
        /// The repo id.
        id: String,
        /// The revision.
        revision: String,
        /// The Hub asked.
        endpoint: String,
        /// The HTTP status.
        status: u16,
        /// The cache searched.
        cache: String,
    },
    /// The Hub could not be reached or answered something unexpected.
    #[error(
        "cannot download `{id}` (revision `{revision}`) from {endpoint}: {message}; nothing was \
         found in the cache {cache}. Check HF_ENDPOINT and the network, or fetch it elsewhere \
         (`hf download {id} --revision {revision}`) into that cache"
    )]
    Download {
        /// The repo id.
        id: String,
        /// The revision.
        revision: String,
        /// The Hub asked.
        endpoint: String,
        /// What went wrong.
        message: String,
        /// The cache searched.
        cache: String,
    },
}

impl HubError {
    /// [`HubError::MissingFile`]: `missing` (file names) are not in `place` (a snapshot folder
    /// or the repository); `why` says what to do, or is empty.
    fn missing_file(
        id: &HubId,
        commit: &str,
        place: &str,
        missing: &[String],
        weights: Weights,
        why: &str,
    ) -> HubError {
        HubError::MissingFile {
            id: id.repo.clone(),
            revision: id.revision().to_string(),
            commit: commit.to_string(),
            detail: format!(
                "{} in {place}{why}; the server needs config.json, tokenizer.json and {}",
                missing.join(", "),
                weights.files().join(" or ")
            ),
        }
    }
}

/// Progress lines of a download (the caller prints them: start-up runs before logging).
pub type Say = Arc<dyn Fn(&str) + Send + Sync>;

/// Finds `id` in the cache, or downloads what the server reads when `download` is allowed (and
/// the environment is not offline). Returns the snapshot folder and where it came from.
pub fn resolve(
    id: &HubId,
    weights: Weights,
    env: &HubEnv,
    download: bool,
    say: &Say,
) -> Result<(PathBuf, Resolved), HubError> {
    let storage = env.cache.join(id.folder_name());
    let revision = id.revision().to_string();
    let cached = cached_commit(&storage, &revision);
    if let Some(commit) = &cached {
        let snapshot = storage.join("snapshots").join(commit);
        let missing = missing_required(&snapshot, weights);
        if missing.is_empty() {
            let resolved = Resolved {
                id: id.repo.clone(),
                revision,
                commit: commit.clone(),
            };
            return Ok((snapshot, resolved));
        }
        if !download || env.offline {
            return Err(HubError::missing_file(
                id,
                commit,
                &snapshot.display().to_string(),
                &missing,
                weights,
                &format!(
                    " ({}): fetch it (`hf download {} --revision {revision} {}`), or let the \
                     server download it (`hub.download: true`, HF_HUB_OFFLINE unset)",
                    if env.offline {
                        "HF_HUB_OFFLINE is set"
                    } else {
                        "hub.download is off"
                    },
                    id.repo,
                    missing
                        .iter()
                        .map(|m| m.split(" or ").next().unwrap_or(m))
                        .collect::<Vec<_>>()
                        .join(" ")
                ),
            ));
        }
    } else if !download || env.offline {
        return Err(HubError::NotCached {
            id: id.repo.clone(),
            revision,
            searched: format!("{} (in {})", storage.display(), env.cache_shown()),
            why: if env.offline {
                "HF_HUB_OFFLINE is set"
            } else {
                "downloading is off (hub.download: false)"
            },
        });
    }
    fetch(id, weights, env, say)
}

/// The commit `revision` names in the cache: itself if it is a commit whose snapshot exists,
/// else what `refs/<revision>` holds (when its snapshot exists).
fn cached_commit(storage: &Path, revision: &str) -> Option<String> {
    let commit = if is_commit(revision) {
        revision.to_string()
    } else {
        std::fs::read_to_string(storage.join("refs").join(revision))
            .ok()?
            .trim()
            .to_string()
    };
    storage
        .join("snapshots")
        .join(&commit)
        .is_dir()
        .then_some(commit)
}

/// The files the server must read that `snapshot` lacks.
fn missing_required(snapshot: &Path, weights: Weights) -> Vec<String> {
    let mut missing: Vec<String> = ["config.json", "tokenizer.json"]
        .into_iter()
        .filter(|f| !snapshot.join(f).is_file())
        .map(str::to_owned)
        .collect();
    if !weights.files().iter().any(|f| snapshot.join(f).is_file()) {
        missing.push(weights.files().join(" or "));
    }
    missing
}

/// The repository's listing, as `/api/models/{id}/revision/{rev}` answers it.
#[derive(Deserialize)]
struct RepoInfo {
    sha: String,
    #[serde(default)]
    siblings: Vec<Sibling>,
}

#[derive(Deserialize)]
struct Sibling {
    rfilename: String,
}

/// Downloads what the server reads into the cache (hf-hub writes blobs, snapshots and refs as
/// huggingface_hub does) and returns the snapshot. Runs on a runtime of its own: start-up is
/// not inside any runtime yet.
fn fetch(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_paths_are_told_apart() {
        let id = HubId::parse("sentence-transformers/all-MiniLM-L6-v2").unwrap();
        assert_eq!(id.repo, "sentence-transformers/all-MiniLM-L6-v2");
        assert_eq!(id.revision(), "main");
        assert_eq!(
            id.folder_name(),
            "models--sentence-transformers--all-MiniLM-L6-v2"
        );
        let id = HubId::parse("BAAI/bge-small-en-v1.5@refs/pr/3").unwrap();
        assert_eq!(
            (id.repo.as_str(), id.revision()),
            ("BAAI/bge-small-en-v1.5", "refs/pr/3")
        );
        assert_eq!(HubId::parse("gpt2").unwrap().repo, "gpt2");
        for path in [
            "../models/all-MiniLM-L6-v2",
            "./model",
            "/abs/model",
            "a/b/c",
            "org/na me",
            "org/-x",
            "org/x.",
            "org/a--b",
            "org/x@",
            "org/x@a b",
            "",
        ] {
            assert_eq!(HubId::parse(path), None, "{path} is not an id");
        }
    }

    #[test]
    fn the_environment_chooses_the_cache_as_huggingface_hub_does() {
        let env = |pairs: &[(&str, &str)]| {
            let pairs: Vec<(String, String)> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            HubEnv::from_vars(move |k| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()))
        };
        let e = env(&[("HOME", "/h")]);
        assert_eq!(e.cache, PathBuf::from("/h/.cache/huggingface/hub"));
        assert_eq!(e.endpoint, "https://huggingface.co");
        assert!(!e.offline);
        let e = env(&[("HOME", "/h"), ("XDG_CACHE_HOME", "/x")]);
        assert_eq!(e.cache, PathBuf::from("/x/huggingface/hub"));
        let e = env(&[
            ("HOME", "/h"),
            ("HF_HOME", "~/hf"),
            ("XDG_CACHE_HOME", "/x"),
        ]);
        assert_eq!(e.cache, PathBuf::from("/h/hf/hub"));
        let e = env(&[("HF_HOME", "/hf"), ("HF_HUB_CACHE", "/c")]);
        assert_eq!(
            (e.cache.as_path(), e.cache_from),
            (Path::new("/c"), "HF_HUB_CACHE")
        );
        let e = env(&[
            ("HF_HUB_OFFLINE", "yes"),
            ("HF_ENDPOINT", "http://127.0.0.1:9/"),
        ]);
        assert!(e.offline);
        assert_eq!(e.endpoint, "http://127.0.0.1:9");
        assert!(env(&[("TRANSFORMERS_OFFLINE", "1")]).offline);
        assert!(!env(&[("HF_HUB_OFFLINE", "0")]).offline);
        assert_eq!(env(&[("HF_TOKEN", "t")]).token.as_deref(), Some("t"));
    }

    /// A cache as huggingface_hub lays it out: refs/main → snapshots/<commit>/ with links
    /// into blobs/.
    fn cache_with(files: &[&str]) -> (tempfile::TempDir, HubEnv, String) {
        let dir = tempfile::tempdir().unwrap();
        let commit = "0123456789abcdef0123456789abcdef01234567".to_string();
        let storage = dir.path().join("models--org--m");
        std::fs::create_dir_all(storage.join("refs")).unwrap();
        std::fs::write(storage.join("refs/main"), &commit).unwrap();
        std::fs::create_dir_all(storage.join("blobs")).unwrap();
        for (i, f) in files.iter().enumerate() {
            let blob = storage.join(format!("blobs/{i:040}"));
            std::fs::write(&blob, "{}").unwrap();
            let link = storage.join("snapshots").join(&commit).join(f);
            std::fs::create_dir_all(link.parent().unwrap()).unwrap();
            std::os::unix::fs::symlink(&blob, &link).unwrap();
        }
        let path = dir.path().to_path_buf();
        let env =
            HubEnv::from_vars(move |k| (k == "HF_HUB_CACHE").then(|| path.display().to_string()));
        (dir, env, commit)
    }

    fn quiet() -> Say {
        Arc::new(|_: &str| {})
    }

    #[test]
    fn a_cached_model_resolves_through_refs_without_the_network() {
        let (_dir, env, commit) =
            cache_with(&["config.json", "tokenizer.json", "model.safetensors"]);
        for written in ["org/m", "org/m@main", &format!("org/m@{commit}")] {
            let id = HubId::parse(written).unwrap();
            let (folder, r) = resolve(&id, Weights::Any, &env, false, &quiet()).unwrap();
            assert_eq!(
                folder,
                env.cache.join("models--org--m/snapshots").join(&commit)
            );
            assert_eq!(r.commit, commit);
            assert_eq!(r.name(), "m");
        }
    }

    #[test]
    fn what_is_not_cached_is_refused_with_what_to_run() {
        let (_dir, env, _) = cache_with(&["config.json", "tokenizer.json"]);
        let e = resolve(
            &HubId::parse("org/m").unwrap(),
            Weights::Any,
            &env,
            false,
            &quiet(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("has no model.safetensors or model.pt")
                && e.contains("hf download org/m --revision main")
                && e.contains("hub.download is off"),
            "{e}"
        );
        let e = resolve(
            &HubId::parse("org/other@v2").unwrap(),
            Weights::Any,
            &env,
            false,
            &quiet(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("`org/other` (revision `v2`) is not in the Hugging Face cache")
                && e.contains("models--org--other")
                && e.contains("hf download org/other --revision v2"),
            "{e}"
        );
        let offline = HubEnv {
            offline: true,
            ..env.clone()
        };
        let e = resolve(
            &HubId::parse("org/other").unwrap(),
            Weights::Any,
            &offline,
            true,
            &quiet(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("HF_HUB_OFFLINE is set"), "{e}");
    }
}
