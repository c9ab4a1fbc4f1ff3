//! `actor-infer`: parses the command line and dispatches: serve (`actor_infer::serve`),
//! `bench` or `doctor` (`actor_infer::tools`). Everything else lives in the library.

use actor_infer::tools::{
    bench,
    cli::{Cli, Command},
    doctor,
};
use clap::{CommandFactory, Parser};

fn main() {
    // Before any thread starts: glibc's arenas per thread (src/model/memory.rs).
    actor_infer::model::memory::limit_malloc_arenas();
    let cli = Cli::parse();
    let code = match &cli.command {
        Some(Command::Doctor { check }) => doctor::main(&cli, check.as_ref()),
        Some(Command::Bench(args)) => bench::main(&cli, args.clone()),
        None => match &cli.experiment {
            Some(experiment) => actor_infer::serve(
                experiment,
                &cli.overrides(),
                cli.check,
                cli.port_file.as_deref(),
            ),
            None => Cli::command()
                .error(
                    clap::error::ErrorKind::MissingRequiredArgument,
                    "--experiment <YAML> is required to serve",
                )
                .exit(),
        },
    };
    // Not std::process::exit: see actor_infer::exit.
    actor_infer::exit(code);
}
