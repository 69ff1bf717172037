//! The GGUF block types our CUDA kernels take (kernels/quant_matmul.cu), their sizes, and
//! random valid blocks of each (dummy weights).

use candle_core::quantized::GgmlDType;
use half::f16;
use rayon::prelude::*;

/// A GGUF block type with CUDA kernels of ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceQuantType {
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q4K,
    Q5K,
    Q6K,
}

impl DeviceQuantType {
    pub const ALL: [Self; 8] = [
        Self::Q4_0,
        Self::Q4_1,
        Self::Q5_0,
        Self::Q5_1,
        Self::Q8_0,
        Self::Q4K,
        Self::Q5K,
        Self::Q6K,
    ];

    pub fn from_ggml(t: GgmlDType) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.ggml() == t)
    }

    pub fn ggml(self) -> GgmlDType {
        match self {
            Self::Q4_0 => GgmlDType::Q4_0,
            Self::Q4_1 => GgmlDType::Q4_1,
            Self::Q5_0 => GgmlDType::Q5_0,
            Self::Q5_1 => GgmlDType::Q5_1,
            Self::Q8_0 => GgmlDType::Q8_0,
            Self::Q4K => GgmlDType::Q4K,
            Self::Q5K => GgmlDType::Q5K,
            Self::Q6K => GgmlDType::Q6K,
        }
    }

    /// The kernels' name for the type (`qmv_<name>_m1_bf16`, `dequantize_<name>_f32`).
    pub fn kernel_name(self) -> &'static str {
        match self {
            Self::Q4_0 => "q4_0",
            Self::Q4_1 => "q4_1",
            Self::Q5_0 => "q5_0",
            Self::Q5_1 => "q5_1",
            Self::Q8_0 => "q8_0",
            Self::Q4K => "q4_k",
            Self::Q5K => "q5_k",
            Self::Q6K => "q6_k",
        }
    }

    /// Bytes and values of one block.
    pub fn block_bytes(self) -> usize {
        [18, 20, 22, 24, 34, 144, 176, 210][self as usize]
    }

    pub fn block_values(self) -> usize {
        match self {
            Self::Q4K | Self::Q5K | Self::Q6K => 256,
            _ => 32,
        }
    }

    /// Bytes of a `[n, k]` weight (`k` a multiple of the block).
    pub fn weight_bytes(self, n: usize, k: usize) -> usize {
        n * (k / self.block_values()) * self.block_bytes()
    }

    /// The block's f16 fields (offset, value for a largest magnitude of about `scale`).
    fn f16_fields(self, scale: f32) -> Vec<(usize, f32)> {
        match self {
            Self::Q4_0 => vec![(0, scale / 8.0)],
            Self::Q5_0 => vec![(0, scale / 16.0)],
            Self::Q4_1 => vec![(0, scale / 8.0), (2, -scale)],
            Self::Q5_1 => vec![(0, scale / 16.0), (2, -scale)],
            Self::Q8_0 => vec![(0, scale / 127.0)],
            Self::Q4K => vec![(0, scale / (63.0 * 15.0)), (2, scale / 63.0)],
            Self::Q5K => vec![(0, scale / (63.0 * 31.0)), (2, scale / 63.0)],
            Self::Q6K => vec![(208, scale / (128.0 * 32.0))],
        }
    }
}

/// Random valid blocks of `ty` for a `[n, k]` weight (every quant bit random, the f16
/// scales fixed so values stay within about `scale`): dummy weights as vLLM makes them for
/// quantized models, at memory speed rather than a quantizer's.
pub fn random_blocks(ty: DeviceQuantType, n: usize, k: usize, seed: u64, scale: f32) -> Vec<u8> {
    let row = ty.weight_bytes(1, k);
    let mut out = vec![0u8; n * row];
    let fields = ty.f16_fields(scale);
    out.par_chunks_mut(row).enumerate().for_each(|(r, bytes)| {
        let mut s = seed ^ (r as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        for c in bytes.chunks_mut(8) {
            let v = crate::lcg::lcg_next(&mut s).to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
        for block in bytes.chunks_exact_mut(ty.block_bytes()) {
            for &(off, v) in &fields {
                block[off..off + 2].copy_from_slice(&f16::from_f32(v).to_le_bytes());
            }
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match_ggml() {
        for t in DeviceQuantType::ALL {
            assert_eq!(t.block_bytes(), t.ggml().type_size(), "{t:?}");
            assert_eq!(t.block_values(), t.ggml().block_size(), "{t:?}");
            assert_eq!(DeviceQuantType::from_ggml(t.ggml()), Some(t));
        }
    }
}
