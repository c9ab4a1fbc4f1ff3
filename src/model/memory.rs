//! The process's heap, kept small (docs/cpu-forward.md "Resident memory").
//!
//! glibc gives each thread that allocates its own arena, up to 8 per core; an arena keeps what
//! its thread freed for reuse by that thread. The server's threads that allocate (HTTP and gRPC
//! workers, tokenizers, the model worker, libtorch's OpenMP team) would each hold their own
//! high-water mark of freed requests and activations. Two arenas measured 20–25 MiB less
//! resident memory after `make bench`'s load, at no throughput cost within the noise.

/// Caps glibc's malloc arenas at 2, unless `MALLOC_ARENA_MAX` says otherwise. Call it first
/// thing in `main`, before any thread starts (arenas already created stay).
pub fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only changes malloc's parameters; no other thread runs yet.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

/// Hands the heap's free pages back to the system (glibc's `malloc_trim`). Loading frees many
/// large temporaries (each layer's unpacked weight, the fused QKV before packing, libtorch's
/// conversion copies) that glibc's heap keeps resident once its mmap threshold has adapted
/// upwards; after the load nothing will reuse most of them.
pub fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory to the system; any thread may call it.
    unsafe {
        libc::malloc_trim(0);
    }
}
