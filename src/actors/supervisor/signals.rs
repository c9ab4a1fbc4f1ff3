//! Signals, the watchdog and how the process ends.
//!
//! Owns: the only handlers of SIGTERM, SIGINT and SIGHUP (a plain thread that sends
//! [`Shutdown`] and [`Reload`] to the Supervisor, and aborts on a second stop signal), the stop
//! watchdog (a plain thread that aborts once the stop budget is spent, even if the actix runtime
//! is wedged), and the process's one exit path, [`exit`], which [`abort_now`] and the binary's
//! `main` both end through. Nothing sends to it; the Supervisor starts its threads.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use actix::prelude::*;

use super::{EXIT_ABORT, EXIT_FORCED, Reload, Shutdown, StopReason, Supervisor};
use crate::actors::ActorTable;

/// How the binary ends, whatever the path (a clean stop, a refused start, an abort): stdout and
/// stderr flushed, then `_exit(code)`, without the C++ static destructors that `exit()` runs.
/// With libtorch's CUDA half loaded (`device: auto` or `cuda` on a host that has it), those
/// destructors can hang: on CI a server that had logged "Shutdown complete" was held until its
/// watchdog's exit 3, and a refused `device: cuda` (exit 2) did not end within a minute.
/// Nothing is left for them to do: the process owns no file, socket or child that outlives it.
///
/// It waits for no other thread: the server writes its logs to stderr unbuffered and nothing to
/// stdout, so the flushes find nothing pending (the CLI tools flush what they printed).
pub fn exit(code: i32) -> ! {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: _exit ends the process at once; every writer is unbuffered or flushed above.
    unsafe { libc::_exit(code) }
}

/// Logs which actors are still running and ends the process with `code` through [`exit`],
/// without running destructors or waiting for any thread (one may be stuck inside libtorch).
pub fn abort_now(code: i32, why: &str, table: &ActorTable) -> ! {
    let running = table.running();
    let line = format!(
        "hard abort (exit {code}): {why}; still running: {}",
        if running.is_empty() {
            "none".to_string()
        } else {
            running.join(", ")
        }
    );
    tracing::error!("{line}");
    // Also straight to stderr: the logging pipeline may be what is stuck.
    eprintln!("actor-infer: {line}");
    exit(code)
}

/// Watchdog: a plain thread, independent of the actix runtime, that aborts the process if it
/// is still alive a moment after the stop budget's deadline.
pub(super) fn spawn_watchdog(deadline: Instant, table: Arc<ActorTable>) {
    std::thread::Builder::new()
        .name("stop-watchdog".into())
        .spawn(move || {
            std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
            // Give the sequence's own abort (same deadline) a moment to speak first.
            std::thread::sleep(Duration::from_millis(200));
            abort_now(EXIT_ABORT, "the shutdown budget ran out", &table);
        })
        .expect("spawning the watchdog thread");
}

/// The only owner of SIGTERM, SIGINT and SIGHUP: a plain thread, so a second stop signal
/// aborts even if the actix runtime is stuck. SIGHUP asks for a [`Reload`] (its report is
/// logged).
pub(super) fn spawn_signal_thread(supervisor: Addr<Supervisor>, table: Arc<ActorTable>) {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .expect("installing SIGTERM/SIGINT/SIGHUP handlers");
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut seen = 0;
            for sig in signals.forever() {
                if sig == SIGHUP {
                    tracing::info!(signal = "SIGHUP", "reload requested");
                    supervisor.do_send(Reload);
                    continue;
                }
                let name = if sig == SIGTERM { "SIGTERM" } else { "SIGINT" };
                seen += 1;
                if seen == 1 {
                    supervisor.do_send(Shutdown(StopReason::Signal(name)));
                } else {
                    abort_now(
                        EXIT_FORCED,
                        &format!("second signal ({name}) during the stop"),
                        &table,
                    );
                }
            }
        })
        .expect("spawning the signal thread");
}
