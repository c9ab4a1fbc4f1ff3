//! The f32 linear layers' product on x86-64 CPUs with AVX-512: `y = x W^T + b` with `W` packed
//! once, at load, into panels of 32 output columns (`[k][32]` each, contiguous), so that a
//! product streams every weight exactly once, in order, whatever the number of rows.
//!
//! Why not libtorch's (MKL's) product: a batch-1 forward of a small encoder is a few rows times
//! tens of MB of weights, and how fast the weights stream from memory decides its time. MKL reads
//! all-MiniLM-L6-v2's 24 matrices (42.5 MB) at 14–15 GB/s with 2 threads at 14 rows, in any of
//! the forms libtorch offers (`linear`, `addmm` on `W^T`, MKL's own packed form, oneDNN's);
//! ONNX Runtime's MLAS, whose packed panels this copies, at 20 GB/s; this kernel at 22–25 GB/s.
//! At hundreds of rows every one of them is compute-bound at about 100 GFLOP/s per core, this
//! one included. README "Performance" has the measurements and the commands.
//!
//! The kernel keeps up to 14 rows × 32 columns of the result in 28 AVX-512 registers, starting
//! from the bias, and adds one rank-1 update per input feature: two 16-float loads of the panel,
//! one broadcast per row, two FMAs per row. Rows beyond 14 are done in further blocks over the
//! same panel while it is still in cache. Before the registers are stored, an [`Epilogue`] may
//! apply the layer's activation (GELU with the exact erf, ReLU) or add a residual: the value is
//! still in a register, so the encoder skips a separate libtorch call (GELU's goes through
//! oneDNN's per-call set-up) and a pass over the output per use. Threads split the panels between them through
//! libgomp's `GOMP_parallel`, the OpenMP runtime and thread team libtorch itself uses, so the
//! product shares libtorch's threads instead of competing with them.

use tch::{Kind, TchError, Tensor};

/// Output columns per panel: two AVX-512 vectors.
const PANEL: usize = 32;
/// Most rows one call of the kernel keeps in registers (2 × 14 accumulators of 32).
const ROWS: usize = 14;

/// One 64-byte line of a panel: the packed weights are cache-line aligned.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([f32; 16]);

/// What [`PanelLinear::forward_then`] does to each result before storing it.
#[derive(Clone, Copy)]
pub enum Epilogue<'a> {
    /// Nothing: `x W^T + b`.
    None,
    /// GELU with the exact erf (transformers' `gelu`): `0.5 y (1 + erf(y / sqrt 2))`, erf by a
    /// rational approximation good to a few f32 ulps (see [`gelu_erf`]).
    GeluErf,
    /// `max(y, 0)`.
    Relu,
    /// Adds a tensor of the output's shape, f32 on the CPU: a residual connection.
    Add(&'a Tensor),
}

/// [`Epilogue`] as the kernel takes it: `Add`'s pointer is at the block's first element.
#[derive(Clone, Copy)]
enum Epi {
    None,
    Gelu,
    Relu,
    Add(*const f32),
}

/// A linear layer packed for [`PanelLinear::forward`].
pub struct PanelLinear {
    /// `n / 32` panels of `k × 32` floats: panel `j`, row `i` holds `W[32j..32j+32][i]`.
    panels: Vec<Line>,
    /// `[n]`.
    bias: Vec<f32>,
    /// Input features.
    k: usize,
    /// Output features, a multiple of 32.
    n: usize,
}

impl PanelLinear {
    /// Packs `weight` `[out, in]` with `bias` `[out]`, both f32 on the CPU. `None` where the
    /// kernel cannot run: a CPU without AVX-512, another dtype or device, or `out` not a
    /// multiple of 32 (the caller then uses libtorch's product).
    pub fn new(weight: &Tensor, bias: &Tensor) -> Option<Result<PanelLinear, TchError>> {
        if !available()
            || weight.kind() != Kind::Float
            || weight.device() != tch::Device::Cpu
            || bias.kind() != Kind::Float
        {
            return None;
        }
        let (n, k) = weight.size2().ok()?;
        let (n, k) = (usize::try_from(n).ok()?, usize::try_from(k).ok()?);
        if n == 0 || k == 0 || n % PANEL != 0 || bias.size() != [n as i64] {
            return None;
        }
        Some((|| {
            let w = Vec::<f32>::try_from(weight.f_contiguous()?.f_flatten(0, -1)?)?;
            let bias = Vec::<f32>::try_from(bias.f_contiguous()?)?;
            let mut panels = vec![Line([0.0; 16]); n * k / 16];
            for j in 0..n / PANEL {
                for i in 0..k {
                    for c in 0..PANEL {
                        let at = (j * k + i) * PANEL + c;
                        panels[at / 16].0[at % 16] = w[(j * PANEL + c) * k + i];
                    }
                }
            }
            Ok(PanelLinear { panels, bias, k, n })
        })())
    }

