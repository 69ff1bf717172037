//! `gpu-check` rows for the device sampler: identical injected logits, seeded requests with
//! every cut and penalty, drawn on the GPU (a batch of 64, and each row alone, in f32 and
//! from bf16 logits) against the CPU sampler; then its time at 1000 rows of a 128k vocabulary.

use candle_core::{DType, Device, Tensor};

use super::device::sample_on_device;
use super::select::{RowDraw, SampleSpec};
use super::{draw_uniform, sample_token, top_logprobs, SamplingParams, TokenLogprob};
use crate::error::Result;
use crate::instrument::CheckRow;

/// Row `i`'s parameters: greedy, temperature alone, top-k, top-p, min-p and mixes, with
/// penalties and bias on some.
fn params(i: usize) -> SamplingParams {
    let (t, k, p, m) = [
        (0.0f32, 0usize, 1.0f32, 0.0f32),
        (1.0, 0, 1.0, 0.0),
        (0.8, 0, 0.95, 0.0),
        (0.7, 40, 0.95, 0.0),
        (1.0, 0, 1.0, 0.1),
        (0.5, 7, 0.3, 0.2),
        (1.3, 0, 0.9, 0.05),
        (1.0, 1, 1.0, 0.0),
    ][i % 8];
    SamplingParams {
        temperature: t,
        top_k: k,
        top_p: p,
        min_p: m,
        repetition_penalty: if i % 3 == 0 { 1.2 } else { 1.0 },
        frequency_penalty: if i % 5 == 1 { 0.5 } else { 0.0 },
        presence_penalty: if i % 5 == 2 { 0.3 } else { 0.0 },
        logit_bias: if i % 4 == 0 {
            vec![(11, 6.0), (12, -50.0)]
        } else {
            Vec::new()
        },
        min_tokens: 2,
        ..SamplingParams::default()
    }
}

/// Logits like a model's: a spread, a few high ones, ties and -inf entries.
fn logits(rows: usize, vocab: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    crate::lcg::lcg_uniform(rows * vocab, &mut s)
        .iter()
        .enumerate()
        .map(|(i, u)| match (i % vocab) % 211 {
            0 => f32::NEG_INFINITY,
            7 => 3.0,
            _ => u * 6.0 + if i % 97 == 0 { 8.0 } else { 0.0 },
        })
        .collect()
}

fn compare(dev: &Device, dt: DType, alone: bool) -> Result<(bool, String)> {
    let (n, vocab) = (64usize, 32000usize);
    let raw = logits(n, vocab, 21);
    // Rounded through the type, so the CPU reads what the GPU reads.
    let host = Tensor::from_vec(raw, (n, vocab), &Device::Cpu)?.to_dtype(dt)?;
    let rows_f32 = host.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    let prompt = [11u32, 13, 17, 13];
    let stop = [2u32];
    let mut want = Vec::with_capacity(n);
    let mut specs = Vec::with_capacity(n);
    for (i, row) in rows_f32.iter().enumerate() {
        let p = params(i);
        let output: Vec<u32> = (0..(i % 5) as u32)
            .map(|j| (j * 7 + i as u32) % 50)
            .collect();
        let seed = 1000 + i as u64;
        let p = SamplingParams {
            logprobs: (i % 3 == 0).then_some(1 + i % 5),
            ..p
        };
        let tok = sample_token(&mut row.clone(), &p, &prompt, &output, &stop, seed).token;
        want.push((tok, p.logprobs.map(|k| top_logprobs(row, tok, k))));
        specs.push(SampleSpec::new(&p, (&prompt, &output), &stop, seed, vocab));
    }
    let on_dev = host.to_device(dev)?;
    let got: Vec<(u32, Option<TokenLogprob>)> = if alone {
        let mut v = Vec::with_capacity(n);
        for (i, spec) in specs.iter().enumerate() {
            v.extend(sample_on_device(
                &on_dev.narrow(0, i, 1)?,
                std::slice::from_ref(spec),
            )?);
        }
        v
    } else {
        sample_on_device(&on_dev, &specs)?
    };
    // Log-probs: the same tokens and ranks, values within 1e-5 (f64 normalisers summed in
    // another order).
    let lp_same = |a: &Option<TokenLogprob>, b: &Option<TokenLogprob>| match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => {
            a.rank == b.rank
                && (a.logprob - b.logprob).abs() <= 1e-5
                && a.top.len() == b.top.len()
                && a.top
                    .iter()
                    .zip(&b.top)
                    .all(|(x, y)| x.0 == y.0 && (x.1 - y.1).abs() <= 1e-5)
        }
        _ => false,
    };
    let same = got.iter().zip(&want).filter(|(a, b)| a.0 == b.0).count();
    let lp_ok = got
        .iter()
        .zip(&want)
        .filter(|(a, b)| lp_same(&a.1, &b.1))
        .count();
    let first_diff = got
        .iter()
        .zip(&want)
        .position(|(a, b)| a.0 != b.0 || !lp_same(&a.1, &b.1));
    Ok((
        same == n && lp_ok == n,
        format!(
            "{same}/{n} draws and {lp_ok}/{n} log-probs equal the CPU's{}",
            first_diff.map_or(String::new(), |i| format!(
                " (row {i}: gpu {:?} cpu {:?})",
                got[i], want[i]
            ))
        ),
    ))
}

/// Milliseconds of one call at `rows` x `vocab` with temperature 0.8 / top-p 0.95 and
/// of candle's argmax on the same logits.
fn timing(dev: &Device, rows: usize, vocab: usize) -> Result<String> {
    let mut seed = 4;
    let l = Tensor::from_vec(
        crate::lcg::lcg_uniform(rows * vocab, &mut seed),
        (rows, vocab),
        dev,
    )?
    .affine(6.0, 0.0)?;
    let specs: Vec<SampleSpec> = (0..rows)
        .map(|i| SampleSpec {
            draw: RowDraw {
                temperature: 0.8,
                top_k: 0,
                top_p: 0.95,
                min_p: 0.0,
                u: draw_uniform(i as u64, 0),
            },
            adjust: Vec::new(),
            logprobs: None,
        })
        .collect();
    let time = |f: &dyn Fn() -> Result<()>| -> Result<f64> {
        f()?;
        dev.synchronize()?;
        let t = std::time::Instant::now();
        for _ in 0..5 {
            f()?;
        }
        dev.synchronize()?;
        Ok(t.elapsed().as_secs_f64() * 1e3 / 5.0)
    };
    let ours = time(&|| sample_on_device(&l, &specs).map(|_| ()))?;
    let argmax = time(&|| {
        Ok(l.argmax(candle_core::D::Minus1)?
            .to_vec1::<u32>()
            .map(|_| ())?)
    })?;
    Ok(format!("{ours:.2} ms (argmax {argmax:.2} ms)"))
}

pub fn sampling_checks(dev: &Device) -> Vec<CheckRow> {
    let mut rows = Vec::new();
    for (dt, alone) in [
        (DType::F32, false),
        (DType::F32, true),
        (DType::BF16, false),
    ] {
        rows.push(CheckRow::from_result(
            format!(
                "device sampler {dt:?} {} vs CPU sampler",
                if alone {
                    "each row alone"
                } else {
                    "batch of 64"
                }
            ),
            compare(dev, dt, alone),
        ));
    }
    rows.push(CheckRow::from_result(
        "device sampler 1000 x 128256, t 0.8 top-p 0.95",
        timing(dev, 1000, 128_256).map(|d| (true, d)),
    ));
    rows
}
