//! `--device` and `--dtype` as vLLM spells them, resolved by the engine so that the server
//! passes strings and holds no device or tensor type of its own.

use candle_core::{DType, Device};

use crate::error::{EngineError, Result};

/// `cpu`, `cuda` (GPU 0) or `auto` (CUDA when this build has it and a driver is present).
/// `pool_keep`: the GPU's memory pool keeps freed memory (`env::ModelSwitches::pool_keep`).
pub fn resolve_device(name: &str, pool_keep: bool) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "cuda" => cuda_device(pool_keep),
        "auto" => {
            #[cfg(feature = "cuda")]
            if crate::cuda::cuda_driver_present() {
                if let Ok(d) = cuda_device(pool_keep) {
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
fn cuda_device(pool_keep: bool) -> Result<Device> {
    crate::cuda::model_device(0, pool_keep)
        .map_err(|e| EngineError::Unavailable(format!("--device cuda: opening GPU 0: {e}")))
}

#[cfg(not(feature = "cuda"))]
fn cuda_device(_pool_keep: bool) -> Result<Device> {
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
