//! The Llama family (Llama 2/3, Mistral, SmolLM, Qwen2 with QKV bias) over one flat batch.
//! Linear layers see `[num_tokens, hidden]`: every token of the step shares one weight read.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};

use super::config::{LlamaConfig, RopeStyle};
use super::rope::{RopeAngles, RopeTable};
use crate::attention::AttentionBackend;
use crate::batch::FlatBatch;
use crate::error::{EngineError, Result};
use crate::gguf::GgufFile;
use crate::quant::QuantLinear;

/// A linear layer's weight: GGUF blocks kept quantized (our CPU kernels or candle's CUDA
/// quantized matmul), or a dense `[out, in]` matrix (cuBLAS on CUDA).
enum Weight {
    Quant(QuantLinear),
    Dense(Tensor),
}

/// A linear layer with an optional bias.
struct Linear {
    weight: Weight,
    bias: Option<Tensor>,
}

impl Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = match &self.weight {
            Weight::Quant(q) => q.forward(x)?,
            Weight::Dense(w) => dense_matmul(x, w)?,
        };
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}

/// Linear layers over one input: quantized weights share one quantization of it (the same
/// results as separate `forward` calls).
fn forward_many<const N: usize>(parts: [&Linear; N], x: &Tensor) -> Result<[Tensor; N]> {
    let quant: Vec<&QuantLinear> = parts
        .iter()
        .filter_map(|p| match &p.weight {
            Weight::Quant(q) => Some(q),
            Weight::Dense(_) => None,
        })
        .collect();
    let ys: Vec<Tensor> = if quant.len() == N {
        let ys = QuantLinear::forward_many(&quant, x)?;
        ys.into_iter()
            .zip(parts)
            .map(|(y, p)| match &p.bias {
                Some(b) => Ok(y.broadcast_add(b)?),
                None => Ok(y),
            })
            .collect::<Result<_>>()?
    } else {
        parts.iter().map(|p| p.forward(x)).collect::<Result<_>>()?
    };
    ys.try_into()
        .map_err(|_| EngineError::Config("forward_many: wrong output count".into()))
}

/// The Q, K and V projections: three matmuls, or one over their weights stacked by rows
/// (dense weights; see [`LlamaModel::stack_projections`]).
enum QkvProj {
    Split(Linear, Linear, Linear),
    Stacked(Linear),
}

/// The MLP's gate and up projections, split or stacked (gate rows, then up rows).
enum GateUpProj {
    Split(Linear, Linear),
    Stacked(Linear),
}

/// Dense weights (and biases, all or none) stacked by rows into one linear layer; `None`
/// when any part is quantized or the biases are mixed.
fn stack_linears(parts: &[&Linear]) -> Result<Option<Linear>> {
    let mut ws = Vec::with_capacity(parts.len());
    for p in parts {
        match &p.weight {
            Weight::Dense(w) => ws.push(w.clone()),
            Weight::Quant(_) => return Ok(None),
        }
    }
    let biases: Vec<Tensor> = parts.iter().filter_map(|p| p.bias.clone()).collect();
    let bias = match biases.len() {
        0 => None,
        n if n == parts.len() => Some(Tensor::cat(&biases, 0)?),
        _ => return Ok(None),
    };
    Ok(Some(Linear {
        weight: Weight::Dense(Tensor::cat(&ws, 0)?),
        bias,
    }))
}

/// `x w^T`: the skinny matmul kernel for decode batches on CUDA, cuBLAS otherwise.
fn dense_matmul(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if let Some(y) = crate::ops::gemv(x, w)? {
        return Ok(y);
    }
    Ok(x.matmul(&w.t()?)?)
}

struct Layer {
    attn_norm: Tensor,
    qkv: QkvProj,
    wo: Linear,
    ffn_norm: Tensor,
    gate_up: GateUpProj,
    w_down: Linear,
}

pub struct LlamaModel {
    pub config: LlamaConfig,
    device: Device,
    /// Activations' type: f32 for GGUF weights (quantized matmuls take f32), the weights'
    /// type for dense ones.
    dtype: DType,
    embed: Tensor,
    layers: Vec<Layer>,
    output_norm: Tensor,
    output: Linear,
    rope: RopeTable,
    /// Bytes of weights as held (for the weight-read floor).
    weight_bytes: usize,
}

