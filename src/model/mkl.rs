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

    #[test]
    fn mkls_packed_product_is_libtorchs_linear() {
        use tch::{Kind, Tensor};
        tch::manual_seed(7);
        let opts = (Kind::Float, tch::Device::Cpu);
        let (w, b) = (Tensor::randn([96, 40], opts), Tensor::randn([96], opts));
        let Some(p) = super::PackedLinear::new(&w, b.shallow_clone()) else {
            eprintln!("this libtorch has no MKL: nothing to compare");
            return;
        };
        let p = p.unwrap();
        // One row (one token) too: the bias must come out as it went in.
        for shape in [
            [1, 1, 40],
            [2, 1, 40],
            [2, 13, 40],
            [2, 100, 40],
            [1, 1, 40],
        ] {
            let x = Tensor::randn(shape, opts);
            let d = f64::try_from(
                (p.forward(&x).unwrap() - x.linear(&w, Some(&b)))
                    .abs()
                    .max(),
            )
            .unwrap();
            assert!(d < 1e-4, "{shape:?}: {d}");
        }
        assert!(p.forward(&Tensor::zeros([2, 41], opts)).is_err());
    }
}

use std::os::raw::c_int;

/// MKL's packed single-precision GEMM (`cblas_sgemm_pack` / `cblas_sgemm_compute`), exported by
/// the x86-64 builds of `libtorch_cpu.so` that link MKL; what libtorch's own `mkl::_mkl_linear`
/// calls, which tch does not expose. Looked up once at run time (`None` where the library has
/// no MKL: macOS, aarch64), so nothing links against it.
struct Sgemm {
    pack_get_size: PackGetSize,
    pack: Pack,
    compute: Compute,
}

/// `size_t cblas_sgemm_pack_get_size(identifier, m, n, k)`.
type PackGetSize = unsafe extern "C" fn(c_int, c_int, c_int, c_int) -> usize;
/// `void cblas_sgemm_pack(layout, identifier, trans, m, n, k, alpha, src, ld, dest)`.
type Pack = unsafe extern "C" fn(
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    f32,
    *const f32,
    c_int,
    *mut f32,
);
/// `void cblas_sgemm_compute(layout, transa, transb, m, n, k, a, lda, b, ldb, beta, c, ldc)`.
type Compute = unsafe extern "C" fn(
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    *const f32,
    c_int,
    *const f32,
    c_int,
    f32,
    *mut f32,
    c_int,
);

// CBLAS's constants (mkl_cblas.h).
const ROW_MAJOR: c_int = 101;
const NO_TRANS: c_int = 111;
const TRANS: c_int = 112;
const PACKED: c_int = 151;
const B_MATRIX: c_int = 162;

fn sgemm() -> Option<&'static Sgemm> {
    static SGEMM: std::sync::OnceLock<Option<Sgemm>> = std::sync::OnceLock::new();
    SGEMM
        .get_or_init(|| {
            let find = |name: &std::ffi::CStr| {
                // SAFETY: dlsym with the default scope and a NUL-terminated name.
                let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
                (!p.is_null()).then_some(p)
            };
            let (size, pack, compute) = (
                find(c"cblas_sgemm_pack_get_size")?,
                find(c"cblas_sgemm_pack")?,
                find(c"cblas_sgemm_compute")?,
            );
            // SAFETY: the three symbols are MKL's, with the C signatures of mkl_cblas.h (LP64:
            // MKL_INT is a C int in these, the non-`_64` entry points).
            unsafe {
                Some(Sgemm {
                    pack_get_size: std::mem::transmute::<*mut libc::c_void, PackGetSize>(size),
                    pack: std::mem::transmute::<*mut libc::c_void, Pack>(pack),
                    compute: std::mem::transmute::<*mut libc::c_void, Compute>(compute),
                })
            }
        })
        .as_ref()
}

/// A linear layer's weight packed once, at load, in MKL's internal layout, so that a product
/// reads it in place: `y = x W^T + b` with one `cblas_sgemm_compute`. libtorch's `linear` gives
/// MKL the weight as a transposed matrix, which MKL copies (packs) on every call: at a few rows
/// (one short text) that copy costs more than the product (README "Performance"). The packed
/// form does not depend on the number of rows, so one serves every batch.
pub struct PackedLinear {
    /// MKL's packed `W^T`; its address must not change (MKL's rule), and a tensor's storage
    /// never moves.
    packed: tch::Tensor,
    bias: tch::Tensor,
    /// Input features.
    k: i64,
    /// Output features.
    n: i64,
}

