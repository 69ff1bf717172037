//! Our own CPU quantized matmul for GGUF blocks, with ggml's exact activation quantization
//! (so numerics track llama.cpp's) and one dot product per output element in a fixed
//! order (so a row's result never depends on the batch or the thread count).

mod blocks;
mod matmul;

pub use blocks::{quantize_row_q8_0, quantize_row_q8_1, BlockQ4_1, BlockQ8_0, BlockQ8_1};
pub use matmul::{QuantLinear, QuantWeights};
