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
    let dev = crate::cuda::model_device(0, pool_keep)
        .map_err(|e| EngineError::Unavailable(format!("--device cuda: opening GPU 0: {e}")))?;
    // A GPU the kernels were not built for would fail at the first launch: say so now.
    if let Device::Cuda(d) = &dev {
        let cc = crate::cuda::compute_capability(d).map_err(EngineError::Unavailable)?;
        let built = crate::cuda::BUILT_ARCHS;
        if !gpu_arch_covered(built, cc) {
            return Err(EngineError::Unavailable(format!(
                "--device cuda: GPU 0 is sm_{}{} and this build's CUDA kernels cover sm_{} (and later GPUs through PTX of the newest): rebuild with FERROLM_CUDA_ARCHS including {}{} (make build-cuda; the image's CUDA_ARCHS build argument)",
                cc.0,
                cc.1,
                built.replace([';', ','], ", sm_"),
                cc.0,
                cc.1
            )));
        }
    }
    Ok(dev)
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

fn parse(arch: &str) -> Option<(i32, i32)> {
    let digits: String = arch
        .trim()
        .trim_start_matches("sm_")
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    let n: i32 = digits.parse().ok()?;
    Some((n / 10, n % 10))
}

/// Whether CUDA kernels built for `built` (`"80;89;90"`: a cubin each, plus PTX of the
/// newest) run on a GPU of compute capability `(major, minor)`: a cubin runs on its major
/// architecture at the same or a later minor, PTX on the same or a later architecture.
pub fn gpu_arch_covered(built: &str, (major, minor): (i32, i32)) -> bool {
    let archs: Vec<(i32, i32)> = built.split([';', ',', ' ']).filter_map(parse).collect();
    let cubin = archs.iter().any(|&(a, b)| a == major && b <= minor);
    let ptx = archs
        .iter()
        .max()
        .is_some_and(|&newest| (major, minor) >= newest);
    cubin || ptx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cubins_run_on_later_minors_and_ptx_on_later_gpus() {
        let built = "80;89;90";
        for (cc, ok) in [
            ((8, 0), true),  // A100
            ((8, 6), true),  // A10, RTX 30xx: the sm_80 cubin
            ((8, 9), true),  // L4, L40S
            ((9, 0), true),  // H100, H200
            ((10, 0), true), // B200: PTX of compute_90
            ((12, 0), true),
            ((7, 5), false), // T4
            ((7, 0), false), // V100
        ] {
            assert_eq!(gpu_arch_covered(built, cc), ok, "{cc:?}");
        }
        // CI's one-architecture build: an A100 is not covered, and the error says so.
        assert!(!gpu_arch_covered("90", (8, 0)));
        assert!(gpu_arch_covered("90", (9, 0)));
    }
}