impl PackedLinear {
    /// Packs `weight` `[out, in]` (f32, CPU) with `bias` `[out]`; `None` where this libtorch has
    /// no MKL or the shapes do not fit MKL's 32-bit sizes (the caller then uses libtorch's own
    /// product).
    pub fn new(
        weight: &tch::Tensor,
        bias: tch::Tensor,
    ) -> Option<Result<PackedLinear, tch::TchError>> {
        let s = sgemm()?;
        let (n, k) = weight.size2().ok()?;
        if weight.kind() != tch::Kind::Float
            || weight.device() != tch::Device::Cpu
            || c_int::try_from(n.max(k)).is_err()
        {
            return None;
        }
        Some((|| {
            let weight = weight.f_contiguous()?;
            // SAFETY: plain arithmetic on the sizes.
            let bytes = unsafe { (s.pack_get_size)(B_MATRIX, 1, n as c_int, k as c_int) };
            let floats = (bytes / 4 + 16) as i64;
            let packed = tch::Tensor::f_empty([floats], (tch::Kind::Float, tch::Device::Cpu))?;
            // SAFETY: `weight` is a contiguous f32 [n, k] matrix (op(B) = W^T is k × n, so
            // `TRANS` with leading dimension k), and `packed` holds the `bytes` MKL asked for.
            unsafe {
                (s.pack)(
                    ROW_MAJOR,
                    B_MATRIX,
                    TRANS,
                    1,
                    n as c_int,
                    k as c_int,
                    1.0,
                    weight.data_ptr() as *const f32,
                    k as c_int,
                    packed.data_ptr() as *mut f32,
                );
            }
            Ok(PackedLinear {
                packed,
                bias: bias.f_contiguous()?,
                k,
                n,
            })
        })())
    }

    /// `x` `[..., in]` (f32, CPU) to `[..., out]`.
    pub fn forward(&self, x: &tch::Tensor) -> Result<tch::Tensor, tch::TchError> {
        let s = sgemm().expect("a PackedLinear exists only where MKL was found");
        let mut shape = x.size();
        if x.kind() != tch::Kind::Float
            || x.device() != tch::Device::Cpu
            || shape.last() != Some(&self.k)
        {
            return Err(tch::TchError::Shape(format!(
                "a packed linear layer takes f32 [..., {}] on the CPU, not {:?} {shape:?} on {:?}",
                self.k,
                x.kind(),
                x.device()
            )));
        }
        let x = x.f_contiguous()?;
        let m = x.numel() as i64 / self.k.max(1);
        let m_int = c_int::try_from(m).map_err(|_| {
            tch::TchError::Shape(format!("{m} rows are more than MKL's 32-bit sizes"))
        })?;
        // The bias in every row, then C := x W^T + C. A fresh tensor: `contiguous` of the
        // expanded bias would be the bias itself at one row, and MKL would write into it.
        let mut out = tch::Tensor::f_empty([m, self.n], (tch::Kind::Float, tch::Device::Cpu))?;
        out.f_copy_(&self.bias.f_expand([m, self.n], false)?)?;
        // SAFETY: `x` is a contiguous f32 [m, k] matrix, `packed` is W^T packed by `new` for
        // these k and n, `out` is a contiguous f32 [m, n] matrix this call owns; MKL writes
        // only `out`.
        unsafe {
            (s.compute)(
                ROW_MAJOR,
                NO_TRANS,
                PACKED,
                m_int,
                self.n as c_int,
                self.k as c_int,
                x.data_ptr() as *const f32,
                self.k as c_int,
                self.packed.data_ptr() as *const f32,
                self.n as c_int,
                1.0,
                out.data_ptr() as *mut f32,
                self.n as c_int,
            );
        }
        *shape
            .last_mut()
            .expect("a linear layer's input has a last dimension") = self.n;
        out.f_view(shape.as_slice())
    }
}
