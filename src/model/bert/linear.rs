//! The forms of an f32 linear layer's product (README "Performance"): the AVX-512 panel kernel,
//! libtorch's `addmm` on `W^T`, MKL's packed GEMM, libtorch's `linear`.

use tch::{Kind, TchError, Tensor};

use crate::model::ModelError;

/// A linear layer `y = x W^T + b`, in the form that is fastest where the model runs (README
/// "Performance", "Where a batch-1 forward goes"); [`LinearForm`] says which.
pub(super) enum Linear {
    /// f32 on a CPU with AVX-512: the weight packed once into 32-column panels, streamed once
    /// per product by [`crate::model::gemm`]'s kernel.
    Panel(crate::model::gemm::PanelLinear),
    /// MKL's own packed form, one `cblas_sgemm_compute` per call (measured, not chosen).
    MklPacked(crate::model::mkl::PackedLinear),
    /// f32 on a CPU without AVX-512 (or a layer whose outputs are not whole panels): `W^T` kept
    /// `[in, out]` and contiguous, one `addmm(b, x, W^T)` per call. With transformers' `[out,
    /// in]` layout (what `linear` takes) MKL sees a transposed B and copies the whole weight
    /// matrix on every call.
    Addmm {
        /// `W^T`: `[in, out]`, contiguous.
        wt: Tensor,
        /// `[out]`.
        b: Tensor,
    },
    /// libtorch's `linear` on transformers' layout: bf16 and f16, and every GPU (where cuBLAS
    /// and oneDNN take the layout as it is), as before issue 24.
    Unpacked {
        /// `[out, in]`.
        w: Tensor,
        /// `[out]`.
        b: Tensor,
    },
}

/// What follows a product in the encoder: the feed-forward layer's activation, or a residual
/// connection's add (a tensor of the output's shape).
#[derive(Clone, Copy)]
pub(super) enum Then<'a> {
    GeluErf,
    GeluTanh,
    Relu,
    Add(&'a Tensor),
}

/// Which form the linear layers take. Unset `ACTOR_INFER_LINEAR` (or `auto`) picks the fastest
/// for the device and dtype; `panel`, `addmm`, `mkl-packed` or `linear` force one, to measure
/// them against each other (`bench --raw`) or to run the portable path on any CPU. A forced
/// form that cannot run here (`panel` without AVX-512, `mkl-packed` without MKL) falls back as
/// `auto` does; the start-up log names the form each model got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinearForm {
    /// The fastest here: `panel` for f32 on a CPU with AVX-512, `addmm` for f32 on other CPUs,
    /// `linear` for other dtypes and devices.
    Auto,
    /// [`crate::model::gemm`]'s packed panels and AVX-512 kernel.
    Panel,
    /// `addmm` on `W^T`, libtorch's own product: the portable f32 path.
    Addmm,
    /// MKL's packed GEMM.
    MklPacked,
    /// libtorch's `linear` on transformers' layout.
    Linear,
}

impl LinearForm {
    /// The environment variable that forces a form.
    pub const VAR: &'static str = "ACTOR_INFER_LINEAR";

    /// From `ACTOR_INFER_LINEAR`; an unknown value is an error naming the known ones.
    pub fn from_env() -> Result<LinearForm, ModelError> {
        match std::env::var(Self::VAR) {
            Err(std::env::VarError::NotPresent) => Ok(LinearForm::Auto),
            Ok(v) => match v.as_str() {
                "" | "auto" => Ok(LinearForm::Auto),
                "panel" => Ok(LinearForm::Panel),
                "addmm" => Ok(LinearForm::Addmm),
                "mkl-packed" => Ok(LinearForm::MklPacked),
                "linear" => Ok(LinearForm::Linear),
                other => Err(ModelError::Config(format!(
                    "{}={other:?} is not a form of the linear layers (auto, panel, addmm, \
                     mkl-packed, linear)",
                    Self::VAR
                ))),
            },
            Err(e) => Err(ModelError::Config(format!("{}: {e}", Self::VAR))),
        }
    }
}

impl Linear {
    /// From transformers' `weight` `[out, in]` and `bias` `[out]`, in `form` where it can run.
    pub(super) fn new(weight: Tensor, bias: Tensor, form: LinearForm) -> Result<Linear, TchError> {
        let f32_cpu = weight.kind() == Kind::Float && weight.device() == tch::Device::Cpu;
        match form {
            LinearForm::Linear => return Ok(Linear::Unpacked { w: weight, b: bias }),
            LinearForm::MklPacked => {
                if let Some(p) = crate::model::mkl::PackedLinear::new(&weight, bias.shallow_clone())
                {
                    return Ok(Linear::MklPacked(p?));
                }
            }
            LinearForm::Addmm => {}
            LinearForm::Auto | LinearForm::Panel => {
                if let Some(p) = crate::model::gemm::PanelLinear::new(&weight, &bias) {
                    return Ok(Linear::Panel(p?));
                }
                if !f32_cpu {
                    return Ok(Linear::Unpacked { w: weight, b: bias });
                }
            }
        }
        Ok(Linear::Addmm {
            wt: weight.f_t_copy()?.f_contiguous()?,
            b: bias,
        })
    }

    /// The form's name, as `ACTOR_INFER_LINEAR` spells it.
    pub(super) fn name(&self) -> &'static str {
        match self {
            Linear::Panel(_) => "panel",
            Linear::MklPacked(_) => "mkl-packed",
            Linear::Addmm { .. } => "addmm",
            Linear::Unpacked { .. } => "linear",
        }
    }

    /// `x` `[..., in]` to `[..., out]`, then `then`: in the panel kernel's epilogue where it
    /// runs (no second libtorch call, no second pass over the output), else libtorch's op, in
    /// place on the product.
    pub(super) fn forward_then(&self, x: &Tensor, then: Then) -> Result<Tensor, TchError> {
        use crate::model::gemm::Epilogue;
        if let Linear::Panel(p) = self {
            let fused = match then {
                Then::GeluErf => Some(Epilogue::GeluErf),
                Then::Relu => Some(Epilogue::Relu),
                Then::Add(r) => Some(Epilogue::Add(r)),
                Then::GeluTanh => None,
            };
            if let Some(e) = fused {
                return p.forward_then(x, e);
            }
        }
        let mut y = self.forward(x)?;
        let _ = match then {
            Then::GeluErf => y.f_gelu_("none")?,
            Then::GeluTanh => y.f_gelu_("tanh")?,
            Then::Relu => y.f_relu_()?,
            Then::Add(r) => y.f_add_(r)?,
        };
        Ok(y)
    }

    /// `x` `[..., in]` to `[..., out]`.
    pub(super) fn forward(&self, x: &Tensor) -> Result<Tensor, TchError> {
        match self {
            Linear::Panel(p) => p.forward(x),
            Linear::MklPacked(p) => p.forward(x),
            Linear::Addmm { wt, b } => {
                let mut shape = x.size();
                let (k, n) = wt.size2()?;
                let y = b.f_addmm(&x.f_reshape([-1, k])?, wt)?;
                *shape
                    .last_mut()
                    .expect("a linear layer's input has a last dimension") = n;
                y.f_view(shape.as_slice())
            }
            Linear::Unpacked { w, b } => x.f_linear(w, Some(b)),
        }
    }
}
