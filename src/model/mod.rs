//! The model: what a Hugging Face / sentence-transformers folder says ([`ModelSpec`]), the
//! tokenizer ([`TextTokenizer`]), the BERT-family encoder written with tch ([`bert::Bert`]) and
//! pooling. Nothing here knows about actors; the actors in `crate::actors` own these values.

pub mod bert;
mod tokenize;

use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use tokenize::{Encoded, TextTokenizer, TokenizeError};

use crate::config::{self, DType, Pooling};

/// Where the model runs, as configured (`auto` is resolved at start-up by [`Device::resolve`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// CUDA if present, then MPS, then CPU.
    Auto,
    /// The CPU.
    Cpu,
    /// NVIDIA GPU number N.
    Cuda(usize),
    /// Apple GPU.
    Mps,
}

impl Device {
    /// Parses `auto`, `cpu`, `cuda`, `cuda:N` or `mps`.
    pub fn parse(s: &str) -> Result<Device, String> {
        match s.trim() {
            "auto" => Ok(Device::Auto),
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            "mps" => Ok(Device::Mps),
            other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(Device::Cuda(n)),
                _ => Err(format!(
                    "`{other}` is not a device; expected auto, cpu, cuda, cuda:N or mps"
                )),
            },
        }
    }

    /// Turns the configured device into a libtorch device, checking that it exists here.
    pub fn resolve(self) -> Result<tch::Device, String> {
        match self {
            Device::Auto if tch::Cuda::is_available() => Ok(tch::Device::Cuda(0)),
            Device::Auto if tch::utils::has_mps() => Ok(tch::Device::Mps),
            Device::Auto | Device::Cpu => Ok(tch::Device::Cpu),
            Device::Cuda(n) => {
                let count = tch::Cuda::device_count();
                if (n as i64) < count {
                    Ok(tch::Device::Cuda(n))
                } else if count == 0 {
                    Err("cuda was asked for, but libtorch sees no CUDA device here".into())
                } else {
                    Err(format!(
                        "cuda:{n} was asked for, but only {count} CUDA devices exist"
                    ))
                }
            }
            Device::Mps if tch::utils::has_mps() => Ok(tch::Device::Mps),
            Device::Mps => Err("mps was asked for, but this libtorch has no MPS device".into()),
        }
    }
}

/// Makes CUDA available to a binary linked against CPU libtorch: loads `libtorch_cuda.so`
/// (from the loader's search path, e.g. a PyTorch install's `torch/lib` on
/// `LD_LIBRARY_PATH`) with global symbols before the first CUDA call, which registers the CUDA
/// kernels. Returns whether it was loaded; without it the server runs on CPU (or MPS).
/// Must run before any libtorch device query.
pub fn load_cuda_backend() -> bool {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: dlopen with a valid C string; the handle is kept for the process's life.
        let handle = unsafe {
            libc::dlopen(
                c"libtorch_cuda.so".as_ptr(),
                libc::RTLD_NOW | libc::RTLD_GLOBAL,
            )
        };
        if !handle.is_null() {
            return true;
        }
    }
    false
}

/// A libtorch device's name as users write it.
pub fn device_name(d: tch::Device) -> String {
    match d {
        tch::Device::Cpu => "cpu".into(),
        tch::Device::Cuda(n) => format!("cuda:{n}"),
        tch::Device::Mps => "mps".into(),
        tch::Device::Vulkan => "vulkan".into(),
    }
}

/// The subset of Hugging Face's `config.json` a BERT-family encoder needs.
#[derive(Debug, Clone, Deserialize)]
pub struct EncoderConfig {
    /// `bert`, `roberta`, ...
    #[serde(default)]
    pub model_type: String,
    /// Vocabulary size.
    pub vocab_size: i64,
    /// Width of the token states.
    pub hidden_size: i64,
    /// Encoder layers.
    pub num_hidden_layers: i64,
    /// Attention heads per layer.
    pub num_attention_heads: i64,
    /// Width of the feed-forward layer.
    pub intermediate_size: i64,
    /// Positions the model was trained with.
    pub max_position_embeddings: i64,
    /// Segment types (2 for BERT).
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: i64,
    /// LayerNorm epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// `gelu` (erf), `gelu_new` / `gelu_pytorch_tanh` (tanh), or `relu`.
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// Padding token id.
    #[serde(default)]
    pub pad_token_id: i64,
}

fn default_type_vocab() -> i64 {
    2
}
fn default_eps() -> f64 {
    1e-12
}
fn default_act() -> String {
    "gelu".into()
}

/// Everything about the model that is read from its folder and the configuration once, at
/// start-up, and shared (read-only) by the tokenizers, the workers and the API.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    /// Name shown to clients.
    pub name: String,
    /// The model folder.
    pub path: PathBuf,
    /// The encoder's shape.
    pub encoder: EncoderConfig,
    /// Longest input in tokens (special tokens included).
    pub max_seq_length: usize,
    /// How token states become one vector.
    pub pooling: Pooling,
    /// Whether embeddings are L2-normalised unless a request says otherwise.
    pub normalize: bool,
    /// Requested device (resolved by each worker).
    pub device: tch::Device,
    /// Weights' precision.
    pub dtype: DType,
}

