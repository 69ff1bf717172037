//! In-situ quantization (`--quantization`, as mistral.rs's ISQ): a model's float linear
//! layers quantized at load into our CPU kernels' layouts.

use std::time::Instant;

use candle_core::quantized::QMatMul;
use candle_core::{DType, Tensor};

use super::weights::{GateUpProj, Linear, QkvProj, Weight};
use super::LlamaModel;
use crate::error::{EngineError, Result};
use crate::quant::{InSituType, QuantLinear, QuantWeights};

/// What in-situ quantization did.
#[derive(Debug, Clone)]
pub struct InSituReport {
    pub ty: InSituType,
    /// Linear layers quantized, and those kept (already quantized, or a width that is not a
    /// multiple of the type's block).
    pub quantized: usize,
    pub kept: usize,
    /// Of the quantized, those a Q4_K request put in Q8_0 (a width not a multiple of 256).
    pub fallbacks: usize,
    /// Bytes of the quantized layers' weights before and after.
    pub bytes_before: usize,
    pub bytes_after: usize,
    pub seconds: f64,
}

/// A float weight's `[n, k]` f32 values, if the layer holds one.
fn float_weight(w: &Weight) -> Option<&Tensor> {
    match w {
        Weight::Dense(t) => Some(t),
        Weight::Quant(QuantLinear::Candle(QMatMul::Tensor(t) | QMatMul::TensorF16(t))) => Some(t),
        Weight::Quant(_) => None,
    }
}

/// Where quantized blocks come from: the float weights, or (dummy models on a GPU) random
/// valid blocks seeded per layer, as vLLM's dummy loader fills quantized parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InSituSource {
    Weights,
    Random { seed: u64 },
}

fn quantize_linear(
    l: &mut Linear,
    ty: InSituType,
    source: InSituSource,
    r: &mut InSituReport,
) -> Result<()> {
    let Some(t) = float_weight(&l.weight) else {
        r.kept += 1;
        return Ok(());
    };
    let (n, k) = t.dims2()?;
    let before = n * k * t.dtype().size_in_bytes();
    // A width that is not a multiple of 256 cannot be Q4_K: such rows take Q8_0, as
    // llama-quantize's K-quant mixes fall back to a 32-value type.
    let fallback = (ty == InSituType::Q4K && k % 256 != 0).then_some(InSituType::Q8_0);
    let ty = fallback.unwrap_or(ty);
    if !k.is_multiple_of(ty.block_len()) {
        r.kept += 1;
        return Ok(());
    }
    let (weight, after) = if t.device().is_cpu() {
        let data = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let Some(w) = QuantWeights::quantize(ty, &data, n, k) else {
            r.kept += 1;
            return Ok(());
        };
        let after = w.size_bytes();
        (QuantLinear::Own { w, n, k }, after)
    } else {
        device_blocks(t, ty, source, r.quantized as u64)?
    };
    r.fallbacks += usize::from(fallback.is_some());
    r.bytes_before += before;
    r.bytes_after += after;
    r.quantized += 1;
    l.weight = Weight::Quant(weight);
    Ok(())
}

/// GGUF-order blocks of `ty` for a float weight on a GPU, uploaded for our CUDA kernels.
#[cfg(feature = "cuda")]
fn device_blocks(
    t: &Tensor,
    ty: InSituType,
    source: InSituSource,
    layer: u64,
) -> Result<(QuantLinear, usize)> {
    use crate::quant::device::{device_type, quantize_gguf, random_blocks, CudaQuantWeight};
    let (n, k) = t.dims2()?;
    let (dt, raw) = match source {
        InSituSource::Random { seed } => {
            let dt = device_type(ty);
            // The dummy weights' own bound: uniform in ±sqrt(3 / fan_in).
            let bound = (3.0 / k as f32).sqrt();
            (
                dt,
                random_blocks(dt, n, k, seed ^ layer.wrapping_mul(0x51_7CC1), bound),
            )
        }
        InSituSource::Weights => {
            let data = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            quantize_gguf(ty, &data, n, k)
                .ok_or_else(|| EngineError::Shape(format!("{ty:?}: [{n}, {k}]")))?
        }
    };
    let w = CudaQuantWeight::upload(t.device(), dt, &raw, n, k)?;
    let bytes = w.size_bytes();
    Ok((QuantLinear::Device(w), bytes))
}

