//! Where the model runs. At start, once, [`Probe::run`] finds out what this host offers — which
//! libtorch libraries the process loaded and from where, libtorch's CUDA half (loaded here, since
//! the binary links only the CPU half), the NVIDIA driver and its GPUs, Apple's MPS — and
//! [`Probe::resolve`] turns `model.device` into a libtorch device with the reason for the choice,
//! or an error that names the missing piece: no driver, no CUDA libraries, no GPU visible, a
//! device index out of range, no MPS.
//!
//! Where libtorch's CUDA half is looked for, first found wins:
//! 1. `ACTOR_INFER_CUDA_LIBS`: a folder holding `libtorch_cuda.so` (`none` turns CUDA off);
//! 2. beside the loaded `libtorch_cpu.so` (a packaged layout, or a full libtorch);
//! 3. `libtorch-2.11.0-cuda/torch/lib` beside the folder of the CPU half: where
//!    `scripts/setup.sh` puts it in the cache (`ACTOR_INFER_DEVICE=cuda make setup`);
//! 4. the loader's own search path (`LD_LIBRARY_PATH`, e.g. a PyTorch 2.11.0 install's
//!    `torch/lib`).
//!
//! It is looked for only when some model may use it: always for `device: cuda` (which then says
//! why it cannot be used), and for `device: auto` only where an NVIDIA driver is installed and
//! NVML, when it loads, sees a GPU. Without a GPU, mapping the CUDA half (cuBLAS, cuDNN, ...)
//! would cost a few hundred MiB of resident memory for nothing.
//!
//! Loading `libtorch_cuda.so` with global symbols before the first CUDA call registers libtorch's
//! CUDA kernels; its own CUDA dependencies (cuBLAS, cuDNN, ...) resolve through its rpath
//! (`$ORIGIN/../../nvidia/*/lib`), so no `LD_LIBRARY_PATH` is needed. GPU names, memory and the
//! memory each process holds come from NVML ([`Nvml`]), which is part of the driver.

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::OnceLock,
};

mod nvml;
#[cfg(test)]
mod tests;

pub use crate::config::Device;
use nvml::proc_driver_version;
pub use nvml::{Driver, GpuInfo, Nvml};

/// The libtorch version tch 0.24 is built for; `scripts/setup.sh` fetches the same.
pub const LIBTORCH_VERSION: &str = "2.11.0";

/// The environment variable that names the folder of `libtorch_cuda.so`, or `none`.
pub const CUDA_LIBS_ENV: &str = "ACTOR_INFER_CUDA_LIBS";

/// The command that fetches the CUDA half, for messages.
const GET_CUDA: &str = "`ACTOR_INFER_DEVICE=cuda make setup` (or point ACTOR_INFER_CUDA_LIBS at \
                        a PyTorch 2.11.0 install's torch/lib)";

/// A libtorch device's name as users write it.
pub fn device_name(d: tch::Device) -> String {
    match d {
        tch::Device::Cpu => "cpu".into(),
        tch::Device::Cuda(n) => format!("cuda:{n}"),
        tch::Device::Mps => "mps".into(),
        tch::Device::Vulkan => "vulkan".into(),
    }
}

/// What became of libtorch's CUDA half.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CudaLibs {
    /// Loaded from this file.
    Loaded(PathBuf),
    /// Looked for in these places (and the loader's path), not found.
    NotFound(Vec<PathBuf>),
    /// Found here, but it would not load (a CUDA library it needs is missing, say).
    Failed {
        /// The file.
        path: PathBuf,
        /// The loader's message.
        error: String,
    },
    /// `ACTOR_INFER_CUDA_LIBS=none`.
    Disabled,
    /// Not looked for: the configuration asks for no CUDA device (`device: cpu` or `mps`).
    NotWanted,
    /// Not looked for: `device: auto` on a host without a GPU (no NVIDIA driver, or NVML sees
    /// no GPU), where they could not be used.
    NoGpu,
    /// Not a platform with CUDA builds of libtorch (macOS).
    Unsupported,
}

