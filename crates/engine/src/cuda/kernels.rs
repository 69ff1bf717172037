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

/// Element types the kernels are built for.
pub trait KernelType: DeviceRepr + ValidAsZeroBits + Copy + Send + Sync + 'static {
    const SUFFIX: &'static str;
    const DTYPE: candle_core::DType;
    fn from_f32(x: f32) -> Self;
    fn to_f32(self) -> f32;
}
impl KernelType for f32 {
    const SUFFIX: &'static str = "f32";
    const DTYPE: candle_core::DType = candle_core::DType::F32;
    fn from_f32(x: f32) -> Self {
        x
    }
    fn to_f32(self) -> f32 {
        self
    }
}
impl KernelType for f16 {
    const SUFFIX: &'static str = "f16";
    const DTYPE: candle_core::DType = candle_core::DType::F16;
    fn from_f32(x: f32) -> Self {
        f16::from_f32(x)
    }
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
}
impl KernelType for bf16 {
    const SUFFIX: &'static str = "bf16";
    const DTYPE: candle_core::DType = candle_core::DType::BF16;
    fn from_f32(x: f32) -> Self {
        bf16::from_f32(x)
    }
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
}
