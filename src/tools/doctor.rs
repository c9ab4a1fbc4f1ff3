//! `actor-infer doctor`: the original team's diagnostic workflow
//! (`diagnostic-workflow.md`), built in. It answers their questions from this machine and the
//! running server's metrics: are the ports still held (and by whom), are there stray or
//! orphaned server processes (parent 1), how many before and after a run, what do the metrics
//! say, what does the OS say about CPU frequency and throttling, and which case it is:
//! A (orphans), B (throttling) or C (tokenizer bottleneck).
//!
//! Linux reads `/proc` and `/sys`; macOS asks `lsof`, `ps` and `pmset -g therm`.

use std::{
    collections::{BTreeMap, HashSet},
    fmt::Write as _,
    path::{Path, PathBuf},
    time::Duration,
};

use serde_json::Value;

use super::cli::{Cli, DoctorCheck, Phase, Watch};
use crate::{
    actors::supervisor::EXIT_CONFIG,
    config::{Config, Overrides},
};

/// The doctor's answer when its configuration cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// The experiment file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The configuration is refused.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// A port past 65535.
    #[error("port {0} out of range")]
    Port(u32),
}

/// What the doctor looks at.
#[derive(Debug, Clone)]
pub struct Target {
    /// Where the server listens (and the doctor connects).
    pub host: String,
    /// The HTTP port.
    pub http_port: u16,
    /// The gRPC port.
    pub grpc_port: u16,
    /// The experiment file, if given: `count` then counts only servers started with it.
    pub experiment: Option<PathBuf>,
}

impl Target {
    /// Ports from the experiment YAML (if any), the environment and the flags, without
    /// requiring the model to exist: the doctor must work when things are broken.
    pub fn from_config(
        experiment: Option<&Path>,
        overrides: &Overrides,
    ) -> Result<Target, TargetError> {
        let yaml = match experiment {
            Some(p) => std::fs::read_to_string(p).map_err(|source| TargetError::Read {
                path: p.to_path_buf(),
                source,
            })?,
            None => "model:\n  path: .\n".to_string(),
        };
        let env = std::env::vars().filter(|(k, _)| k.starts_with(crate::config::ENV_PREFIX));
        let c = Config::from_sources(&yaml, env, overrides)?;
        let port = |p: u32| u16::try_from(p).map_err(|_| TargetError::Port(p));
        let host = match c.server.host.as_str() {
            "0.0.0.0" | "::" => "127.0.0.1".to_string(),
            h => h.to_string(),
        };
        Ok(Target {
            host,
            http_port: port(c.server.http_port)?,
            grpc_port: port(c.server.grpc_port)?,
            experiment: experiment.map(Path::to_path_buf),
        })
    }
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

/// What the OS tells about CPU frequency and thermal throttling.
#[derive(Debug, Default)]
pub struct Thermal {
    /// Lines of evidence.
    pub lines: Vec<String>,
    /// True if something says the CPU is throttled now or was.
    pub throttled: bool,
}

/// Reads Linux `/sys` (cpufreq, thermal zones, throttle counters) or macOS `pmset -g therm`.
pub fn thermal() -> Thermal {
    let mut t = Thermal::default();
    let cpus = Path::new("/sys/devices/system/cpu");
    if cpus.exists() {
        let read =
            |p: PathBuf| -> Option<u64> { std::fs::read_to_string(p).ok()?.trim().parse().ok() };
        let mut ratios = Vec::new();
        let mut throttle_events = 0;
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
                ratios.push(cur as f64 / max as f64);
            }
            for f in [
                "thermal_throttle/core_throttle_count",
                "thermal_throttle/package_throttle_count",
            ] {
                throttle_events += read(cpu.join(f)).unwrap_or(0);
            }
        }
        if ratios.is_empty() {
            t.lines
                .push("CPU frequency: not exposed here (no cpufreq; a VM or container?)".into());
        } else {
            let min = ratios.iter().cloned().fold(f64::MAX, f64::min);
            let avg = ratios.iter().sum::<f64>() / ratios.len() as f64;
            t.lines.push(format!(
                "CPU frequency: {:.0}% of max on average, {:.0}% on the slowest core ({} cores)",
                avg * 100.0,
                min * 100.0,
                ratios.len()
            ));
            if avg < 0.7 {
                t.throttled = true;
            }
        }
        if throttle_events > 0 {
            t.throttled = true;
            t.lines.push(format!(
                "thermal throttle events since boot: {throttle_events}"
            ));
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
            t.lines
                .push(format!("{}: {:.1} °C", kind.trim(), milli as f64 / 1000.0));
            if milli >= 90_000 {
                t.throttled = true;
            }
        }
    } else if let Ok(out) = std::process::Command::new("pmset")
        .args(["-g", "therm"])
        .output()
    {
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        for l in text.lines().filter(|l| !l.trim().is_empty()) {
            t.lines.push(format!("pmset: {}", l.trim()));
            if let Some(v) = l
                .split('=')
                .nth(1)
                .and_then(|v| v.trim().parse::<u32>().ok())
                && l.contains("CPU_Speed_Limit")
                && v < 100
            {
                t.throttled = true;
            }
        }
    }
    if t.lines.is_empty() {
        t.lines
            .push("no thermal information is exposed on this machine".into());
    }
    t
}