impl fmt::Display for CudaLibs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CudaLibs::Loaded(p) => write!(f, "CUDA libraries loaded from {}", parent(p)),
            CudaLibs::NotFound(searched) => write!(
                f,
                "libtorch's CUDA libraries are not installed (looked in {}{}and the loader's \
                 path); get them with {GET_CUDA}",
                searched
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                if searched.is_empty() { "" } else { ", " }
            ),
            CudaLibs::Failed { path, error } => write!(
                f,
                "libtorch's CUDA libraries at {} do not load: {error}; reinstall them with {GET_CUDA}",
                parent(path)
            ),
            CudaLibs::Disabled => write!(f, "CUDA turned off ({CUDA_LIBS_ENV}=none)"),
            CudaLibs::NotWanted => write!(f, "CUDA libraries not loaded (no model asks for CUDA)"),
            CudaLibs::NoGpu => write!(
                f,
                "CUDA libraries not loaded (device: auto, and no GPU here to use them)"
            ),
            CudaLibs::Unsupported => write!(f, "no CUDA build of libtorch exists for this OS"),
        }
    }
}

fn parent(p: &Path) -> String {
    p.parent().unwrap_or(p).display().to_string()
}

/// What this host offers for running models; see the module's documentation.
#[derive(Debug, Clone)]
pub struct Probe {
    /// The libtorch libraries this process loaded, with their paths.
    pub libtorch: Vec<PathBuf>,
    /// libtorch's CUDA half.
    pub cuda_libs: CudaLibs,
    /// The NVIDIA driver, if one is installed.
    pub driver: Option<Driver>,
    /// The GPUs NVML sees.
    pub gpus: Vec<GpuInfo>,
    /// CUDA devices libtorch sees (0 unless the CUDA half is loaded).
    pub cuda_devices: usize,
    /// Whether libtorch has an MPS device (Apple silicon).
    pub mps: bool,
}

/// Whether the probe loads libtorch's CUDA half, from the models' `device`s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CudaWanted {
    /// No model asks for CUDA (`cpu`, `mps`).
    No,
    /// `device: auto`: loaded only where there is a GPU to use it.
    IfGpu,
    /// `device: cuda[:N]`: loaded whatever the host, so that the refusal can say what is missing.
    Yes,
}

impl CudaWanted {
    /// What one model's `device` asks for.
    pub fn of(device: Device) -> CudaWanted {
        match device {
            Device::Cpu | Device::Mps => CudaWanted::No,
            Device::Auto => CudaWanted::IfGpu,
            Device::Cuda(_) => CudaWanted::Yes,
        }
    }

    /// What a set of models' devices asks for: the most any of them does.
    pub fn of_all(devices: impl IntoIterator<Item = Device>) -> CudaWanted {
        devices
            .into_iter()
            .map(CudaWanted::of)
            .max()
            .unwrap_or(CudaWanted::No)
    }

    /// Whether to load the CUDA half, given whether a driver is installed and how many GPUs
    /// NVML sees (`None` when NVML does not load, so it cannot say).
    fn load(self, driver: bool, nvml_gpus: Option<usize>) -> bool {
        match self {
            CudaWanted::No => false,
            CudaWanted::Yes => true,
            CudaWanted::IfGpu => driver && nvml_gpus != Some(0),
        }
    }
}

/// The loaded CUDA half, kept for the process's life (unloading libtorch_cuda is not possible).
static CUDA_LIBRARY: OnceLock<libloading::Library> = OnceLock::new();
/// The probe runs once per process: loading the CUDA half must precede any CUDA call.
static PROBE: OnceLock<Probe> = OnceLock::new();

