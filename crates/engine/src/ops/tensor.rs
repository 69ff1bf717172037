//! Reading a CPU tensor's data as f32, for the CPU op bodies and attention backends.

use candle_core::{DType, Storage, Tensor};

use crate::error::{EngineError, Result};

/// Runs `f` on a CPU f32 tensor's contiguous data.
pub fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let t = if t.dtype() == DType::F32 {
        t.contiguous()?
    } else {
        t.to_dtype(DType::F32)?.contiguous()?
    };
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(cpu) => {
            let data = cpu.as_slice::<f32>()?;
            let (a, b) = layout
                .contiguous_offsets()
                .ok_or_else(|| EngineError::Shape("tensor is not contiguous".into()))?;
            Ok(f(&data[a..b]))
        }
        _ => Err(EngineError::Shape(
            "a CPU op got a tensor that is not on the CPU".into(),
        )),
    }
}