    /// `x` `[..., in]` (f32, CPU) to `[..., out]`, with as many threads as libtorch's intra-op
    /// setting on this thread.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor, TchError> {
        self.forward_then(x, Epilogue::None)
    }

    /// [`PanelLinear::forward`], then `then` on each result while it is in a register.
    pub fn forward_then(&self, x: &Tensor, then: Epilogue) -> Result<Tensor, TchError> {
        let mut shape = x.size();
        if x.kind() != Kind::Float
            || x.device() != tch::Device::Cpu
            || shape.last() != Some(&(self.k as i64))
        {
            return Err(TchError::Shape(format!(
                "a packed linear layer takes f32 [..., {}] on the CPU, not {:?} {shape:?} on {:?}",
                self.k,
                x.kind(),
                x.device()
            )));
        }
        let x = x.f_contiguous()?;
        let m = x.numel() / self.k;
        let out = Tensor::f_empty([m as i64, self.n as i64], (Kind::Float, tch::Device::Cpu))?;
        // The residual, contiguous and alive until the product returns.
        let residual = match then {
            Epilogue::Add(r) => {
                if r.kind() != Kind::Float
                    || r.device() != tch::Device::Cpu
                    || r.numel() != m * self.n
                {
                    return Err(TchError::Shape(format!(
                        "a residual for a [{m}, {}] product must be f32 on the CPU with {} \
                         elements, not {:?} {:?} on {:?}",
                        self.n,
                        m * self.n,
                        r.kind(),
                        r.size(),
                        r.device()
                    )));
                }
                Some(r.f_contiguous()?)
            }
            _ => None,
        };
        let job = Job {
            layer: self,
            x: x.data_ptr() as *const f32,
            out: out.data_ptr() as *mut f32,
            m,
            epi: match (then, &residual) {
                (Epilogue::GeluErf, _) => Epi::Gelu,
                (Epilogue::Relu, _) => Epi::Relu,
                (Epilogue::Add(_), Some(r)) => Epi::Add(r.data_ptr() as *const f32),
                _ => Epi::None,
            },
        };
        let threads = usize::try_from(tch::get_num_threads()).unwrap_or(1).max(1);
        match gomp() {
            // One panel per thread at least; a single thread needs no team.
            Some(g) if threads > 1 && self.n / PANEL > 1 => {
                let threads = threads.min(self.n / PANEL) as u32;
                // SAFETY: `run_job` reads `job` only during this call (GOMP_parallel returns when
                // every thread of the team has finished), through a shared reference.
                unsafe {
                    (g.parallel)(run_job, &job as *const Job as *mut libc::c_void, threads, 0);
                }
            }
            _ => job.panels(0..self.n / PANEL),
        }
        *shape
            .last_mut()
            .expect("a linear layer's input has a last dimension") = self.n as i64;
        out.f_view(shape.as_slice())
    }
}

/// One product, shared by the threads of a team: each computes its own panels, that is its own
/// columns of `out`, so no two threads write the same element.
struct Job<'a> {
    layer: &'a PanelLinear,
    /// `m × k` contiguous f32, alive for the call (the caller holds the tensor).
    x: *const f32,
    /// `m × n` contiguous f32, written only here.
    out: *mut f32,
    m: usize,
    /// `Add`'s pointer: `m × n` contiguous f32, alive for the call, only read.
    epi: Epi,
}

