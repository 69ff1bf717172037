//! The Llama family (Llama 2/3, Mistral, SmolLM, Qwen2 with QKV bias) over one flat batch.
//! Linear layers see `[num_tokens, hidden]`: every token of the step shares one weight read.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};

use super::config::{LlamaConfig, RopeStyle};
use super::rope::RopeTable;
use crate::attention::AttentionBackend;
use crate::batch::FlatBatch;
use crate::error::{EngineError, Result};
use crate::gguf::GgufFile;
use crate::quant::QuantLinear;

/// A linear layer over GGUF weights (kept quantized), with an optional bias.
struct Linear {
    weight: QuantLinear,
    bias: Option<Tensor>,
}

impl Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.weight.forward(x)?;
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}

struct Layer {
    attn_norm: Tensor,
    wq: Linear,
    wk: Linear,
    wv: Linear,
    wo: Linear,
    ffn_norm: Tensor,
    w_gate: Linear,
    w_up: Linear,
    w_down: Linear,
}

pub struct LlamaModel {
    pub config: LlamaConfig,
    device: Device,
    embed: Tensor,
    layers: Vec<Layer>,
    output_norm: Tensor,
    output: QuantLinear,
    rope: RopeTable,
}

/// candle-nn's fused RMSNorm: one row at a time, reduced over the hidden dim only, so
/// batch-invariant.
fn rms_norm(x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
    Ok(candle_nn::ops::rms_norm(x, w, eps)?)
}

fn silu(x: &Tensor) -> Result<Tensor> {
    Ok(x.silu()?)
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
                weight: QuantLinear::new(
                    w,
                    &gguf.tensor_bytes(&format!("{name}.weight"))?,
                    device,
                )?,
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
        let mut layers = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            let p = format!("blk.{i}");
            layers.push(Layer {
                attn_norm: dense(&format!("{p}.attn_norm.weight"))?,
                wq: linear(&format!("{p}.attn_q"), nh * hd, h)?,
                wk: linear(&format!("{p}.attn_k"), nkv * hd, h)?,
                wv: linear(&format!("{p}.attn_v"), nkv * hd, h)?,
                wo: linear(&format!("{p}.attn_output"), h, nh * hd)?,
                ffn_norm: dense(&format!("{p}.ffn_norm.weight"))?,
                w_gate: linear(&format!("{p}.ffn_gate"), ff, h)?,
                w_up: linear(&format!("{p}.ffn_up"), ff, h)?,
                w_down: linear(&format!("{p}.ffn_down"), h, ff)?,
            });
        }
        let output_norm = dense("output_norm.weight")?;
        let freq_factors = if gguf.tensors.contains_key("rope_freqs.weight") {
            Some(dense("rope_freqs.weight")?.to_vec1::<f32>()?)
        } else {
            None
        };
        let rope = RopeTable::new(
            hd,
            c.rope_theta,
            c.rope_linear_scale,
            freq_factors.as_deref(),
            c.max_position_embeddings,
            device,
        )?;
        gguf.check_unchanged()?;
        Ok(Self {
            config,
            device: device.clone(),
            embed,
            layers,
            output_norm,
            output,
            rope,
        })
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
        let (cos, sin) = self.rope.gather(&positions, DType::F32)?;
        let mut x = self.embed.index_select(&ids, 0)?;
        let (nh, nkv, hd) = (c.num_heads, c.num_kv_heads, c.head_dim);
        for (li, layer) in self.layers.iter().enumerate() {
            let h = rms_norm(&x, &layer.attn_norm, c.rms_norm_eps)?;
            let q = layer.wq.forward(&h)?;
            let k = layer.wk.forward(&h)?;
            let v = layer.wv.forward(&h)?;
            // One position per "batch" row: rope over [n, heads, 1, head_dim].
            let rope = |t: Tensor, heads: usize| -> Result<Tensor> {
                let t = t.reshape((n, heads, 1, hd))?;
                let t = match c.rope_style {
                    RopeStyle::Interleaved => candle_nn::rotary_emb::rope_i(&t, &cos, &sin)?,
                    RopeStyle::Neox => candle_nn::rotary_emb::rope(&t, &cos, &sin)?,
                };
                Ok(t.reshape((n, heads * hd))?)
            };
            let q = rope(q, nh)?;
            let k = rope(k, nkv)?;
            attn.write_kv(li, &k, &v, batch)?;
            let o = attn.attend(li, &q, batch)?;
            x = (x + layer.wo.forward(&o)?)?;
            let h = rms_norm(&x, &layer.ffn_norm, c.rms_norm_eps)?;
            let g = silu(&layer.w_gate.forward(&h)?)?;
            let u = layer.w_up.forward(&h)?;
            x = (x + layer.w_down.forward(&(g * u)?)?)?;
        }
        let idx: Vec<u32> = batch.logits_indices.iter().map(|&i| i as u32).collect();
        let idx = Tensor::from_slice(&idx, idx.len(), &self.device)?;
        let x = x.index_select(&idx, 0)?;
        let x = rms_norm(&x, &self.output_norm, c.rms_norm_eps)?;
        Ok(self.output.forward(&x)?.to_dtype(DType::F32)?)
    }
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
