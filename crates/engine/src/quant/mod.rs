//! Our own CPU quantized matmul for GGUF blocks, with ggml's exact activation quantization
//! (so numerics track llama.cpp's) and one dot product per output element in a fixed
//! order (so a row's result never depends on the batch or the thread count).

#[cfg(x86_v3)]
mod avx2;
mod blocks;
mod dequantize;
pub mod device;
mod dots;
#[cfg(x86_v3)]
mod gemm;
#[cfg(test)]
mod ggml_fixture;
mod groups;
mod isa;
mod kblocks;
mod matmul;
#[cfg(x86_v3)]
mod problem;
mod quantize;
#[cfg(x86_v3)]
mod tiles32;
#[cfg(x86_v3)]
mod tiles32_512;
#[cfg(x86_v3)]
mod tiles_k;
#[cfg(x86_v3)]
mod tiles_k512;

/// The portable dot products (the reference the SIMD ones are tested against).
pub mod portable {
    pub use super::blocks::quantize_row_q8;
    pub use super::dots::*;
    pub use super::kblocks::quantize_row_q8_k;
}
// The fastest activation quantization this build has; bit-identical to `blocks.rs`'.
#[cfg(x86_v3)]
pub use avx2::{quantize_row_q8, quantize_row_q8_k};
#[cfg(not(x86_v3))]
pub use blocks::quantize_row_q8;
pub use blocks::{BlockQ4_1, BlockQ8_0, BlockQ8_1, Q8Block};
#[cfg(x86_v3)]
pub use gemm::cpu_isa;
#[cfg(not(x86_v3))]
pub use isa::cpu_isa;
pub use isa::CpuIsa;
#[cfg(not(x86_v3))]
pub use kblocks::quantize_row_q8_k;
pub use kblocks::QK_K;
pub use matmul::{QuantLinear, QuantWeights};
pub use quantize::InSituType;

#[cfg(test)]
mod tests {
    use super::blocks::*;
    use super::dots::{dot_q4_1_q8_1, dot_q8_0_q8_0};
    use half::f16;

    /// Pseudo-random values in [-2, 2) (the kernel tests' inputs).
    pub(super) fn rand_f32(n: usize, seed: &mut u64) -> Vec<f32> {
        crate::lcg::lcg_uniform(n, seed)
            .into_iter()
            .map(|u| u * 2.0)
            .collect()
    }

    #[test]
    fn simd_quantization_equals_portable_bit_for_bit() {
        let mut seed = 9;
        let mut x = rand_f32(32 * 40, &mut seed);
        // A zero block, ties at .5 after scaling, tiny and huge values.
        x[..32].fill(0.0);
        for (i, v) in x[32..64].iter_mut().enumerate() {
            *v = (i as f32 - 15.5) / 127.0 * 2.0;
        }
        x[64] = 1e-30;
        x[100] = -3e30;
        x[128..160].fill(1e-40); // subnormal: 127 / max overflows
        x[170] = f32::INFINITY;
        x[200] = f32::NAN;
        let mut a1 = vec![BlockQ8_1::default(); 40];
        let mut b1 = a1.clone();
        quantize_row_q8(&x, &mut a1);
        super::quantize_row_q8(&x, &mut b1);
        let mut a0 = vec![BlockQ8_0::default(); 40];
        let mut b0 = a0.clone();
        quantize_row_q8(&x, &mut a0);
        super::quantize_row_q8(&x, &mut b0);
        for i in 0..40 {
            assert_eq!(
                (a1[i].d.to_bits(), a1[i].s.to_bits(), a1[i].qs),
                (b1[i].d.to_bits(), b1[i].s.to_bits(), b1[i].qs),
                "q8_1 block {i}"
            );
            assert_eq!(
                (a0[i].d.to_bits(), a0[i].qs),
                (b0[i].d.to_bits(), b0[i].qs),
                "q8_0 block {i}"
            );
        }
    }

    #[test]
    fn simd_q8_k_quantization_equals_portable_bit_for_bit() {
        use super::kblocks::{quantize_row_q8_k, BlockQ8K, QK_K};
        let blocks = 12;
        let mut seed = 17;
        let mut x = rand_f32(QK_K * blocks, &mut seed);
        let b = |i: usize| i * QK_K;
        x[b(0)..b(1)].fill(0.0);
        // Largest magnitude held with both signs: the first holder's sign wins.
        x[b(1) + 40] = 3.0;
        x[b(1) + 200] = -3.0;
        x[b(2) + 10] = -3.0;
        x[b(2) + 250] = 3.0;
        // Ties at .5 after scaling.
        for (i, v) in x[b(3)..b(4)].iter_mut().enumerate() {
            *v = (i as f32 - 127.5) / 127.0;
        }
        x[b(4) + 3] = 1e-30;
        x[b(5) + 7] = -3e30;
        x[b(6)..b(7)].fill(1e-40); // subnormal: -127 / max overflows
        x[b(7) + 100] = f32::INFINITY;
        x[b(8) + 200] = f32::NAN;
        x[b(9)..b(10)].fill(f32::NAN);
        let mut want = vec![BlockQ8K::default(); blocks];
        let mut got = want.clone();
        quantize_row_q8_k(&x, &mut want);
        super::quantize_row_q8_k(&x, &mut got);
        for (i, (w, g)) in want.iter().zip(&got).enumerate() {
            assert_eq!(
                (w.d.to_bits(), w.qs, w.bsums),
                (g.d.to_bits(), g.qs, g.bsums),
                "q8_k block {i}"
            );
        }
    }

    #[test]
    fn portable_dots_are_the_dequantized_dot_products() {
        let mut seed = 42;
        for kb in [1usize, 3, 18, 48] {
            let k = kb * QK;
            let a = rand_f32(k, &mut seed);
            let b = rand_f32(k, &mut seed);
            let mut w1 = vec![BlockQ4_1::default(); kb];
            for (i, blk) in w1.iter_mut().enumerate() {
                blk.d = f16::from_f32(0.01 + i as f32 * 0.001);
                blk.m = f16::from_f32(-0.08);
                for (j, q) in blk.qs.iter_mut().enumerate() {
                    *q = ((i * 7 + j * 13) % 256) as u8;
                }
            }
            let mut x1 = vec![BlockQ8_1::default(); kb];
            quantize_row_q8(&b, &mut x1);
            let mut w8 = vec![BlockQ8_0::default(); kb];
            let mut x8 = w8.clone();
            quantize_row_q8(&a, &mut w8);
            quantize_row_q8(&b, &mut x8);
            // The portable dots (the tiled kernels' reference: `gemm.rs` tests them bit for
            // bit) are the dot products of the dequantized values, to rounding; Q4_1's min
            // term pairs with the activations' stored `s`.
            let exact4: f32 = (0..kb)
                .map(|blk| {
                    let (wb, xb) = (&w1[blk], &x1[blk]);
                    let q = |i: usize| {
                        if i < 16 {
                            wb.qs[i] & 0x0F
                        } else {
                            wb.qs[i - 16] >> 4
                        }
                    };
                    (0..QK)
                        .map(|i| wb.d.to_f32() * q(i) as f32 * xb.d.to_f32() * xb.qs[i] as f32)
                        .sum::<f32>()
                        + wb.m.to_f32() * xb.s.to_f32()
                })
                .sum();
            let got4 = dot_q4_1_q8_1(&w1, &x1);
            assert!(
                (got4 - exact4).abs() <= 1e-4 * (1.0 + exact4.abs()),
                "{got4} vs {exact4}"
            );
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
