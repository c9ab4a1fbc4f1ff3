//! What the doctor reads from this machine and the running server, gathered into [`Probes`]:
//! a plain record the verdict ([`super::verdict`]) judges and the report ([`super::render`])
//! prints, so the judging can be tested from recorded probes without a machine in that state.
//!
//! Linux reads `/proc` and `/sys`; macOS asks `lsof`, `ps` and `pmset -g therm`. Nothing here
//! decides anything.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    time::Duration,
};

use serde_json::Value;

use super::Target;
use crate::model::device::{GpuInfo, Nvml};

/// Everything `actor-infer doctor` looks at, read once.
#[derive(Debug, Clone, Default)]
pub struct Probes {
    /// The doctor's own pid (never counted as a server).
    pub me: u32,
    /// Every process on the machine.
    pub processes: Vec<Proc>,
    /// Who listens on the server's HTTP and gRPC ports.
    pub ports: Vec<PortProbe>,
    /// Pids holding any listening TCP socket; `None` where the OS is not read for it (not
    /// Linux).
    pub listening: Option<Vec<u32>>,
    /// The running server's JSON dashboard (`/metrics?format=json`), if one answers.
    pub metrics: Option<Value>,
    /// Every GPU and who holds its memory; `None` when NVML does not load (no NVIDIA driver).
    pub gpus: Option<Vec<GpuInfo>>,
    /// CPU frequency and thermal state.
    pub thermal: ThermalProbe,
}

/// Who listens on one of the server's ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortProbe {
    /// `HTTP` or `gRPC`.
    pub what: &'static str,
    /// The port.
    pub port: u16,
    /// Pids listening there (0: held by a process this user may not inspect).
    pub holders: Vec<u32>,
}

impl Probes {
    /// Reads everything, for `t`'s ports and server.
    pub fn gather(t: &Target) -> Probes {
        Probes {
            me: std::process::id(),
            processes: processes(),
            ports: [("HTTP", t.http_port), ("gRPC", t.grpc_port)]
                .into_iter()
                .map(|(what, port)| PortProbe {
                    what,
                    port,
                    holders: listeners(port),
                })
                .collect(),
            listening: cfg!(target_os = "linux").then(pids_listening),
            metrics: metrics(t),
            gpus: gpus(),
            thermal: ThermalProbe::read(),
        }
    }
}

/// Every GPU NVML sees, or `None` when it does not load.
pub fn gpus() -> Option<Vec<GpuInfo>> {
    Nvml::open().map(|n| n.gpus())
}

/// A process on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proc {
    /// Its id.
    pub pid: u32,
    /// Its parent's id (1: orphaned, adopted by init).
    pub ppid: u32,
    /// Single-letter state (`Z` zombie).
    pub state: char,
    /// Its command line.
    pub cmdline: String,
    /// Threads.
    pub threads: u32,
}

impl Proc {
    /// True if this looks like an actor-infer server or the original Python server.
    pub fn is_server(&self) -> bool {
        let c = &self.cmdline;
        (self.is_actor_infer() && !c.contains(" doctor") && !c.contains(" bench"))
            || (c.contains("python") && c.contains("src.main"))
    }

    /// True if the program itself is actor-infer (not, say, a compiler or an editor whose
    /// command line merely mentions it).
    pub fn is_actor_infer(&self) -> bool {
        let program = self.cmdline.split_whitespace().next().unwrap_or("");
        program.rsplit('/').next() == Some("actor-infer")
    }
}

/// Every process (Linux: procfs; macOS: ps).
pub fn processes() -> Vec<Proc> {
    #[cfg(target_os = "linux")]
    {
        let Ok(all) = procfs::process::all_processes() else {
            return Vec::new();
        };
        all.flatten()
            .filter_map(|p| {
                let stat = p.stat().ok()?;
                let cmdline = p.cmdline().unwrap_or_default().join(" ");
                Some(Proc {
                    pid: u32::try_from(stat.pid).ok()?,
                    ppid: u32::try_from(stat.ppid).unwrap_or(0),
                    state: stat.state,
                    cmdline: if cmdline.is_empty() {
                        format!("[{}]", stat.comm)
                    } else {
                        cmdline
                    },
                    threads: u32::try_from(stat.num_threads).unwrap_or(0),
                })
            })
            .collect()
    }
    #[cfg(not(target_os = "linux"))]
    {
        let Ok(out) = std::process::Command::new("ps")
            .args(["-axo", "pid=,ppid=,state=,command="])
            .output()
        else {
            return Vec::new();
        };
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let mut it = l.split_whitespace();
                Some(Proc {
                    pid: it.next()?.parse().ok()?,
                    ppid: it.next()?.parse().ok()?,
                    state: it.next()?.chars().next()?,
                    cmdline: it.collect::<Vec<_>>().join(" "),
                    threads: 0,
                })
            })
            .collect()
    }
}