/// RMSNorm one row at a time (so batch-invariant): llama.cpp's arithmetic on the CPU
/// ([`crate::ggml_arith::rms_norm_row`]), candle-nn's fused kernel elsewhere.
fn rms_norm(x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 && w.dtype() == DType::F32 {
        return rms_norm_cpu(x, w, eps);
    }
    Ok(candle_nn::ops::rms_norm(x, w, eps)?)
}

fn rms_norm_cpu(x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
    use rayon::prelude::*;
    let dim = w.dims1()?;
    let out = crate::attention::with_f32(x, |xd| {
        crate::attention::with_f32(w, |wd| {
            let mut out = vec![0f32; xd.len()];
            out.par_chunks_mut(dim)
                .zip(xd.par_chunks(dim))
                .for_each(|(o, x)| crate::ggml_arith::rms_norm_row(x, wd, eps, o));
            out
        })
    })??;
    Ok(Tensor::from_vec(out, x.dims(), x.device())?)
}

/// RoPE on the CPU as llama.cpp computes it ([`crate::ggml_arith::rotate_pair`]) over
/// `t: [n, heads * head_dim]` with `cos`/`sin` rows `[n, 1, head_dim / 2]`; `neox` pairs
/// `i` with `i + head_dim / 2`, else `2i` with `2i + 1`.
fn rope_cpu(t: &Tensor, cos: &Tensor, sin: &Tensor, head_dim: usize, neox: bool) -> Result<Tensor> {
    use rayon::prelude::*;
    let half = head_dim / 2;
    let width = t.dims2()?.1;
    let out = crate::attention::with_f32(t, |x| {
        crate::attention::with_f32(cos, |c| {
            crate::attention::with_f32(sin, |s| {
                let mut out = x.to_vec();
                out.par_chunks_mut(width).enumerate().for_each(|(row, o)| {
                    let (c, s) = (&c[row * half..][..half], &s[row * half..][..half]);
                    for head in o.chunks_mut(head_dim) {
                        for i in 0..half {
                            let (a, b) = if neox {
                                (i, i + half)
                            } else {
                                (2 * i, 2 * i + 1)
                            };
                            (head[a], head[b]) =
                                crate::ggml_arith::rotate_pair(head[a], head[b], c[i], s[i]);
                        }
                    }
                });
                out
            })
        })
    })???;
    Ok(Tensor::from_vec(out, t.dims(), t.device())?)
}

/// `(residual + delta, rms_norm(residual + delta) * w)`, the normed half in `delta`'s type:
/// one fused kernel on CUDA. `residual` may be f32 under a half-precision `delta` (the
/// stream of sums then loses nothing to rounding between layers).
fn add_rms_norm(
    delta: &Tensor,
    residual: &Tensor,
    w: &Tensor,
    eps: f32,
) -> Result<(Tensor, Tensor)> {
    let dt = delta.dtype();
    #[cfg(feature = "cuda")]
    if delta.device().is_cuda() && crate::ops::fused_enabled() {
        let (x, h) = crate::ops::add_rms_norm(delta, residual, w, eps)?;
        return Ok((x, h.to_dtype(dt)?));
    }
    let x = (residual + delta.to_dtype(residual.dtype())?)?;
    let h = rms_norm(&x, &w.to_dtype(x.dtype())?, eps)?.to_dtype(dt)?;
    Ok((x, h))
}

/// Half-precision models keep their residual stream in f32 (unless FERROLM_F32_RESIDUAL=0):
/// rounding the sum to bf16 after every sub-layer is what put the bf16 model 5.2e-2 from
/// the f32 reference on an H200; with the f32 stream it is 3.7e-2 (2026-11-27).
fn f32_residual() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("FERROLM_F32_RESIDUAL").map_or(true, |v| v != "0"))
}

/// silu(gate) * up: one fused kernel on CUDA (unless FERROLM_NO_FUSED is set).
fn silu_mul(g: &Tensor, u: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if g.device().is_cuda() && crate::ops::fused_enabled() {
        return crate::ops::silu_mul(g, u);
    }
    if g.device().is_cpu() && g.dtype() == DType::F32 && u.dtype() == DType::F32 {
        return silu_mul_cpu(g, u);
    }
    Ok((g.silu()? * u)?)
}