impl Job<'_> {
    /// Columns `32 × panels` of every row.
    fn panels(&self, panels: std::ops::Range<usize>) {
        let l = self.layer;
        for j in panels {
            let mut row = 0;
            while row < self.m {
                let rows = (self.m - row).min(ROWS);
                // SAFETY: row block [row, row + rows) and panel j lie inside x (m × k), the
                // packed weights (n / 32 panels of k × 32), the bias (n), out and the residual
                // (m × n each); the kernel runs only where `available()` found AVX-512.
                unsafe {
                    block(
                        rows,
                        self.x.add(row * l.k),
                        l.k,
                        l.panels.as_ptr().add(j * l.k * PANEL / 16) as *const f32,
                        l.bias.as_ptr().add(j * PANEL),
                        self.out.add(row * l.n + j * PANEL),
                        l.n,
                        match self.epi {
                            Epi::Add(r) => Epi::Add(r.add(row * l.n + j * PANEL)),
                            e => e,
                        },
                    );
                }
                row += rows;
            }
        }
    }
}

/// A team thread's share: panels split evenly by thread number.
extern "C" fn run_job(data: *mut libc::c_void) {
    let g = gomp().expect("run only through GOMP_parallel");
    // SAFETY: `data` is the `Job` that `forward` lends for the duration of GOMP_parallel.
    let job = unsafe { &*(data as *const Job) };
    // SAFETY: plain queries of the OpenMP runtime, inside a parallel region.
    let (t, nt) = unsafe { ((g.thread_num)() as usize, (g.num_threads)().max(1) as usize) };
    let panels = job.layer.n / PANEL;
    job.panels(panels * t / nt..panels * (t + 1) / nt);
}

/// libgomp's entry points, looked up once (absent where libtorch was not built with libgomp).
struct Gomp {
    parallel: unsafe extern "C" fn(extern "C" fn(*mut libc::c_void), *mut libc::c_void, u32, u32),
    thread_num: unsafe extern "C" fn() -> i32,
    num_threads: unsafe extern "C" fn() -> i32,
}

fn gomp() -> Option<&'static Gomp> {
    static GOMP: std::sync::OnceLock<Option<Gomp>> = std::sync::OnceLock::new();
    GOMP.get_or_init(|| {
        let find = |name: &std::ffi::CStr| {
            // SAFETY: dlsym with the default scope and a NUL-terminated name.
            let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
            (!p.is_null()).then_some(p)
        };
        let (p, t, n) = (
            find(c"GOMP_parallel")?,
            find(c"omp_get_thread_num")?,
            find(c"omp_get_num_threads")?,
        );
        type Parallel =
            unsafe extern "C" fn(extern "C" fn(*mut libc::c_void), *mut libc::c_void, u32, u32);
        type Query = unsafe extern "C" fn() -> i32;
        // SAFETY: libgomp's ABI: `void GOMP_parallel(void (*)(void *), void *, unsigned,
        // unsigned)`, `int omp_get_thread_num(void)`, `int omp_get_num_threads(void)`.
        unsafe {
            Some(Gomp {
                parallel: std::mem::transmute::<*mut libc::c_void, Parallel>(p),
                thread_num: std::mem::transmute::<*mut libc::c_void, Query>(t),
                num_threads: std::mem::transmute::<*mut libc::c_void, Query>(n),
            })
        }
    })
    .as_ref()
}

/// Whether this CPU runs the kernel.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// `rows` (1..=14) rows of `out` over one panel: `out[r][0..32] = epi(bias + x[r] · panel)`.
///
/// # Safety
/// AVX-512F must be available; `x` must hold `rows × k` floats with rows `k` apart, `panel`
/// `k × 32`, `bias` 32, `out` (and `epi`'s residual) `rows` rows of 32 floats `ldc` apart.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
unsafe fn block(
    rows: usize,
    x: *const f32,
    k: usize,
    panel: *const f32,
    bias: *const f32,
    out: *mut f32,
    ldc: usize,
    epi: Epi,
) {
    macro_rules! rows {
        ($($r:literal)*) => {
            match rows {
                // SAFETY: as this function's.
                $($r => unsafe { kernel::<$r>(x, k, panel, bias, out, ldc, epi) },)*
                _ => unreachable!("row blocks are 1 to {ROWS} rows"),
            }
        };
    }
    rows!(1 2 3 4 5 6 7 8 9 10 11 12 13 14)
}

