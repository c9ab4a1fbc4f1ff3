//! `actor-infer doctor`: the original team's diagnostic workflow
//! (`diagnostic-workflow.md`), built in. It answers their questions from this machine and the
//! running server's metrics: are the ports still held (and by whom), are there stray or
//! orphaned server processes (parent 1), how many before and after a run, what do the metrics
//! say, what does the OS say about CPU frequency and throttling, and which case it is:
//! A (orphans), B (throttling) or C (tokenizer bottleneck).
//!
//! Three steps, one file each: [`probes`] reads the machine and the server into a plain
//! [`Probes`] record; [`verdict`] judges it (pure, unit-tested from recorded probes);
//! [`render`] prints it. This file holds what the doctor looks at ([`Target`]) and the command
//! line's checks (`ports`, `gpu`, `processes`, `metrics`, `count`, `watch`).

pub mod probes;
pub mod render;
pub mod verdict;

use std::path::{Path, PathBuf};

use serde_json::Value;

pub use self::{
    probes::{Probes, Proc, listeners, metrics, processes},
    render::{metrics_line, processes_line},
    verdict::{Findings, Verdict, judge},
};
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

/// The full report.
pub struct Report {
    /// Printable text.
    pub text: String,
    /// The verdict.
    pub verdict: Verdict,
}

/// Runs every check and decides: reads the probes, judges them, renders the report.
pub fn diagnose(t: &Target) -> Report {
    let probes = Probes::gather(t);
    let findings = judge(&probes);
    Report {
        text: render::report(t, &probes, &findings),
        verdict: findings.verdict,
    }
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
        Some(DoctorCheck::Gpu) => render::gpu_check(),
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
