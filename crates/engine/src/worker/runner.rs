//! The model runner: the model plus its paged KV cache (an attention backend for the
//! model's device) and, on a GPU, its captured decode graphs; executes one flat batch per call.

#[cfg(feature = "cuda")]
use candle_core::DType;
use candle_core::{Device, Tensor, D};

use crate::attention::{AttentionBackend, CpuPagedAttention, CpuReferenceAttention};
use crate::batch::FlatBatch;
use crate::error::{EngineError, Result};
use crate::model::LlamaModel;
use crate::sampling::argmax;

/// The model plus its paged KV cache: executes one flat batch per call.
pub struct ModelRunner<'m> {
    pub model: &'m LlamaModel,
    pub attn: Box<dyn AttentionBackend + 'm>,
    /// Decode steps replayed from CUDA graphs (see [`Self::capture_decode_graphs`]).
    #[cfg(feature = "cuda")]
    pub graphs: Option<super::graphs::DecodeGraphs>,
}

impl<'m> ModelRunner<'m> {
    /// A runner with a CPU KV cache of `num_blocks` blocks of `block_size` tokens.
    pub fn new_cpu(model: &'m LlamaModel, num_blocks: usize, block_size: usize) -> Self {
        let layout = model.config.kv_layout(num_blocks, block_size);
        let attn = CpuPagedAttention::new(layout, model.config.num_heads)
            .with_layers(model.config.layer_attention());
        Self::with_backend(model, Box::new(attn))
    }

    /// A CPU runner with the f32 reference attention ([`CpuReferenceAttention`]): the
    /// reference the GPU checks compare against.
    pub fn new_cpu_reference(model: &'m LlamaModel, num_blocks: usize, block_size: usize) -> Self {
        let layout = model.config.kv_layout(num_blocks, block_size);
        let attn = CpuReferenceAttention::new(layout, model.config.num_heads)
            .with_layers(model.config.layer_attention());
        Self::with_backend(model, Box::new(attn))
    }

    fn with_backend(model: &'m LlamaModel, attn: Box<dyn AttentionBackend + 'm>) -> Self {
        Self {
            model,
            attn,
            #[cfg(feature = "cuda")]
            graphs: None,
        }
    }