#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
unsafe fn block(
    _: usize,
    _: *const f32,
    _: usize,
    _: *const f32,
    _: *const f32,
    _: *mut f32,
    _: usize,
    _: Epi,
) {
    unreachable!("PanelLinear::new returns None off x86-64")
}

/// The kernel for `R` rows; see [`block`]. The input's rows are `k` apart.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn kernel<const R: usize>(
    x: *const f32,
    k: usize,
    panel: *const f32,
    bias: *const f32,
    out: *mut f32,
    ldc: usize,
    epi: Epi,
) {
    use std::arch::x86_64::*;
    // SAFETY: every pointer stays inside the ranges the caller vouches for.
    unsafe {
        let b0 = _mm512_loadu_ps(bias);
        let b1 = _mm512_loadu_ps(bias.add(16));
        let mut acc = [[b0, b1]; R];
        let mut p = panel;
        for i in 0..k {
            let w0 = _mm512_load_ps(p);
            let w1 = _mm512_load_ps(p.add(16));
            for (r, a) in acc.iter_mut().enumerate() {
                let v = _mm512_set1_ps(*x.add(r * k + i));
                a[0] = _mm512_fmadd_ps(v, w0, a[0]);
                a[1] = _mm512_fmadd_ps(v, w1, a[1]);
            }
            p = p.add(PANEL);
        }
        for (r, a) in acc.iter().enumerate() {
            let (y0, y1) = match epi {
                Epi::None => (a[0], a[1]),
                Epi::Gelu => (gelu_erf(a[0]), gelu_erf(a[1])),
                Epi::Relu => {
                    let zero = _mm512_setzero_ps();
                    (_mm512_max_ps(a[0], zero), _mm512_max_ps(a[1], zero))
                }
                Epi::Add(res) => (
                    _mm512_add_ps(a[0], _mm512_loadu_ps(res.add(r * ldc))),
                    _mm512_add_ps(a[1], _mm512_loadu_ps(res.add(r * ldc + 16))),
                ),
            };
            _mm512_storeu_ps(out.add(r * ldc), y0);
            _mm512_storeu_ps(out.add(r * ldc + 16), y1);
        }
    }
}

