//! Layer outputs written to disk for comparing with llama.cpp's (FERROLM_DUMP_DIR).

use candle_core::{DType, Tensor};

use crate::error::{EngineError, Result};

/// Writes `t` as raw little-endian f32 to `$FERROLM_DUMP_DIR/NAME.f32` when that variable is
/// set (each forward pass overwrites the last): the layer outputs under llama.cpp's tensor
/// names, for `scripts/llamacpp-dump/cmp.py`. Off, it costs one cached check.
pub fn dump(name: impl FnOnce() -> String, t: &Tensor) -> Result<()> {
    let Some(dir) = &crate::env::get().dump_dir else {
        return Ok(());
    };
    let v = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    let path = format!("{dir}/{}.f32", name());
    std::fs::write(&path, bytes).map_err(|source| EngineError::Io {
        path: path.into(),
        source,
    })
}
