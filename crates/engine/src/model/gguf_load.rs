//! A Llama-family model's weights from a GGUF file.

use candle_core::quantized::QTensor;
use candle_core::{DType, Device, Tensor};

use super::config::LlamaConfig;
use super::llama::LlamaModel;
use super::rope::{RopeAngles, RopeTable};
use super::switches::ForwardSwitches;
use super::weights::{GateUpProj, Layer, Linear, QkvProj, Weight};
use crate::error::{EngineError, Result};
use crate::gguf::{GgufFile, GgufTensors};
use crate::quant::QuantLinear;

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
        let (h, nh, nkv, hd, ff) = c.dims();
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
        let qk_norm = |name: &str| -> Result<Option<Tensor>> {
            if !c.qk_norm {
                return Ok(None);
            }
            let t = dense(name)?;
            if t.dims() != [hd] {
                return Err(EngineError::BadModelFile {
                    path: gguf.path().to_path_buf(),
                    message: format!("tensor {name} has shape {:?}, expected [{hd}]", t.dims()),
                });
            }
            Ok(Some(t))
        };
        // Gemma 3's norms after attention and MLP (their weights already 1 + w in the file).
        let post_norm = |name: &str| -> Result<Option<Tensor>> {
            if c.gemma.is_none() {
                return Ok(None);
            }
            let t = dense(name)?;
            if t.dims() != [h] {
                return Err(EngineError::BadModelFile {
                    path: gguf.path().to_path_buf(),
                    message: format!("tensor {name} has shape {:?}, expected [{h}]", t.dims()),
                });
            }
            Ok(Some(t))
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
                q_norm: qk_norm(&format!("{p}.attn_q_norm.weight"))?,
                k_norm: qk_norm(&format!("{p}.attn_k_norm.weight"))?,
                wo: linear(&format!("{p}.attn_output"), h, nh * hd)?,
                ffn_norm: dense(&format!("{p}.ffn_norm.weight"))?,
                gate_up: GateUpProj::Split(
                    linear(&format!("{p}.ffn_gate"), ff, h)?,
                    linear(&format!("{p}.ffn_up"), ff, h)?,
                ),
                w_down: linear(&format!("{p}.ffn_down"), h, ff)?,
                post_attn_norm: post_norm(&format!("{p}.post_attention_norm.weight"))?,
                post_ffn_norm: post_norm(&format!("{p}.post_ffw_norm.weight"))?,
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
        // On the CPU llama.cpp's angles, so GGUF models match llama.cpp bit for bit.
        let angles = if device.is_cpu() {
            RopeAngles::LlamaCpp
        } else {
            RopeAngles::Exact
        };
        let (rope, rope_local) = RopeTable::for_layers(&config, angles, device)?;
        Ok(Self {
            rope,
            rope_local,
            config,
            device: device.clone(),
            dtype: DType::F32,
            embed,
            layers,
            output_norm,
            output,
            weight_bytes,
            switches: ForwardSwitches::default(),
        })
    }
}
