//! `actor-infer`: parses the command line, loads the configuration, binds the ports and runs
//! the server (`actor_infer::run`) inside an actix System. Everything else lives in the library.

use std::panic::{AssertUnwindSafe, catch_unwind};

use actor_infer::{
    Listeners,
    actors::supervisor::{EXIT_CONFIG, EXIT_FAILURE},
    cli::Cli,
    config::{Config, LogFormat, Logging},
};
use clap::Parser;
use tracing_subscriber::EnvFilter;

fn init_logging(logging: &Logging) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&logging.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match logging.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().with_current_span(true).init(),
    }
}

fn main() {
    let cli = Cli::parse();
    let config = match Config::load(&cli.experiment, &cli.overrides()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("actor-infer: configuration error: {e}");
            std::process::exit(EXIT_CONFIG);
        }
    };
    if cli.check {
        println!(
            "{}",
            serde_json::to_string_pretty(&config).expect("the configuration serialises")
        );
        return;
    }
    init_logging(&config.logging);
    let listeners = match Listeners::bind(&config.server) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("actor-infer: {e}");
            std::process::exit(EXIT_FAILURE);
        }
    };
    tracing::info!(
        experiment = %config.experiment.name,
        http = %listeners.http_addr().map(|a| a.to_string()).unwrap_or_default(),
        grpc = %listeners.grpc_addr().map(|a| a.to_string()).unwrap_or_default(),
        "listening"
    );
    // A panic that escapes the actors (a bug) ends the System; the process then exits,
    // and with it every thread, socket and byte of device memory: there is no child process.
    let code = catch_unwind(AssertUnwindSafe(|| {
        actix_rt::System::new().block_on(actor_infer::run(config, listeners))
    }))
    .unwrap_or_else(|_| {
        eprintln!("actor-infer: internal error (a panic, logged above); exiting");
        EXIT_FAILURE
    });
    std::process::exit(code);
}
