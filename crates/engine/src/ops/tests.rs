use candle_core::{DType, Device, Tensor};

use super::swiglu::silu_mul_cpu;
use super::*;
use crate::model::rope::{RopeAngles, RopeTable};

#[test]
fn cpu_silu_mul_is_llama_cpps_formula_and_close_to_candles() {
    let mut seed = 5;
    let g: Vec<f32> = crate::lcg::lcg_uniform(3 * 9000, &mut seed)
        .iter()
        .map(|v| v * 12.0)
        .collect();
    let u = crate::lcg::lcg_uniform(3 * 9000, &mut seed);
    // Rows of 9000: 8992 in whole 16-wide steps (the polynomial), an 8-value libm tail.
    let want: Vec<f32> = g
        .iter()
        .zip(&u)
        .enumerate()
        .map(|(i, (&g, &u))| {
            if i % 9000 < 8992 {
                crate::ops::ggml_arith::silu(g) * u
            } else {
                g / (1.0 + (-g).exp()) * u
            }
        })
        .collect();
    let g = Tensor::from_vec(g, (3, 9000), &Device::Cpu).unwrap();
    let u = Tensor::from_vec(u, (3, 9000), &Device::Cpu).unwrap();
    let got: Vec<f32> = silu_mul_cpu(&g, &u)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let bits = |v: &[f32]| -> Vec<u32> { v.iter().map(|x| x.to_bits()).collect() };
    assert_eq!(bits(&got), bits(&want));
    let candle: Vec<f32> = (g.silu().unwrap() * &u)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    for (a, b) in got.iter().zip(&candle) {
        assert!((a - b).abs() <= 1e-6 * b.abs().max(1.0), "{a} vs {b}");
    }
}

#[test]
fn cpu_rms_norm_and_rope_agree_with_candles() {
    let mut seed = 11;
    let (n, heads, hd) = (5, 3, 64);
    let x = Tensor::from_vec(
        crate::lcg::lcg_uniform(n * heads * hd, &mut seed),
        (n, heads * hd),
        &Device::Cpu,
    )
    .unwrap();
    let w = Tensor::from_vec(
        crate::lcg::lcg_uniform(heads * hd, &mut seed),
        heads * hd,
        &Device::Cpu,
    )
    .unwrap();
    let close = |a: &Tensor, b: &Tensor, tol: f32| {
        let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
        for (a, b) in a.iter().zip(&b) {
            assert!((a - b).abs() <= tol * b.abs().max(1.0), "{a} vs {b}");
        }
    };
    close(
        &rms_norm(&x, &w, 1e-5).unwrap(),
        &candle_nn::ops::rms_norm(&x, &w, 1e-5).unwrap(),
        1e-5,
    );
    let table = RopeTable::new(
        RopeAngles::LlamaCpp,
        hd,
        10000.0,
        1.0,
        None,
        64,
        &Device::Cpu,
    )
    .unwrap();
    let pos = Tensor::from_vec(vec![0u32, 1, 7, 30, 63], n, &Device::Cpu).unwrap();
    let (cos, sin) = table.gather(&pos, DType::F32).unwrap();
    for neox in [false, true] {
        let got = rope_cpu(&x, &cos, &sin, hd, neox).unwrap();
        let t = x.reshape((n, heads, 1, hd)).unwrap();
        let want = if neox {
            candle_nn::rotary_emb::rope(&t, &cos, &sin).unwrap()
        } else {
            candle_nn::rotary_emb::rope_i(&t, &cos, &sin).unwrap()
        };
        close(&got, &want.reshape((n, heads * hd)).unwrap(), 1e-6);
    }
}
