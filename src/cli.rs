//! The command line: `actor-infer --experiment exp.yaml [--grpc-port N] [--http-port N]`,
//! the original server's, plus a few operator conveniences.

use std::path::PathBuf;

use clap::Parser;

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
    /// The experiment YAML (see configs/default.yaml for every key).
    #[arg(short = 'e', long, value_name = "YAML", env = "ACTOR_INFER_EXPERIMENT")]
    pub experiment: PathBuf,

    /// Override `server.grpc_port` (0 picks a free port; the chosen one is logged).
    #[arg(long, value_name = "N")]
    pub grpc_port: Option<u32>,

    /// Override `server.http_port` (0 picks a free port; the chosen one is logged).
    #[arg(long, value_name = "N")]
    pub http_port: Option<u32>,

    /// Override `server.host`, the address both servers bind.
    #[arg(long, value_name = "ADDR")]
    pub host: Option<String>,

    /// Validate the configuration, print it as resolved, and exit (0 if valid).
    #[arg(long)]
    pub check: bool,
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