#[cfg(not(feature = "cuda"))]
fn device_blocks(
    _: &Tensor,
    _: InSituType,
    _: InSituSource,
    _: u64,
) -> Result<(QuantLinear, usize)> {
    Err(EngineError::Config(
        "--quantization on a GPU needs a build with feature cuda".into(),
    ))
}

/// A quantized layer's weight as an f32 dense matrix; returns the bytes (before, after).
fn dequantize_linear(l: &mut Linear) -> Result<(usize, usize)> {
    let (dense, before) = match &l.weight {
        Weight::Quant(QuantLinear::Own { w, n, k }) => (
            Tensor::from_vec(w.dequantize(*n, *k), (*n, *k), &candle_core::Device::Cpu)?,
            w.size_bytes(),
        ),
        Weight::Quant(QuantLinear::Candle(QMatMul::QTensor(qt))) => (
            qt.dequantize(&candle_core::Device::Cpu)?,
            qt.storage_size_in_bytes(),
        ),
        _ => return Ok((0, 0)),
    };
    let after = dense.elem_count() * 4;
    l.weight = Weight::Dense(dense);
    Ok((before, after))
}

impl LlamaModel {
    /// Every linear layer, mutably (Q/K/V and gate/up as they are held).
    fn linears_mut(&mut self) -> Vec<&mut Linear> {
        let mut v: Vec<&mut Linear> = Vec::new();
        for layer in &mut self.layers {
            match &mut layer.qkv {
                QkvProj::Split(q, k, w) => v.extend([q, k, w]),
                QkvProj::Stacked(l) => v.push(l),
            }
            v.push(&mut layer.wo);
            match &mut layer.gate_up {
                GateUpProj::Split(g, u) => v.extend([g, u]),
                GateUpProj::Stacked(l) => v.push(l),
            }
            v.push(&mut layer.w_down);
        }
        v.push(&mut self.output);
        v
    }

    /// Replaces every quantized linear layer by its f32 dequantization (CPU): the same
    /// weights unquantized, the reference a quantization's cost is measured against.
    pub fn dequantize_linears(&mut self) -> Result<()> {
        if !self.device.is_cpu() {
            return Err(EngineError::Config(
                "dequantize_linears: CPU models only".into(),
            ));
        }
        let (mut before, mut after) = (0, 0);
        for l in self.linears_mut() {
            let (b, a) = dequantize_linear(l)?;
            before += b;
            after += a;
        }
        self.weight_bytes = self.weight_bytes + after - before;
        Ok(())
    }

    /// Quantizes every float linear layer into `ty` (on the CPU into our CPU kernels'
    /// layouts, f32 models only, as those take f32 activations; on a GPU into GGUF blocks for
    /// the CUDA kernels, any float type). Errors when nothing could be quantized.
    pub fn quantize_in_situ(&mut self, ty: InSituType) -> Result<InSituReport> {
        self.quantize_in_situ_from(ty, InSituSource::Weights)
    }

