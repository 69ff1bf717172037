//! A Llama-family model's weights from a Hugging Face checkpoint's safetensors (one file or
//! shards), by transformers' tensor names, each checked against the config's shapes, held
//! dense in the model's dtype.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use ferrolm_formats::hf::safetensors::{Checkpoint, TensorDtype};

use super::config::LlamaConfig;
use super::llama::LlamaModel;
use super::rope::{RopeAngles, RopeTable};
use super::switches::ForwardSwitches;
use super::weights::{GateUpProj, Layer, Linear, QkvProj, Weight};
use crate::error::{EngineError, Result};

/// One tensor of the checkpoint as a candle tensor of `dtype` on `device`, its shape checked.
fn load(
    ckpt: &Checkpoint,
    dir: &Path,
    name: &str,
    want: &[usize],
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    let t = ckpt.tensor(name)?;
    if t.shape != want {
        return Err(EngineError::BadModelFile {
            path: ckpt.file_of(name).map_or(dir, |f| f.path()).to_path_buf(),
            message: format!("tensor {name} has shape {:?}, expected {want:?}", t.shape),
        });
    }
    let src = match t.dtype {
        TensorDtype::F32 => DType::F32,
        TensorDtype::F16 => DType::F16,
        TensorDtype::BF16 => DType::BF16,
        other => {
            return Err(EngineError::Unsupported {
                path: dir.to_path_buf(),
                message: format!(
                    "tensor {name} is {} (weights are F32, F16 or BF16)",
                    other.name()
                ),
            })
        }
    };
    let host = Tensor::from_raw_buffer(t.bytes, src, t.shape, &Device::Cpu)?;
    Ok(host.to_dtype(dtype)?.to_device(device)?)
}

impl LlamaModel {
    /// The model in `ckpt` (the checkpoint folder `dir`), held in `dtype` on `device`.
    pub fn from_safetensors(
        ckpt: &Checkpoint,
        dir: &Path,
        config: LlamaConfig,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let c = &config;
        let (h, nh, nkv, hd, ff) = c.dims();
        let get = |name: &str, shape: &[usize]| load(ckpt, dir, name, shape, dtype, device);
        let mut weight_bytes = 0usize;
        let mut linear = |name: &str, out: usize, inp: usize| -> Result<Linear> {
            weight_bytes += out * inp * dtype.size_in_bytes();
            let bias_name = format!("{name}.bias");
            let bias = if ckpt.contains(&bias_name) {
                Some(get(&bias_name, &[out])?)
            } else {
                None
            };
            Ok(Linear {
                weight: Weight::Dense(get(&format!("{name}.weight"), &[out, inp])?),
                bias,
            })
        };
        // Gemma's RMSNorm scales by 1 + w: held that way, as llama.cpp's converter writes it.
        let gemma = c.gemma.is_some();
        let norm_w = |name: &str, n: usize| -> Result<Tensor> {
            let w = get(name, &[n])?;
            Ok(if gemma {
                (w.to_dtype(DType::F32)? + 1.0)?.to_dtype(dtype)?
            } else {
                w
            })
        };
        let mut layers = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            let p = format!("model.layers.{i}");
            let attn = format!("{p}.self_attn");
            let norm = |name: &str| norm_w(name, hd).map(Some);
            // Gemma's post_attention_layernorm follows attention; Llama's precedes the MLP.
            let (ffn_norm, post_attn_norm, post_ffn_norm) = if gemma {
                (
                    norm_w(&format!("{p}.pre_feedforward_layernorm.weight"), h)?,
                    Some(norm_w(&format!("{p}.post_attention_layernorm.weight"), h)?),
                    Some(norm_w(
                        &format!("{p}.post_feedforward_layernorm.weight"),
                        h,
                    )?),
                )
            } else {
                (
                    get(&format!("{p}.post_attention_layernorm.weight"), &[h])?,
                    None,
                    None,
                )
            };
            let wq = linear(&format!("{attn}.q_proj"), nh * hd, h)?;
            let wk = linear(&format!("{attn}.k_proj"), nkv * hd, h)?;
            let wv = linear(&format!("{attn}.v_proj"), nkv * hd, h)?;
            if c.qkv_bias && (wq.bias.is_none() || wk.bias.is_none() || wv.bias.is_none()) {
                return Err(EngineError::BadModelFile {
                    path: dir.to_path_buf(),
                    message: format!("{attn}: the config asks for Q/K/V biases; a bias is missing"),
                });
            }
            layers.push(Layer {
                attn_norm: norm_w(&format!("{p}.input_layernorm.weight"), h)?,
                qkv: QkvProj::Split(wq, wk, wv),
                q_norm: if c.qk_norm {
                    norm(&format!("{attn}.q_norm.weight"))?
                } else {
                    None
                },
                k_norm: if c.qk_norm {
                    norm(&format!("{attn}.k_norm.weight"))?
                } else {
                    None
                },
                wo: linear(&format!("{attn}.o_proj"), h, nh * hd)?,
                ffn_norm,
                gate_up: GateUpProj::Split(
                    linear(&format!("{p}.mlp.gate_proj"), ff, h)?,
                    linear(&format!("{p}.mlp.up_proj"), ff, h)?,
                ),
                w_down: linear(&format!("{p}.mlp.down_proj"), h, ff)?,
                post_attn_norm,
                post_ffn_norm,
            });
        }
        let embed = get("model.embed_tokens.weight", &[c.vocab_size, h])?;
        weight_bytes += c.vocab_size * h * dtype.size_in_bytes();
        let output = if c.tie_word_embeddings || !ckpt.contains("lm_head.weight") {
            if !c.tie_word_embeddings {
                return Err(EngineError::BadModelFile {
                    path: dir.to_path_buf(),
                    message: "lm_head.weight is missing and tie_word_embeddings is false".into(),
                });
            }
            embed.clone()
        } else {
            weight_bytes += c.vocab_size * h * dtype.size_in_bytes();
            get("lm_head.weight", &[c.vocab_size, h])?
        };
        let output_norm = norm_w("model.norm.weight", h)?;
        // transformers' angles (exact), the reference these checkpoints are checked against.
        let (rope, rope_local) = RopeTable::for_layers(c, RopeAngles::Exact, device)?;
        Ok(Self {
            rope_local,
            device: device.clone(),
            dtype,
            embed,
            layers,
            output_norm,
            output: Linear {
                weight: Weight::Dense(output),
                bias: None,
            },
            rope,
            weight_bytes,
            switches: ForwardSwitches::default(),
            config,
        })
    }
}