    /// A runner for the model's device: the CPU cache, or (feature `cuda`) a CUDA cache of
    /// the model's activation type.
    pub fn new(model: &'m LlamaModel, num_blocks: usize, block_size: usize) -> Result<Self> {
        match model.device() {
            Device::Cpu => Ok(Self::new_cpu(model, num_blocks, block_size)),
            #[cfg(feature = "cuda")]
            Device::Cuda(dev) => {
                use crate::attention::{CudaPagedAttention, DecodeKernel};
                let layout = model.config.kv_layout(num_blocks, block_size);
                let c = &model.config;
                // Said at load, not as a missing kernel symbol in the first step.
                if !crate::attention::cuda::HEAD_DIMS.contains(&c.head_dim) {
                    return Err(EngineError::Unavailable(format!(
                        "head size {}: the CUDA attention kernels are built for head sizes {:?}",
                        c.head_dim,
                        crate::attention::cuda::HEAD_DIMS
                    )));
                }
                let nh = c.num_heads;
                let dk = DecodeKernel::choose(model.switches().decode_kernel_per_head);
                let layers = c.layer_attention();
                let attn: Box<dyn AttentionBackend + 'm> = match model.dtype() {
                    DType::F32 => Box::new(
                        CudaPagedAttention::<f32>::new(dev, layout, nh, dk)?.with_layers(layers),
                    ),
                    DType::F16 => Box::new(
                        CudaPagedAttention::<half::f16>::new(dev, layout, nh, dk)?
                            .with_layers(layers),
                    ),
                    DType::BF16 => Box::new(
                        CudaPagedAttention::<half::bf16>::new(dev, layout, nh, dk)?
                            .with_layers(layers),
                    ),
                    other => {
                        return Err(EngineError::Unavailable(format!(
                            "no CUDA KV cache for {other:?}"
                        )))
                    }
                };
                Ok(Self {
                    model,
                    attn,
                    graphs: None,
                })
            }
            #[allow(unreachable_patterns)]
            other => Err(EngineError::Unavailable(format!(
                "no attention backend for device {other:?} in this build"
            ))),
        }
    }

    /// Whether the model runs on a GPU (where the greedy argmax stays on the device).
    pub fn on_gpu(&self) -> bool {
        !self.model.device().is_cpu()
    }

    /// Greedy tokens for each logits row of the batch. On a GPU the argmax runs there
    /// and only the ids cross to the host (a logits row of a 128k vocabulary is 512 KB).
    pub fn execute_greedy(&mut self, batch: &FlatBatch) -> Result<Vec<u32>> {
        #[cfg(feature = "cuda")]
        if self.replay_graph(batch)? {
            if let Some(g) = &self.graphs {
                return g.greedy(batch.num_seqs());
            }
        }
        let logits = self.execute(batch)?;
        if logits.device().is_cpu() {
            return Ok(logits.to_vec2::<f32>()?.iter().map(|r| argmax(r)).collect());
        }
        Ok(logits.argmax(D::Minus1)?.to_vec1::<u32>()?)
    }

    /// Each logits row's token drawn as `specs` say (one per row), away from the host's copy
    /// of the rows: on a GPU by the device sampler (only ids cross to the host); on the CPU
    /// by the same algorithm here.
    pub fn execute_sampled(
        &mut self,
        batch: &FlatBatch,
        specs: &[crate::sampling::select::SampleSpec],
    ) -> Result<Vec<(u32, Option<crate::sampling::TokenLogprob>)>> {
        let logits = self.execute(batch)?;
        if logits.device().is_cpu() {
            let mut rows = logits.to_vec2::<f32>()?;
            if rows.len() != specs.len() {
                return Err(EngineError::Shape(format!(
                    "{} sampling specs for {} logits rows",
                    specs.len(),
                    rows.len()
                )));
            }
            return Ok(rows
                .iter_mut()
                .zip(specs)
                .map(|(r, s)| s.select(r))
                .collect());
        }
        #[cfg(feature = "cuda")]
        return crate::sampling::sample_on_device(&logits, specs);
        #[allow(unreachable_code)]
        Err(EngineError::Unavailable(
            "device sampling needs a build with feature cuda".into(),
        ))
    }

    /// Logits per row.
    pub fn vocab_size(&self) -> usize {
        self.model.config.vocab_size
    }

    pub fn block_size(&self) -> usize {
        self.attn.layout().block_size
    }

    pub fn execute(&mut self, batch: &FlatBatch) -> Result<Tensor> {
        #[cfg(feature = "cuda")]
        if self.replay_graph(batch)? {
            if let Some(g) = &self.graphs {
                return g.logits(batch.num_seqs());
            }
        }
        self.model.forward(batch, self.attn.as_mut())
    }

    /// Captures CUDA graphs for decode steps of up to `max_seqs` sequences whose contexts
    /// stay within `max_model_len` (capped at [`crate::batch::MAX_CAPTURE_CONTEXT`]), as vLLM
    /// does at startup; a no-op on the CPU or when `enforce_eager` (vLLM's flag). Returns a
    /// line saying what was captured.
    pub fn capture_decode_graphs(
        &mut self,
        max_seqs: usize,
        max_model_len: usize,
        enforce_eager: bool,
    ) -> Result<Option<String>> {
        if !self.on_gpu() || enforce_eager {
            return Ok(None);
        }
        #[cfg(feature = "cuda")]
        {
            let ctx = max_model_len.min(crate::batch::MAX_CAPTURE_CONTEXT);
            let g = super::graphs::DecodeGraphs::capture(
                self.model,
                self.attn.as_mut(),
                max_seqs,
                ctx,
            )?;
            let line = format!(
                "cuda graphs: {} decode batch sizes ({}..={}) for contexts up to {ctx}, captured in {:.2} s",
                g.sizes().len(),
                g.sizes().first().unwrap_or(&0),
                g.sizes().last().unwrap_or(&0),
                g.capture_secs
            );
            self.graphs = Some(g);
            Ok(Some(line))
        }
        #[cfg(not(feature = "cuda"))]
        {
            let _ = (max_seqs, max_model_len);
            Ok(None)
        }
    }

    /// Replays a decode graph for `batch` if one fits it; false leaves the step to
    /// the eager path.
    #[cfg(feature = "cuda")]
    fn replay_graph(&mut self, batch: &FlatBatch) -> Result<bool> {
        match self.graphs.as_mut() {
            Some(g) => g.replay(self.attn.as_mut(), batch),
            None => Ok(false),
        }
    }
}
