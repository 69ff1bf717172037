//! Layer outputs written to disk for comparing with llama.cpp's (FERROLM_DUMP_DIR).

use std::path::Path;

use candle_core::{DType, Tensor};

use crate::error::{EngineError, Result};

/// Writes `t` as raw little-endian f32 to `DIR/NAME.f32` when there is a `dir`
/// (FERROLM_DUMP_DIR; each forward pass overwrites the last): the layer outputs under
/// llama.cpp's tensor names, for `scripts/llamacpp-dump/cmp.py`. Off, it costs one check.
pub fn dump(dir: Option<&Path>, name: &dyn Fn() -> String, t: &Tensor) -> Result<()> {
    let Some(dir) = dir else {
        return Ok(());
    };
    let v = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    let path = dir.join(format!("{}.f32", name()));
    std::fs::write(&path, bytes).map_err(|source| EngineError::Io { path, source })
}
