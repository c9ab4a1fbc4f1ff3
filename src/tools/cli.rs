//! The command line: `actor-infer --experiment exp.yaml [--grpc-port N] [--http-port N]`,
//! the original server's, plus `doctor` (the original diagnostic workflow, built in).

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// Serve text-embedding models over gRPC and HTTP from one process.
///
/// Configuration comes from the experiment YAML; environment variables named
/// ACTOR_INFER__SECTION__KEY (e.g. ACTOR_INFER__SERVER__HTTP_PORT=9000) override its keys, and
/// the flags below override both.
///
/// Exit codes: 0 clean stop; 1 start-up or run-time failure (the stop sequence still ran);
/// 2 configuration refused (nothing started); 3 hard abort, the shutdown budget ran out;
/// 4 hard abort, a second SIGTERM/SIGINT during the stop.
#[derive(Debug, Parser)]
#[command(name = "actor-infer", version, about, long_about)]
pub struct Cli {
    /// What to do; without one, serve.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// The experiment YAML (see configs/default.yaml for every key). Required to serve.
    #[arg(
        short = 'e',
        long,
        value_name = "YAML",
        env = "ACTOR_INFER_EXPERIMENT",
        global = true
    )]
    pub experiment: Option<PathBuf>,

    /// Override `server.grpc_port` (0 picks a free port; the chosen one is logged).
    #[arg(long, value_name = "N", global = true)]
    pub grpc_port: Option<u32>,

    /// Override `server.http_port` (0 picks a free port; the chosen one is logged).
    #[arg(long, value_name = "N", global = true)]
    pub http_port: Option<u32>,

    /// Override `server.host`, the address both servers bind.
    #[arg(long, value_name = "ADDR", global = true)]
    pub host: Option<String>,

    /// Validate the configuration, print it as resolved, and exit (0 if valid).
    #[arg(long)]
    pub check: bool,

    /// Once both ports are bound, write them to this file as JSON
    /// (`{"host": ..., "http_port": N, "grpc_port": N}`), replacing it in one rename: with
    /// `--http-port 0 --grpc-port 0`, how a script or a test learns the ports the server chose.
    #[arg(long, value_name = "PATH")]
    pub port_file: Option<PathBuf>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Benchmark a running server over gRPC or HTTP (ports from --experiment or the flags),
    /// or with --raw the in-process model alone: the limit.
    Bench(super::bench::BenchArgs),
    /// Diagnose a slow or unclean run: ports, processes, metrics, throttling, and a verdict
    /// (case A orphans, B throttling, C tokenizer bottleneck). Exit 1 on case A.
    ///
    /// Uses the ports of --experiment (or the defaults 8080/50051) and --http-port/--grpc-port.
    Doctor {
        /// One check only; without one, the full report.
        #[command(subcommand)]
        check: Option<DoctorCheck>,
    },
}

/// The doctor's single checks (the original team's script names in brackets).
#[derive(Debug, Subcommand)]
pub enum DoctorCheck {
    /// Who listens on the HTTP and gRPC ports [check_ports.sh]. Exit 1 if either is held.
    Ports,
    /// Server processes, orphans (parent 1) and zombies [check_processes.sh]. Exit 1 if any
    /// is orphaned or a zombie.
    Processes,
    /// The running server's metrics [check_metrics.sh]. Exit 1 if no server answers.
    Metrics,
    /// GPU memory per process on every NVIDIA GPU (NVML), for any process, not only
    /// actor-infer: is GPU memory still held after a stop, and by whom? Exit 1 if an orphan,
    /// a zombie, the old Python server or a stuck actor-infer holds some.
    Gpu,
    /// Count server processes and port listeners [count_processes.sh before|after];
    /// `after` compares with `before` and exits 1 if anything is left over.
    Count {
        /// `before` records, `after` compares.
        #[arg(value_enum)]
        phase: Phase,
        /// Where `before` keeps its counts.
        #[arg(long, value_name = "FILE")]
        state_file: Option<PathBuf>,
    },
    /// Print metrics or processes every interval [monitor_metrics.sh, monitor_processes.sh].
    Watch {
        /// What to watch.
        #[arg(value_enum)]
        what: Watch,
        /// Seconds between lines.
        #[arg(long, default_value_t = 2.0)]
        interval_seconds: f64,
        /// Stop after this many lines (default: until interrupted).
        #[arg(long)]
        count: Option<u64>,
    },
}

/// `doctor count` phases.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Phase {
    /// Before a run.
    Before,
    /// After a run.
    After,
}

/// `doctor watch` subjects.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Watch {
    /// The server's metrics.
    Metrics,
    /// Server processes and port listeners.
    Processes,
}

impl Cli {
    /// The command-line overrides of configuration keys.
    pub fn overrides(&self) -> crate::config::Overrides {
        crate::config::Overrides {
            host: self.host.clone(),
            grpc_port: self.grpc_port,
            http_port: self.http_port,
        }
    }
}