impl Probe {
    /// Probes this host (once per process; later calls return the first result), loading
    /// libtorch's CUDA half as `want` says ([`CudaWanted`]). Must run before anything else asks
    /// libtorch about devices; the server runs it with every model's wish
    /// ([`CudaWanted::of_all`]) before selecting each model's device.
    pub fn run(want: CudaWanted) -> &'static Probe {
        PROBE.get_or_init(|| {
            let libtorch = loaded_libraries(&["libtorch_cpu", "libtorch.", "libc10."]);
            // NVML is the driver's own library: asking it loads nothing of libtorch's.
            let nvml = Nvml::open();
            let driver = nvml.as_ref().and_then(Nvml::driver).or_else(|| {
                proc_driver_version().map(|version| Driver {
                    version,
                    cuda: None,
                })
            });
            let gpus = nvml.as_ref().map(Nvml::gpus).unwrap_or_default();
            let cuda_libs = match want {
                CudaWanted::No => CudaLibs::NotWanted,
                _ if cuda_turned_off() => CudaLibs::Disabled,
                w if !w.load(driver.is_some(), nvml.as_ref().map(|_| gpus.len())) => {
                    CudaLibs::NoGpu
                }
                _ => load_cuda_libs(&libtorch),
            };
            let cuda_devices = if matches!(cuda_libs, CudaLibs::Loaded(_)) {
                usize::try_from(tch::Cuda::device_count()).unwrap_or(0)
            } else {
                0
            };
            Probe {
                libtorch,
                cuda_libs,
                driver,
                gpus,
                cuda_devices,
                mps: tch::utils::has_mps(),
            }
        })
    }

    /// The probe's result, once [`Probe::run`] has run.
    pub fn get() -> Option<&'static Probe> {
        PROBE.get()
    }

    /// `model.device` as a libtorch device, with why it was chosen; or why it cannot be.
    pub fn resolve(&self, wanted: Device) -> Result<Choice, DeviceError> {
        match wanted {
            Device::Cpu => Ok(Choice {
                device: tch::Device::Cpu,
                reason: "device: cpu".into(),
                warning: None,
                bf16: None,
            }),
            Device::Auto if self.cuda_devices > 0 => Ok(Choice {
                device: tch::Device::Cuda(0),
                reason: format!(
                    "device: auto, and CUDA sees {} GPU{}",
                    self.cuda_devices,
                    if self.cuda_devices == 1 { "" } else { "s" }
                ),
                warning: None,
                bf16: None,
            }),
            Device::Auto if self.mps => Ok(Choice {
                device: tch::Device::Mps,
                reason: "device: auto, no CUDA GPU, and libtorch has MPS".into(),
                warning: None,
                bf16: None,
            }),
            Device::Auto => {
                let why = self.why_no_cuda();
                // A driver without the libraries is a set-up to finish, not a choice: say how.
                let warning = (self.driver.is_some()
                    && matches!(
                        self.cuda_libs,
                        CudaLibs::NotFound(_) | CudaLibs::Failed { .. }
                    ))
                .then(|| {
                    format!(
                        "an NVIDIA driver is installed but {}; serving on the CPU",
                        self.cuda_libs
                    )
                });
                Ok(Choice {
                    device: tch::Device::Cpu,
                    reason: format!(
                        "device: auto, no usable GPU: {}",
                        why.map_or_else(|| "no CUDA or MPS device".to_string(), |e| e.to_string())
                    ),
                    warning,
                    bf16: None,
                })
            }
            Device::Cuda(n) if n < self.cuda_devices => Ok(Choice {
                device: tch::Device::Cuda(n),
                reason: format!("device: cuda:{n}"),
                warning: None,
                bf16: None,
            }),
            Device::Cuda(n) => {
                Err(self
                    .why_no_cuda()
                    .unwrap_or_else(|| DeviceError::IndexOutOfRange {
                        asked: n,
                        count: self.cuda_devices,
                        gpus: self
                            .gpus
                            .iter()
                            .map(|g| format!("{}: {}", g.index, g.name))
                            .collect(),
                    }))
            }
            Device::Mps if self.mps => Ok(Choice {
                device: tch::Device::Mps,
                reason: "device: mps".into(),
                warning: None,
                bf16: None,
            }),
            Device::Mps => Err(DeviceError::NoMps {
                os: std::env::consts::OS,
            }),
        }
    }

    /// Why CUDA cannot be used at all, or `None` when it can (some device is visible).
    fn why_no_cuda(&self) -> Option<DeviceError> {
        if self.cuda_devices > 0 {
            return None;
        }
        if self.cuda_libs == CudaLibs::Unsupported {
            return Some(DeviceError::NoCudaLibs(self.cuda_libs.clone()));
        }
        if self.driver.is_none() {
            return Some(DeviceError::NoDriver {
                libs: self.cuda_libs.clone(),
            });
        }
        if !matches!(self.cuda_libs, CudaLibs::Loaded(_)) {
            return Some(DeviceError::NoCudaLibs(self.cuda_libs.clone()));
        }
        Some(DeviceError::NoGpuVisible {
            driver: self.driver.clone().expect("checked above"),
            gpus: self.gpus.len(),
            visible: std::env::var("CUDA_VISIBLE_DEVICES").ok(),
        })
    }

    /// One line on the libraries: which libtorch was loaded from where, and the CUDA half.
    pub fn libraries(&self) -> String {
        let dirs: Vec<String> = {
            let mut d: Vec<String> = self.libtorch.iter().map(|p| parent(p)).collect();
            d.dedup();
            d
        };
        let names: Vec<String> = self
            .libtorch
            .iter()
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        format!(
            "libtorch {LIBTORCH_VERSION} ({}) from {}; {}",
            if names.is_empty() {
                "libraries not found in the process map".to_string()
            } else {
                names.join(", ")
            },
            if dirs.is_empty() {
                "?".to_string()
            } else {
                dirs.join(", ")
            },
            match (&self.cuda_libs, self.cuda_devices) {
                (CudaLibs::Loaded(_), 0) => format!("{}, no GPU visible", self.cuda_libs),
                (other, _) => other.to_string(),
            }
        )
    }

    /// The GPU a CUDA device runs on, as `NVIDIA H200 (139.8 GiB, 0.6 GiB in use)`.
    pub fn gpu_line(&self, device: tch::Device) -> Option<String> {
        let tch::Device::Cuda(n) = device else {
            return None;
        };
        let g = self.gpus.iter().find(|g| g.index as usize == n)?;
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        Some(format!(
            "{} ({:.1} GiB, {:.1} GiB in use; driver {})",
            g.name,
            gib(g.total),
            gib(g.used),
            self.driver.as_ref().map_or("?", |d| d.version.as_str())
        ))
    }
}

