//! Our own CPU quantized matmul for GGUF blocks, with ggml's exact activation quantization
//! (so numerics track llama.cpp's) and one dot product per output element in a fixed
//! order (so a row's result never depends on the batch or the thread count).

#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
))]
mod avx2;
mod blocks;
mod matmul;

/// The portable dot products (the reference the SIMD ones are tested against).
pub mod portable {
    pub use super::blocks::{dot4_q4_1_q8_1, dot4_q8_0_q8_0, dot_q4_1_q8_1, dot_q8_0_q8_0, hsum8};
}
pub use blocks::{quantize_row_q8_0, quantize_row_q8_1, BlockQ4_1, BlockQ8_0, BlockQ8_1};
pub use matmul::{QuantLinear, QuantWeights};

/// The fastest dot products this build has; bit-identical to the portable ones.
pub mod dot {
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    ))]
    pub use super::avx2::{
        dot4_q4_1_q8_1, dot4_q4_1_q8_1_s, dot4_q8_0_q8_0, dot4_q8_0_q8_0_s, dot_q4_1_q8_1,
        dot_q8_0_q8_0,
    };
    #[cfg(not(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    )))]
    pub use super::blocks::{
        dot4_q4_1_q8_1, dot4_q4_1_q8_1_s, dot4_q8_0_q8_0, dot4_q8_0_q8_0_s, dot_q4_1_q8_1,
        dot_q8_0_q8_0,
    };
}

#[cfg(test)]
mod tests {
    use super::blocks::*;
    use half::f16;

    fn rand_f32(n: usize, seed: &mut u64) -> Vec<f32> {
        (0..n)
            .map(|_| {
                *seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((*seed >> 33) as f32 / (1u64 << 31) as f32) * 4.0 - 2.0
            })
            .collect()
    }

    #[test]
    fn simd_dots_equal_portable_dots_bit_for_bit() {
        let mut seed = 42;
        for kb in [1usize, 3, 18, 48] {
            let k = kb * QK;
            let a = rand_f32(k, &mut seed);
            let b = rand_f32(k, &mut seed);
            let mut w1 = vec![
                BlockQ4_1 {
                    d: f16::ZERO,
                    m: f16::ZERO,
                    qs: [0; 16]
                };
                kb
            ];
            for (i, blk) in w1.iter_mut().enumerate() {
                blk.d = f16::from_f32(0.01 + i as f32 * 0.001);
                blk.m = f16::from_f32(-0.08);
                for (j, q) in blk.qs.iter_mut().enumerate() {
                    *q = ((i * 7 + j * 13) % 256) as u8;
                }
            }
            let mut x1 = vec![
                BlockQ8_1 {
                    d: f16::ZERO,
                    s: f16::ZERO,
                    qs: [0; QK]
                };
                kb
            ];
            quantize_row_q8_1(&b, &mut x1);
            assert_eq!(
                super::dot::dot_q4_1_q8_1(&w1, &x1).to_bits(),
                dot_q4_1_q8_1(&w1, &x1).to_bits()
            );
            // Four rows at once: each row's bits as alone.
            let rows: Vec<Vec<BlockQ8_1>> = (0..4)
                .map(|r| {
                    let v = rand_f32(k, &mut seed);
                    let mut q = vec![
                        BlockQ8_1 {
                            d: f16::ZERO,
                            s: f16::ZERO,
                            qs: [0; QK]
                        };
                        kb
                    ];
                    quantize_row_q8_1(&v, &mut q);
                    let _ = r;
                    q
                })
                .collect();
            let four = super::dot::dot4_q4_1_q8_1(&w1, [&rows[0], &rows[1], &rows[2], &rows[3]]);
            let xd: Vec<Vec<f32>> = rows
                .iter()
                .map(|r| r.iter().map(|b| b.d.to_f32()).collect())
                .collect();
            let xs: Vec<Vec<f32>> = rows
                .iter()
                .map(|r| r.iter().map(|b| b.s.to_f32()).collect())
                .collect();
            let four_s = super::dot::dot4_q4_1_q8_1_s(
                &w1,
                [&rows[0], &rows[1], &rows[2], &rows[3]],
                [&xd[0], &xd[1], &xd[2], &xd[3]],
                [&xs[0], &xs[1], &xs[2], &xs[3]],
            );
            for r in 0..4 {
                assert_eq!(four[r].to_bits(), dot_q4_1_q8_1(&w1, &rows[r]).to_bits());
                assert_eq!(four_s[r].to_bits(), four[r].to_bits());
            }
            let mut w8 = vec![
                BlockQ8_0 {
                    d: f16::ZERO,
                    qs: [0; QK]
                };
                kb
            ];
            let mut x8 = w8.clone();
            quantize_row_q8_0(&a, &mut w8);
            quantize_row_q8_0(&b, &mut x8);
            assert_eq!(
                super::dot::dot_q8_0_q8_0(&w8, &x8).to_bits(),
                dot_q8_0_q8_0(&w8, &x8).to_bits()
            );
            // Four Q8_0 rows at once: each row's bits as alone.
            let rows8: Vec<Vec<BlockQ8_0>> = (0..4)
                .map(|_| {
                    let v = rand_f32(k, &mut seed);
                    let mut q = w8.clone();
                    quantize_row_q8_0(&v, &mut q);
                    q
                })
                .collect();
            let four8 =
                super::dot::dot4_q8_0_q8_0(&w8, [&rows8[0], &rows8[1], &rows8[2], &rows8[3]]);
            let xd8: Vec<Vec<f32>> = rows8
                .iter()
                .map(|r| r.iter().map(|b| b.d.to_f32()).collect())
                .collect();
            let four8_s = super::dot::dot4_q8_0_q8_0_s(
                &w8,
                [&rows8[0], &rows8[1], &rows8[2], &rows8[3]],
                [&xd8[0], &xd8[1], &xd8[2], &xd8[3]],
            );
            for r in 0..4 {
                assert_eq!(four8[r].to_bits(), dot_q8_0_q8_0(&w8, &rows8[r]).to_bits());
                assert_eq!(four8_s[r].to_bits(), four8[r].to_bits());
            }
            // And both are the dot product of the dequantized values, to rounding.
            let exact: f32 = (0..k)
                .map(|i| {
                    let (wb, xb) = (&w8[i / QK], &x8[i / QK]);
                    wb.d.to_f32() * wb.qs[i % QK] as f32 * xb.d.to_f32() * xb.qs[i % QK] as f32
                })
                .sum();
            let got = dot_q8_0_q8_0(&w8, &x8);
            assert!(
                (got - exact).abs() <= 1e-4 * (1.0 + exact.abs()),
                "{got} vs {exact}"
            );
        }
    }
}
