//! `actor-infer`: parses the command line, loads the configuration, binds the ports and runs
//! the server (`actor_infer::run`) inside an actix System. Everything else lives in the library.

use std::panic::{AssertUnwindSafe, catch_unwind};

use actor_infer::{
    Listeners,
    actors::supervisor::{EXIT_CONFIG, EXIT_FAILURE},
    cli::{Cli, Command, DoctorCheck, Phase, Watch},
    config::{Config, LogFormat, Logging},
    doctor,
};
use clap::{CommandFactory, Parser};
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

/// `actor-infer doctor ...`; returns the exit code.
fn run_doctor(cli: &Cli, check: &Option<DoctorCheck>) -> i32 {
    let target = match doctor::Target::from_config(cli.experiment.as_deref(), &cli.overrides()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("actor-infer doctor: {e}");
            return EXIT_CONFIG;
        }
    };
    match check {
        None => {
            let report = doctor::diagnose(&target);
            print!("{}", report.text);
            i32::from(report.verdict == doctor::Verdict::Orphans)
        }
        Some(DoctorCheck::Ports) => {
            let mut held = false;
            for (what, port) in [("HTTP", target.http_port), ("gRPC", target.grpc_port)] {
                let pids = doctor::listeners(port);
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
            let procs = doctor::processes();
            let by_pid = procs.iter().map(|p| (p.pid, p)).collect();
            let report = doctor::gpu_memory(&by_pid);
            for l in report.lines.iter().chain(&report.evidence) {
                println!("{l}");
            }
            i32::from(!report.evidence.is_empty())
        }
        Some(DoctorCheck::Processes) => {
            let line = doctor::processes_line(&target);
            println!("{line}");
            i32::from(line.contains("ORPHANED") || line.contains("ZOMBIE"))
        }
        Some(DoctorCheck::Metrics) => match doctor::metrics(&target) {
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
            let now = doctor::counts(&target);
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
                    Watch::Metrics => doctor::metrics_line(&target),
                    Watch::Processes => doctor::processes_line(&target),
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

/// `actor-infer bench ...`; returns the exit code.
fn run_bench(cli: &Cli, args: actor_infer::bench::BenchArgs) -> i32 {
    let config = match &cli.experiment {
        Some(path) => match Config::load(path, &cli.overrides()) {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("actor-infer bench: configuration error: {e}");
                return EXIT_CONFIG;
            }
        },
        None => None,
    };
    let target = match doctor::Target::from_config(cli.experiment.as_deref(), &cli.overrides()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("actor-infer bench: {e}");
            return EXIT_CONFIG;
        }
    };
    actor_infer::bench::run(
        args,
        cli.experiment.clone(),
        config,
        target.http_port,
        target.grpc_port,
        target.host,
    )
}

/// Seconds since the epoch with milliseconds, for watch lines.
fn chrono_like_now() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}.{:03}", d.as_secs(), d.subsec_millis())
}

/// Says once, at start, which device serves and why, which libraries were loaded from where,
/// and the GPU's name and memory.
fn log_device(choice: &actor_infer::model::device::Choice) {
    let Some(probe) = actor_infer::model::device::Probe::get() else {
        return;
    };
    tracing::info!(
        device = %actor_infer::model::device_name(choice.device),
        reason = %choice.reason,
        gpu = probe.gpu_line(choice.device).as_deref().unwrap_or("none"),
        libraries = %probe.libraries(),
        "device selected"
    );
    if let Some(w) = &choice.warning {
        tracing::warn!("{w}");
    }
}

fn main() {
    let cli = Cli::parse();
    if let Some(Command::Doctor { check }) = &cli.command {
        std::process::exit(run_doctor(&cli, check));
    }
    if let Some(Command::Bench(args)) = &cli.command {
        std::process::exit(run_bench(&cli, args.clone()));
    }
    let Some(experiment) = cli.experiment.clone() else {
        Cli::command()
            .error(
                clap::error::ErrorKind::MissingRequiredArgument,
                "--experiment <YAML> is required to serve",
            )
            .exit();
    };
    let config = match Config::load(&experiment, &cli.overrides()) {
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
    // The device is settled before any port is bound: a device that cannot be used is a
    // configuration error (exit 2), and nothing has started.
    let device = match actor_infer::model::device::select(&config.model) {
        Ok(choice) => choice,
        Err(e) => {
            tracing::error!("configuration error: {e}");
            eprintln!("actor-infer: configuration error: {e}");
            std::process::exit(EXIT_CONFIG);
        }
    };
    log_device(&device);
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
        actix_rt::System::new().block_on(actor_infer::run(config, device.device, listeners))
    }))
    .unwrap_or_else(|_| {
        eprintln!("actor-infer: internal error (a panic, logged above); exiting");
        EXIT_FAILURE
    });
    std::process::exit(code);
}
