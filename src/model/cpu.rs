//! What the CPU offers a model's dtype: whether it computes bf16 natively.
//!
//! libtorch runs a bf16 model's matmuls through oneDNN, which uses the CPU's bf16 dot-product
//! instructions where they exist (x86: AVX512_BF16 or AMX-BF16; Arm: the BF16 extension) and
//! otherwise converts to f32 around every product. On a CPU with them, `dtype: bf16` is faster
//! than f32 (README "Performance"); without them it is slower, so the start-up log warns.

use std::fmt;

/// Whether the CPU has bf16 arithmetic, and which.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bf16 {
    /// Native, through these instructions.
    Native(&'static str),
    /// No bf16 instructions: libtorch converts to f32 and back, slower than f32 itself.
    Emulated,
}

impl Bf16 {
    /// This CPU's.
    pub fn here() -> Bf16 {
        #[cfg(target_arch = "x86_64")]
        {
            // AMX-BF16: cpuid leaf 7, sub-leaf 0, EDX bit 22 (the std macro for it is unstable).
            if std::arch::x86_64::__cpuid_count(7, 0).edx & (1 << 22) != 0 {
                return Bf16::Native("AMX-BF16");
            }
            if std::is_x86_feature_detected!("avx512bf16") {
                return Bf16::Native("AVX512_BF16");
            }
        }
        #[cfg(target_arch = "aarch64")]
        if std::arch::is_aarch64_feature_detected!("bf16") {
            return Bf16::Native("Arm BF16");
        }
        Bf16::Emulated
    }

    /// Whether bf16 runs natively.
    pub fn native(self) -> bool {
        matches!(self, Bf16::Native(_))
    }
}

impl fmt::Display for Bf16 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Bf16::Native(how) => write!(f, "native ({how})"),
            Bf16::Emulated => write!(f, "emulated (no AVX512_BF16, AMX or Arm BF16)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_support_agrees_with_the_kernels_cpu_flags() {
        let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") else {
            return; // not Linux: nothing to compare with
        };
        let flags: Vec<&str> = info
            .lines()
            .find(|l| l.starts_with("flags") || l.starts_with("Features"))
            .map(|l| l.split_whitespace().collect())
            .unwrap_or_default();
        let kernel_says = ["avx512_bf16", "amx_bf16", "bf16"]
            .iter()
            .any(|f| flags.contains(f));
        let here = Bf16::here();
        assert_eq!(here.native(), kernel_says, "{here} against {flags:?}");
        assert!(
            here.to_string()
                .starts_with(if kernel_says { "native" } else { "emulated" })
        );
    }
}
