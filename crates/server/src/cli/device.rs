//! `--device`, `--dtype` and `--load-format` as vLLM spells them, and the model they pick.

use std::path::{Path, PathBuf};

use anyhow::Context;
use candle_core::{DType, Device};
use ferrolm_engine::model::{LlamaConfig, LlamaModel};

/// `cpu`, `cuda` (GPU 0) or `auto` (CUDA when this build has it and a driver is present).
pub fn resolve_device(name: &str) -> anyhow::Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "cuda" => cuda_device(),
        "auto" => {
            #[cfg(feature = "cuda")]
            if ferrolm_engine::attention::cuda::cuda_driver_present() {
                if let Ok(d) = cuda_device() {
                    return Ok(d);
                }
            }
            Ok(Device::Cpu)
        }
        other => anyhow::bail!("--device {other:?}: expected cpu, cuda or auto"),
    }
}

#[cfg(feature = "cuda")]
fn cuda_device() -> anyhow::Result<Device> {
    ferrolm_engine::attention::cuda::model_device(0).context("--device cuda: opening GPU 0")
}

#[cfg(not(feature = "cuda"))]
fn cuda_device() -> anyhow::Result<Device> {
    anyhow::bail!("--device cuda: this binary was built without CUDA (make build-cuda)")
}

/// `--dtype`: auto is bf16 on a GPU and f32 on the CPU (dummy weights; GGUF weights keep
/// their quantized blocks and run f32 activations).
pub fn resolve_dtype(name: &str, device: &Device) -> anyhow::Result<DType> {
    Ok(match name {
        "auto" => {
            if device.is_cpu() {
                DType::F32
            } else {
                DType::BF16
            }
        }
        "float32" | "f32" => DType::F32,
        "float16" | "half" | "f16" => DType::F16,
        "bfloat16" | "bf16" => DType::BF16,
        other => anyhow::bail!("--dtype {other:?}: expected auto, float32, float16 or bfloat16"),
    })
}

/// The config.json a dummy model is shaped by: the path itself, or `config.json` in it.
pub fn config_json(model: &Path) -> PathBuf {
    if model.is_dir() {
        model.join("config.json")
    } else {
        model.to_path_buf()
    }
}

/// A model for benchmarks: `--load-format dummy` (or a config.json path) gives random
/// weights of that shape; anything else is a GGUF file.
pub fn load_bench_model(
    model: &Path,
    load_format: &str,
    dtype: &str,
    device: &Device,
    max_model_len: Option<usize>,
) -> anyhow::Result<LlamaModel> {
    let is_json = config_json(model).extension().is_some_and(|e| e == "json");
    match load_format {
        "dummy" => {}
        "auto" if is_json => {}
        "auto" | "gguf" => {
            let lm = ferrolm_engine::loader::LoadedModel::load(model, device)
                .with_context(|| format!("loading {}", model.display()))?;
            return Ok(lm.model);
        }
        other => anyhow::bail!("--load-format {other:?}: expected auto, gguf or dummy"),
    }
    let path = config_json(model);
    let mut cfg = LlamaConfig::from_hf_json(&path)?;
    if let Some(n) = max_model_len {
        anyhow::ensure!(
            n > 0 && n <= cfg.max_position_embeddings,
            "--max-model-len {n} must be between 1 and the model's {}",
            cfg.max_position_embeddings
        );
        cfg.max_position_embeddings = n;
    }
    let dtype = resolve_dtype(dtype, device)?;
    let mut model = LlamaModel::dummy(cfg, dtype, device, 0)?;
    // On a GPU, one matmul for Q/K/V and one for gate/up (8B batch-1 decode 6.75 -> 6.20
    // ms on an H200); FERROLM_STACK_PROJ=0 keeps them split (an A/B).
    let stack = std::env::var("FERROLM_STACK_PROJ").map_or(!device.is_cpu(), |v| v == "1");
    if stack {
        model.stack_projections()?;
    }
    Ok(model)
}

/// KV cache blocks: `--num-gpu-blocks-override`, else on a GPU what
/// `--gpu-memory-utilization` leaves after a profiling step, else `kv_bytes` on the CPU.
#[allow(clippy::too_many_arguments)]
pub fn kv_blocks(
    model: &LlamaModel,
    override_blocks: Option<usize>,
    gpu_memory_utilization: f64,
    kv_bytes: usize,
    max_num_batched_tokens: usize,
    max_num_seqs: usize,
    block_size: usize,
) -> anyhow::Result<usize> {
    if let Some(n) = override_blocks {
        return Ok(n);
    }
    if model.device().is_cpu() {
        return Ok(kv_bytes / model.kv_cache_bytes_per_block(block_size));
    }
    #[cfg(feature = "cuda")]
    {
        let (n, line) = ferrolm_engine::runner::gpu_kv_blocks(
            model,
            gpu_memory_utilization,
            max_num_batched_tokens,
            max_num_seqs,
            block_size,
        )?;
        eprintln!("kv cache: {line}");
        Ok(n)
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (gpu_memory_utilization, max_num_batched_tokens, max_num_seqs);
        anyhow::bail!("a GPU model in a build without CUDA")
    }
}