/// GELU with the exact erf on 16 floats: `0.5 y (1 + erf(y / sqrt 2))`. erf is the rational
/// approximation on [-4, 4] that Eigen, XLA and TVM use for f32 (odd numerator of degree 13
/// over an even denominator of degree 8; beyond ±4 erf is ±1 in f32); against libm's erf in
/// f64 the GELU differs by under 1e-6 of `max(1, |y|)` (the unit test checks it), below the
/// f32 rounding of the products it follows.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
#[allow(clippy::excessive_precision)]
fn gelu_erf(y: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let c = _mm512_set1_ps;
    let x = _mm512_mul_ps(y, c(std::f32::consts::FRAC_1_SQRT_2));
    let x = _mm512_min_ps(_mm512_max_ps(x, c(-4.0)), c(4.0));
    let x2 = _mm512_mul_ps(x, x);
    let mut p = _mm512_fmadd_ps(x2, c(-2.72614225801306e-10), c(2.77068142495902e-08));
    for a in [
        -2.10102402082508e-06,
        -5.69250639462346e-05,
        -7.34990630326855e-04,
        -2.95459980854025e-03,
        -1.60960333262415e-02,
    ] {
        p = _mm512_fmadd_ps(x2, p, c(a));
    }
    let p = _mm512_mul_ps(x, p);
    let mut q = _mm512_fmadd_ps(x2, c(-1.45660718464996e-05), c(-2.13374055278905e-04));
    for b in [
        -1.68282697438203e-03,
        -7.37332916720468e-03,
        -1.42647390514189e-02,
    ] {
        q = _mm512_fmadd_ps(x2, q, c(b));
    }
    let erf = _mm512_div_ps(p, q);
    _mm512_mul_ps(_mm512_mul_ps(c(0.5), y), _mm512_add_ps(c(1.0), erf))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Largest difference from libtorch's `linear`, the reference.
    fn worst(p: &PanelLinear, x: &Tensor, w: &Tensor, b: &Tensor) -> f64 {
        let want = x.linear(w, Some(b));
        let got = p.forward(x).unwrap();
        assert_eq!(got.size(), want.size());
        if want.numel() == 0 {
            return 0.0;
        }
        f64::try_from((&got - &want).abs().max()).unwrap()
    }

    #[test]
    fn the_panel_product_is_libtorchs_linear_for_every_shape_the_server_uses() {
        if !available() {
            eprintln!("no AVX-512 here: the kernel is not used, nothing to compare");
            return;
        }
        tch::manual_seed(3);
        let opts = (Kind::Float, tch::Device::Cpu);
        // Toy shapes; MiniLM's four (fused QKV, attention output, intermediate, output); BERT
        // base's intermediate.
        for (n, k) in [
            (64, 40),
            (96, 32),
            (32, 1),
            (1152, 384),
            (384, 384),
            (1536, 384),
            (384, 1536),
            (3072, 768),
        ] {
            let w = Tensor::randn([n, k], opts);
            let b = Tensor::randn([n], opts);
            let p = PanelLinear::new(&w, &b)
                .expect("AVX-512 and n % 32 == 0")
                .unwrap();
            // Row counts around the 14-row blocks, a batch of short texts, a long padded batch.
            let rows: &[i64] = if n * k > 1_000_000 {
                &[1, 13, 14, 15, 29, 384, 1000]
            } else {
                &[0, 1, 2, 13, 14, 15, 28, 29, 100, 4096]
            };
            // f32 sums of k products: the kernel adds in another order than MKL.
            let tol = 4e-5 * (k as f64).sqrt();
            for threads in [1, 2, 3] {
                tch::set_num_threads(threads);
                for &m in rows {
                    let x = Tensor::randn([m, k], opts);
                    let d = worst(&p, &x, &w, &b);
                    assert!(d < tol, "n {n} k {k} m {m} threads {threads}: {d}");
                }
                // Leading dimensions are kept, and a strided input (a transposed view, a
                // slice with an offset) reads the right elements.
                let x3 = Tensor::randn([3, 5, k], opts);
                assert_eq!(p.forward(&x3).unwrap().size(), [3, 5, n]);
                let xt = Tensor::randn([k, 7], opts).tr();
                assert!(worst(&p, &xt, &w, &b) < tol);
                let xs = Tensor::randn([9, k + 3], opts).narrow(1, 3, k);
                assert!(worst(&p, &xs, &w, &b) < tol);
            }
        }
        // What it does not take, it says.
        let w = Tensor::randn([64, 8], opts);
        let p = PanelLinear::new(&w, &Tensor::zeros([64], opts))
            .unwrap()
            .unwrap();
        let err = p.forward(&Tensor::zeros([2, 9], opts)).unwrap_err();
        assert!(err.to_string().contains("[..., 8]"), "{err}");
        assert!(
            p.forward(&Tensor::zeros([2, 8], (Kind::Double, tch::Device::Cpu)))
                .is_err()
        );
        assert!(
            PanelLinear::new(&Tensor::randn([40, 8], opts), &Tensor::zeros([40], opts)).is_none(),
            "40 outputs: not whole panels"
        );
        let bf16 = Tensor::randn([64, 8], opts).to_kind(Kind::BFloat16);
        assert!(
            PanelLinear::new(
                &bf16,
                &Tensor::zeros([64], (Kind::BFloat16, tch::Device::Cpu))
            )
            .is_none(),
            "bf16 stays libtorch's"
        );
    }

    #[test]
    fn each_epilogue_is_libtorchs_op_on_the_product() {
        if !available() {
            return;
        }
        let opts = (Kind::Float, tch::Device::Cpu);
        // MiniLM's intermediate (GELU follows it) and output (a residual follows it).
        for (n, k) in [(1536, 384), (384, 1536), (64, 40)] {
            let w = Tensor::randn([n, k], opts) * 0.05;
            let b = Tensor::randn([n], opts);
            let p = PanelLinear::new(&w, &b).unwrap().unwrap();
            let tol = 4e-5 * (k as f64).sqrt();
            for threads in [1, 2] {
                tch::set_num_threads(threads);
                for m in [1i64, 13, 14, 15, 100] {
                    let x = Tensor::randn([m, k], opts);
                    let plain = x.linear(&w, Some(&b));
                    let d = |got: Tensor, want: Tensor| {
                        assert_eq!(got.size(), want.size());
                        f64::try_from((got - want).abs().max()).unwrap()
                    };
                    let gelu = p.forward_then(&x, Epilogue::GeluErf).unwrap();
                    let e = d(gelu, plain.gelu("none"));
                    assert!(e < tol, "GELU n {n} k {k} m {m}: {e}");
                    let relu = p.forward_then(&x, Epilogue::Relu).unwrap();
                    let e = d(relu, plain.relu());
                    assert!(e < tol, "ReLU n {n} k {k} m {m}: {e}");
                    // A residual in the [b, l, n] shape the encoder passes.
                    let r = Tensor::randn([1, m, n], opts);
                    let added = p.forward_then(&x, Epilogue::Add(&r)).unwrap();
                    let e = d(added, &plain + r.view([m, n]));
                    assert!(e < tol, "residual n {n} k {k} m {m}: {e}");
                }
            }
        }
        // A residual of another size is refused, naming the sizes.
        let w = Tensor::randn([64, 8], opts);
        let p = PanelLinear::new(&w, &Tensor::zeros([64], opts))
            .unwrap()
            .unwrap();
        let err = p
            .forward_then(
                &Tensor::zeros([2, 8], opts),
                Epilogue::Add(&Tensor::zeros([2, 63], opts)),
            )
            .unwrap_err();
        assert!(err.to_string().contains("128 elements"), "{err}");
    }

    #[test]
    fn the_gelu_is_the_exact_erf_one_to_a_millionth() {
        if !available() {
            return;
        }
        // y = x · 1 + 0 in every column: the kernel's GELU of each x, against libtorch's GELU
        // in f64 (libm's erf).
        let opts = (Kind::Float, tch::Device::Cpu);
        let p = PanelLinear::new(&Tensor::ones([32, 1], opts), &Tensor::zeros([32], opts))
            .unwrap()
            .unwrap();
        let x = Tensor::linspace(-12.0, 12.0, 24_001, opts).view([-1, 1]);
        let got = p.forward_then(&x, Epilogue::GeluErf).unwrap().select(1, 17);
        let want = x.to_kind(Kind::Double).gelu("none").view([-1]);
        let scale = x.to_kind(Kind::Double).abs().clamp_min(1.0).view([-1]);
        let err = f64::try_from(((got.to_kind(Kind::Double) - want).abs() / scale).max()).unwrap();
        assert!(err < 1e-6, "relative to max(1, |x|): {err}");
    }

    #[test]
    fn layers_run_at_once_on_several_threads_each_with_its_own_team() {
        // Several model instances (one model worker thread each) share no state: each product
        // opens its own OpenMP team from the thread that runs it.
        if !available() {
            return;
        }
        tch::manual_seed(5);
        let opts = (Kind::Float, tch::Device::Cpu);
        // The packed layers are shared by every thread; the reference weights (tensors are Send,
        // not Sync) are each thread's own handles on the same storage.
        let weights: Vec<(Tensor, Tensor)> = (0..2)
            .map(|_| (Tensor::randn([384, 384], opts), Tensor::randn([384], opts)))
            .collect();
        let packed: std::sync::Arc<Vec<PanelLinear>> = std::sync::Arc::new(
            weights
                .iter()
                .map(|(w, b)| PanelLinear::new(w, b).unwrap().unwrap())
                .collect(),
        );
        let workers: Vec<_> = (0..4)
            .map(|t| {
                let packed = packed.clone();
                let weights: Vec<(Tensor, Tensor)> = weights
                    .iter()
                    .map(|(w, b)| (w.shallow_clone(), b.shallow_clone()))
                    .collect();
                std::thread::spawn(move || {
                    tch::set_num_threads(2);
                    let mut d: f64 = 0.0;
                    for i in 0..50 {
                        let (w, b) = &weights[(t + i) % 2];
                        let x = Tensor::randn([1 + (i as i64 % 40), 384], opts);
                        d = d.max(worst(&packed[(t + i) % 2], &x, w, b));
                    }
                    d
                })
            })
            .collect();
        for w in workers {
            let d = w.join().unwrap();
            assert!(d < 1e-3, "{d}");
        }
    }
}
