//! Metric names, Prometheus style: one namespace, `_total` counters, `_seconds` durations.

/// Prefix of every metric.
pub const NAMESPACE: &str = "actor_infer";
/// Requests answered, by transport and outcome (`ok` or an `error_type`).
pub const REQUESTS_TOTAL: &str = "requests_total";
/// Per-stage latency; label `stage`: tokenize, queue, inference, handoff, total.
pub const STAGE_SECONDS: &str = "stage_duration_seconds";
/// Texts per forward.
pub const BATCH_SIZE: &str = "batch_size";
/// Padded tokens per forward.
pub const BATCH_TOKENS: &str = "batch_tokens";
/// Texts waiting for a worker.
pub const QUEUE_DEPTH: &str = "queue_depth";
/// Requests admitted and not yet done.
pub const IN_FLIGHT: &str = "in_flight_requests";
/// Texts admitted and still held (tokenizing, queued or running), counted against
/// `server.max_concurrent_requests`.
pub const ADMITTED_TEXTS: &str = "admitted_texts";
/// 1 when the model is loaded and warmed up and the server is not stopping.
pub const READY: &str = "ready";
/// 1 while a worker is inside a forward; label `worker`.
pub const WORKER_BUSY: &str = "worker_busy";
/// Actor restarts after a panic; label `actor` (tokenizer, model_worker, metrics, router,
/// supervisor; the last two stop the server).
pub const RESTARTS_TOTAL: &str = "actor_restarts_total";
/// Tokens run through the model (unpadded).
pub const TOKENS_TOTAL: &str = "tokens_total";
/// Queued texts dropped before inference; label `reason` (client_gone, deadline).
pub const SKIPPED_TOTAL: &str = "skipped_texts_total";
/// GPU memory this process holds (NVML's per-process figure); label `device`. Absent where
/// there is no NVIDIA GPU.
pub const GPU_PROCESS_MEMORY: &str = "gpu_process_memory_bytes";
/// GPU memory in use on the whole device, by every process (NVML); label `device`.
pub const GPU_DEVICE_MEMORY_USED: &str = "gpu_device_memory_used_bytes";
/// The device's memory (NVML); label `device`.
pub const GPU_DEVICE_MEMORY_TOTAL: &str = "gpu_device_memory_total_bytes";
/// Process CPU use over the last sampling interval, percent of one core.
pub const CPU_PERCENT: &str = "process_cpu_percent";
/// The version of each model serving now; label `model`.
pub const MODEL_VERSION: &str = "model_version";
/// New versions loaded by reloads; labels `model`, `outcome`.
pub const MODEL_LOADS_TOTAL: &str = "model_loads_total";
/// Reloads; label `outcome`.
pub const RELOADS_TOTAL: &str = "reloads_total";
/// Per priority: a request's wait from queued to its first forward; labels `model`,
/// `priority` (`interactive`, `batch`).
pub const PRIORITY_QUEUE_SECONDS: &str = "priority_queue_duration_seconds";
/// Per priority: a request's time from the Router accepting it to its answer.
pub const PRIORITY_REQUEST_SECONDS: &str = "priority_request_duration_seconds";
/// Per priority: texts answered.
pub const PRIORITY_TEXTS_TOTAL: &str = "priority_texts_total";
