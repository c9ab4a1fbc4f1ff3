//! The experiment configuration: one typed YAML file, validated once at start-up.
//!
//! Precedence, highest first: command-line flags, environment variables
//! (`ACTOR_INFER__SECTION__KEY`, e.g. `ACTOR_INFER__SERVER__HTTP_PORT=9000`), the YAML file,
//! the defaults below. Unknown keys, wrong types and impossible values stop the program before
//! anything starts, with one message that names the key. Relative paths in the YAML are resolved
//! against the YAML file's folder.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

mod accepts;
mod model;
mod process;
mod server;

use accepts::{refuse_fractions, refused};
pub use model::{
    Batching, DType, Device, DeviceParseError, LatencyBudget, Model, ModelKind, Pooling,
    Quantization, Tokenizer,
};
use model::{validate_model, validate_pools};
pub use process::{
    LogFormat, Logging, MetricsConfig, OtlpProtocol, Shutdown, Supervision, Telemetry,
};
pub use server::{Experiment, Hub, PRIORITY_ROUTES, Priority, Secret, Server, Transport, Workload};

/// Prefix of the environment variables that override YAML keys; `__` separates the levels.
pub const ENV_PREFIX: &str = "ACTOR_INFER";
/// Separator between levels in those variables' names.
pub const ENV_SEPARATOR: &str = "__";

/// A configuration that cannot be used, with the key it concerns.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {problem}")]
pub struct ConfigError {
    /// Dotted path of the offending key, e.g. `model.instances`; the file for parse errors.
    pub key: String,
    /// What is wrong with it.
    pub problem: String,
}

impl ConfigError {
    fn new(key: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            problem: problem.into(),
        }
    }
}

/// The whole experiment file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Which experiment this is; shown in logs, `/info` and metrics.
    #[serde(default)]
    pub experiment: Experiment,
    /// Network front ends.
    #[serde(default)]
    pub server: Server,
    /// The model and how it runs, when the experiment serves one (`model:`). Moved into
    /// [`Config::models`] at load: read it through [`Config::model`].
    #[serde(default, skip_serializing)]
    pub model: Option<Model>,
    /// Every model served, in the file's order (`models:`, or `model:` as a list of one).
    #[serde(default)]
    pub models: Vec<Model>,
    /// The tokenizer pool.
    #[serde(default)]
    pub tokenizer: Tokenizer,
    /// How queued texts are grouped into forwards.
    #[serde(default)]
    pub batching: Batching,
    /// The stop sequence.
    #[serde(default)]
    pub shutdown: Shutdown,
    /// Restarts of panicked actors.
    #[serde(default)]
    pub supervision: Supervision,
    /// Log output.
    #[serde(default)]
    pub logging: Logging,
    /// The JSON dashboard.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// What `actor-infer bench` and `scripts/run_experiment.sh` send by default.
    #[serde(default)]
    pub workload: Workload,
    /// OpenTelemetry tracing (off unless `telemetry.otlp_endpoint` is set).
    #[serde(default)]
    pub telemetry: Telemetry,
    /// Models named by their Hugging Face id (`crate::hub`).
    #[serde(default)]
    pub hub: Hub,
    /// Whether the file listed `models:` (error keys then say `models[i]`).
    #[serde(skip)]
    listed: bool,
}

/// One model's settings as its pipeline runs them ([`Config::settings`]): what its Supervisor
/// group, tokenizer pool, batcher and workers are built from, and what decides whether a reload
/// replaces it.
#[derive(Debug, Clone, Serialize)]
pub struct ModelSettings {
    /// The model's own keys; its `tokenizer:` and `batching:` are moved to the two below.
    pub model: Model,
    /// The tokenizer pool it runs: its own `tokenizer:`, else the top-level one.
    pub tokenizer: Tokenizer,
    /// How its texts are batched: its own `batching:`, else the top-level one.
    pub batching: Batching,
    /// Intra-op threads each of its workers gets.
    pub intra_op_threads: usize,
}

/// Command-line values that override the file and the environment.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--host`
    pub host: Option<String>,
    /// `--grpc-port`
    pub grpc_port: Option<u32>,
    /// `--http-port`
    pub http_port: Option<u32>,
}

