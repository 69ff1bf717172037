//! GGUF files: the reader is `ferrolm_formats::gguf` (no candle, fuzzed); this module adds
//! reading a tensor as candle's quantized tensor.

pub use ferrolm_formats::gguf::{GgmlType, GgufFile, MetaValue, TensorInfo};

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::Device;

use crate::error::{EngineError, Result};

/// candle's type for a ggml type id, as written in GGUF tensor infos.
pub fn ggml_dtype_from_id(id: u32) -> Option<GgmlDType> {
    Some(match GgmlType::from_id(id)? {
        GgmlType::F32 => GgmlDType::F32,
        GgmlType::F16 => GgmlDType::F16,
        GgmlType::Q4_0 => GgmlDType::Q4_0,
        GgmlType::Q4_1 => GgmlDType::Q4_1,
        GgmlType::Q5_0 => GgmlDType::Q5_0,
        GgmlType::Q5_1 => GgmlDType::Q5_1,
        GgmlType::Q8_0 => GgmlDType::Q8_0,
        GgmlType::Q8_1 => GgmlDType::Q8_1,
        GgmlType::Q2K => GgmlDType::Q2K,
        GgmlType::Q3K => GgmlDType::Q3K,
        GgmlType::Q4K => GgmlDType::Q4K,
        GgmlType::Q5K => GgmlDType::Q5K,
        GgmlType::Q6K => GgmlDType::Q6K,
        GgmlType::Q8K => GgmlDType::Q8K,
        GgmlType::BF16 => GgmlDType::BF16,
    })
}

/// Tensors of a [`GgufFile`] as candle tensors.
pub trait GgufTensors {
    /// A tensor as candle's quantized tensor on `device`, dims in row-major order (GGUF
    /// stores them innermost first).
    fn tensor(&self, name: &str, device: &Device) -> Result<QTensor>;
}

impl GgufTensors for GgufFile {
    fn tensor(&self, name: &str, device: &Device) -> Result<QTensor> {
        let info = self.tensor_info(name)?;
        let dtype = ggml_dtype_from_id(info.type_id).ok_or_else(|| EngineError::Unsupported {
            path: self.path().to_path_buf(),
            message: format!(
                "tensor {name} has ggml type {} which we do not read",
                info.type_id
            ),
        })?;
        let bytes = self.tensor_bytes(name)?;
        let mut dims: Vec<usize> = info.ne.iter().map(|&d| d as usize).collect();
        dims.reverse();
        Ok(candle_core::quantized::ggml_file::qtensor_from_ggml(
            dtype, &bytes, dims, device,
        )?)
    }
}

#[cfg(test)]
mod tests;
