//! Rotary position embedding tables.

use candle_core::{DType, Device, Tensor};

use crate::error::Result;

/// cos/sin for every position up to `max_positions`, `[max_positions, head_dim / 2]`.
pub struct RopeTable {
    cos: Tensor,
    sin: Tensor,
}

impl RopeTable {
    /// `freq_factors` (llama3-style scaling, GGUF `rope_freqs.weight`) divide the base
    /// frequencies, as llama.cpp applies them.
    pub fn new(
        head_dim: usize,
        theta: f32,
        linear_scale: f32,
        freq_factors: Option<&[f32]>,
        max_positions: usize,
        device: &Device,
    ) -> Result<Self> {
        let half = head_dim / 2;
        let inv_freq: Vec<f64> = (0..half)
            .map(|i| {
                let f = 1.0 / (theta as f64).powf(2.0 * i as f64 / head_dim as f64);
                let factor = freq_factors
                    .and_then(|ff| ff.get(i))
                    .copied()
                    .unwrap_or(1.0) as f64;
                f / factor / linear_scale as f64
            })
            .collect();
        let mut cos = Vec::with_capacity(max_positions * half);
        let mut sin = Vec::with_capacity(max_positions * half);
        for p in 0..max_positions {
            for &f in &inv_freq {
                let a = p as f64 * f;
                cos.push(a.cos() as f32);
                sin.push(a.sin() as f32);
            }
        }
        Ok(Self {
            cos: Tensor::from_vec(cos, (max_positions, half), device)?,
            sin: Tensor::from_vec(sin, (max_positions, half), device)?,
        })
    }

    /// llama.cpp's CPU table (`ggml_rope_cache_init`: the angle by repeated f32
    /// multiplication, then `cosf`/`sinf`), which the CPU backend uses to match llama.cpp's
    /// outputs bit for bit; it drifts from [`RopeTable::new`]'s exact angles by a few f32
    /// ulp of the angle.
    pub fn new_ggml(
        head_dim: usize,
        theta: f32,
        linear_scale: f32,
        freq_factors: Option<&[f32]>,
        max_positions: usize,
        device: &Device,
    ) -> Result<Self> {
        let half = head_dim / 2;
        let mut cos = vec![0f32; max_positions * half];
        let mut sin = vec![0f32; max_positions * half];
        for (p, (c, s)) in cos.chunks_mut(half).zip(sin.chunks_mut(half)).enumerate() {
            crate::ggml_arith::rope_cache(p, half, theta, 1.0 / linear_scale, freq_factors, c, s);
        }
        Ok(Self {
            cos: Tensor::from_vec(cos, (max_positions, half), device)?,
            sin: Tensor::from_vec(sin, (max_positions, half), device)?,
        })
    }

    /// The table a model's config asks for (its theta, scaling and context length): on the
    /// CPU llama.cpp's ([`RopeTable::new_ggml`]), elsewhere the exact angles.
    pub fn for_config(c: &super::LlamaConfig, device: &Device) -> Result<Self> {
        if device.is_cpu() {
            Self::from_config(Self::new_ggml, c, device)
        } else {
            Self::exact_for_config(c, device)
        }
    }

    /// The exact angles ([`RopeTable::new`]) for a model's config, on any device.
    pub fn exact_for_config(c: &super::LlamaConfig, device: &Device) -> Result<Self> {
        Self::from_config(Self::new, c, device)
    }

    fn from_config(
        make: fn(usize, f32, f32, Option<&[f32]>, usize, &Device) -> Result<Self>,
        c: &super::LlamaConfig,
        device: &Device,
    ) -> Result<Self> {
        make(
            c.head_dim,
            c.rope_theta,
            c.rope_linear_scale,
            c.rope_freq_factors.as_deref(),
            c.max_position_embeddings,
            device,
        )
    }

    pub fn max_positions(&self) -> usize {
        self.cos.dims()[0]
    }

    /// cos and sin rows for the given positions, `[n, 1, head_dim / 2]` each (the layout
    /// candle's rope kernels take for one position per "batch" entry).
    pub fn gather(&self, positions: &Tensor, dtype: DType) -> Result<(Tensor, Tensor)> {
        let n = positions.dims1()?;
        let half = self.cos.dims()[1];
        let cos = self
            .cos
            .index_select(positions, 0)?
            .reshape((n, 1, half))?
            .to_dtype(dtype)?;
        let sin = self
            .sin
            .index_select(positions, 0)?
            .reshape((n, 1, half))?
            .to_dtype(dtype)?;
        Ok((cos, sin))
    }
}