/// `silu(g) * u` in one parallel pass, row by row as llama.cpp's `ggml_vec_swiglu_f32`
/// computes it ([`crate::ggml_arith::swiglu_row`]).
fn silu_mul_cpu(g: &Tensor, u: &Tensor) -> Result<Tensor> {
    use rayon::prelude::*;
    if g.dims() != u.dims() {
        return Err(EngineError::Config("silu_mul: shapes differ".into()));
    }
    let width = g.dims().last().copied().unwrap_or(1).max(1);
    // Whole rows per task (llama.cpp's vector steps restart at each row).
    let rows_per_task = (8192 / width).max(1);
    let out = crate::attention::with_f32(g, |gd| {
        crate::attention::with_f32(u, |ud| {
            let mut out = vec![0f32; gd.len()];
            let chunk = rows_per_task * width;
            out.par_chunks_mut(chunk)
                .zip(gd.par_chunks(chunk).zip(ud.par_chunks(chunk)))
                .for_each(|(o, (g, u))| {
                    for ((o, g), u) in o
                        .chunks_mut(width)
                        .zip(g.chunks(width))
                        .zip(u.chunks(width))
                    {
                        crate::ggml_arith::swiglu_row(g, u, o);
                    }
                });
            out
        })
    })??;
    Ok(Tensor::from_vec(out, g.dims(), g.device())?)
}

/// A stacked QKV projection's output to rotated q, rotated k and v: one kernel on CUDA,
/// else the split path's ops on its slices.
fn rope_split_qkv(
    qkv: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    (nh, nkv, hd): (usize, usize, usize),
    neox: bool,
    rope: &dyn Fn(Tensor, usize) -> Result<Tensor>,
) -> Result<(Tensor, Tensor, Tensor)> {
    #[cfg(feature = "cuda")]
    if qkv.device().is_cuda() && crate::ops::fused_enabled() {
        let n = qkv.dims2()?.0;
        let half = hd / 2;
        return crate::ops::rope_split_qkv(
            qkv,
            &cos.reshape((n, half))?,
            &sin.reshape((n, half))?,
            (nh, nkv, hd),
            neox,
        );
    }
    let _ = (cos, sin, neox);
    let (qw, kw) = (nh * hd, nkv * hd);
    Ok((
        rope(qkv.narrow(1, 0, qw)?.contiguous()?, nh)?,
        rope(qkv.narrow(1, qw, kw)?.contiguous()?, nkv)?,
        qkv.narrow(1, qw + kw, kw)?.contiguous()?,
    ))
}

