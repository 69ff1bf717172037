//! Running the model over flat batches, and a plain greedy generation loop over them.

#[cfg(feature = "cuda")]
use candle_core::DType;
use candle_core::{Device, Tensor, D};

use crate::attention::{AttentionBackend, CpuPagedAttention, CpuReferenceAttention, KvCacheLayout};
use crate::batch::{FlatBatch, LogitsWanted};
use crate::error::{EngineError, Result};
use crate::model::LlamaModel;

/// The model plus its paged KV cache: executes one flat batch per call.
pub struct ModelRunner<'m> {
    pub model: &'m LlamaModel,
    pub attn: Box<dyn AttentionBackend + 'm>,
    /// Decode steps replayed from CUDA graphs (see [`Self::capture_decode_graphs`]).
    #[cfg(feature = "cuda")]
    pub graphs: Option<crate::graphs::DecodeGraphs>,
}

static ENFORCE_EAGER: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// vLLM's `--enforce-eager`: no CUDA graphs (also FERROLM_ENFORCE_EAGER=1).
pub fn set_enforce_eager(on: bool) {
    ENFORCE_EAGER.store(on, std::sync::atomic::Ordering::Relaxed);
}

pub fn enforce_eager() -> bool {
    ENFORCE_EAGER.load(std::sync::atomic::Ordering::Relaxed)
        || std::env::var("FERROLM_ENFORCE_EAGER").is_ok_and(|v| v == "1")
}

impl<'m> ModelRunner<'m> {
    /// A runner with a CPU KV cache of `num_blocks` blocks of `block_size` tokens.
    pub fn new_cpu(model: &'m LlamaModel, num_blocks: usize, block_size: usize) -> Self {
        let layout = KvCacheLayout::for_model(&model.config, num_blocks, block_size);
        let attn = CpuPagedAttention::new(layout, model.config.num_heads);
        Self::with_backend(model, Box::new(attn))
    }

