//! The doctor's report: recorded [`Probes`] and their [`Findings`] as the text
//! `actor-infer doctor` prints, section by section after the original workflow's scripts, and
//! the one-line forms of `doctor watch`.

use std::{collections::BTreeMap, fmt::Write as _};

use serde_json::Value;

use super::{
    Target,
    probes::{Probes, Proc, ThermalProbe, listeners, metrics, pids_listening, processes},
    verdict::{Findings, Verdict, gpu_evidence, held, is_orphan, mib, servers},
};
use crate::model::device::GpuInfo;

/// The full report of `actor-infer doctor`.
pub fn report(t: &Target, p: &Probes, findings: &Findings) -> String {
    let mut out = String::new();
    let by_pid: BTreeMap<u32, &Proc> = p.processes.iter().map(|x| (x.pid, x)).collect();

    let _ = writeln!(out, "== 1. ports (the original check_ports.sh)");
    for port in &p.ports {
        if port.holders.is_empty() {
            let _ = writeln!(out, "{} {}: free", port.what, port.port);
            continue;
        }
        for pid in &port.holders {
            let who = by_pid
                .get(pid)
                .map(|x| describe(x))
                .unwrap_or_else(|| format!("pid {pid} (not visible to this user)"));
            let _ = writeln!(out, "{} {}: LISTEN by {who}", port.what, port.port);
        }
    }

    let _ = writeln!(
        out,
        "\n== 2. server processes (the original check_processes.sh)"
    );
    let servers: Vec<&Proc> = servers(p).collect();
    if servers.is_empty() {
        let _ = writeln!(out, "none");
    }
    for s in &servers {
        let _ = writeln!(out, "{}", describe(s));
    }
    let actor_infer = servers.iter().filter(|s| s.is_actor_infer()).count();
    let _ = writeln!(
        out,
        "actor-infer processes: {actor_infer} (expected: 1 while serving, 0 after a stop; \
         workers are threads, never processes)"
    );

    let _ = writeln!(out, "\n== 3. metrics (the original check_metrics.sh)");
    match &p.metrics {
        None => {
            let _ = writeln!(
                out,
                "no server answers on http://{}:{}/metrics",
                t.host, t.http_port
            );
        }
        Some(m) => metrics_section(&mut out, m),
    }

    let _ = writeln!(
        out,
        "\n== 4. GPU memory per process (the original case A: memory held after a stop)"
    );
    for l in gpu_lines(p.gpus.as_deref(), &by_pid) {
        let _ = writeln!(out, "{l}");
    }

    let _ = writeln!(out, "\n== 5. CPU frequency and thermal state");
    for l in thermal_lines(&p.thermal) {
        let _ = writeln!(out, "{l}");
    }

    let _ = writeln!(out, "\n== verdict");
    match findings.verdict {
        Verdict::Orphans => {
            let _ = writeln!(out, "CASE A: orphans or stray servers");
            for e in &findings.evidence {
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
                if p.metrics.is_some() {
                    ""
                } else {
                    " (no server running)"
                }
            );
        }
    }
    out
}

/// Section 3: the dashboard's headline figures and a line per model.
fn metrics_section(out: &mut String, m: &Value) {
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
}

/// Section 4: every GPU's memory and who holds it, or why that cannot be known here.
pub fn gpu_lines(gpus: Option<&[GpuInfo]>, by_pid: &BTreeMap<u32, &Proc>) -> Vec<String> {
    let Some(gpus) = gpus else {
        return vec![if cfg!(target_os = "macos") {
            "macOS exposes no per-process GPU memory (MPS shares the system's memory): \
             see the process list above; `vm_stat` shows the system's"
                .into()
        } else {
            "no NVIDIA driver here (NVML does not load): no process holds GPU memory on this host"
                .into()
        }];
    };
    let mut lines = Vec::new();
    if gpus.is_empty() {
        lines.push("NVML loads but sees no GPU on this host".into());
    }
    for g in gpus {
        lines.push(format!(
            "GPU {} {}: {:.0} MiB of {:.0} MiB in use, {} process(es)",
            g.index,
            g.name,
            mib(g.used),
            mib(g.total),
            g.processes.len()
        ));
        for (pid, bytes) in &g.processes {
            let held = held(*bytes);
            match by_pid.get(pid) {
                Some(p) => lines.push(format!("  {held} :: {}", describe(p))),
                None => lines.push(format!(
                    "  pid {pid}: {held} (not in this machine's process list: another \
                     container's PID namespace, or it is exiting)"
                )),
            }
        }
    }
    lines
}

/// `actor-infer doctor gpu`: the GPU lines, then case A's evidence among them; the exit code is
/// 1 when there is evidence.
pub fn gpu_check() -> i32 {
    let procs = processes();
    let by_pid = procs.iter().map(|p| (p.pid, p)).collect();
    let gpus = super::probes::gpus();
    let evidence = gpus
        .as_deref()
        .map(|g| gpu_evidence(g, &by_pid, &pids_listening()))
        .unwrap_or_default();
    for l in gpu_lines(gpus.as_deref(), &by_pid).iter().chain(&evidence) {
        println!("{l}");
    }
    i32::from(!evidence.is_empty())
}

/// Section 5: what the OS says about the CPU's frequency and temperature.
pub fn thermal_lines(t: &ThermalProbe) -> Vec<String> {
    let mut lines = Vec::new();
    if t.sysfs {
        let ratios = &t.frequency_ratios;
        if ratios.is_empty() {
            lines.push("CPU frequency: not exposed here (no cpufreq; a VM or container?)".into());
        } else {
            let min = ratios.iter().cloned().fold(f64::MAX, f64::min);
            let avg = ratios.iter().sum::<f64>() / ratios.len() as f64;
            lines.push(format!(
                "CPU frequency: {:.0}% of max on average, {:.0}% on the slowest core ({} cores)",
                avg * 100.0,
                min * 100.0,
                ratios.len()
            ));
        }
        if t.throttle_events > 0 {
            lines.push(format!(
                "thermal throttle events since boot: {}",
                t.throttle_events
            ));
        }
        for (kind, milli) in &t.zones {
            lines.push(format!("{kind}: {:.1} °C", *milli as f64 / 1000.0));
        }
    } else {
        lines.extend(t.pmset.iter().map(|l| format!("pmset: {l}")));
    }
    if lines.is_empty() {
        lines.push("no thermal information is exposed on this machine".into());
    }
    lines
}

/// One process as the report writes it, flagged when orphaned, detached or a zombie.
pub fn describe(p: &Proc) -> String {
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
