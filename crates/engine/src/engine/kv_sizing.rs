//! How many KV blocks the cache gets: `--num-gpu-blocks-override`, else on the CPU what
//! `--kv-cache-memory-bytes` holds, else on a GPU what `--gpu-memory-utilization` leaves
//! after the weights and a profiling step (as vLLM sizes it). One place for every count.

#[cfg(feature = "cuda")]
use candle_core::Device;

#[cfg(feature = "cuda")]
use crate::batch::{FlatBatch, LogitsWanted};
use crate::config::EngineConfig;
use crate::error::{EngineError, Result};
use crate::model::LlamaModel;
#[cfg(feature = "cuda")]
use crate::worker::ModelRunner;

/// The KV cache's block count for `model` under `cfg`, and a line saying how it was reached
/// (none for a fixed or CPU count).
pub fn kv_blocks(model: &LlamaModel, cfg: &EngineConfig) -> Result<(usize, Option<String>)> {
    if cfg.block_size == 0 {
        return Err(EngineError::Config("block_size must be positive".into()));
    }
    if let Some(n) = cfg.num_blocks_override {
        return Ok((n, None));
    }
    if model.device().is_cpu() {
        return Ok((
            cfg.kv_cache_memory_bytes / model.kv_cache_bytes_per_block(cfg.block_size),
            None,
        ));
    }
    #[cfg(feature = "cuda")]
    {
        let (n, line) = gpu_kv_blocks(
            model,
            cfg.gpu_memory_utilization,
            cfg.token_budget(false),
            cfg.max_num_seqs,
            cfg.block_size,
            cfg.enforce_eager(),
        )?;
        Ok((n, Some(line)))
    }
    #[cfg(not(feature = "cuda"))]
    Err(EngineError::Unavailable(
        "a GPU model in a build without CUDA".into(),
    ))
}

/// Sizes the GPU KV cache as vLLM does: run the largest step the scheduler may build
/// (`max_tokens` over `min(max_seqs, max_tokens)` sequences; this also loads every kernel
/// module and cuBLAS' workspace, so nothing is compiled or loaded while serving), then give
/// the cache what is left of `util` × the card's memory after the weights, what the
/// process holds, and an estimate of that step's activations. Returns the number of blocks
/// and a line saying how it was reached.
#[cfg(feature = "cuda")]
fn gpu_kv_blocks(
    model: &LlamaModel,
    util: f64,
    max_tokens: usize,
    max_seqs: usize,
    block_size: usize,
    enforce_eager: bool,
) -> Result<(usize, String)> {
    let Device::Cuda(dev) = model.device() else {
        return Err(EngineError::Unavailable(
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
        .map_err(EngineError::cuda)?;
    // A pool that keeps freed memory (FERROLM_POOL_KEEP=1) still holds the profile step's
    // activations: give them back so they are not counted twice (see `activations`).
    if model.switches().pool_keep {
        crate::cuda::trim_pool(dev).map_err(EngineError::cuda)?;
    }
    let (free, total) = cudarc::driver::result::mem_get_info().map_err(EngineError::cuda)?;
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
    let graph_bytes = if enforce_eager {
        0
    } else {
        let rows = crate::batch::capture_sizes(max_seqs)
            .last()
            .copied()
            .unwrap_or(1);
        let ctx = c
            .max_position_embeddings
            .min(crate::batch::MAX_CAPTURE_CONTEXT);
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