/// Probes the host (once: the first probe decides whether the CUDA half loads, so a caller with
/// several models runs [`Probe::run`] with [`CudaWanted::of_all`] first) and resolves
/// `model.device` for `model`, checking that its `model.dtype` runs there. The error names the key and the missing piece; the caller exits
/// with the configuration error code before binding any port.
pub fn select(model: &crate::config::Model) -> Result<Choice, SelectError> {
    let choice = Probe::run(CudaWanted::of(model.device))
        .resolve(model.device)
        .map_err(|source| SelectError::Device {
            device: model.device,
            source,
        })?;
    if choice.device == tch::Device::Cpu && model.dtype == crate::config::DType::F16 {
        return Err(SelectError::F16OnCpu {
            reason: choice.reason,
        });
    }
    let mut choice = choice;
    if choice.device == tch::Device::Cpu && model.dtype == crate::config::DType::Bf16 {
        choice.bf16 = Some(super::cpu::Bf16::here());
    }
    Ok(choice)
}

/// Why `model.device` / `model.dtype` cannot be served here; the message names the key.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SelectError {
    /// The device is not usable.
    #[error("model.device: {device}: {source}")]
    Device {
        /// As configured.
        device: Device,
        /// The missing piece.
        source: DeviceError,
    },
    /// f16 where the model runs on the CPU.
    #[error("model.dtype: f16 is for GPUs; this model runs on the CPU ({reason}): use f32 or bf16")]
    F16OnCpu {
        /// Why the CPU.
        reason: String,
    },
}

/// A resolved device and why.
#[derive(Debug, Clone)]
pub struct Choice {
    /// The libtorch device.
    pub device: tch::Device,
    /// Why this one, in a few words.
    pub reason: String,
    /// Something the operator should fix even though the server runs.
    pub warning: Option<String>,
    /// With `dtype: bf16` on the CPU: whether the CPU computes bf16 natively (when it does
    /// not, bf16 is slower than f32, and the start-up log warns).
    pub bf16: Option<super::cpu::Bf16>,
}

/// Why the configured device cannot be used; each names the missing piece.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    /// No NVIDIA driver on this host.
    #[error(
        "no NVIDIA driver on this host (no /proc/driver/nvidia/version, NVML does not load); {libs}"
    )]
    NoDriver {
        /// The state of the CUDA half, said too.
        libs: CudaLibs,
    },
    /// The driver is there, libtorch's CUDA half is not (or does not load).
    #[error("{0}")]
    NoCudaLibs(CudaLibs),
    /// Driver and libraries are there, yet CUDA sees no device.
    #[error(
        "CUDA libraries loaded, no GPU visible: NVML sees {gpus} GPU(s) with driver {} (CUDA {}){}; \
         libtorch {LIBTORCH_VERSION}'s CUDA 13.0 libraries need driver 580 or newer",
        driver.version,
        driver.cuda.as_deref().unwrap_or("?"),
        visible.as_ref().map(|v| format!(", CUDA_VISIBLE_DEVICES={v:?}")).unwrap_or_default()
    )]
    NoGpuVisible {
        /// The driver.
        driver: Driver,
        /// GPUs NVML sees.
        gpus: usize,
        /// `CUDA_VISIBLE_DEVICES`, when set.
        visible: Option<String>,
    },
    /// `cuda:N` past the last device.
    #[error("cuda:{asked} was asked for, but CUDA sees {count} device(s): {}", gpus.join(", "))]
    IndexOutOfRange {
        /// N.
        asked: usize,
        /// Devices CUDA sees.
        count: usize,
        /// `index: name` of each GPU NVML sees.
        gpus: Vec<String>,
    },
    /// MPS was asked for where there is none.
    #[error(
        "mps is Apple's GPU: it needs macOS on Apple silicon and libtorch's macOS arm64 build \
         (this host is {os})"
    )]
    NoMps {
        /// This OS.
        os: &'static str,
    },
}

