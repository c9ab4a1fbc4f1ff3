//! MKL's CPU vendor check, answered by the CPU's features instead of its vendor.
//!
//! libtorch's x86-64 builds link Intel MKL (statically, inside `libtorch_cpu.so`) for f32
//! matmuls. MKL chooses its code path by first asking `mkl_serv_intel_cpu_true()` whether the
//! CPU is an Intel one: on any other CPU it runs its generic path, however capable the CPU.
//! On the project's machines (AMD EPYC, Zen 4, AVX-512) that generic path is most of a forward:
//! `perf` on a batch-1 forward of all-MiniLM-L6-v2 (issue 16) put 48% of the time in
//! `mkl_blas_def_sgemm_scopy_right16_bdz` (the generic path re-copying each weight matrix on
//! every call) and 25% in the generic sgemm kernel.
//!
//! `libtorch_cpu.so` exports that function and calls it through the PLT, so a definition in the
//! executable, exported to the dynamic symbol table (`build.rs`), takes its place. Answering
//! "yes" makes MKL choose by the CPU's features (cpuid) as it does on Intel: its AVX-512
//! kernels on Zen 4, AVX2 on Zen 2 and 3. `ACTOR_INFER_MKL_VENDOR_CHECK=1` restores MKL's own
//! rule (true on Intel CPUs only), to compare or as a way out.

/// What MKL asks; see the module's documentation.
#[cfg(target_arch = "x86_64")]
#[unsafe(no_mangle)]
pub extern "C" fn mkl_serv_intel_cpu_true() -> std::os::raw::c_int {
    static ANSWER: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let yes = *ANSWER.get_or_init(|| {
        std::env::var_os("ACTOR_INFER_MKL_VENDOR_CHECK").is_none_or(|v| v != "1") || intel()
    });
    yes.into()
}

/// Whether the CPU says it is an Intel one (cpuid leaf 0's vendor string).
#[cfg(target_arch = "x86_64")]
fn intel() -> bool {
    let r = std::arch::x86_64::__cpuid(0);
    let mut vendor = [0u8; 12];
    vendor[..4].copy_from_slice(&r.ebx.to_le_bytes());
    vendor[4..8].copy_from_slice(&r.edx.to_le_bytes());
    vendor[8..].copy_from_slice(&r.ecx.to_le_bytes());
    &vendor == b"GenuineIntel"
}

/// Whether MKL sees this executable's answer (the symbol reached the dynamic symbol table and
/// libtorch resolves to it), for the log and `/info`-style diagnostics.
pub fn vendor_check_overridden() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        // Keeps the definition linked in, whatever the linker would otherwise drop.
        std::hint::black_box(mkl_serv_intel_cpu_true as extern "C" fn() -> std::os::raw::c_int);
        // SAFETY: dlsym with the default scope and a NUL-terminated name; the address is only
        // compared, never called.
        let found = unsafe {
            libc::dlsym(
                libc::RTLD_DEFAULT,
                c"mkl_serv_intel_cpu_true".as_ptr() as *const libc::c_char,
            )
        };
        found
            == (mkl_serv_intel_cpu_true as extern "C" fn() -> std::os::raw::c_int)
                as *mut libc::c_void
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

#[cfg(all(test, target_arch = "x86_64", target_os = "linux"))]
mod tests {
    #[test]
    fn the_executable_answers_mkls_vendor_check() {
        assert!(
            super::vendor_check_overridden(),
            "build.rs exports mkl_serv_intel_cpu_true, so libtorch's MKL resolves to ours"
        );
        if std::env::var_os("ACTOR_INFER_MKL_VENDOR_CHECK").is_none() {
            assert_eq!(super::mkl_serv_intel_cpu_true(), 1);
        }
    }
}
