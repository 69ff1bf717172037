//! Our CUDA kernels (kernels/*.cu, compiled by build.rs into fatbins embedded here) and the
//! element types they are built for.

use cudarc::driver::{DeviceRepr, ValidAsZeroBits};
use half::{bf16, f16};

pub(crate) const PAGED_ATTENTION_FATBIN: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/paged_attention.fatbin"));
pub(crate) const RESHAPE_AND_CACHE_FATBIN: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/reshape_and_cache.fatbin"));
pub(crate) const PREFILL_ATTENTION_FATBIN: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/prefill_attention.fatbin"));
pub(crate) const PAGED_ATTENTION_GQA_FATBIN: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/paged_attention_gqa.fatbin"));
pub(crate) const FUSED_FATBIN: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/fused.fatbin"));
pub(crate) const GEMV_FATBIN: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/gemv.fatbin"));
pub(crate) const SAMPLING_FATBIN: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/sampling.fatbin"));
pub(crate) const QUANT_MATMUL_FATBIN: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/quant_matmul.fatbin"));

/// Element types the kernels are built for.
pub trait KernelType: DeviceRepr + ValidAsZeroBits + Copy + Send + Sync + 'static {
    const SUFFIX: &'static str;
    const DTYPE: candle_core::DType;
    fn from_f32(x: f32) -> Self;
    fn to_f32(self) -> f32;
}
/// `impl KernelType` for an element type: its kernels' name suffix, candle's type, and its
/// conversions from and to f32.
macro_rules! kernel_type {
    ($($t:ty: $suffix:literal, $dtype:ident, $from:expr, $to:expr;)+) => {$(
        impl KernelType for $t {
            const SUFFIX: &'static str = $suffix;
            const DTYPE: candle_core::DType = candle_core::DType::$dtype;
            fn from_f32(x: f32) -> Self {
                $from(x)
            }
            fn to_f32(self) -> f32 {
                $to(self)
            }
        }
    )+};
}

kernel_type! {
    f32: "f32", F32, |x: f32| x, |v: f32| v;
    f16: "f16", F16, f16::from_f32, f16::to_f32;
    bf16: "bf16", BF16, bf16::from_f32, bf16::to_f32;
}
