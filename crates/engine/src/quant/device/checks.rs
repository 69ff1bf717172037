//! `gpu-check` rows for the quantized matmul: every type, f32 and bf16 activations, decode
//! row counts and a prefill one, against CPU references; then read rates at 8B shapes.

use candle_core::{DType, Device, Tensor};

use super::{
    chunk_dot, quantize_q8_1, random_blocks, unpack_chunk, CudaQuantWeight, DeviceQuantType,
};
use crate::error::{EngineError, Result};
use crate::instrument::CheckRow;
use crate::quant::QuantWeights;

/// Max |got - want| / max |want| over all elements; NaN fails.
fn rel_err(got: &[f32], want: &[f64]) -> f64 {
    let scale = want.iter().fold(0f64, |m, x| m.max(x.abs())).max(1e-9);
    got.iter().zip(want).fold(0f64, |e, (&g, &w)| {
        if g.is_finite() {
            e.max((g as f64 - w).abs() / scale)
        } else {
            f64::INFINITY
        }
    })
}

/// The kernel's own arithmetic on the CPU: 8-bit activation blocks against the unpacked
/// chunks (the mirror tested against the dequantizer), in f64.
fn q8_reference(
    ty: DeviceQuantType,
    raw: &[u8],
    x: &[f32],
    (m, n, k): (usize, usize, usize),
) -> Vec<f64> {
    let row_bytes = ty.weight_bytes(1, k);
    let acts: Vec<_> = x.chunks(32).map(quantize_q8_1).collect();
    let mut out = vec![0f64; m * n];
    for j in 0..n {
        let row = &raw[j * row_bytes..(j + 1) * row_bytes];
        let chunks: Vec<_> = (0..k / 32).map(|c| unpack_chunk(ty, row, c)).collect();
        for i in 0..m {
            out[i * n + j] = chunks
                .iter()
                .enumerate()
                .map(|(c, ch)| {
                    let (q, ds) = &acts[i * (k / 32) + c];
                    chunk_dot(ch, q, *ds) as f64
                })
                .sum();
        }
    }
    out
}

/// The dequantized weights times the activations, in f64.
fn dense_reference(
    ty: DeviceQuantType,
    raw: &[u8],
    x: &[f32],
    (m, n, k): (usize, usize, usize),
) -> Result<Vec<f64>> {
    let w = QuantWeights::from_gguf(ty.ggml(), raw, n, k)
        .ok_or_else(|| EngineError::Check(format!("{ty:?}: no CPU dequantizer")))?
        .dequantize(n, k);
    let mut out = vec![0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            out[i * n + j] = (0..k)
                .map(|t| x[i * k + t] as f64 * w[j * k + t] as f64)
                .sum();
        }
    }
    Ok(out)
}

fn check_one(dev: &Device, ty: DeviceQuantType, dt: DType, m: usize) -> Result<(bool, String)> {
    let (n, k) = (1031usize, 2048usize);
    let raw = random_blocks(ty, n, k, 40 + ty as u64, 0.1);
    let mut seed = 7 + m as u64;
    // Activations rounded through the type, so the references read what the GPU reads.
    let x = Tensor::from_vec(
        crate::lcg::lcg_uniform(m * k, &mut seed),
        (m, k),
        &Device::Cpu,
    )?
    .to_dtype(dt)?
    .to_dtype(DType::F32)?;
    let xs = x.flatten_all()?.to_vec1::<f32>()?;
    let w = CudaQuantWeight::upload(dev, ty, &raw, n, k)?;
    let got = w
        .forward(&x.to_device(dev)?.to_dtype(dt)?)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let dense = dense_reference(ty, &raw, &xs, (m, n, k))?;
    let e_dense = rel_err(&got, &dense);
    let out_tol = if dt == DType::F32 { 1e-4 } else { 1e-2 };
    if m > super::QMV_LOOP_ROWS {
        return Ok((
            e_dense <= out_tol,
            format!(
                "dequantize + cuBLAS: rel err {e_dense:.1e} vs f64 dense (limit {out_tol:.0e})"
            ),
        ));
    }
    // Rare ties round an activation to the other integer: 1e-3 of the largest output.
    let tol = if dt == DType::F32 { 1e-3 } else { 1e-2 };
    let e_q8 = rel_err(&got, &q8_reference(ty, &raw, &xs, (m, n, k)));
    Ok((
        e_q8 <= tol && e_dense <= 3e-2,
        format!("rel err {e_q8:.1e} vs its 8-bit form (limit {tol:.0e}) · {e_dense:.1e} vs f64 dense (limit 3e-2)"),
    ))
}

/// Read rate (weight bytes / time) of the decode kernel at one 8B MLP shape.
fn read_rate(dev: &Device, ty: DeviceQuantType, m: usize) -> Result<String> {
    let (n, k) = (14336usize, 4096usize);
    let w = CudaQuantWeight::upload(dev, ty, &random_blocks(ty, n, k, 1, 0.05), n, k)?;
    let mut seed = 2;
    let x = Tensor::from_vec(crate::lcg::lcg_uniform(m * k, &mut seed), (m, k), dev)?
        .to_dtype(DType::BF16)?;
    for _ in 0..3 {
        w.forward(&x)?;
    }
    dev.synchronize()?;
    let iters = 50;
    let t = std::time::Instant::now();
    for _ in 0..iters {
        w.forward(&x)?;
    }
    dev.synchronize()?;
    let s = t.elapsed().as_secs_f64() / iters as f64;
    Ok(format!(
        "{:.0} GB/s ({:.1} us, {:.1} MB)",
        w.size_bytes() as f64 / s / 1e9,
        s * 1e6,
        w.size_bytes() as f64 / 1e6
    ))
}

/// Every type × f32/bf16/f16 × 1, 3, 8, 20 (decode kernel, in launches of 8 rows) and 40
/// rows (dequantize + cuBLAS), then the decode kernel's read rate per type at 1 and 8 rows.
pub fn quant_matmul_checks(dev: &Device) -> Vec<CheckRow> {
    let mut rows = Vec::new();
    for ty in DeviceQuantType::ALL {
        for dt in [DType::F32, DType::BF16, DType::F16] {
            for m in [1usize, 3, 8, 20, 40] {
                rows.push(CheckRow::from_result(
                    format!("quant matmul {} {dt:?} m{m} n1031 k2048", ty.kernel_name()),
                    check_one(dev, ty, dt, m),
                ));
            }
        }
    }
    for ty in DeviceQuantType::ALL {
        for m in [1usize, 8] {
            rows.push(CheckRow::from_result(
                format!(
                    "quant matmul read rate {} bf16 m{m} n14336 k4096",
                    ty.kernel_name()
                ),
                read_rate(dev, ty, m).map(|d| (true, d)),
            ));
        }
    }
    rows
}
