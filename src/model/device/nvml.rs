//! The NVIDIA driver and its GPUs, as NVML (part of the driver) or `/proc` reports them.

/// The NVIDIA driver, as NVML or `/proc/driver/nvidia/version` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Driver {
    /// E.g. `580.95.05`.
    pub version: String,
    /// The newest CUDA the driver supports, e.g. `13.0`; `None` when NVML cannot say.
    pub cuda: Option<String>,
}

/// One NVIDIA GPU, as NVML sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuInfo {
    /// NVML's index (the CUDA index unless `CUDA_VISIBLE_DEVICES` reorders them).
    pub index: u32,
    /// E.g. `NVIDIA H200`.
    pub name: String,
    /// Memory in use on the whole device, bytes.
    pub used: u64,
    /// The device's memory, bytes.
    pub total: u64,
    /// Processes holding memory on it: (pid, bytes; `None` when the driver will not say).
    pub processes: Vec<(u32, Option<u64>)>,
}

/// NVML, loaded at run time from the driver (`libnvidia-ml.so.1`); absent without one.
pub struct Nvml(nvml_wrapper::Nvml);

impl Nvml {
    /// NVML, if the driver provides it.
    pub fn open() -> Option<Nvml> {
        nvml_wrapper::Nvml::init().ok().map(Nvml)
    }

    /// The driver's version.
    pub fn driver(&self) -> Option<Driver> {
        let version = self.0.sys_driver_version().ok()?;
        let cuda = self
            .0
            .sys_cuda_driver_version()
            .ok()
            .map(|v| format!("{}.{}", v / 1000, (v % 1000) / 10));
        Some(Driver { version, cuda })
    }

    /// Every GPU with its memory and the processes holding memory on it (compute and graphics).
    pub fn gpus(&self) -> Vec<GpuInfo> {
        let count = self.0.device_count().unwrap_or(0);
        (0..count)
            .filter_map(|index| {
                let d = self.0.device_by_index(index).ok()?;
                let mem = d.memory_info().ok()?;
                let mut processes: Vec<(u32, Option<u64>)> = Vec::new();
                let procs = d
                    .running_compute_processes()
                    .unwrap_or_default()
                    .into_iter()
                    .chain(d.running_graphics_processes().unwrap_or_default());
                for p in procs {
                    let bytes = match p.used_gpu_memory {
                        nvml_wrapper::enums::device::UsedGpuMemory::Used(b) => Some(b),
                        nvml_wrapper::enums::device::UsedGpuMemory::Unavailable => None,
                    };
                    // A process doing both compute and graphics is listed twice.
                    if !processes.iter().any(|(pid, _)| *pid == p.pid) {
                        processes.push((p.pid, bytes));
                    }
                }
                Some(GpuInfo {
                    index,
                    name: d.name().unwrap_or_else(|_| "unknown GPU".into()),
                    used: mem.used,
                    total: mem.total,
                    processes,
                })
            })
            .collect()
    }
}

/// `/proc/driver/nvidia/version`'s driver version, when the kernel module is loaded.
pub(super) fn proc_driver_version() -> Option<String> {
    let text = std::fs::read_to_string("/proc/driver/nvidia/version").ok()?;
    // "NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.95.05  Tue ..."
    let line = text.lines().next()?;
    let after = line.split("Kernel Module").nth(1).unwrap_or(line);
    Some(
        after
            .split_whitespace()
            .next()
            .unwrap_or("unknown")
            .to_string(),
    )
}