/// Which of the workflow's cases the evidence points to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing wrong found.
    Healthy,
    /// Case A: orphans (ports held without a serving server, stray or orphaned processes).
    Orphans,
    /// Case B: no orphans; the CPU is throttled.
    Throttling,
    /// Case C: no orphans; tokenization dominates.
    TokenizerBottleneck,
}

/// The full report.
pub struct Report {
    /// Printable text.
    pub text: String,
    /// The verdict.
    pub verdict: Verdict,
}

/// True for a process of the original Python server whose parent died (the original
/// workflow's orphaned worker). An actor-infer with parent 1 was merely started detached or by
/// an init (a container's PID 1): its workers are threads and die with it.
fn is_orphan(p: &Proc) -> bool {
    p.ppid == 1 && p.cmdline.contains("python")
}

/// Pids holding at least one listening TCP socket (Linux; empty elsewhere).
fn pids_listening() -> Vec<u32> {
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

fn describe(p: &Proc) -> String {
    let mut flags = Vec::new();
    if is_orphan(p) {
        flags.push("ORPHANED (parent 1)");
    } else if p.ppid == 1 {
        flags.push("parent 1: started detached");
    }
    if p.state == 'Z' {
        flags.push("ZOMBIE");
    }
    format!(
        "pid {} ppid {} state {} threads {}{} :: {}",
        p.pid,
        p.ppid,
        p.state,
        p.threads,
        if flags.is_empty() {
            String::new()
        } else {
            format!(" [{}]", flags.join(", "))
        },
        p.cmdline
    )
}

/// Runs every check and decides.
pub fn diagnose(t: &Target) -> Report {
    let mut out = String::new();
    let procs = processes();
    let by_pid: BTreeMap<u32, &Proc> = procs.iter().map(|p| (p.pid, p)).collect();
    let me = std::process::id();
    let servers: Vec<&Proc> = procs
        .iter()
        .filter(|p| p.is_server() && p.pid != me)
        .collect();
    let metrics = metrics(t);
    let serving_pid = metrics
        .as_ref()
        .and_then(|m| m["pid"].as_u64())
        .map(|p| p as u32);
    let mut orphan_evidence = Vec::new();

    let _ = writeln!(out, "== 1. ports (the original check_ports.sh)");
    for (what, port) in [("HTTP", t.http_port), ("gRPC", t.grpc_port)] {
        let holders = listeners(port);
        if holders.is_empty() {
            let _ = writeln!(out, "{what} {port}: free");
            continue;
        }
        for pid in holders {
            let who = by_pid
                .get(&pid)
                .map(|p| describe(p))
                .unwrap_or_else(|| format!("pid {pid} (not visible to this user)"));
            let _ = writeln!(out, "{what} {port}: LISTEN by {who}");
            if Some(pid) != serving_pid {
                orphan_evidence.push(format!(
                    "{what} port {port} is held by pid {pid}, which is not a serving actor-infer"
                ));
            }
        }
    }

    let _ = writeln!(
        out,
        "\n== 2. server processes (the original check_processes.sh)"
    );
    if servers.is_empty() {
        let _ = writeln!(out, "none");
    }
    let with_ports = cfg!(target_os = "linux").then(pids_listening);
    for p in &servers {
        let _ = writeln!(out, "{}", describe(p));
        if is_orphan(p) {
            orphan_evidence.push(format!("pid {} is orphaned (parent 1)", p.pid));
        }
        if let Some(ports) = &with_ports
            && p.is_actor_infer()
            && p.state != 'Z'
            && !ports.contains(&p.pid)
        {
            orphan_evidence.push(format!(
                "pid {} is an actor-infer that holds no port (stuck starting or stopping?)",
                p.pid
            ));
        }
        if p.state == 'Z' {
            orphan_evidence.push(format!("pid {} is a zombie", p.pid));
        }
        if p.cmdline.contains("python") {
            orphan_evidence.push(format!("pid {} is the old Python server", p.pid));
        }
    }
    let actor_infer = servers.iter().filter(|p| p.is_actor_infer()).count();
    let _ = writeln!(
        out,
        "actor-infer processes: {actor_infer} (expected: 1 while serving, 0 after a stop; \
         workers are threads, never processes)"
    );
    let _ = writeln!(out, "\n== 3. metrics (the original check_metrics.sh)");
    let mut tokenizer_bound = false;
    match &metrics {
        None => {
            let _ = writeln!(
                out,
                "no server answers on http://{}:{}/metrics",
                t.host, t.http_port
            );
        }
        Some(m) => {
            let st = &m["stage_timings"];
            let _ = writeln!(
                out,
                "experiment {} pid {} ready {} uptime {}s",
                m["experiment"], m["pid"], m["ready"], m["uptime_s"]
            );
            for (k, v) in [
                ("throughput_qps", &m["throughput_qps"]),
                ("avg_ms", &m["avg_ms"]),
                ("p99_ms", &m["p99_ms"]),
                ("tokenize_ms", &st["avg_tokenize_ms"]),
                ("queue_wait_ms", &st["avg_queue_wait_ms"]),
                ("inference_ms", &st["avg_inference_ms"]),
                ("mp_queue_receive_ms", &st["mp_queue_receive_ms"]),
                ("cpu_percent", &m["cpu_percent"]),
                ("rss_mb", &m["rss_mb"]),
                (
                    "gpu_memory_mb",
                    m.get("gpu_memory_mb").unwrap_or(&Value::Null),
                ),
                ("queue_depth", &m["queue_depth"]),
                ("restarts", &m["restarts"]),
            ] {
                let v = if v.is_null() {
                    "n/a".to_string()
                } else {
                    v.to_string()
                };
                let _ = writeln!(out, "  {k}: {v}");
            }
            for md in m["models"].as_array().into_iter().flatten() {
                let ms = |v: &Value| v.as_f64().map_or("n/a".to_string(), |x| format!("{x:.2}"));
                let _ = writeln!(
                    out,
                    "  model {}@{} ({}, {}, {} workers): {} requests, {} errors, avg {} ms \
                     (tokenize {}, queue {}, inference {}), queue {}",
                    md["name"].as_str().unwrap_or("?"),
                    md["version"],
                    md["kind"].as_str().unwrap_or("?"),
                    md["device"].as_str().unwrap_or("?"),
                    md["workers"],
                    md["requests"],
                    md["errors"],
                    ms(&md["avg_ms"]),
                    ms(&md["stage_timings"]["avg_tokenize_ms"]),
                    ms(&md["stage_timings"]["avg_queue_wait_ms"]),
                    ms(&md["stage_timings"]["avg_inference_ms"]),
                    md["queue_depth"],
                );
            }
            let tok = st["avg_tokenize_ms"].as_f64().unwrap_or(0.0);
            let inf = st["avg_inference_ms"].as_f64().unwrap_or(0.0);
            tokenizer_bound = tok > 1.0 && tok > 0.5 * inf;
        }
    }

    let _ = writeln!(
        out,
        "\n== 4. GPU memory per process (the original case A: memory held after a stop)"
    );
    let gpu = gpu_memory(&by_pid);
    for l in &gpu.lines {
        let _ = writeln!(out, "{l}");
    }
    orphan_evidence.extend(gpu.evidence);

    let _ = writeln!(out, "\n== 5. CPU frequency and thermal state");
    let thermal = thermal();
    for l in &thermal.lines {
        let _ = writeln!(out, "{l}");
    }

    let verdict = if !orphan_evidence.is_empty() {
        Verdict::Orphans
    } else if thermal.throttled {
        Verdict::Throttling
    } else if tokenizer_bound {
        Verdict::TokenizerBottleneck
    } else {
        Verdict::Healthy
    };
    let _ = writeln!(out, "\n== verdict");
    match verdict {
        Verdict::Orphans => {
            let _ = writeln!(out, "CASE A: orphans or stray servers");
            for e in &orphan_evidence {
                let _ = writeln!(out, "  - {e}");
            }
            let _ = writeln!(
                out,
                "  fix: stop them (kill -TERM <pid>, then -KILL); actor-infer itself cannot leave \
                 any: its workers are threads of one process"
            );
        }
        Verdict::Throttling => {
            let _ = writeln!(
                out,
                "CASE B: no orphans; the CPU is throttled (see section 4). Reduce concurrency, \
                 let it cool down, check the power mode."
            );
        }
        Verdict::TokenizerBottleneck => {
            let _ = writeln!(
                out,
                "CASE C: no orphans; tokenization takes more than half the inference time. \
                 Raise tokenizer.workers in the experiment YAML."
            );
        }
        Verdict::Healthy => {
            let _ = writeln!(
                out,
                "healthy: no orphans, no throttling seen, no tokenizer bottleneck{}",
                if metrics.is_some() {
                    ""
                } else {
                    " (no server running)"
                }
            );
        }
    }
    Report { text: out, verdict }
}

/// GPU memory per process, from NVML: what each GPU holds and who holds it.
pub struct GpuReport {
    /// Printable lines.
    pub lines: Vec<String>,
    /// Case A evidence: memory held by a process that should not hold any.
    pub evidence: Vec<String>,
}

/// Every GPU's memory and the processes holding it (NVML's per-process query, for any
/// process, not only actor-infer). A holder is evidence of case A when it is the old Python
/// server or one of its workers, an orphan, a zombie, or an actor-infer that is not
/// serving and holds no port (stuck starting or stopping).
pub fn gpu_memory(by_pid: &BTreeMap<u32, &Proc>) -> GpuReport {
    let listening = pids_listening();
    let mut r = GpuReport {
        lines: Vec::new(),
        evidence: Vec::new(),
    };
    let Some(nvml) = crate::model::device::Nvml::open() else {
        r.lines.push(if cfg!(target_os = "macos") {
            "macOS exposes no per-process GPU memory (MPS shares the system's memory):              see the process list above; `vm_stat` shows the system's"
                .into()
        } else {
            "no NVIDIA driver here (NVML does not load): no process holds GPU memory on this host"
                .into()
        });
        return r;
    };
    let gpus = nvml.gpus();
    if gpus.is_empty() {
        r.lines
            .push("NVML loads but sees no GPU on this host".into());
    }
    let mib = |b: u64| b as f64 / 1048576.0;
    for g in &gpus {
        r.lines.push(format!(
            "GPU {} {}: {:.0} MiB of {:.0} MiB in use, {} process(es)",
            g.index,
            g.name,
            mib(g.used),
            mib(g.total),
            g.processes.len()
        ));
        for (pid, bytes) in &g.processes {
            let held = bytes.map_or("? MiB".to_string(), |b| format!("{:.0} MiB", mib(b)));
            let Some(p) = by_pid.get(pid) else {
                r.lines.push(format!(
                    "  pid {pid}: {held} (not in this machine's process list: another                      container's PID namespace, or it is exiting)"
                ));
                continue;
            };
            r.lines.push(format!("  {held} :: {}", describe(p)));
            let why = if is_orphan(p) {
                Some("an orphaned worker (parent 1)")
            } else if p.state == 'Z' {
                Some("a zombie")
            } else if p.cmdline.contains("python")
                && (p.is_server() || p.cmdline.contains("multiprocessing"))
            {
                Some("the old Python server or one of its workers")
            } else if p.is_actor_infer() && !listening.is_empty() && !listening.contains(&p.pid) {
                Some("an actor-infer that holds no port (stuck starting or stopping?)")
            } else {
                None
            };
            if let Some(why) = why {
                r.evidence.push(format!(
                    "pid {} holds {held} of GPU {} memory and is {why}",
                    p.pid, g.index
                ));
            }
        }
    }
    r
}

/// Counts for `doctor count before|after` (the original count_processes.sh).
pub fn counts(t: &Target) -> Value {
    let me = std::process::id();
    let exp = t.experiment.as_ref().map(|p| p.display().to_string());
    let servers = processes()
        .into_iter()
        .filter(|p| p.is_server() && p.pid != me)
        .filter(|p| exp.as_ref().is_none_or(|e| p.cmdline.contains(e.as_str())))
        .count();
    serde_json::json!({
        "server_processes": servers,
        "http_port_listeners": listeners(t.http_port).len(),
        "grpc_port_listeners": listeners(t.grpc_port).len(),
    })
}

/// One line for `doctor watch metrics` (the original monitor_metrics.sh).
pub fn metrics_line(t: &Target) -> String {
    match metrics(t) {
        None => "no server".into(),
        Some(m) => {
            let st = &m["stage_timings"];
            format!(
                "qps {} avg_ms {} p99_ms {} tokenize_ms {} queue_ms {} inference_ms {} \
                 handoff_ms {} cpu% {} rss_mb {} gpu_mb {} queue {} in_flight {}",
                m["throughput_qps"],
                m["avg_ms"],
                m["p99_ms"],
                st["avg_tokenize_ms"],
                st["avg_queue_wait_ms"],
                st["avg_inference_ms"],
                st["mp_queue_receive_ms"],
                m["cpu_percent"],
                m["rss_mb"],
                m.get("gpu_memory_mb").cloned().unwrap_or(Value::Null),
                m["queue_depth"],
                m["in_flight"],
            )
        }
    }
}

/// One block for `doctor watch processes` (the original monitor_processes.sh).
pub fn processes_line(t: &Target) -> String {
    let me = std::process::id();
    let servers: Vec<String> = processes()
        .iter()
        .filter(|p| p.is_server() && p.pid != me)
        .map(describe)
        .collect();
    format!(
        "servers {} | http {} listeners | grpc {} listeners{}{}",
        servers.len(),
        listeners(t.http_port).len(),
        listeners(t.grpc_port).len(),
        if servers.is_empty() { "" } else { "\n  " },
        servers.join("\n  ")
    )
}

/// `actor-infer doctor ...`; returns the exit code.
pub fn main(cli: &Cli, check: Option<&DoctorCheck>) -> i32 {
    let target = match Target::from_config(cli.experiment.as_deref(), &cli.overrides()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("actor-infer doctor: {e}");
            return EXIT_CONFIG;
        }
    };
    match check {
        None => {
            let report = diagnose(&target);
            print!("{}", report.text);
            i32::from(report.verdict == Verdict::Orphans)
        }
        Some(DoctorCheck::Ports) => {
            let mut held = false;
            for (what, port) in [("HTTP", target.http_port), ("gRPC", target.grpc_port)] {
                let pids = listeners(port);
                held |= !pids.is_empty();
                if pids.is_empty() {
                    println!("{what} {port}: free");
                } else {
                    println!("{what} {port}: LISTEN by pid {pids:?}");
                }
            }
            i32::from(held)
        }
        Some(DoctorCheck::Gpu) => {
            let procs = processes();
            let by_pid = procs.iter().map(|p| (p.pid, p)).collect();
            let report = gpu_memory(&by_pid);
            for l in report.lines.iter().chain(&report.evidence) {
                println!("{l}");
            }
            i32::from(!report.evidence.is_empty())
        }
        Some(DoctorCheck::Processes) => {
            let line = processes_line(&target);
            println!("{line}");
            i32::from(line.contains("ORPHANED") || line.contains("ZOMBIE"))
        }
        Some(DoctorCheck::Metrics) => match metrics(&target) {
            Some(m) => {
                println!("{}", serde_json::to_string_pretty(&m).unwrap_or_default());
                0
            }
            None => {
                println!("no server answers on {}:{}", target.host, target.http_port);
                1
            }
        },
        Some(DoctorCheck::Count { phase, state_file }) => {
            let file = state_file.clone().unwrap_or_else(|| {
                std::env::temp_dir().join(format!("actor-infer-count-{}.json", target.http_port))
            });
            let now = counts(&target);
            println!("{now}");
            match phase {
                Phase::Before => match std::fs::write(&file, now.to_string()) {
                    Ok(()) => 0,
                    Err(e) => {
                        eprintln!("cannot write {}: {e}", file.display());
                        1
                    }
                },
                Phase::After => {
                    let before: serde_json::Value = std::fs::read_to_string(&file)
                        .ok()
                        .and_then(|t| serde_json::from_str(&t).ok())
                        .unwrap_or_default();
                    let mut grew = false;
                    for (k, v) in now.as_object().into_iter().flatten() {
                        let b = before[k].as_u64().unwrap_or(0);
                        let a = v.as_u64().unwrap_or(0);
                        if a > b {
                            grew = true;
                            println!("{k}: {b} before, {a} after: LEFT OVER");
                        }
                    }
                    if !grew {
                        println!("nothing left over (compared with {})", file.display());
                    }
                    i32::from(grew)
                }
            }
        }
        Some(DoctorCheck::Watch {
            what,
            interval_seconds,
            count,
        }) => {
            let every = std::time::Duration::from_secs_f64(interval_seconds.max(0.1));
            let mut n = 0;
            loop {
                let line = match what {
                    Watch::Metrics => metrics_line(&target),
                    Watch::Processes => processes_line(&target),
                };
                println!("{} {line}", chrono_like_now());
                n += 1;
                if count.is_some_and(|c| n >= c) {
                    return 0;
                }
                std::thread::sleep(every);
            }
        }
    }
}

/// Seconds since the epoch with milliseconds, for watch lines.
fn chrono_like_now() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}.{:03}", d.as_secs(), d.subsec_millis())
}
