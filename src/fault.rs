//! Fault injection for tests: compiled in only with the `fault-injection` feature (what
//! `make test` builds), off unless the process starts with `ACTOR_INFER_FAULT_INJECTION=1`, and
//! then only triggered by exact magic texts. This is the one place that says which text
//! triggers which fault; the actors only ask [`detect`] and act on the [`Fault`] it names.

use std::sync::OnceLock;

/// The environment variable that turns fault injection on (value `1`).
pub const ENV: &str = "ACTOR_INFER_FAULT_INJECTION";

/// How long [`Fault::WorkerSlow`] holds its worker.
pub const SLOW_FOR: std::time::Duration = std::time::Duration::from_secs(2);

/// An injected fault, and the text that asks for it ([`Fault::text`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The model worker running the batch never returns from the forward (as if stuck inside
    /// a libtorch call): only the stop's hard abort ends it.
    WorkerHang,
    /// The model worker running the batch takes [`SLOW_FOR`] longer (deadline and disconnect
    /// tests).
    WorkerSlow,
    /// The model worker panics inside the forward (a bug: the worker is restarted).
    WorkerPanic,
    /// libtorch returns an error inside the forward (a real one, from a bad reshape): the
    /// batch fails, the worker goes on.
    TorchError,
    /// The tokenizer panics.
    TokenizerPanic,
    /// The Router panics while queueing the request.
    RouterPanic,
    /// The Supervisor panics (the Router forwards the fault to it).
    SupervisorPanic,
    /// The Metrics actor panics (the Router forwards the fault to it).
    MetricsPanic,
}

impl Fault {
    /// Every fault.
    pub const ALL: [Fault; 8] = [
        Fault::WorkerHang,
        Fault::WorkerSlow,
        Fault::WorkerPanic,
        Fault::TorchError,
        Fault::TokenizerPanic,
        Fault::RouterPanic,
        Fault::SupervisorPanic,
        Fault::MetricsPanic,
    ];

    /// The text that triggers this fault.
    pub const fn text(self) -> &'static str {
        match self {
            Fault::WorkerHang => "__actor_infer_fault:worker_hang__",
            Fault::WorkerSlow => "__actor_infer_fault:worker_slow__",
            Fault::WorkerPanic => "__actor_infer_fault:worker_panic__",
            Fault::TorchError => "__actor_infer_fault:torch_error__",
            Fault::TokenizerPanic => "__actor_infer_fault:tokenizer_panic__",
            Fault::RouterPanic => "__actor_infer_fault:router_panic__",
            Fault::SupervisorPanic => "__actor_infer_fault:supervisor_panic__",
            Fault::MetricsPanic => "__actor_infer_fault:metrics_panic__",
        }
    }
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
    Fault::ALL.into_iter().find(|f| f.text() == text)
}
