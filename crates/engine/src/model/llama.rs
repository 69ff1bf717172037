//! The Llama family (Llama 2/3, Mistral, SmolLM, Qwen2 with QKV bias, Qwen3 with per-head
//! Q/K norms) over one flat batch.
//! Linear layers see `[num_tokens, hidden]`: every token of the step shares one weight read.

use candle_core::{DType, Device, Tensor};

use super::config::{LlamaConfig, RopeStyle};
use super::rope::RopeTable;
use super::switches::ForwardSwitches;
use super::weights::{forward_many, stack_linears, GateUpProj, Layer, Linear, QkvProj};
use crate::attention::AttentionBackend;
use crate::batch::FlatBatch;
use crate::env::ModelSwitches;
use crate::error::{EngineError, Result};
use crate::instrument::dump;
use crate::ops::{add_rms_norm, rms_norm, rope_cpu, rope_split_qkv, silu_mul, silu_mul_packed};

pub struct LlamaModel {
    pub config: LlamaConfig,
    pub(super) device: Device,
    /// Activations' type: f32 for GGUF weights (quantized matmuls take f32), the weights'
    /// type for dense ones.
    pub(super) dtype: DType,
    pub(super) embed: Tensor,
    pub(super) layers: Vec<Layer>,
    pub(super) output_norm: Tensor,
    pub(super) output: Linear,
    pub(super) rope: RopeTable,
    /// Gemma 3's sliding-window layers' table (their own RoPE base).
    pub(super) rope_local: Option<RopeTable>,
    /// Bytes of weights as held (for the weight-read floor).
    pub(super) weight_bytes: usize,
    /// The environment's switches for the forward pass (set by the loader).
    pub(super) switches: ForwardSwitches,
}

impl LlamaModel {
    /// Runs the forward pass with these switches (the loader passes the program's).
    pub fn set_switches(&mut self, switches: &ModelSwitches) {
        self.switches = ForwardSwitches::new(switches);
    }

    /// The environment's switches the model was given.
    pub fn switches(&self) -> &ModelSwitches {
        &self.switches.env
    }