/// silu(gate) * up over a stacked gate/up output `[rows, 2 ff]`.
fn silu_mul_packed(gu: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if gu.device().is_cuda() && crate::ops::fused_enabled() {
        return crate::ops::silu_mul_packed(gu);
    }
    let ff = gu.dims2()?.1 / 2;
    silu_mul(
        &gu.narrow(1, 0, ff)?.contiguous()?,
        &gu.narrow(1, ff, ff)?.contiguous()?,
    )
}

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
                    s = s
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let u = ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0;
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
    pub fn from_gguf(gguf: &GgufFile, device: &Device) -> Result<Self> {
        let config = LlamaConfig::from_gguf(gguf)?;
        let qt = |name: &str| gguf.tensor(name, device);
        let dense = |name: &str| -> Result<Tensor> {
            Ok(qt(name)?.dequantize(device)?.to_dtype(DType::F32)?)
        };
        let check_shape = |name: &str, t: &QTensor, want: &[usize]| -> Result<()> {
            if t.shape().dims() != want {
                return Err(EngineError::BadModelFile {
                    path: gguf.path().to_path_buf(),
                    message: format!(
                        "tensor {name} has shape {:?}, expected {want:?}",
                        t.shape().dims()
                    ),
                });
            }
            Ok(())
        };
        let linear = |name: &str, out: usize, inp: usize| -> Result<Linear> {
            let w = qt(&format!("{name}.weight"))?;
            check_shape(&format!("{name}.weight"), &w, &[out, inp])?;
            let bias_name = format!("{name}.bias");
            let bias = if gguf.tensors.contains_key(&bias_name) {
                Some(dense(&bias_name)?)
            } else {
                None
            };
            Ok(Linear {
                weight: Weight::Quant(QuantLinear::new(
                    w,
                    &gguf.tensor_bytes(&format!("{name}.weight"))?,
                    device,
                )?),
                bias,
            })
        };
        let c = &config;
        let (h, nh, nkv, hd, ff) = (
            c.hidden_size,
            c.num_heads,
            c.num_kv_heads,
            c.head_dim,
            c.intermediate_size,
        );
        let embed_q = qt("token_embd.weight")?;
        check_shape("token_embd.weight", &embed_q, &[c.vocab_size, h])?;
        let embed = embed_q.dequantize(device)?.to_dtype(DType::F32)?;
        let output = if gguf.tensors.contains_key("output.weight") {
            let w = qt("output.weight")?;
            check_shape("output.weight", &w, &[c.vocab_size, h])?;
            QuantLinear::new(w, &gguf.tensor_bytes("output.weight")?, device)?
        } else {
            // Tied embeddings: the output projection reads the embedding as stored.
            QuantLinear::new(embed_q, &gguf.tensor_bytes("token_embd.weight")?, device)?
        };
        let output = Linear {
            weight: Weight::Quant(output),
            bias: None,
        };
        let mut layers = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            let p = format!("blk.{i}");
            layers.push(Layer {
                attn_norm: dense(&format!("{p}.attn_norm.weight"))?,
                qkv: QkvProj::Split(
                    linear(&format!("{p}.attn_q"), nh * hd, h)?,
                    linear(&format!("{p}.attn_k"), nkv * hd, h)?,
                    linear(&format!("{p}.attn_v"), nkv * hd, h)?,
                ),
                wo: linear(&format!("{p}.attn_output"), h, nh * hd)?,
                ffn_norm: dense(&format!("{p}.ffn_norm.weight"))?,
                gate_up: GateUpProj::Split(
                    linear(&format!("{p}.ffn_gate"), ff, h)?,
                    linear(&format!("{p}.ffn_up"), ff, h)?,
                ),
                w_down: linear(&format!("{p}.ffn_down"), h, ff)?,
            });
        }
        let output_norm = dense("output_norm.weight")?;
        let weight_bytes = gguf.tensors.values().map(|t| t.size_bytes as usize).sum();
        // GGUF carries llama3 scaling as a tensor; a config.json as rope_scaling.
        let rope_freq_factors = if gguf.tensors.contains_key("rope_freqs.weight") {
            Some(dense("rope_freqs.weight")?.to_vec1::<f32>()?)
        } else {
            None
        };
        gguf.check_unchanged()?;
        let config = LlamaConfig {
            rope_freq_factors,
            ..config
        };
        Ok(Self {
            // On the CPU llama.cpp's angles, so GGUF models match llama.cpp bit for bit.
            rope: RopeTable::for_config(
                &config,
                if device.is_cpu() {
                    RopeAngles::LlamaCpp
                } else {
                    RopeAngles::Exact
                },
                device,
            )?,
            config,
            device: device.clone(),
            dtype: DType::F32,
            embed,
            layers,
            output_norm,
            output,
            weight_bytes,
        })
    }

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
        let (h, nh, nkv, hd, ff) = (
            c.hidden_size,
            c.num_heads,
            c.num_kv_heads,
            c.head_dim,
            c.intermediate_size,
        );
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
                wo: linear(h, nh * hd, false)?,
                ffn_norm: ones(h)?,
                gate_up: GateUpProj::Split(linear(ff, h, false)?, linear(ff, h, false)?),
                w_down: linear(h, ff, false)?,
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
        let rope = RopeTable::for_config(c, RopeAngles::Exact, device)?;
        Ok(Self {
            device: device.clone(),
            dtype,
            embed,
            layers,
            output_norm: ones(h)?,
            output,
            rope,
            weight_bytes,
            config,
        })
    }

    /// Stacks each layer's Q/K/V weights into one matrix and its gate/up weights into
    /// another (dense weights only), so a layer runs two matmuls where it ran five, and
    /// on CUDA one kernel splits and rotates Q/K/V. The numbers are the same weights.
    /// Returns whether anything was stacked.
    pub fn stack_projections(&mut self) -> Result<bool> {
        let mut any = false;
        for layer in &mut self.layers {
            if let QkvProj::Split(q, k, v) = &layer.qkv {
                if let Some(w) = stack_linears(&[q, k, v])? {
                    layer.qkv = QkvProj::Stacked(w);
                    any = true;
                }
            }
            if let GateUpProj::Split(g, u) = &layer.gate_up {
                if let Some(w) = stack_linears(&[g, u])? {
                    layer.gate_up = GateUpProj::Stacked(w);
                    any = true;
                }
            }
        }
        Ok(any)
    }

    /// Activations' (and the KV cache's) type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Bytes of one K or V element in this model's KV cache: f16 on the CPU (as llama.cpp
    /// keeps it), the activation type on a GPU.
    pub fn kv_cache_elem_bytes(&self) -> usize {
        if self.device.is_cpu() {
            2
        } else {
            self.dtype.size_in_bytes()
        }
    }

    /// Bytes of KV cache per block of `block_size` tokens.
    pub fn kv_cache_bytes_per_block(&self, block_size: usize) -> usize {
        crate::attention::KvCacheLayout::for_model(&self.config, 1, block_size)
            .bytes_per_block(self.kv_cache_elem_bytes())
    }

    /// Bytes of weights as held on the device.
    pub fn weight_bytes(&self) -> usize {
        self.weight_bytes
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Weight types, for logs and errors.
    pub fn describe(&self) -> String {
        let c = &self.config;
        format!(
            "{} · {} layers · hidden {} · {} heads / {} KV heads · vocab {}",
            c.arch, c.num_layers, c.hidden_size, c.num_heads, c.num_kv_heads, c.vocab_size
        )
    }

    /// One forward pass over the flat batch. Writes the batch's K/V into the cache and
    /// returns f32 logits `[batch.logits_indices.len(), vocab]`.
    pub fn forward(&self, batch: &FlatBatch, attn: &mut dyn AttentionBackend) -> Result<Tensor> {
        let c = &self.config;
        let n = batch.num_tokens();
        if n == 0 {
            return Err(EngineError::InvalidRequest("empty batch".into()));
        }
        if let Some(&bad) = batch
            .token_ids
            .iter()
            .find(|&&t| t as usize >= c.vocab_size)
        {
            return Err(EngineError::InvalidRequest(format!(
                "token id {bad} is outside the vocabulary of {}",
                c.vocab_size
            )));
        }
        if let Some(&p) = batch
            .positions
            .iter()
            .find(|&&p| p as usize >= self.rope.max_positions())
        {
            return Err(EngineError::InvalidRequest(format!(
                "position {p} is beyond the model's context of {}",
                self.rope.max_positions()
            )));
        }
        let ids = Tensor::from_slice(&batch.token_ids, n, &self.device)?;
        let positions = Tensor::from_slice(&batch.positions, n, &self.device)?;
        attn.begin_step(batch)?;
        // Every row in order (a decode step): no gather before the output projection.
        let rows = if batch.logits_indices.iter().copied().eq(0..n) {
            None
        } else {
            let idx: Vec<u32> = batch.logits_indices.iter().map(|&i| i as u32).collect();
            Some(Tensor::from_slice(&idx, idx.len(), &self.device)?)
        };
        self.forward_tensors(batch, &ids, &positions, rows.as_ref(), attn)
    }

    /// The forward pass over token ids and positions already on the device, after the
    /// attention backend has its step: no host work that depends on the batch's values and
    /// no host/device copy, so a decode step can be captured as a CUDA graph. `rows` picks
    /// the rows that get logits (all when `None`). Returns f32 logits.
    pub fn forward_tensors(
        &self,
        batch: &FlatBatch,
        ids: &Tensor,
        positions: &Tensor,
        rows: Option<&Tensor>,
        attn: &mut dyn AttentionBackend,
    ) -> Result<Tensor> {
        let c = &self.config;
        let n = ids.dims1()?;
        let mut prof = crate::profile::Marks::start(&self.device, || {
            if crate::graphs::is_plain_decode(batch) {
                "decode"
            } else {
                "prefill"
            }
        })?;
        let (cos, sin) = self.rope.gather(positions, self.dtype)?;
        // The residual stream's type: f32 (for a half-precision model, see f32_residual).
        let rdt = if f32_residual() {
            DType::F32
        } else {
            self.dtype
        };
        let mut x = self.embed.index_select(ids, 0)?.to_dtype(rdt)?;
        let (nh, nkv, hd) = (c.num_heads, c.num_kv_heads, c.head_dim);
        let eps = c.rms_norm_eps;
        let first_norm = self.layers[0].attn_norm.to_dtype(rdt)?;
        let mut h = rms_norm(&x, &first_norm, eps)?.to_dtype(self.dtype)?;
        prof.mark("embed+norm")?;
        let neox = matches!(c.rope_style, RopeStyle::Neox);
        // One position per "batch" row: rope over [n, heads, 1, head_dim].
        let rope = |t: Tensor, heads: usize| -> Result<Tensor> {
            if t.device().is_cpu() && t.dtype() == DType::F32 && cos.dtype() == DType::F32 {
                return rope_cpu(&t, &cos, &sin, hd, neox);
            }
            let t = t.reshape((n, heads, 1, hd))?;
            let t = if neox {
                candle_nn::rotary_emb::rope(&t, &cos, &sin)?
            } else {
                candle_nn::rotary_emb::rope_i(&t, &cos, &sin)?
            };
            Ok(t.reshape((n, heads * hd))?)
        };
        for (li, layer) in self.layers.iter().enumerate() {
            let (q, k, v) = match &layer.qkv {
                QkvProj::Split(wq, wk, wv) => {
                    let [q, k, v] = forward_many([wq, wk, wv], &h)?;
                    prof.mark("qkv matmul")?;
                    (rope(q, nh)?, rope(k, nkv)?, v)
                }
                QkvProj::Stacked(w) => {
                    let qkv = w.forward(&h)?;
                    prof.mark("qkv matmul")?;
                    rope_split_qkv(&qkv, &cos, &sin, (nh, nkv, hd), neox, &rope)?
                }
            };
            prof.mark("rope")?;
            dump(|| format!("attn_norm-{li}"), &h)?;
            dump(|| format!("Qcur-{li}"), &q)?;
            dump(|| format!("Kcur-{li}"), &k)?;
            dump(|| format!("Vcur-{li}"), &v)?;
            attn.write_kv(li, &k, &v, batch)?;
            prof.mark("kv write")?;
            let o = attn.attend(li, &q, batch)?;
            prof.mark("attention")?;
            dump(|| format!("kqv_out-{li}"), &o)?;
            let o = layer.wo.forward(&o)?;
            prof.mark("o matmul")?;
            let (x1, h1) = add_rms_norm(&o, &x, &layer.ffn_norm, eps)?;
            prof.mark("add+norm")?;
            dump(|| format!("ffn_inp-{li}"), &x1)?;
            dump(|| format!("ffn_norm-{li}"), &h1)?;
            let gu = match &layer.gate_up {
                GateUpProj::Split(wg, wu) => {
                    let [g, u] = forward_many([wg, wu], &h1)?;
                    (g, Some(u))
                }
                GateUpProj::Stacked(w) => (w.forward(&h1)?, None),
            };
            prof.mark("gate/up matmul")?;
            let act = match gu {
                (g, Some(u)) => silu_mul(&g, &u)?,
                (gu, None) => silu_mul_packed(&gu)?,
            };
            prof.mark("silu*mul")?;
            dump(|| format!("ffn_swiglu-{li}"), &act)?;
            let d = layer.w_down.forward(&act)?;
            dump(|| format!("ffn_out-{li}"), &d)?;
            prof.mark("down matmul")?;
            match self.layers.get(li + 1) {
                Some(next) => (x, h) = add_rms_norm(&d, &x1, &next.attn_norm, eps)?,
                None => x = (x1 + d.to_dtype(rdt)?)?,
            }
            prof.mark("add+norm")?;
        }
        if let Some(rows) = rows {
            x = x.index_select(rows, 0)?;
        }
        let x =
            rms_norm(&x, &self.output_norm.to_dtype(rdt)?, c.rms_norm_eps)?.to_dtype(self.dtype)?;
        dump(|| "result_norm".into(), &x)?;
        let logits = self.output.forward(&x)?.to_dtype(DType::F32)?;
        dump(|| "result_output".into(), &logits)?;
        prof.mark("lm head")?;
        Ok(logits)
    }
}

