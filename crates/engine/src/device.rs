//! `--device`, `--dtype` and `--load-format` as vLLM spells them, resolved by the engine so
//! that the server passes strings and holds no device or tensor type of its own.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};

use crate::error::{EngineError, Result};
use crate::model::{LlamaConfig, LlamaModel};

/// `cpu`, `cuda` (GPU 0) or `auto` (CUDA when this build has it and a driver is present).
pub fn resolve_device(name: &str) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "cuda" => cuda_device(),
        "auto" => {
            #[cfg(feature = "cuda")]
            if crate::cuda::cuda_driver_present() {
                if let Ok(d) = cuda_device() {
                    return Ok(d);
                }
            }
            Ok(Device::Cpu)
        }
        other => Err(EngineError::Config(format!(
            "--device {other:?}: expected cpu, cuda or auto"
        ))),
    }
}

#[cfg(feature = "cuda")]
fn cuda_device() -> Result<Device> {
    crate::cuda::model_device(0)
        .map_err(|e| EngineError::Unavailable(format!("--device cuda: opening GPU 0: {e}")))
}

#[cfg(not(feature = "cuda"))]
fn cuda_device() -> Result<Device> {
    Err(EngineError::Unavailable(
        "--device cuda: this binary was built without CUDA (make build-cuda)".into(),
    ))
}

/// `--dtype`: auto is bf16 on a GPU and f32 on the CPU (dummy weights; GGUF weights keep
/// their quantized blocks and run f32 activations).
pub fn resolve_dtype(name: &str, device: &Device) -> Result<DType> {
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
        other => {
            return Err(EngineError::Config(format!(
                "--dtype {other:?}: expected auto, float32, float16 or bfloat16"
            )))
        }
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

/// A model for benchmarks on `device` (a `--device` name): `--load-format dummy` (or a
/// config.json path) gives random weights of that shape; anything else is a GGUF file.
pub fn load_bench_model(
    model: &Path,
    load_format: &str,
    dtype: &str,
    device: &str,
    max_model_len: Option<usize>,
) -> Result<LlamaModel> {
    let device = resolve_device(device)?;
    let is_json = config_json(model).extension().is_some_and(|e| e == "json");
    match load_format {
        "dummy" => {}
        "auto" if is_json => {}
        "auto" | "gguf" => return Ok(crate::loader::LoadedModel::load(model, &device)?.model),
        other => {
            return Err(EngineError::Config(format!(
                "--load-format {other:?}: expected auto, gguf or dummy"
            )))
        }
    }
    let mut cfg = LlamaConfig::from_hf_json(&config_json(model))?;
    if let Some(n) = max_model_len {
        if n == 0 || n > cfg.max_position_embeddings {
            return Err(EngineError::Config(format!(
                "--max-model-len {n} must be between 1 and the model's {}",
                cfg.max_position_embeddings
            )));
        }
        cfg.max_position_embeddings = n;
    }
    let dtype = resolve_dtype(dtype, &device)?;
    let mut model = LlamaModel::dummy(cfg, dtype, &device, 0)?;
    // On a GPU, one matmul for Q/K/V and one for gate/up (8B batch-1 decode 6.75 -> 6.20
    // ms on an H200); FERROLM_STACK_PROJ=0 keeps them split (an A/B).
    if crate::env::get()
        .stack_projections
        .unwrap_or(!device.is_cpu())
    {
        model.stack_projections()?;
    }
    Ok(model)
}
