//! The doctor's judgement: which of the original workflow's cases the recorded [`Probes`] point
//! to, and the evidence for it. Pure: it reads nothing from the machine, so every verdict is
//! unit-tested below from probes written by hand.
//!
//! Cases, first match wins: A (orphans: a port held by something that is not the serving
//! server, an orphaned, zombie, stuck or old Python server process, GPU memory held by one of
//! those), B (the CPU is throttled), C (tokenization takes more than half the inference time),
//! else healthy.

use std::collections::BTreeMap;

use super::probes::{Probes, Proc, ThermalProbe};
use crate::model::device::GpuInfo;

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

/// The verdict and what it rests on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Findings {
    /// The case.
    pub verdict: Verdict,
    /// Case A's evidence, one sentence each, in the report's order: ports, server processes,
    /// GPU memory. Empty unless the verdict is [`Verdict::Orphans`].
    pub evidence: Vec<String>,
}

/// Judges `p`.
pub fn judge(p: &Probes) -> Findings {
    let serving_pid = p
        .metrics
        .as_ref()
        .and_then(|m| m["pid"].as_u64())
        .map(|pid| pid as u32);
    let mut evidence = Vec::new();
    for port in &p.ports {
        for &pid in &port.holders {
            if Some(pid) != serving_pid {
                evidence.push(format!(
                    "{} port {} is held by pid {pid}, which is not a serving actor-infer",
                    port.what, port.port
                ));
            }
        }
    }
    for s in servers(p) {
        if is_orphan(s) {
            evidence.push(format!("pid {} is orphaned (parent 1)", s.pid));
        }
        if let Some(listening) = &p.listening
            && s.is_actor_infer()
            && s.state != 'Z'
            && !listening.contains(&s.pid)
        {
            evidence.push(format!(
                "pid {} is an actor-infer that holds no port (stuck starting or stopping?)",
                s.pid
            ));
        }
        if s.state == 'Z' {
            evidence.push(format!("pid {} is a zombie", s.pid));
        }
        if s.cmdline.contains("python") {
            evidence.push(format!("pid {} is the old Python server", s.pid));
        }
    }
    let by_pid = p.processes.iter().map(|x| (x.pid, x)).collect();
    let listening = p.listening.as_deref().unwrap_or_default();
    if let Some(gpus) = &p.gpus {
        evidence.extend(gpu_evidence(gpus, &by_pid, listening));
    }
    let verdict = if !evidence.is_empty() {
        Verdict::Orphans
    } else if throttled(&p.thermal) {
        Verdict::Throttling
    } else if tokenizer_bound(p) {
        Verdict::TokenizerBottleneck
    } else {
        Verdict::Healthy
    };
    Findings { verdict, evidence }
}

/// The server processes in `p` (actor-infer or the old Python server), the doctor excepted.
pub fn servers(p: &Probes) -> impl Iterator<Item = &Proc> {
    p.processes
        .iter()
        .filter(move |x| x.is_server() && x.pid != p.me)
}

/// True for a process of the original Python server whose parent died (the original
/// workflow's orphaned worker). An actor-infer with parent 1 was merely started detached or by
/// an init (a container's PID 1): its workers are threads and die with it.
pub fn is_orphan(p: &Proc) -> bool {
    p.ppid == 1 && p.cmdline.contains("python")
}

/// Case A's evidence from GPU memory: a holder is evidence when it is the old Python server or
/// one of its workers, an orphan, a zombie, or an actor-infer that holds no port (stuck
/// starting or stopping) while some process does listen. A holder missing from `by_pid`
/// (another PID namespace) is not judged.
pub fn gpu_evidence(
    gpus: &[GpuInfo],
    by_pid: &BTreeMap<u32, &Proc>,
    listening: &[u32],
) -> Vec<String> {
    let mut evidence = Vec::new();
    for g in gpus {
        for (pid, bytes) in &g.processes {
            let Some(p) = by_pid.get(pid) else {
                continue;
            };
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
                evidence.push(format!(
                    "pid {} holds {} of GPU {} memory and is {why}",
                    p.pid,
                    held(*bytes),
                    g.index
                ));
            }
        }
    }
    evidence
}

/// GPU memory as the report writes it.
pub fn held(bytes: Option<u64>) -> String {
    bytes.map_or("? MiB".to_string(), |b| format!("{:.0} MiB", mib(b)))
}

/// Bytes in MiB.
pub fn mib(b: u64) -> f64 {
    b as f64 / 1048576.0
}

