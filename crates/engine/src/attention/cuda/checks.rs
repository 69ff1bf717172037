//! The attention kernels' `gpu-check` rows: each kernel against the CPU references at
//! several shapes, and decode attention's read rate beside a device copy.

use cudarc::driver::CudaSlice;
use half::bf16;

use super::kernels::{gqa_kernel_built, CudaKernels, DecodeKernel, DecodeShape, PagedKv};
use crate::attention::split::{choose_decode_launch, paged_decode_split_reference};
use crate::cuda::{CudaResult, KernelType};
use crate::instrument::CheckRow;

/// Max relative error of `got` against `want` (normalised by want's max magnitude); NaN fails.
pub(super) fn rel_err(got: &[f32], want: &[f32]) -> f64 {
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6) as f64;
    let mut worst = 0f64;
    for (a, b) in got.iter().zip(want) {
        if !a.is_finite() {
            return f64::INFINITY;
        }
        worst = worst.max(((a - b).abs() as f64) / scale);
    }
    worst
}

/// Checks reshape_and_cache and paged_attention in `T` against the CPU references at
/// several shapes, outputs poisoned first so unwritten elements show.
pub fn check_kernels<T: KernelType>(k: &CudaKernels, tol: f64) -> Vec<CheckRow> {
    let mut rows = Vec::new();
    for &(ns, nh, nkv, hd, bs, ctx_max) in &[
        (1usize, 8usize, 8usize, 64usize, 16usize, 17usize),
        (7, 32, 8, 128, 16, 1000),
        (3, 9, 3, 64, 16, 5000),
        (2, 16, 2, 256, 32, 20000),
        (64, 32, 8, 128, 16, 2048),
    ] {
        let kind = if k.decode_kernel == DecodeKernel::Gqa && gqa_kernel_built(hd, nh / nkv) {
            "gqa"
        } else {
            "per-head"
        };
        let name = format!(
            "paged_attention {kind} {} s{ns} h{nh}/{nkv} d{hd} bs{bs} ctx<={ctx_max}",
            T::SUFFIX
        );
        let r = (|| -> CudaResult<(bool, String)> {
            let mut seed = (ns * 1000 + hd) as u64;
            let max_blocks = ctx_max.div_ceil(bs);
            let num_blocks = ns * max_blocks + 3;
            let width = nkv * hd;
            // Round inputs through T so the reference sees exactly what the GPU sees.
            let round = |v: Vec<f32>| -> Vec<f32> {
                v.into_iter().map(|x| T::from_f32(x).to_f32()).collect()
            };
            let q = round(crate::lcg::lcg_uniform(ns * nh * hd, &mut seed));
            let knew = round(crate::lcg::lcg_uniform(num_blocks * bs * width, &mut seed));
            let vnew = round(crate::lcg::lcg_uniform(num_blocks * bs * width, &mut seed));
            let ctx: Vec<i32> = (0..ns)
                .map(|s| (ctx_max - (s * 37) % ctx_max.max(1)).max(1) as i32)
                .collect();
            let mut tables = vec![0i32; ns * max_blocks];
            for s in 0..ns {
                for b in 0..max_blocks {
                    tables[s * max_blocks + b] = ((b * ns + s) * 7919 % num_blocks) as i32;
                }
            }
            // Write every slot through reshape_and_cache (slots permuted), into poisoned caches.
            let n_slots = num_blocks * bs;
            // A stride coprime to the slot count, so every slot is written exactly once.
            let stride = [7usize, 11, 13, 17, 19, 23]
                .into_iter()
                .find(|p| n_slots % p != 0)
                .unwrap_or(1);
            let slots: Vec<i32> = (0..n_slots)
                .map(|i| ((i * stride + 3) % n_slots) as i32)
                .collect();
            let mut kref = vec![0f32; n_slots * width];
            let mut vref = vec![0f32; n_slots * width];
            for (tok, &sl) in slots.iter().enumerate() {
                kref[sl as usize * width..][..width].copy_from_slice(&knew[tok * width..][..width]);
                vref[sl as usize * width..][..width].copy_from_slice(&vnew[tok * width..][..width]);
            }
            let to_t = |v: &[f32]| -> Vec<T> { v.iter().map(|&x| T::from_f32(x)).collect() };
            let st = &k.stream;
            let dk = st.clone_htod(&to_t(&knew))?;
            let dv = st.clone_htod(&to_t(&vnew))?;
            let poison = vec![T::from_f32(f32::NAN); n_slots * width];
            let mut kc = st.clone_htod(&poison)?;
            let mut vc = st.clone_htod(&poison)?;
            let dslots = st.clone_htod(&slots)?;
            k.reshape_and_cache(
                &dk.as_view(),
                &dv.as_view(),
                &mut kc,
                &mut vc,
                &dslots,
                n_slots,
                width,
            )?;
            let kc_host: Vec<f32> = st.clone_dtoh(&kc)?.into_iter().map(T::to_f32).collect();
            let cache_ok = kc_host.iter().zip(&kref).all(|(a, b)| a == b);
            let want = paged_decode_split_reference(
                &q, &kref, &vref, &tables, max_blocks, &ctx, nh, nkv, hd, bs, 512,
            );
            let dq = st.clone_htod(&to_t(&q))?;
            let mut dout = st.clone_htod(&vec![T::from_f32(f32::NAN); ns * nh * hd])?;
            let dt = st.clone_htod(&tables)?;
            let dc = st.clone_htod(&ctx)?;
            let shape = DecodeShape::new((ns, nh, nkv, hd), bs, ctx_max);
            let kv = PagedKv::new((&kc, &vc), (&dt, &dc), shape);
            k.paged_attention(&mut dout.as_view_mut(), &dq.as_view(), kv, &mut None)?;
            let got: Vec<f32> = st.clone_dtoh(&dout)?.into_iter().map(T::to_f32).collect();
            let e = rel_err(&got, &want);
            let gqa = k.decode_kernel == DecodeKernel::Gqa && gqa_kernel_built(hd, nh / nkv);
            let parts =
                choose_decode_launch(ns, if gqa { nkv } else { nh }, ctx_max).num_partitions;
            Ok((
                cache_ok && e <= tol,
                format!(
                    "cache {} · attention rel err {e:.1e} (limit {tol:.0e}) · {parts} partition(s)",
                    if cache_ok { "exact" } else { "WRONG" }
                ),
            ))
        })();
        rows.push(match r {
            Ok((ok, detail)) => CheckRow { name, ok, detail },
            Err(e) => CheckRow {
                name,
                ok: false,
                detail: format!("error: {e}"),
            },
        });
    }
    rows
}