    /// [`Self::quantize_in_situ`] with the blocks' source (random ones for dummy models on a
    /// GPU; the CPU always quantizes the weights).
    pub fn quantize_in_situ_from(
        &mut self,
        ty: InSituType,
        source: InSituSource,
    ) -> Result<InSituReport> {
        if self.device.is_cpu() && self.dtype != DType::F32 {
            return Err(EngineError::Config(format!(
                "--quantization with {:?} weights: quantized layers take f32 activations; load with --dtype float32 (the CPU's auto)",
                self.dtype
            )));
        }
        let t0 = Instant::now();
        let mut r = InSituReport {
            ty,
            quantized: 0,
            kept: 0,
            fallbacks: 0,
            bytes_before: 0,
            bytes_after: 0,
            seconds: 0.0,
        };
        // The output head keeps 8 bits under a 4-bit type, as llama-quantize keeps it in more
        // bits than the rest (Q6_K there; Q8_0 here, our highest): it decides every token.
        let head_ty = match ty {
            InSituType::Q4_0 | InSituType::Q4K => InSituType::Q8_0,
            other => other,
        };
        let mut linears = self.linears_mut();
        let head = linears
            .pop()
            .expect("the output head is the last linear layer");
        for l in linears {
            quantize_linear(l, ty, source, &mut r)?;
        }
        quantize_linear(head, head_ty, source, &mut r)?;
        if r.quantized == 0 {
            return Err(EngineError::Config(format!(
                "--quantization {ty:?}: no float linear layer to quantize (a quantized GGUF keeps its own blocks)"
            )));
        }
        self.weight_bytes = self.weight_bytes + r.bytes_after - r.bytes_before;
        r.seconds = t0.elapsed().as_secs_f64();
        tracing::info!(
            "in-situ quantization to {:?}: {} linear layers ({} of them Q8_0 for their width, {} kept), {:.1} MiB -> {:.1} MiB in {:.1} s",
            ty,
            r.quantized,
            r.fallbacks,
            r.kept,
            r.bytes_before as f64 / (1 << 20) as f64,
            r.bytes_after as f64 / (1 << 20) as f64,
            r.seconds
        );
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::LlamaConfig;
    use candle_core::Device;

    fn tiny() -> LlamaModel {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../models/configs/tiny-llama.json"
        );
        let cfg = LlamaConfig::from_hf_json(std::path::Path::new(path)).unwrap();
        LlamaModel::dummy(cfg, DType::F32, &Device::Cpu, 3).unwrap()
    }

    /// Logits of every position of a fixed prompt (one prefill, the production CPU path).
    fn logits(m: &LlamaModel) -> Vec<f32> {
        use crate::batch::{FlatBatch, LogitsWanted};
        let mut runner = crate::worker::ModelRunner::new_cpu(m, 4, 16);
        let mut batch = FlatBatch::default();
        batch.push_seq(
            &[1, 7, 42, 99, 5, 300, 11, 2],
            0,
            &[0],
            16,
            LogitsWanted::All,
        );
        let out = runner.execute(&batch).unwrap();
        out.flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn every_float_linear_is_quantized_and_the_logits_stay_close() {
        let base = tiny();
        let want = logits(&base);
        for (ty, tol) in [
            (InSituType::Q8_0, 0.03),
            (InSituType::Q4_0, 0.3),
            (InSituType::Q4K, 0.25),
        ] {
            let mut m = tiny();
            let r = m.quantize_in_situ(ty).unwrap();
            // 4 layers x 7 linears + the output head; the MLP's down projection (width 1376)
            // is no multiple of 256: Q8_0 under q4_k.
            assert_eq!((r.quantized, r.kept), (29, 0), "{ty:?}");
            assert_eq!(r.fallbacks, if ty == InSituType::Q4K { 4 } else { 0 });
            assert!(r.bytes_after * 3 < r.bytes_before, "{r:?}");
            let got = logits(&m);
            // Relative L2 error of the logits: what 8 or 4 bits per weight cost on these random
            // weights (measured 2026-12-03: Q8_0 0.019, Q4_0 0.194, Q4_K 0.157; the head at 8 bits).
            let err: f32 = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b) * (a - b))
                .sum::<f32>()
                .sqrt();
            let norm: f32 = want.iter().map(|b| b * b).sum::<f32>().sqrt();
            eprintln!("{ty:?}: relative logit error {}", err / norm);
            assert!(
                err <= tol * norm,
                "{ty:?}: relative logit error {} over {tol}",
                err / norm
            );
            // Quantizing again finds nothing left to do.
            assert!(m.quantize_in_situ(ty).is_err());
        }
    }
}