/// A model folder that cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file is missing or unreadable.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The weights lack a tensor, or a tensor has the wrong shape.
    #[error("model weights: {0}")]
    Weights(String),
    /// libtorch refused something.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// The configuration asks for something the model cannot do.
    #[error("{0}")]
    Config(String),
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, ModelError> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::File {
        path: path.into(),
        message: e.to_string(),
    })?;
    serde_json::from_str(&text).map_err(|e| ModelError::File {
        path: path.into(),
        message: format!("not the expected JSON: {e}"),
    })
}

#[derive(Deserialize)]
struct SentenceBertConfig {
    max_seq_length: Option<usize>,
}

#[derive(Deserialize, Default)]
struct PoolingConfig {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
    #[serde(default)]
    pooling_mode_lasttoken: bool,
}

#[derive(Deserialize)]
struct StModule {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    path: String,
}

impl ModelSpec {
    /// Reads the model folder's metadata (not the weights) and merges the configuration's
    /// choices over the folder's own defaults.
    pub fn load(cfg: &config::Model) -> Result<ModelSpec, ModelError> {
        let dir = &cfg.path;
        let encoder: EncoderConfig = read_json(&dir.join("config.json"))?;
        if encoder.hidden_size % encoder.num_attention_heads != 0 {
            return Err(ModelError::Config(format!(
                "config.json: hidden_size {} is not a multiple of num_attention_heads {}",
                encoder.hidden_size, encoder.num_attention_heads
            )));
        }
        // sentence-transformers' modules.json: where pooling lives and whether Normalize is on.
        let modules: Vec<StModule> = if dir.join("modules.json").is_file() {
            read_json(&dir.join("modules.json"))?
        } else {
            Vec::new()
        };
        let pooling_dir = modules
            .iter()
            .find(|m| m.kind.ends_with(".Pooling"))
            .map(|m| dir.join(&m.path))
            .unwrap_or_else(|| dir.join("1_Pooling"));
        let folder_pooling = if pooling_dir.join("config.json").is_file() {
            let p: PoolingConfig = read_json(&pooling_dir.join("config.json"))?;
            if p.pooling_mode_cls_token {
                Pooling::Cls
            } else if p.pooling_mode_max_tokens {
                Pooling::Max
            } else if p.pooling_mode_mean_sqrt_len_tokens {
                Pooling::MeanSqrtLen
            } else if p.pooling_mode_lasttoken {
                Pooling::LastToken
            } else {
                let _ = p.pooling_mode_mean_tokens;
                Pooling::Mean
            }
        } else {
            Pooling::Mean
        };
        let folder_normalize = modules.iter().any(|m| m.kind.ends_with(".Normalize"));
        let st_max = if dir.join("sentence_bert_config.json").is_file() {
            read_json::<SentenceBertConfig>(&dir.join("sentence_bert_config.json"))?.max_seq_length
        } else {
            None
        };
        let positions = encoder.max_position_embeddings.max(1) as usize;
        let max_seq_length = cfg.max_seq_length.or(st_max).unwrap_or(positions);
        if max_seq_length > positions {
            return Err(ModelError::Config(format!(
                "model.max_seq_length {max_seq_length} is more than the model's \
                 max_position_embeddings {positions}"
            )));
        }
        let device = Device::parse(&cfg.device)
            .and_then(Device::resolve)
            .map_err(|e| ModelError::Config(format!("model.device: {e}")))?;
        if device == tch::Device::Cpu && cfg.dtype == DType::F16 {
            return Err(ModelError::Config(
                "model.dtype: f16 is for GPUs; use f32 (or bf16) on the CPU".into(),
            ));
        }
        // The folder's own name (not the link target's: models/all-MiniLM-L6-v2 is a link
        // into the cache), unless the path ends in `.` or `..`.
        let name = cfg.name.clone().unwrap_or_else(|| {
            dir.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .or_else(|| {
                    dir.canonicalize()
                        .ok()
                        .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
                })
                .unwrap_or_else(|| "model".into())
        });
        Ok(ModelSpec {
            name,
            path: dir.clone(),
            encoder,
            max_seq_length,
            pooling: cfg.pooling.unwrap_or(folder_pooling),
            normalize: cfg.normalize.unwrap_or(folder_normalize),
            device,
            dtype: cfg.dtype,
        })
    }

    /// Width of the embeddings.
    pub fn dim(&self) -> usize {
        self.encoder.hidden_size as usize
    }
}

/// L2-normalises `v` in place (sentence-transformers' Normalize: divide by max(‖v‖, 1e-12)).
pub fn normalize_l2(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= norm);
}
