//! GGUF-order blocks from f32 rows (in-situ quantization onto a GPU), with ggml's reference
//! quantizers.

use super::DeviceQuantType;
use crate::quant::blocks::PlainBlock;
use crate::quant::InSituType;

fn block_bytes<T: PlainBlock>(blocks: Vec<T>) -> Vec<u8> {
    let size = std::mem::size_of::<T>();
    let mut out = vec![0u8; blocks.len() * size];
    for (b, c) in blocks.iter().zip(out.chunks_exact_mut(size)) {
        // SAFETY: T is a PlainBlock (repr(C), no padding, plain fields).
        let raw = unsafe { std::slice::from_raw_parts(b as *const T as *const u8, size) };
        c.copy_from_slice(raw);
    }
    out
}

/// `[n, k]` f32 weights quantized as `ty` into GGUF-order bytes (the CUDA kernels' layout);
/// `None` when `k` is not a multiple of the type's block.
pub fn quantize_gguf(
    ty: InSituType,
    w: &[f32],
    n: usize,
    k: usize,
) -> Option<(DeviceQuantType, Vec<u8>)> {
    use crate::quant::quantize::{
        quantize_row_q4_0_ref, quantize_row_q4_k_ref, quantize_row_q8_0_ref, quantize_rows,
    };
    if k == 0 || !k.is_multiple_of(ty.block_len()) || w.len() != n * k {
        return None;
    }
    let bl = ty.block_len();
    Some(match ty {
        InSituType::Q8_0 => (
            DeviceQuantType::Q8_0,
            block_bytes(quantize_rows(w, k, bl, quantize_row_q8_0_ref)),
        ),
        InSituType::Q4_0 => (
            DeviceQuantType::Q4_0,
            block_bytes(quantize_rows(w, k, bl, quantize_row_q4_0_ref)),
        ),
        InSituType::Q4K => (
            DeviceQuantType::Q4K,
            block_bytes(quantize_rows(w, k, bl, quantize_row_q4_k_ref)),
        ),
    })
}

/// The in-situ type's block type on the device.
pub fn device_type(ty: InSituType) -> DeviceQuantType {
    match ty {
        InSituType::Q8_0 => DeviceQuantType::Q8_0,
        InSituType::Q4_0 => DeviceQuantType::Q4_0,
        InSituType::Q4K => DeviceQuantType::Q4K,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gguf_quantization_is_the_cpu_layouts_blocks() {
        let (n, k) = (3usize, 512usize);
        let mut seed = 9;
        let w = crate::lcg::lcg_uniform(n * k, &mut seed);
        for ty in [InSituType::Q8_0, InSituType::Q4_0, InSituType::Q4K] {
            let (dt, raw) = quantize_gguf(ty, &w, n, k).unwrap();
            assert_eq!(raw.len(), dt.weight_bytes(n, k));
            let via_gguf = crate::quant::QuantWeights::from_gguf(dt.ggml(), &raw, n, k)
                .unwrap()
                .dequantize(n, k);
            let direct = crate::quant::QuantWeights::quantize(ty, &w, n, k)
                .unwrap()
                .dequantize(n, k);
            assert_eq!(via_gguf, direct, "{ty:?}");
        }
    }
}