/// Writes `t` as raw little-endian f32 to `$FERROLM_DUMP_DIR/NAME.f32` when that variable is
/// set (each forward pass overwrites the last): the layer outputs under llama.cpp's tensor
/// names, for `scripts/llamacpp-dump/cmp.py`. Off, it costs one cached check.
fn dump(name: impl FnOnce() -> String, t: &Tensor) -> Result<()> {
    static DIR: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let Some(dir) = DIR.get_or_init(|| std::env::var("FERROLM_DUMP_DIR").ok()) else {
        return Ok(());
    };
    let v = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    let path = format!("{dir}/{}.f32", name());
    std::fs::write(&path, bytes).map_err(|e| EngineError::Config(format!("{path}: {e}")))
}

/// Whether a GGUF tensor type can be held quantized by this model code.
pub fn supported_weight_type(dt: GgmlDType) -> bool {
    matches!(
        dt,
        GgmlDType::F32
            | GgmlDType::F16
            | GgmlDType::BF16
            | GgmlDType::Q4_0
            | GgmlDType::Q4_1
            | GgmlDType::Q5_0
            | GgmlDType::Q5_1
            | GgmlDType::Q8_0
            | GgmlDType::Q2K
            | GgmlDType::Q3K
            | GgmlDType::Q4K
            | GgmlDType::Q5K
            | GgmlDType::Q6K
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_silu_mul_is_llama_cpps_formula_and_close_to_candles() {
        let mut seed = 5;
        let g: Vec<f32> = crate::attention::lcg_uniform(3 * 9000, &mut seed)
            .iter()
            .map(|v| v * 12.0)
            .collect();
        let u = crate::attention::lcg_uniform(3 * 9000, &mut seed);
        // Rows of 9000: 8992 in whole 16-wide steps (the polynomial), an 8-value libm tail.
        let want: Vec<f32> = g
            .iter()
            .zip(&u)
            .enumerate()
            .map(|(i, (&g, &u))| {
                if i % 9000 < 8992 {
                    crate::ggml_arith::silu(g) * u
                } else {
                    g / (1.0 + (-g).exp()) * u
                }
            })
            .collect();
        let g = Tensor::from_vec(g, (3, 9000), &Device::Cpu).unwrap();
        let u = Tensor::from_vec(u, (3, 9000), &Device::Cpu).unwrap();
        let got: Vec<f32> = silu_mul_cpu(&g, &u)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let bits = |v: &[f32]| -> Vec<u32> { v.iter().map(|x| x.to_bits()).collect() };
        assert_eq!(bits(&got), bits(&want));
        let candle: Vec<f32> = (g.silu().unwrap() * &u)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for (a, b) in got.iter().zip(&candle) {
            assert!((a - b).abs() <= 1e-6 * b.abs().max(1.0), "{a} vs {b}");
        }
    }

    #[test]
    fn cpu_rms_norm_and_rope_agree_with_candles() {
        let mut seed = 11;
        let (n, heads, hd) = (5, 3, 64);
        let x = Tensor::from_vec(
            crate::attention::lcg_uniform(n * heads * hd, &mut seed),
            (n, heads * hd),
            &Device::Cpu,
        )
        .unwrap();
        let w = Tensor::from_vec(
            crate::attention::lcg_uniform(heads * hd, &mut seed),
            heads * hd,
            &Device::Cpu,
        )
        .unwrap();
        let close = |a: &Tensor, b: &Tensor, tol: f32| {
            let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
            let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
            for (a, b) in a.iter().zip(&b) {
                assert!((a - b).abs() <= tol * b.abs().max(1.0), "{a} vs {b}");
            }
        };
        close(
            &rms_norm(&x, &w, 1e-5).unwrap(),
            &candle_nn::ops::rms_norm(&x, &w, 1e-5).unwrap(),
            1e-5,
        );
        let table = RopeTable::new(
            RopeAngles::LlamaCpp,
            hd,
            10000.0,
            1.0,
            None,
            64,
            &Device::Cpu,
        )
        .unwrap();
        let pos = Tensor::from_vec(vec![0u32, 1, 7, 30, 63], n, &Device::Cpu).unwrap();
        let (cos, sin) = table.gather(&pos, DType::F32).unwrap();
        for neox in [false, true] {
            let got = rope_cpu(&x, &cos, &sin, hd, neox).unwrap();
            let t = x.reshape((n, heads, 1, hd)).unwrap();
            let want = if neox {
                candle_nn::rotary_emb::rope(&t, &cos, &sin).unwrap()
            } else {
                candle_nn::rotary_emb::rope_i(&t, &cos, &sin).unwrap()
            };
            close(&got, &want.reshape((n, heads * hd)).unwrap(), 1e-6);
        }
    }
}