    /// Stacks each layer's Q/K/V weights into one matrix and its gate/up weights into
    /// another (dense weights only), so a layer runs two matmuls where it ran five, and
    /// on CUDA one kernel splits and rotates Q/K/V. The numbers are the same weights.
    /// Returns whether anything was stacked.
    pub fn stack_projections(&mut self) -> Result<bool> {
        let mut any = false;
        for layer in &mut self.layers {
            // Q/K norms sit between the projection and RoPE: the fused split-and-rotate
            // kernel has no place for them, so those layers keep Q/K/V split.
            let qk_norm = layer.q_norm.is_some() || layer.k_norm.is_some();
            if let (QkvProj::Split(q, k, v), false) = (&layer.qkv, qk_norm) {
                if let Some(w) = stack_linears(&[q, k, v])? {
                    layer.qkv = QkvProj::Stacked(w);
                    any = true;
                }
            }
            // Gemma's GELU has no packed kernel: its gate and up stay apart.
            if let (GateUpProj::Split(g, u), false) = (&layer.gate_up, self.config.gemma.is_some())
            {
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
        self.config
            .kv_layout(1, block_size)
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
        let sw = &self.switches;
        let kn = sw.kernels;
        let dump =
            |name: &dyn Fn() -> String, t: &Tensor| dump(sw.env.dump_dir.as_deref(), name, t);
        let mut prof = crate::instrument::Marks::start(&self.device, sw.env.profile, || {
            if crate::batch::is_plain_decode(batch) {
                "decode"
            } else {
                "prefill"
            }
        })?;
        let (cos, sin) = self.rope.gather(positions, self.dtype)?;
        let local = match &self.rope_local {
            Some(t) => Some(t.gather(positions, self.dtype)?),
            None => None,
        };
        let sliding = |li: usize| {
            c.gemma
                .as_ref()
                .is_some_and(|g| g.sliding_layers.get(li).copied().unwrap_or(false))
        };
        // The residual stream's type: f32 (for a half-precision model, see
        // `env::ModelSwitches::f32_residual`).
        let rdt = if sw.env.f32_residual {
            DType::F32
        } else {
            self.dtype
        };
        let mut x = self.embed.index_select(ids, 0)?.to_dtype(rdt)?;
        if let Some(g) = &c.gemma {
            x = (x * g.embed_scale as f64)?;
        }
        let (nh, nkv, hd) = (c.num_heads, c.num_kv_heads, c.head_dim);
        let eps = c.rms_norm_eps;
        let first_norm = self.layers[0].attn_norm.to_dtype(rdt)?;
        let mut h = rms_norm(&x, &first_norm, eps)?.to_dtype(self.dtype)?;
        prof.mark("embed+norm")?;
        let neox = matches!(c.rope_style, RopeStyle::Neox);
        // One position per "batch" row: rope over [n, heads, 1, head_dim], with the global
        // layers' table or (Gemma's sliding-window layers) the local one.
        let rope_with = |t: Tensor, heads: usize, cos: &Tensor, sin: &Tensor| -> Result<Tensor> {
            if t.device().is_cpu() && t.dtype() == DType::F32 && cos.dtype() == DType::F32 {
                return rope_cpu(&t, &cos, &sin, hd, neox);
            }
            let t = t.reshape((n, heads, 1, hd))?;
            let t = if neox {
                candle_nn::rotary_emb::rope(&t, cos, sin)?
            } else {
                candle_nn::rotary_emb::rope_i(&t, cos, sin)?
            };
            Ok(t.reshape((n, heads * hd))?)
        };
        let rope = |t: Tensor, heads: usize| rope_with(t, heads, &cos, &sin);
        // Qwen3's per-head RMSNorm of Q or K (`[n, heads * head_dim]`), when the layer has it.
        let head_norm = |t: Tensor, w: &Option<Tensor>, heads: usize| -> Result<Tensor> {
            match w {
                None => Ok(t),
                Some(w) => {
                    Ok(rms_norm(&t.reshape((n * heads, hd))?, w, eps)?.reshape((n, heads * hd))?)
                }
            }
        };
        for (li, layer) in self.layers.iter().enumerate() {
            let (q, k, v) = match &layer.qkv {
                QkvProj::Split(wq, wk, wv) => {
                    let [q, k, v] = forward_many([wq, wk, wv], &h, kn)?;
                    prof.mark("qkv matmul")?;
                    let q = head_norm(q, &layer.q_norm, nh)?;
                    let k = head_norm(k, &layer.k_norm, nkv)?;
                    match (&local, sliding(li)) {
                        (Some((cl, sl)), true) => {
                            (rope_with(q, nh, cl, sl)?, rope_with(k, nkv, cl, sl)?, v)
                        }
                        _ => (rope(q, nh)?, rope(k, nkv)?, v),
                    }
                }
                QkvProj::Stacked(w) => {
                    let qkv = w.forward(&h, kn)?;
                    prof.mark("qkv matmul")?;
                    rope_split_qkv(&qkv, &cos, &sin, (nh, nkv, hd), neox, &rope, kn.fused_ops)?
                }
            };
            prof.mark("rope")?;
            dump(&|| format!("attn_norm-{li}"), &h)?;
            dump(&|| format!("Qcur-{li}"), &q)?;
            dump(&|| format!("Kcur-{li}"), &k)?;
            dump(&|| format!("Vcur-{li}"), &v)?;
            attn.write_kv(li, &k, &v, batch)?;
            prof.mark("kv write")?;
            let o = attn.attend(li, &q, batch)?;
            prof.mark("attention")?;
            dump(&|| format!("kqv_out-{li}"), &o)?;
            let mut o = layer.wo.forward(&o, kn)?;
            if let Some(w) = &layer.post_attn_norm {
                o = rms_norm(&o, w, eps)?;
            }
            prof.mark("o matmul")?;
            let (x1, h1) = add_rms_norm(&o, &x, &layer.ffn_norm, eps, kn.fused_ops)?;
            prof.mark("add+norm")?;
            dump(&|| format!("ffn_inp-{li}"), &x1)?;
            dump(&|| format!("ffn_norm-{li}"), &h1)?;
            let gu = match &layer.gate_up {
                GateUpProj::Split(wg, wu) => {
                    let [g, u] = forward_many([wg, wu], &h1, kn)?;
                    (g, Some(u))
                }
                GateUpProj::Stacked(w) => (w.forward(&h1, kn)?, None),
            };
            prof.mark("gate/up matmul")?;
            let act = match gu {
                // Gemma: GELU with the tanh approximation (transformers' gelu_pytorch_tanh).
                (g, Some(u)) if c.gemma.is_some() => (g.gelu()? * u)?,
                (g, Some(u)) => silu_mul(&g, &u, kn.fused_ops)?,
                (gu, None) => silu_mul_packed(&gu, kn.fused_ops)?,
            };
            prof.mark("silu*mul")?;
            dump(&|| format!("ffn_swiglu-{li}"), &act)?;
            let mut d = layer.w_down.forward(&act, kn)?;
            if let Some(w) = &layer.post_ffn_norm {
                d = rms_norm(&d, w, eps)?;
            }
            dump(&|| format!("ffn_out-{li}"), &d)?;
            prof.mark("down matmul")?;
            match self.layers.get(li + 1) {
                Some(next) => (x, h) = add_rms_norm(&d, &x1, &next.attn_norm, eps, kn.fused_ops)?,
                None => x = (x1 + d.to_dtype(rdt)?)?,
            }
            prof.mark("add+norm")?;
        }
        if let Some(rows) = rows {
            x = x.index_select(rows, 0)?;
        }
        let x =
            rms_norm(&x, &self.output_norm.to_dtype(rdt)?, c.rms_norm_eps)?.to_dtype(self.dtype)?;
        dump(&|| "result_norm".into(), &x)?;
        let logits = self.output.forward(&x, kn)?.to_dtype(DType::F32)?;
        dump(&|| "result_output".into(), &logits)?;
        prof.mark("lm head")?;
        Ok(logits)
    }
}
