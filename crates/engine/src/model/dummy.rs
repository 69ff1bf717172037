//! Random weights of a config's shapes (vLLM's `--load-format dummy`): the same numbers on
//! every device, for measuring and checking where no real weights reach.

use candle_core::{DType, Device, Tensor};

use super::config::LlamaConfig;
use super::llama::LlamaModel;
use super::rope::{RopeAngles, RopeTable};
use super::switches::ForwardSwitches;
use super::weights::{GateUpProj, Layer, Linear, QkvProj, Weight};
use crate::error::{EngineError, Result};
use crate::lcg::lcg_next;

/// Deterministic uniform values in ±bound, generated in parallel chunks (each chunk's
/// generator seeded from `seed` and its index, so the result is the same on every host).
fn random_tensor(
    shape: (usize, usize),
    bound: f32,
    seed: u64,
    dtype: DType,
    round: Option<DType>,
    device: &Device,
) -> Result<Tensor> {
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 16;
    let n = shape.0 * shape.1;
    fn fill<T: Send>(n: usize, seed: u64, f: impl Fn(f32) -> T + Sync) -> Vec<T> {
        let mut out: Vec<T> = Vec::with_capacity(n);
        // SAFETY: every element is written below before the Vec is read.
        #[allow(clippy::uninit_vec)]
        unsafe {
            out.set_len(n)
        };
        out.par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(ci, chunk)| {
                let mut s = seed ^ (ci as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
                for x in chunk.iter_mut() {
                    let u = ((lcg_next(&mut s) >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0;
                    // SAFETY: plain write into reserved, unread memory.
                    unsafe { std::ptr::write(x, f(u)) };
                }
            });
        out
    }
    Ok(match dtype {
        DType::BF16 => Tensor::from_vec(
            fill(n, seed, |u| half::bf16::from_f32(u * bound)),
            shape,
            device,
        )?,
        DType::F16 => Tensor::from_vec(
            fill(n, seed, |u| half::f16::from_f32(u * bound)),
            shape,
            device,
        )?,
        DType::F32 => match round {
            Some(DType::BF16) => Tensor::from_vec(
                fill(n, seed, |u| half::bf16::from_f32(u * bound).to_f32()),
                shape,
                device,
            )?,
            Some(DType::F16) => Tensor::from_vec(
                fill(n, seed, |u| half::f16::from_f32(u * bound).to_f32()),
                shape,
                device,
            )?,
            _ => Tensor::from_vec(fill(n, seed, |u| u * bound), shape, device)?,
        },
        other => {
            return Err(EngineError::Config(format!(
                "dummy weights in {other:?} (use f32, f16 or bf16)"
            )))
        }
    })
}

impl LlamaModel {
    /// Random weights of `config`'s shapes (vLLM's `--load-format dummy`), for measuring
    /// where no real weights reach. Made on the host from `seed` with a fixed generator,
    /// so every device gets the same numbers: uniform in ±sqrt(3 / fan_in) (unit-variance
    /// outputs), norms at 1.
    pub fn dummy(config: LlamaConfig, dtype: DType, device: &Device, seed: u64) -> Result<Self> {
        Self::dummy_rounded(config, dtype, None, device, seed)
    }

    /// [`Self::dummy`], each weight first rounded through `round` (so an f32 model can hold
    /// exactly a bf16 model's weights, as a reference).
    pub fn dummy_rounded(
        config: LlamaConfig,
        dtype: DType,
        round: Option<DType>,
        device: &Device,
        seed: u64,
    ) -> Result<Self> {
        let c = &config;
        let (h, nh, nkv, hd, ff) = c.dims();
        let mut next_seed = seed;
        let mut rand = |shape: (usize, usize), bound: f32| -> Result<Tensor> {
            next_seed = next_seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
            random_tensor(shape, bound, next_seed, dtype, round, device)
        };
        let ones = |n: usize| -> Result<Tensor> { Ok(Tensor::ones(n, dtype, device)?) };
        let mut weight_bytes = 0usize;
        let mut linear = |out: usize, inp: usize, bias: bool| -> Result<Linear> {
            let bound = (3.0 / inp as f32).sqrt();
            weight_bytes += out * inp * dtype.size_in_bytes();
            Ok(Linear {
                weight: Weight::Dense(rand((out, inp), bound)?),
                bias: if bias {
                    Some(rand((1, out), bound)?.reshape(out)?)
                } else {
                    None
                },
            })
        };
        let mut layers = Vec::with_capacity(c.num_layers);
        for _ in 0..c.num_layers {
            layers.push(Layer {
                attn_norm: ones(h)?,
                qkv: QkvProj::Split(
                    linear(nh * hd, h, c.qkv_bias)?,
                    linear(nkv * hd, h, c.qkv_bias)?,
                    linear(nkv * hd, h, c.qkv_bias)?,
                ),
                q_norm: if c.qk_norm { Some(ones(hd)?) } else { None },
                k_norm: if c.qk_norm { Some(ones(hd)?) } else { None },
                wo: linear(h, nh * hd, false)?,
                ffn_norm: ones(h)?,
                gate_up: GateUpProj::Split(linear(ff, h, false)?, linear(ff, h, false)?),
                w_down: linear(h, ff, false)?,
                post_attn_norm: if c.gemma.is_some() {
                    Some(ones(h)?)
                } else {
                    None
                },
                post_ffn_norm: if c.gemma.is_some() {
                    Some(ones(h)?)
                } else {
                    None
                },
            });
        }
        let output = linear(c.vocab_size, h, false)?;
        let embed = if c.tie_word_embeddings {
            match &output.weight {
                Weight::Dense(w) => w.clone(),
                Weight::Quant(_) => unreachable!("dummy weights are dense"),
            }
        } else {
            weight_bytes += c.vocab_size * h * dtype.size_in_bytes();
            rand((c.vocab_size, h), 1.0)?
        };
        // Exact angles on every device: dummy models are the GPU checks' references, and
        // llama.cpp's CPU table is for matching llama.cpp on real (GGUF) models.
        let (rope, rope_local) = RopeTable::for_layers(c, RopeAngles::Exact, device)?;
        Ok(Self {
            rope_local,
            device: device.clone(),
            dtype,
            embed,
            layers,
            output_norm: ones(h)?,
            output,
            rope,
            weight_bytes,
            switches: ForwardSwitches::default(),
            config,
        })
    }
}