/// True if something says the CPU is throttled now or was: cores at less than 70% of their
/// maximum frequency on average, throttle events since boot, a thermal zone at 90 °C or more,
/// or (macOS) a CPU speed limit under 100.
pub fn throttled(t: &ThermalProbe) -> bool {
    if t.sysfs {
        let ratios = &t.frequency_ratios;
        let slow = !ratios.is_empty() && ratios.iter().sum::<f64>() / (ratios.len() as f64) < 0.7;
        slow || t.throttle_events > 0 || t.zones.iter().any(|(_, milli)| *milli >= 90_000)
    } else {
        t.pmset.iter().any(|l| {
            l.contains("CPU_Speed_Limit")
                && l.split('=')
                    .nth(1)
                    .and_then(|v| v.trim().parse::<u32>().ok())
                    .is_some_and(|v| v < 100)
        })
    }
}

/// True when the server's metrics say tokenizing takes over 1 ms and more than half the
/// inference time.
pub fn tokenizer_bound(p: &Probes) -> bool {
    let Some(m) = &p.metrics else {
        return false;
    };
    let st = &m["stage_timings"];
    let tok = st["avg_tokenize_ms"].as_f64().unwrap_or(0.0);
    let inf = st["avg_inference_ms"].as_f64().unwrap_or(0.0);
    tok > 1.0 && tok > 0.5 * inf
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::tools::doctor::probes::PortProbe;

    const ME: u32 = 900;
    const SERVER: u32 = 100;

    fn process(pid: u32, ppid: u32, state: char, cmdline: &str) -> Proc {
        Proc {
            pid,
            ppid,
            state,
            cmdline: cmdline.into(),
            threads: 20,
        }
    }

    fn server() -> Proc {
        process(
            SERVER,
            50,
            'S',
            "/usr/local/bin/actor-infer --experiment exp.yaml",
        )
    }

    fn ports(http: &[u32], grpc: &[u32]) -> Vec<PortProbe> {
        vec![
            PortProbe {
                what: "HTTP",
                port: 8080,
                holders: http.to_vec(),
            },
            PortProbe {
                what: "gRPC",
                port: 50051,
                holders: grpc.to_vec(),
            },
        ]
    }

    fn metrics(pid: u32, tokenize_ms: f64, inference_ms: f64) -> serde_json::Value {
        json!({
            "pid": pid,
            "stage_timings": {"avg_tokenize_ms": tokenize_ms, "avg_inference_ms": inference_ms},
        })
    }

    /// A healthy machine: one serving actor-infer holding both ports, its metrics answering,
    /// the doctor itself running, a cool CPU at full speed, no NVIDIA driver.
    fn serving() -> Probes {
        Probes {
            me: ME,
            processes: vec![
                process(1, 0, 'S', "/sbin/init"),
                server(),
                process(ME, 50, 'R', "/usr/local/bin/actor-infer doctor"),
            ],
            ports: ports(&[SERVER], &[SERVER]),
            listening: Some(vec![SERVER, 22]),
            metrics: Some(metrics(SERVER, 0.2, 5.0)),
            gpus: None,
            thermal: ThermalProbe {
                sysfs: true,
                frequency_ratios: vec![0.95, 1.0],
                zones: vec![("x86_pkg_temp".into(), 55_000)],
                ..ThermalProbe::default()
            },
        }
    }

    fn gpu(holders: &[(u32, Option<u64>)]) -> Vec<GpuInfo> {
        vec![GpuInfo {
            index: 0,
            name: "NVIDIA H200".into(),
            used: 1 << 30,
            total: 141 << 30,
            processes: holders.to_vec(),
        }]
    }

    fn healthy(p: &Probes) {
        assert_eq!(
            judge(p),
            Findings {
                verdict: Verdict::Healthy,
                evidence: vec![]
            }
        );
    }

    fn case_a(p: &Probes, evidence: &[&str]) {
        let f = judge(p);
        assert_eq!(f.verdict, Verdict::Orphans, "{f:?}");
        assert_eq!(f.evidence, evidence);
    }

    #[test]
    fn a_serving_server_and_its_ports_are_healthy() {
        healthy(&serving());
    }

    #[test]
    fn nothing_running_and_ports_free_is_healthy() {
        let mut p = serving();
        p.processes.retain(|x| x.pid != SERVER);
        p.ports = ports(&[], &[]);
        p.listening = Some(vec![22]);
        p.metrics = None;
        healthy(&p);
    }

    #[test]
    fn a_port_held_by_anything_but_the_serving_server_is_case_a() {
        let mut p = serving();
        p.processes.retain(|x| x.pid != SERVER);
        p.processes.push(process(321, 50, 'S', "python3 -c socket"));
        p.ports = ports(&[321], &[]);
        p.metrics = None;
        case_a(
            &p,
            &["HTTP port 8080 is held by pid 321, which is not a serving actor-infer"],
        );
        // Held by a process this user may not inspect (pid 0), while a server answers.
        let mut p = serving();
        p.ports = ports(&[SERVER], &[0]);
        case_a(
            &p,
            &["gRPC port 50051 is held by pid 0, which is not a serving actor-infer"],
        );
    }

    #[test]
    fn an_orphaned_python_server_is_case_a() {
        let mut p = serving();
        p.processes
            .push(process(4242, 1, 'S', "python -m src.main --port 8000"));
        case_a(
            &p,
            &[
                "pid 4242 is orphaned (parent 1)",
                "pid 4242 is the old Python server",
            ],
        );
    }

    #[test]
    fn an_actor_infer_started_detached_is_not_an_orphan() {
        let mut p = serving();
        p.processes[1].ppid = 1;
        healthy(&p);
    }

    #[test]
    fn an_actor_infer_holding_no_port_is_case_a_where_the_os_says_so() {
        let mut p = serving();
        p.processes.push(process(
            555,
            50,
            'S',
            "/usr/local/bin/actor-infer --experiment b.yaml",
        ));
        case_a(
            &p,
            &["pid 555 is an actor-infer that holds no port (stuck starting or stopping?)"],
        );
        // Where listening sockets are not read (not Linux), it is not judged.
        p.listening = None;
        healthy(&p);
    }

    #[test]
    fn a_zombie_server_is_case_a() {
        let mut p = serving();
        p.processes
            .push(process(666, 50, 'Z', "/usr/local/bin/actor-infer"));
        case_a(&p, &["pid 666 is a zombie"]);
    }

    #[test]
    fn gpu_memory_not_released_is_case_a() {
        let mut p = serving();
        p.processes.extend([
            process(
                700,
                50,
                'S',
                "/usr/local/bin/actor-infer --experiment old.yaml",
            ),
            process(
                701,
                1,
                'S',
                "python -c from multiprocessing.spawn import spawn_main",
            ),
            process(702, 50, 'S', "python -c from multiprocessing.spawn"),
        ]);
        p.gpus = Some(gpu(&[
            (SERVER, Some(900 << 20)),
            (700, Some(512 << 20)),
            (701, None),
            (702, Some(3 << 20)),
            (999, Some(1 << 20)),
        ]));
        case_a(
            &p,
            &[
                "pid 700 is an actor-infer that holds no port (stuck starting or stopping?)",
                "pid 700 holds 512 MiB of GPU 0 memory and is an actor-infer that holds no port \
                 (stuck starting or stopping?)",
                "pid 701 holds ? MiB of GPU 0 memory and is an orphaned worker (parent 1)",
                "pid 702 holds 3 MiB of GPU 0 memory and is the old Python server or one of its \
                 workers",
            ],
        );
    }

    #[test]
    fn gpu_memory_of_the_serving_server_or_an_unseen_pid_is_healthy() {
        let mut p = serving();
        p.gpus = Some(gpu(&[(SERVER, Some(900 << 20)), (999, Some(1 << 20))]));
        healthy(&p);
    }

    #[test]
    fn a_slow_or_hot_cpu_is_case_b() {
        let slow = ThermalProbe {
            sysfs: true,
            frequency_ratios: vec![0.6, 0.7],
            ..ThermalProbe::default()
        };
        let events = ThermalProbe {
            sysfs: true,
            throttle_events: 3,
            ..ThermalProbe::default()
        };
        let hot = ThermalProbe {
            sysfs: true,
            zones: vec![("x86_pkg_temp".into(), 91_000)],
            ..ThermalProbe::default()
        };
        let limited = ThermalProbe {
            pmset: vec!["CPU_Speed_Limit \t= 80".into()],
            ..ThermalProbe::default()
        };
        for thermal in [slow, events, hot, limited] {
            let mut p = serving();
            p.thermal = thermal.clone();
            assert_eq!(judge(&p).verdict, Verdict::Throttling, "{thermal:?}");
        }
        let unlimited = ThermalProbe {
            pmset: vec!["CPU_Speed_Limit \t= 100".into()],
            ..ThermalProbe::default()
        };
        let no_cpufreq = ThermalProbe {
            sysfs: true,
            ..ThermalProbe::default()
        };
        for thermal in [unlimited, no_cpufreq] {
            let mut p = serving();
            p.thermal = thermal;
            healthy(&p);
        }
    }

    #[test]
    fn tokenizing_over_half_the_inference_time_is_case_c() {
        let mut p = serving();
        p.metrics = Some(metrics(SERVER, 3.0, 5.0));
        assert_eq!(judge(&p).verdict, Verdict::TokenizerBottleneck);
        // Under a millisecond it is not worth a verdict, whatever the ratio.
        p.metrics = Some(metrics(SERVER, 0.9, 0.1));
        healthy(&p);
    }

    #[test]
    fn case_a_comes_before_b_and_b_before_c() {
        let mut p = serving();
        p.metrics = Some(metrics(SERVER, 3.0, 5.0));
        p.thermal.throttle_events = 1;
        assert_eq!(judge(&p).verdict, Verdict::Throttling);
        p.ports[0].holders.push(77);
        assert_eq!(judge(&p).verdict, Verdict::Orphans);
    }
}
