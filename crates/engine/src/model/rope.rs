//! Rotary position embedding tables.

use candle_core::{DType, Device, Tensor};

use crate::error::Result;

/// cos/sin for every position up to `max_positions`, `[max_positions, head_dim / 2]`.
pub struct RopeTable {
    cos: Tensor,
    sin: Tensor,
}

/// How a table's angles are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeAngles {
    /// `position * inv_freq` in f64, then cos/sin.
    Exact,
    /// llama.cpp's CPU table (`ggml_rope_cache_init`: the angle by repeated f32
    /// multiplication, then `cosf`/`sinf`), for matching llama.cpp's outputs bit for bit; it
    /// drifts from the exact angles by a few f32 ulp of the angle.
    LlamaCpp,
}

impl RopeTable {
    /// `freq_factors` (llama3-style scaling, GGUF `rope_freqs.weight`) divide the base
    /// frequencies, as llama.cpp applies them.
    pub fn new(
        angles: RopeAngles,
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
        let rows = cos.chunks_mut(half).zip(sin.chunks_mut(half)).enumerate();
        match angles {
            RopeAngles::Exact => {
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
                for (p, (c, s)) in rows {
                    for ((c, s), &f) in c.iter_mut().zip(s).zip(&inv_freq) {
                        let a = p as f64 * f;
                        (*c, *s) = (a.cos() as f32, a.sin() as f32);
                    }
                }
            }
            RopeAngles::LlamaCpp => {
                let freq_scale = 1.0 / linear_scale;
                for (p, (c, s)) in rows {
                    crate::ops::ggml_arith::rope_cache(
                        p,
                        half,
                        theta,
                        freq_scale,
                        freq_factors,
                        c,
                        s,
                    );
                }
            }
        }
        Ok(Self {
            cos: Tensor::from_vec(cos, (max_positions, half), device)?,
            sin: Tensor::from_vec(sin, (max_positions, half), device)?,
        })
    }

    /// The table a model's config asks for (its theta, scaling and context length).
    pub fn for_config(c: &super::LlamaConfig, angles: RopeAngles, device: &Device) -> Result<Self> {
        Self::new(
            angles,
            c.head_dim,
            c.rope_theta,
            c.rope_linear_scale,
            c.rope_freq_factors.as_deref(),
            c.max_position_embeddings,
            device,
        )
    }

    /// The table of the global layers and, for Gemma 3, that of its sliding-window layers
    /// (their own base, no scaling).
    pub fn for_layers(
        c: &super::LlamaConfig,
        angles: RopeAngles,
        device: &Device,
    ) -> Result<(Self, Option<Self>)> {
        let global = Self::for_config(c, angles, device)?;
        let local = match &c.gemma {
            None => None,
            Some(g) => Some(Self::new(
                angles,
                c.head_dim,
                g.rope_local_theta,
                1.0,
                None,
                c.max_position_embeddings,
                device,
            )?),
        };
        Ok((global, local))
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