    /// A CPU runner with the f32 reference attention ([`CpuReferenceAttention`]): the
    /// reference the GPU checks compare against.
    pub fn new_cpu_reference(model: &'m LlamaModel, num_blocks: usize, block_size: usize) -> Self {
        let layout = KvCacheLayout::for_model(&model.config, num_blocks, block_size);
        let attn = CpuReferenceAttention::new(layout, model.config.num_heads);
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
                use crate::attention::CudaPagedAttention;
                let layout = KvCacheLayout::for_model(&model.config, num_blocks, block_size);
                let c = &model.config;
                let nh = c.num_heads;
                let attn: Box<dyn AttentionBackend + 'm> = match model.dtype() {
                    DType::F32 => Box::new(CudaPagedAttention::<f32>::new(dev, layout, nh)?),
                    DType::F16 => Box::new(CudaPagedAttention::<half::f16>::new(dev, layout, nh)?),
                    DType::BF16 => {
                        Box::new(CudaPagedAttention::<half::bf16>::new(dev, layout, nh)?)
                    }
                    other => {
                        return Err(EngineError::Config(format!(
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
            other => Err(EngineError::Config(format!(
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
    /// stay within `max_model_len` (capped at [`crate::graphs::MAX_CAPTURE_CONTEXT`]), as vLLM
    /// does at startup; a no-op on the CPU or under [`enforce_eager`]. Returns a line
    /// saying what was captured.
    pub fn capture_decode_graphs(
        &mut self,
        max_seqs: usize,
        max_model_len: usize,
    ) -> Result<Option<String>> {
        if !self.on_gpu() || enforce_eager() {
            return Ok(None);
        }
        #[cfg(feature = "cuda")]
        {
            let ctx = max_model_len.min(crate::graphs::MAX_CAPTURE_CONTEXT);
            let g = crate::graphs::DecodeGraphs::capture(
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

/// Row-wise log-softmax in f32, as `[rows][vocab]`.
pub fn log_softmax_rows(logits: &Tensor) -> Result<Vec<Vec<f32>>> {
    // x - max - log(sum(exp(x - max))): the stable form.
    let max = logits.max_keepdim(D::Minus1)?;
    let shifted = logits.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    Ok(shifted.broadcast_sub(&lse)?.to_vec2::<f32>()?)
}

/// Index of the largest value; the lowest index wins a tie, like llama.cpp's greedy sampler.
pub fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best as u32
}

/// What [`greedy_generate`] produced, with its timings.
#[derive(Debug, Clone)]
pub struct Generation {
    /// Generated ids per prompt (a stop token is not included).
    pub tokens: Vec<Vec<u32>>,
    /// Seconds of the first step (all prompts, one token each).
    pub prefill_secs: f64,
    /// Seconds of every later step.
    pub decode_secs: f64,
}

/// Greedy generation for several prompts at once in one flat batch per step, each
/// sequence in its own run of KV blocks. Stops a sequence at `max_tokens`, or at a token
/// for which `is_stop` holds (not included).
pub fn greedy_generate(
    model: &LlamaModel,
    prompts: &[Vec<u32>],
    max_tokens: usize,
    is_stop: &dyn Fn(u32) -> bool,
) -> Result<Generation> {
    let block_size = 16;
    let max_len = model.config.max_position_embeddings;
    for p in prompts {
        if p.is_empty() {
            return Err(EngineError::InvalidRequest("the prompt is empty".into()));
        }
        if p.len() + max_tokens > max_len {
            return Err(EngineError::PromptTooLong {
                prompt_len: p.len(),
                max_tokens,
                max_model_len: max_len,
            });
        }
    }
    let blocks_per_seq: Vec<usize> = prompts
        .iter()
        .map(|p| (p.len() + max_tokens).div_ceil(block_size))
        .collect();
    let mut tables = Vec::with_capacity(prompts.len());
    let mut next = 0u32;
    for &nb in &blocks_per_seq {
        tables.push((next..next + nb as u32).collect::<Vec<u32>>());
        next += nb as u32;
    }
    let mut runner = ModelRunner::new(model, next as usize, block_size)?;
    let mut outputs: Vec<Vec<u32>> = vec![Vec::new(); prompts.len()];
    let mut done = vec![max_tokens == 0; prompts.len()];
    let mut first = true;
    let started = std::time::Instant::now();
    let mut prefill_secs = 0.0;
    while done.iter().any(|d| !d) {
        let mut batch = FlatBatch::default();
        let mut rows = Vec::new();
        for (i, p) in prompts.iter().enumerate() {
            if done[i] {
                continue;
            }
            if first {
                batch.push_seq(p, 0, &tables[i], block_size, LogitsWanted::Last);
            } else {
                let last = *outputs[i].last().unwrap_or(&p[p.len() - 1]);
                let start = p.len() + outputs[i].len() - 1;
                batch.push_seq(&[last], start, &tables[i], block_size, LogitsWanted::Last);
            }
            batch.set_prompt_len(p.len());
            rows.push(i);
        }
        let logits = runner.execute(&batch)?.to_vec2::<f32>()?;
        if first {
            prefill_secs = started.elapsed().as_secs_f64();
            first = false;
        }
        for (row, &i) in logits.iter().zip(&rows) {
            let tok = argmax(row);
            if is_stop(tok) {
                done[i] = true;
                continue;
            }
            outputs[i].push(tok);
            if outputs[i].len() >= max_tokens {
                done[i] = true;
            }
        }
    }
    Ok(Generation {
        tokens: outputs,
        prefill_secs,
        decode_secs: started.elapsed().as_secs_f64() - prefill_secs,
    })
}

/// Teacher forcing: log-softmax of the logits that predict each token of `completion`
/// after `prompt`, computed in one forward pass.
pub fn teacher_forced_logprobs(
    model: &LlamaModel,
    prompt: &[u32],
    completion: &[u32],
) -> Result<Vec<Vec<f32>>> {
    if prompt.is_empty() {
        return Err(EngineError::InvalidRequest("the prompt is empty".into()));
    }
    let block_size = 16;
    let all: Vec<u32> = prompt.iter().chain(completion).copied().collect();
    let nb = all.len().div_ceil(block_size);
    let table: Vec<u32> = (0..nb as u32).collect();
    let mut runner = ModelRunner::new(model, nb, block_size)?;
    let mut batch = FlatBatch::default();
    batch.push_seq(&all, 0, &table, block_size, LogitsWanted::None);
    // The completion's rows as generation computes them (decode order on the CPU).
    batch.set_prompt_len(prompt.len());
    batch.logits_indices = (prompt.len() - 1..all.len() - 1).collect();
    if completion.is_empty() {
        return Ok(Vec::new());
    }
    let logits = runner.execute(&batch)?;
    log_softmax_rows(&logits)
}

/// Sizes the GPU KV cache as vLLM does: run the largest step the scheduler may build
/// (`max_tokens` over `min(max_seqs, max_tokens)` sequences; this also loads every kernel
/// module and cuBLAS' workspace, so nothing is compiled or loaded while serving), then give
/// the cache what is left of `util` × the card's memory after the weights, what the
/// process holds, and an estimate of that step's activations. Returns the number of blocks
/// and a line saying how it was reached.
#[cfg(feature = "cuda")]
pub fn gpu_kv_blocks(
    model: &LlamaModel,
    util: f64,
    max_tokens: usize,
    max_seqs: usize,
    block_size: usize,
) -> Result<(usize, String)> {
    let Device::Cuda(dev) = model.device() else {
        return Err(EngineError::Config(
            "gpu_kv_blocks: the model is not on a GPU".into(),
        ));
    };
    if !(0.0..=1.0).contains(&util) || util == 0.0 {
        return Err(EngineError::Config(format!(
            "gpu_memory_utilization {util} must be in (0, 1]"
        )));
    }
    let c = &model.config;
    let seqs = max_seqs.min(max_tokens).max(1);
    let per = (max_tokens / seqs).max(1);
    let blocks_per = per.div_ceil(block_size);
    let started = std::time::Instant::now();
    {
        let mut runner = ModelRunner::new(model, seqs * blocks_per, block_size)?;
        let mut batch = FlatBatch::default();
        for s in 0..seqs {
            let table: Vec<u32> =
                ((s * blocks_per) as u32..((s + 1) * blocks_per) as u32).collect();
            let toks: Vec<u32> = (0..per)
                .map(|i| ((s * 31 + i * 7) % c.vocab_size) as u32)
                .collect();
            batch.push_seq(&toks, 0, &table, block_size, LogitsWanted::Last);
        }
        runner.execute(&batch)?;
    }
    // After the profile step's buffers are dropped: their async frees reach the driver here.
    model.device().synchronize()?;
    let profile_secs = started.elapsed().as_secs_f64();
    let stream = dev.cuda_stream();
    stream
        .context()
        .bind_to_thread()
        .map_err(|e| EngineError::Config(format!("CUDA: {e}")))?;
    // A pool that keeps freed memory (FERROLM_POOL_KEEP=1) still holds the profile step's
    // activations: give them back so they are not counted twice (see `activations`).
    if crate::attention::cuda::keep_freed_memory() {
        crate::attention::cuda::trim_pool(dev)
            .map_err(|e| EngineError::Config(format!("CUDA: {e}")))?;
    }
    let (free, total) = cudarc::driver::result::mem_get_info()
        .map_err(|e| EngineError::Config(format!("CUDA: {e}")))?;
    let elem = model.dtype().size_in_bytes();
    // Live activations of the largest step: a few [tokens, hidden] streams, Q/K/V, the
    // MLP's gate/up/product, and f32 logits (+ their copy) for each sequence's last token.
    // (+ the split-K scratch of a decode step at the longest context, + f32 residuals.)
    let qkv = (c.num_heads + 2 * c.num_kv_heads) * c.head_dim;
    let per_token = (6 * c.hidden_size + 2 * qkv + 3 * c.intermediate_size) * elem;
    let part = crate::attention::split::PARTITION_SIZE;
    // CUDA graphs (captured after the cache): the fixed logits, the largest graph's own
    // activations (its logits in the model's type and in f32 dominate), fixed metadata
    // and split-K scratch.
    let graph_bytes = if enforce_eager() {
        0
    } else {
        let rows = crate::graphs::capture_sizes(max_seqs)
            .last()
            .copied()
            .unwrap_or(1);
        let ctx = c
            .max_position_embeddings
            .min(crate::graphs::MAX_CAPTURE_CONTEXT);
        rows * c.vocab_size * (8 + elem)
            + rows * per_token
            + rows * c.num_heads * ctx.div_ceil(part) * (c.head_dim + 2) * 4
            + rows * ctx.div_ceil(block_size) * 4
    };
    let parts = c.max_position_embeddings.div_ceil(part);
    let activations = (max_tokens * per_token
        + max_tokens * 4 * c.hidden_size * 4
        + 3 * seqs * c.vocab_size * 4
        + max_seqs * c.num_heads * parts * (c.head_dim + 2) * 4
        + graph_bytes) as f64;
    let used = (total - free) as f64;
    let budget = total as f64 * util - used - activations;
    let per_block = model.kv_cache_bytes_per_block(block_size) as f64;
    let blocks = if budget > 0.0 {
        (budget / per_block) as usize
    } else {
        0
    };
    let gib = |b: f64| b / (1u64 << 30) as f64;
    let line = format!(
        "GPU memory {:.1} GiB × {util} · in use after weights + profile step {:.1} GiB · activations ~{:.1} GiB · KV cache {:.1} GiB = {blocks} blocks of {block_size} ({} tokens) · profile step {:.2} s",
        gib(total as f64),
        gib(used),
        gib(activations),
        gib(blocks as f64 * per_block),
        blocks * block_size,
        profile_secs
    );
    Ok((blocks, line))
}
