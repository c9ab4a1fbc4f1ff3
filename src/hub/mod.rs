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
    path::{Path, PathBuf},
    sync::Arc,
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

mod download;
use download::fetch;

#[cfg(test)]
mod tests;