/// Times decode attention at batch 64 × 32 q-heads × 8 kv-heads × 2048 keys × d128 in bf16,
/// as GB/s of K+V read, and a device-to-device copy for the roofline.
pub fn time_decode_attention(k: &CudaKernels) -> CudaResult<Vec<CheckRow>> {
    use cudarc::driver::sys::CUevent_flags;
    let (ns, nh, nkv, hd, bs, ctx) = (64usize, 32usize, 8usize, 128usize, 16usize, 2048usize);
    let max_blocks = ctx / bs;
    let num_blocks = ns * max_blocks;
    let width = nkv * hd;
    let st = &k.stream;
    let kc: CudaSlice<bf16> = st.alloc_zeros(num_blocks * bs * width)?;
    let vc: CudaSlice<bf16> = st.alloc_zeros(num_blocks * bs * width)?;
    let q: CudaSlice<bf16> = st.alloc_zeros(ns * nh * hd)?;
    let mut out: CudaSlice<bf16> = st.alloc_zeros(ns * nh * hd)?;
    let tables: Vec<i32> = (0..num_blocks as i32).collect();
    let dt = st.clone_htod(&tables)?;
    let dc = st.clone_htod(&vec![ctx as i32; ns])?;
    let kv = PagedKv::new(
        (&kc, &vc),
        (&dt, &dc),
        DecodeShape::new((ns, nh, nkv, hd), bs, ctx),
    );
    let mut scratch = None;
    let time = |f: &mut dyn FnMut() -> CudaResult<()>| -> CudaResult<f64> {
        for _ in 0..3 {
            f()?;
        }
        let e0 = k.ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
        let e1 = k.ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
        e0.record(st)?;
        let iters = 20;
        for _ in 0..iters {
            f()?;
        }
        e1.record(st)?;
        e1.synchronize()?;
        Ok(e0.elapsed_ms(&e1)? as f64 / iters as f64)
    };
    let ms =
        time(&mut || k.paged_attention(&mut out.as_view_mut(), &q.as_view(), kv, &mut scratch))?;
    let kv_bytes = 2.0 * (ns * ctx * width * 2) as f64;
    let attn_gbs = kv_bytes / (ms * 1e-3) / 1e9;
    let bytes = 1usize << 30;
    let src: CudaSlice<u8> = st.alloc_zeros(bytes)?;
    let mut dst: CudaSlice<u8> = st.alloc_zeros(bytes)?;
    let copy_ms = time(&mut || Ok(st.memcpy_dtod(&src, &mut dst)?))?;
    let copy_gbs = 2.0 * bytes as f64 / (copy_ms * 1e-3) / 1e9;
    Ok(vec![
        CheckRow {
            name: format!(
                "decode attention {:?} bf16 B64 h32/8 ctx2048 d128",
                k.decode_kernel
            ),
            ok: true,
            detail: format!("{attn_gbs:.0} GB/s K+V ({ms:.3} ms)"),
        },
        CheckRow {
            name: "device-to-device copy 1 GiB".into(),
            ok: true,
            detail: format!("{copy_gbs:.0} GB/s read+write"),
        },
        CheckRow {
            name: format!("attention / copy ({:?})", k.decode_kernel),
            // A speed target (the GPU speed issue's), reported for each kernel.
            ok: attn_gbs >= 0.8 * copy_gbs,
            detail: format!("{:.0}% (target >= 80%)", 100.0 * attn_gbs / copy_gbs),
        },
    ])
}