impl Config {
    /// Reads `path`, applies environment variables and `overrides`, resolves relative paths
    /// and validates everything. The error names the key at fault. A model named by its
    /// Hugging Face id is looked up in the cache only, never downloaded (a reload runs this on
    /// the Supervisor's thread): see [`Config::load_at_start`].
    pub fn load(path: &Path, overrides: &Overrides) -> Result<Config, ConfigError> {
        Self::load_with(path, overrides, None)
    }

    /// [`Config::load`] at start-up: a model named by its Hugging Face id that is not cached is
    /// downloaded when `hub.download` allows it and `HF_HUB_OFFLINE` is not set; `say` prints
    /// the download's progress lines.
    pub fn load_at_start(
        path: &Path,
        overrides: &Overrides,
        say: crate::hub::Say,
    ) -> Result<Config, ConfigError> {
        Self::load_with(path, overrides, Some(say))
    }

    fn load_with(
        path: &Path,
        overrides: &Overrides,
        fetch: Option<crate::hub::Say>,
    ) -> Result<Config, ConfigError> {
        let shown = path.display().to_string();
        if !path.is_file() {
            return Err(ConfigError::new(
                "--experiment",
                format!("{shown} does not exist or is not a file"),
            ));
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new("--experiment", format!("cannot read {shown}: {e}")))?;
        let env = std::env::vars().filter(|(k, _)| k.starts_with(ENV_PREFIX));
        let mut config = Self::from_sources(&text, env, overrides)
            .map_err(|e| ConfigError::new(e.key, format!("{} (in {shown})", e.problem)))?;
        let folder = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let hub = crate::hub::HubEnv::from_env();
        let download = config.hub.download;
        for i in 0..config.models.len() {
            let key = config.model_key(i);
            let m = &mut config.models[i];
            if let Some(q) = &mut m.quantization {
                for file in [&mut q.ranges_file, &mut q.calibration_file]
                    .into_iter()
                    .flatten()
                {
                    if file.is_relative() {
                        *file = folder.join(&*file);
                    }
                }
            }
            if m.path.is_relative() {
                let written = m.path.clone();
                m.path = folder.join(&written);
                // A folder that exists always wins; else an id-shaped path is a Hub id.
                if !m.path.exists()
                    && let Some(id) = written.to_str().and_then(crate::hub::HubId::parse)
                {
                    let weights = if m.kind == ModelKind::Torchscript {
                        crate::hub::Weights::TorchScript
                    } else {
                        crate::hub::Weights::Any
                    };
                    let quiet: crate::hub::Say = std::sync::Arc::new(|_: &str| {});
                    let say = fetch.as_ref().unwrap_or(&quiet);
                    let (snapshot, resolved) =
                        crate::hub::resolve(&id, weights, &hub, download && fetch.is_some(), say)
                            .map_err(|e| {
                            let reload = if fetch.is_none() && download {
                                " (a reload reads the cache only; the server downloads at start)"
                            } else {
                                ""
                            };
                            ConfigError::new(
                                format!("{key}.path"),
                                format!(
                                    "no folder {} exists, so `{}` was read as a Hugging Face id: \
                                 {e}{reload}",
                                    m.path.display(),
                                    written.display()
                                ),
                            )
                        })?;
                    m.path = snapshot;
                    m.hub = Some(resolved);
                }
            }
        }
        if config.experiment.name.is_empty() {
            config.experiment.name = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "experiment".into());
        }
        config.validate()?;
        Ok(config)
    }

    /// Builds a configuration from YAML text, environment pairs and overrides, without
    /// touching the file system (paths stay as written). Types are checked, values are not:
    /// call [`Config::validate`] for that.
    pub fn from_sources(
        yaml: &str,
        env: impl Iterator<Item = (String, String)>,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        let env: config::Map<String, String> = env.collect();
        let mut builder = config::Config::builder()
            .add_source(config::File::from_str(yaml, config::FileFormat::Yaml))
            .add_source(
                config::Environment::with_prefix(ENV_PREFIX)
                    .prefix_separator(ENV_SEPARATOR)
                    .separator(ENV_SEPARATOR)
                    .try_parsing(true)
                    .source(Some(env)),
            );
        let set = |b: config::ConfigBuilder<_>, key: &str, v: Option<config::Value>| match v {
            Some(v) => b.set_override(key, v),
            None => Ok(b),
        };
        let err = |e: config::ConfigError| ConfigError::new("--experiment", e.to_string());
        builder = set(
            builder,
            "server.host",
            overrides.host.clone().map(Into::into),
        )
        .map_err(err)?;
        builder = set(
            builder,
            "server.grpc_port",
            overrides.grpc_port.map(|p| i64::from(p).into()),
        )
        .map_err(err)?;
        builder = set(
            builder,
            "server.http_port",
            overrides.http_port.map(|p| i64::from(p).into()),
        )
        .map_err(err)?;
        let raw = builder.build().map_err(|e| {
            // A YAML syntax error: config names no key, the file is the best we can say.
            ConfigError::new("file", e.to_string())
        })?;
        refuse_fractions(&raw)?;
        let mut config: Config = serde_path_to_error::deserialize(raw.clone()).map_err(|e| {
            let key = e.path().to_string();
            let key = if key == "." { "file".to_string() } else { key };
            let problem = e.into_inner().to_string();
            ConfigError::new(key.clone(), refused(&raw, &key, problem.trim()))
        })?;
        // `model:` is a list of one; `models:` lists several. Exactly one of the two.
        match (config.model.take(), config.models.is_empty()) {
            (Some(_), false) => {
                return Err(ConfigError::new(
                    "models",
                    "give either `model:` (one model) or `models:` (a list), not both",
                ));
            }
            (Some(m), true) => config.models.push(m),
            (None, true) => {
                return Err(ConfigError::new(
                    "model",
                    "missing: give `model:` with a `path`, or `models:` with a list of them",
                ));
            }
            (None, false) => config.listed = true,
        }
        Ok(config)
    }

    /// The first model listed (the only one of a `model:` experiment).
    pub fn model(&self) -> &Model {
        &self.models[0]
    }

    /// Model `i`'s settings as its pipeline runs them: its own `tokenizer:` and `batching:`
    /// where it has them, else the top-level ones, and its intra-op threads (unset: the
    /// machine's cores divided by the instances of every model served).
    pub fn settings(&self, i: usize) -> ModelSettings {
        let mut model = self.models[i].clone();
        let tokenizer = model
            .tokenizer
            .take()
            .unwrap_or_else(|| self.tokenizer.clone());
        let batching = model
            .batching
            .take()
            .unwrap_or_else(|| self.batching.clone());
        let intra_op_threads = model.intra_op_threads.unwrap_or_else(|| {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            let all: usize = self.models.iter().map(|m| m.instances).sum();
            (cores / all.max(1)).max(1)
        });
        ModelSettings {
            model,
            tokenizer,
            batching,
            intra_op_threads,
        }
    }

    /// Where model `i`'s keys are, as errors name them: `model` or `models[i]`.
    fn model_key(&self, i: usize) -> String {
        if self.listed {
            format!("models[{i}]")
        } else {
            "model".to_string()
        }
    }

    /// Checks values that types cannot: ranges, zeros, files that must exist.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let s = &self.server;
        if s.host.trim().is_empty() {
            return Err(ConfigError::new("server.host", "must not be empty"));
        }
        for (key, port) in [
            ("server.grpc_port", s.grpc_port),
            ("server.http_port", s.http_port),
        ] {
            if port > 65535 {
                return Err(ConfigError::new(
                    key,
                    format!("{port} is out of range (0..=65535; 0 picks a free port)"),
                ));
            }
        }
        if s.grpc_port != 0 && s.grpc_port == s.http_port {
            return Err(ConfigError::new(
                "server.http_port",
                format!("{} is also server.grpc_port; they must differ", s.http_port),
            ));
        }
        if s.http_workers == 0 {
            return Err(ConfigError::new(
                "server.http_workers",
                "must be at least 1",
            ));
        }
        for (key, value) in [
            ("server.max_concurrent_requests", s.max_concurrent_requests),
            ("server.max_client_batch_size", s.max_client_batch_size),
            ("server.max_input_chars", s.max_input_chars),
            ("server.max_request_bytes", s.max_request_bytes),
        ] {
            if value == 0 {
                return Err(ConfigError::new(key, "must be at least 1"));
            }
        }
        if s.max_client_batch_size > s.max_concurrent_requests {
            return Err(ConfigError::new(
                "server.max_client_batch_size",
                format!(
                    "{} is more than server.max_concurrent_requests = {}: such a request could \
                     never be admitted",
                    s.max_client_batch_size, s.max_concurrent_requests
                ),
            ));
        }
        let t = s.request_timeout_seconds;
        if !(t.is_finite() && t > 0.0 && t <= 86_400.0) {
            return Err(ConfigError::new(
                "server.request_timeout_seconds",
                format!("{t} must be more than 0 and at most 86400"),
            ));
        }
        if s.api_key.as_ref().is_some_and(Secret::is_empty) {
            return Err(ConfigError::new(
                "server.api_key",
                "is set but empty; remove it to turn authentication off",
            ));
        }
        let mut names = std::collections::BTreeMap::new();
        for (i, m) in self.models.iter().enumerate() {
            let key = self.model_key(i);
            validate_model(m, &key)?;
            let name = m.served_name();
            if name.is_empty() || name.contains('/') || name.chars().any(char::is_control) {
                return Err(ConfigError::new(
                    format!("{key}.name"),
                    format!("`{name}` cannot name a model: give a name without `/`"),
                ));
            }
            if let Some(first) = names.insert(name.clone(), key.clone()) {
                return Err(ConfigError::new(
                    format!("{key}.name"),
                    format!(
                        "`{name}` is also the name of {first}; every model needs its own \
                         (set `name:`)"
                    ),
                ));
            }
        }
        for (kind, name) in &self.server.default_models {
            if !["embedding", "reranker", "classifier"].contains(&kind.as_str()) {
                return Err(ConfigError::new(
                    format!("server.default_models.{kind}"),
                    "is not a kind of route: use `embedding`, `reranker` or `classifier`",
                ));
            }
            if !names.contains_key(name) {
                return Err(ConfigError::new(
                    format!("server.default_models.{kind}"),
                    format!(
                        "`{name}` is not a model served here ({})",
                        names.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
        }
        for (i, m) in self.models.iter().enumerate() {
            let (b, key) = match &m.batching {
                Some(b) => (b, format!("{}.batching", self.model_key(i))),
                None => (&self.batching, "batching".to_string()),
            };
            if b.reserved_interactive_instances >= m.instances {
                return Err(ConfigError::new(
                    format!("{key}.reserved_interactive_instances"),
                    format!(
                        "{} is not less than {}.instances = {}: at least one worker must take \
                         batch work",
                        b.reserved_interactive_instances,
                        self.model_key(i),
                        m.instances
                    ),
                ));
            }
        }
        for route in self.server.route_priorities.keys() {
            if !PRIORITY_ROUTES.contains(&route.as_str()) {
                return Err(ConfigError::new(
                    format!("server.route_priorities.{route}"),
                    format!(
                        "is not an inference route; the routes are: {}",
                        PRIORITY_ROUTES.join(", ")
                    ),
                ));
            }
        }
        validate_pools(&self.tokenizer, &self.batching, "")?;
        let t = self.shutdown.timeout_seconds;
        if !(t.is_finite() && t > 0.0 && t <= 3600.0) {
            return Err(ConfigError::new(
                "shutdown.timeout_seconds",
                format!("{t} must be more than 0 and at most 3600"),
            ));
        }
        let m = self.metrics.window_seconds;
        if !(m.is_finite() && (1.0..=86400.0).contains(&m)) {
            return Err(ConfigError::new(
                "metrics.window_seconds",
                format!("{m} must be between 1 and 86400"),
            ));
        }
        self.telemetry.validate()?;
        let w = self.supervision.window_seconds;
        if !(w.is_finite() && w > 0.0) {
            return Err(ConfigError::new(
                "supervision.window_seconds",
                format!("{w} must be more than 0"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
