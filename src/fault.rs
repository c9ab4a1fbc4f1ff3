//! Fault injection for tests: compiled in only with the `fault-injection` feature (what
//! `make test` builds), off unless the process starts with `ACTOR_INFER_FAULT_INJECTION=1`, and
//! then only triggered by exact magic texts, so a test
//! can make a model worker hang inside a forward (as if stuck in a libtorch call) or panic,
//! or make a tokenizer panic. Never on by default; the server logs a warning when it is on.

use std::sync::OnceLock;

/// The environment variable that turns fault injection on (value `1`).
pub const ENV: &str = "ACTOR_INFER_FAULT_INJECTION";
/// A text that makes the model worker running its batch hang (forever, until the abort).
pub const HANG_TEXT: &str = "__actor_infer_fault:worker_hang__";
/// A text that makes the model worker running its batch take [`SLOW_FOR`] longer (a long
/// forward, for deadline and disconnect tests).
pub const SLOW_TEXT: &str = "__actor_infer_fault:worker_slow__";
/// How long [`SLOW_TEXT`] holds its worker.
pub const SLOW_FOR: std::time::Duration = std::time::Duration::from_secs(2);
/// A text that makes the model worker running its batch panic.
pub const PANIC_TEXT: &str = "__actor_infer_fault:worker_panic__";
/// A text that makes the tokenizer panic.
pub const TOKENIZER_PANIC_TEXT: &str = "__actor_infer_fault:tokenizer_panic__";

/// An injected fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The worker never returns from the forward.
    WorkerHang,
    /// The worker takes [`SLOW_FOR`] longer over the forward.
    WorkerSlow,
    /// The worker panics inside the forward.
    WorkerPanic,
    /// The tokenizer panics.
    TokenizerPanic,
}

/// Whether fault injection is on (read once): only in a build with the `fault-injection`
/// feature (the tests'), and then only when the process starts with [`ENV`]`=1`.
pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    cfg!(feature = "fault-injection")
        && *ON.get_or_init(|| std::env::var(ENV).is_ok_and(|v| v == "1"))
}

/// The fault `text` asks for, if injection is on.
pub fn detect(text: &str) -> Option<Fault> {
    if !enabled() {
        return None;
    }
    match text {
        HANG_TEXT => Some(Fault::WorkerHang),
        PANIC_TEXT => Some(Fault::WorkerPanic),
        SLOW_TEXT => Some(Fault::WorkerSlow),
        TOKENIZER_PANIC_TEXT => Some(Fault::TokenizerPanic),
        _ => None,
    }
}