/// Paths of the loaded shared objects whose file names start with one of `prefixes`
/// (Linux: `/proc/self/maps`; elsewhere none).
fn loaded_libraries(prefixes: &[&str]) -> Vec<PathBuf> {
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = Vec::new();
    for line in maps.lines() {
        let Some(path) = line.split_whitespace().nth(5).map(PathBuf::from) else {
            continue;
        };
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        if name.is_some_and(|n| prefixes.iter().any(|p| n.starts_with(p)) && n.contains(".so"))
            && !found.contains(&path)
        {
            found.push(path);
        }
    }
    found
}

/// Where the CUDA half may be, in the order of the module's documentation (1 to 3); the loader's
/// own path (4) is tried by name after these.
fn cuda_candidates(libtorch: &[PathBuf]) -> Vec<PathBuf> {
    let cpu_dir = libtorch
        .iter()
        .find(|p| p.file_name().is_some_and(|n| n == "libtorch_cpu.so"))
        .and_then(|p| p.parent());
    let mut out = Vec::new();
    if let Some(dir) = cpu_dir {
        out.push(dir.join("libtorch_cuda.so"));
        if let Some(cache) = dir.parent().and_then(Path::parent) {
            out.push(
                cache
                    .join(format!("libtorch-{LIBTORCH_VERSION}-cuda"))
                    .join("torch/lib/libtorch_cuda.so"),
            );
        }
    }
    out
}

/// `ACTOR_INFER_CUDA_LIBS=none`.
fn cuda_turned_off() -> bool {
    std::env::var(CUDA_LIBS_ENV).is_ok_and(|v| v.trim().eq_ignore_ascii_case("none"))
}

fn load_cuda_libs(libtorch: &[PathBuf]) -> CudaLibs {
    if !cfg!(target_os = "linux") {
        return CudaLibs::Unsupported;
    }
    let open = |path: &Path| -> Result<(), String> {
        // SAFETY: loading libtorch_cuda runs its static initialisers, which register CUDA
        // kernels with the libtorch this process already loaded (same version); that is the
        // intended effect. The library is kept loaded for the process's life.
        let lib = unsafe {
            libloading::os::unix::Library::open(
                Some(path),
                libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_GLOBAL,
            )
        }
        .map_err(|e| e.to_string())?;
        let _ = CUDA_LIBRARY.set(lib.into());
        Ok(())
    };
    if cuda_turned_off() {
        return CudaLibs::Disabled;
    }
    match std::env::var(CUDA_LIBS_ENV) {
        Ok(v) if !v.trim().is_empty() => {
            let path = Path::new(v.trim()).join("libtorch_cuda.so");
            if !path.is_file() {
                return CudaLibs::NotFound(vec![path]);
            }
            return match open(&path) {
                Ok(()) => CudaLibs::Loaded(path),
                Err(error) => CudaLibs::Failed { path, error },
            };
        }
        _ => {}
    }
    let candidates = cuda_candidates(libtorch);
    for path in &candidates {
        if path.is_file() {
            let path = path.canonicalize().unwrap_or_else(|_| path.clone());
            return match open(&path) {
                Ok(()) => CudaLibs::Loaded(path),
                Err(error) => CudaLibs::Failed { path, error },
            };
        }
    }
    // 4. The loader's path.
    match open(Path::new("libtorch_cuda.so")) {
        Ok(()) => {
            let path = loaded_libraries(&["libtorch_cuda.so"])
                .into_iter()
                .next()
                .unwrap_or_else(|| PathBuf::from("libtorch_cuda.so"));
            CudaLibs::Loaded(path)
        }
        Err(e) if e.contains("libtorch_cuda.so: cannot open shared object file") => {
            CudaLibs::NotFound(candidates)
        }
        Err(error) => CudaLibs::Failed {
            path: PathBuf::from("libtorch_cuda.so"),
            error,
        },
    }
}