/// Who listens on TCP `port` (pids; empty if nobody, or if the OS would not say).
pub fn listeners(port: u16) -> Vec<u32> {
    #[cfg(target_os = "linux")]
    {
        let sockets = listening_sockets(Some(port));
        if sockets.is_empty() {
            return Vec::new();
        }
        let mut pids = pids_holding(&sockets);
        if pids.is_empty() {
            // Held, but by a process we may not inspect: report it with pid 0.
            pids.push(0);
        }
        pids
    }
    #[cfg(not(target_os = "linux"))]
    {
        std::process::Command::new("lsof")
            .args(["-nP", &format!("-iTCP:{port}"), "-sTCP:LISTEN", "-t"])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// One HTTP GET to the server (reqwest's blocking client; the doctor needs no runtime).
fn http_get(host: &str, port: u16, path: &str) -> Option<(u16, String)> {
    let client = reqwest::blocking::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .build()
        .ok()?;
    let res = client
        .get(format!("http://{host}:{port}{path}"))
        .header("accept", "application/json")
        .send()
        .ok()?;
    let status = res.status().as_u16();
    Some((status, res.text().ok()?))
}

/// The running server's JSON dashboard, if one answers.
pub fn metrics(t: &Target) -> Option<Value> {
    let (status, body) = http_get(&t.host, t.http_port, "/metrics?format=json")?;
    (status == 200).then(|| serde_json::from_str(&body).ok())?
}

/// What the OS tells about CPU frequency and thermal throttling, as read (judged by
/// [`super::verdict::throttled`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ThermalProbe {
    /// True when Linux's `/sys/devices/system/cpu` exists (then `pmset` is not asked).
    pub sysfs: bool,
    /// Per core, the current frequency over the maximum (cores that expose cpufreq).
    pub frequency_ratios: Vec<f64>,
    /// Thermal throttle events since boot, summed over cores and packages.
    pub throttle_events: u64,
    /// Thermal zones: (type, millidegrees Celsius).
    pub zones: Vec<(String, u64)>,
    /// macOS `pmset -g therm`, its non-empty lines trimmed.
    pub pmset: Vec<String>,
}

impl ThermalProbe {
    /// Reads Linux `/sys` (cpufreq, thermal zones, throttle counters) or macOS
    /// `pmset -g therm`.
    pub fn read() -> ThermalProbe {
        let mut t = ThermalProbe::default();
        let cpus = Path::new("/sys/devices/system/cpu");
        if cpus.exists() {
            t.sysfs = true;
            let read = |p: PathBuf| -> Option<u64> {
                std::fs::read_to_string(p).ok()?.trim().parse().ok()
            };
            for n in 0..1024 {
                let cpu = cpus.join(format!("cpu{n}"));
                if !cpu.exists() {
                    break;
                }
                if let (Some(cur), Some(max)) = (
                    read(cpu.join("cpufreq/scaling_cur_freq")),
                    read(cpu.join("cpufreq/cpuinfo_max_freq")),
                ) && max > 0
                {
                    t.frequency_ratios.push(cur as f64 / max as f64);
                }
                for f in [
                    "thermal_throttle/core_throttle_count",
                    "thermal_throttle/package_throttle_count",
                ] {
                    t.throttle_events += read(cpu.join(f)).unwrap_or(0);
                }
            }
            for n in 0..64 {
                let zone = PathBuf::from(format!("/sys/class/thermal/thermal_zone{n}"));
                let Some(milli) = read(zone.join("temp")) else {
                    if !zone.exists() {
                        break;
                    }
                    continue;
                };
                let kind = std::fs::read_to_string(zone.join("type")).unwrap_or_default();
                t.zones.push((kind.trim().to_string(), milli));
            }
        } else if let Ok(out) = std::process::Command::new("pmset")
            .args(["-g", "therm"])
            .output()
        {
            t.pmset = String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect();
        }
        t
    }
}

/// Pids holding at least one listening TCP socket (Linux; empty elsewhere).
pub fn pids_listening() -> Vec<u32> {
    pids_holding(&listening_sockets(None))
}

/// Inodes of listening TCP sockets, on `port` or on any (Linux, procfs; empty elsewhere).
fn listening_sockets(port: Option<u16>) -> HashSet<u64> {
    #[cfg(target_os = "linux")]
    {
        use procfs::net::TcpState;
        procfs::net::tcp()
            .unwrap_or_default()
            .into_iter()
            .chain(procfs::net::tcp6().unwrap_or_default())
            .filter(|e| e.state == TcpState::Listen)
            .filter(|e| port.is_none_or(|p| e.local_address.port() == p))
            .map(|e| e.inode)
            .collect()
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = port;
        HashSet::new()
    }
}

/// Pids with an open file descriptor on one of `sockets` (Linux, procfs; empty elsewhere).
fn pids_holding(sockets: &HashSet<u64>) -> Vec<u32> {
    if sockets.is_empty() {
        return Vec::new();
    }
    #[cfg(target_os = "linux")]
    {
        let Ok(all) = procfs::process::all_processes() else {
            return Vec::new();
        };
        all.flatten()
            .filter(|p| {
                p.fd().is_ok_and(|fds| {
                    fds.flatten().any(|fd| {
                        matches!(fd.target, procfs::process::FDTarget::Socket(i) if sockets.contains(&i))
                    })
                })
            })
            .filter_map(|p| u32::try_from(p.pid).ok())
            .collect()
    }
    #[cfg(not(target_os = "linux"))]
    Vec::new()
}
