//! The skinny matmul for decode batches of 1-4 rows on CUDA (kernels/gemv.cu), and its
//! `gpu-check` rows.

use candle_core::backend::BackendStorage;
use candle_core::cuda::CudaDType;
use candle_core::{DType, Tensor};
use cudarc::driver::{DevicePtr, PushKernelArg};

use crate::cuda::{
    by_float_type, contiguous_view, cuda_err, cuda_only_op, gemv_module, launch_config, launch_op,
    KernelType, OpInput, OpLaunch, OpResult,
};
use crate::error::{EngineError, Result};
use crate::instrument::CheckRow;

/// Rows of x the skinny matmul takes (decode batches up to this size).
pub const GEMV_MAX_ROWS: usize = 4;

/// `y = x w^T` for `x` `[m <= 4, k]` and a row-major weight `w` `[n, k]` (kernels/gemv.cu).
struct Gemv;

impl Gemv {
    fn run<T: KernelType + CudaDType>((s1, l1): OpInput, (s2, l2): OpInput) -> OpResult {
        let (m, k) = l1.shape().dims2()?;
        let (n, k2) = l2.shape().dims2()?;
        let vec = 16 / std::mem::size_of::<T>();
        if k != k2 || m == 0 || m > GEMV_MAX_ROWS || k % vec != 0 {
            return Err(cuda_err("gemv: shapes not supported"));
        }
        let (x, w) = (contiguous_view::<T>(s1, l1)?, contiguous_view::<T>(s2, l2)?);
        let stream = s1.device.cuda_stream();
        for p in [x.device_ptr(&stream).0, w.device_ptr(&stream).0] {
            if p % 16 != 0 {
                return Err(cuda_err("gemv: rows are not 16-byte aligned"));
            }
        }
        let mut launch =
            OpLaunch::<T>::new(s1, gemv_module, &format!("gemv_m{m}_{}", T::SUFFIX), m * n)?;
        let (n_i, k_i) = (n as i32, k as i32);
        let cfg = launch_config((n.div_ceil(8) as u32, 1, 1), 256);
        launch_op!(launch, cfg, &x, &w, &mut launch.out, &n_i, &k_i)?;
        Ok(launch.finish((m, n)))
    }
}

cuda_only_op!(CustomOp2 for Gemv, "gemv", |_op, s1, l1, s2, l2| {
    if s1.dtype() != s2.dtype() {
        return Err(cuda_err("gemv: x and w differ in type"));
    }
    by_float_type!(s1.dtype(), "gemv", T => Gemv::run::<T>((s1, l1), (s2, l2)))
});

/// `x w^T` through the skinny matmul kernel when it applies (CUDA, `x` of at most
/// [`GEMV_MAX_ROWS`] rows, both contiguous, same type, `k` a multiple of a 16-byte vector,
/// 16-byte aligned rows); `None` leaves the matmul to cuBLAS.
pub fn gemv(x: &Tensor, w: &Tensor) -> Result<Option<Tensor>> {
    if !x.device().is_cuda() || x.dtype() != w.dtype() {
        return Ok(None);
    }
    let (Ok((m, k)), Ok((_, k2))) = (x.dims2(), w.dims2()) else {
        return Ok(None);
    };
    let vec = 16 / x.dtype().size_in_bytes();
    let aligned = |t: &Tensor| t.is_contiguous() && t.layout().start_offset() % vec == 0;
    if m == 0 || m > GEMV_MAX_ROWS || k != k2 || k % vec != 0 || !aligned(x) || !aligned(w) {
        return Ok(None);
    }
    Ok(Some(x.apply_op2_no_bwd(w, &Gemv)?))
}

/// `gpu-check` rows for the skinny matmul: against cuBLAS (candle's matmul) for 1-4 rows
/// in each type, then its read rate beside cuBLAS's on an 8B MLP weight (bf16, one row).
pub fn gemv_checks(dev: &candle_core::Device) -> Vec<CheckRow> {
    let mut rows = Vec::new();
    let mut seed = 5u64;
    for (dt, tol) in [
        (DType::F32, 1e-4f32),
        (DType::F16, 1e-2),
        (DType::BF16, 2e-2),
    ] {
        for m in 1..=GEMV_MAX_ROWS {
            let (n, k) = (1031usize, 4096usize);
            let r = (|| -> Result<(bool, String)> {
                let x = Tensor::from_vec(crate::lcg::lcg_uniform(m * k, &mut seed), (m, k), dev)?
                    .to_dtype(dt)?;
                let w = Tensor::from_vec(crate::lcg::lcg_uniform(n * k, &mut seed), (n, k), dev)?
                    .to_dtype(dt)?;
                let got = gemv(&x, &w)?
                    .ok_or_else(|| EngineError::Check("gemv did not apply".into()))?
                    .to_dtype(DType::F32)?;
                let want = x
                    .to_dtype(DType::F32)?
                    .matmul(&w.to_dtype(DType::F32)?.t()?)?;
                let scale = want.abs()?.max_all()?.to_scalar::<f32>()?.max(1e-6);
                let err = (got - &want)?.abs()?.max_all()?.to_scalar::<f32>()? / scale;
                Ok((
                    err <= tol,
                    format!("rel err {err:.1e} (limit {tol:.0e}) vs f32 matmul"),
                ))
            })();
            rows.push(match r {
                Ok((ok, detail)) => CheckRow {
                    name: format!("gemv {dt:?} m{m} n{n} k{k}"),
                    ok,
                    detail,
                },
                Err(e) => CheckRow {
                    name: format!("gemv {dt:?} m{m}"),
                    ok: false,
                    detail: format!("error: {e}"),
                },
            });
        }
    }
    let timing = (|| -> Result<String> {
        let (n, k) = (14336usize, 4096usize);
        let x = Tensor::from_vec(crate::lcg::lcg_uniform(k, &mut seed), (1, k), dev)?
            .to_dtype(DType::BF16)?;
        let w = Tensor::from_vec(crate::lcg::lcg_uniform(n * k, &mut seed), (n, k), dev)?
            .to_dtype(DType::BF16)?;
        let bytes = (n * k * 2) as f64;
        let time = |f: &dyn Fn() -> Result<Tensor>| -> Result<f64> {
            for _ in 0..3 {
                f()?;
            }
            dev.synchronize()?;
            let t = std::time::Instant::now();
            let iters = 50;
            for _ in 0..iters {
                f()?;
            }
            dev.synchronize()?;
            Ok(t.elapsed().as_secs_f64() / iters as f64)
        };
        let ours =
            time(&|| gemv(&x, &w)?.ok_or_else(|| EngineError::Check("gemv did not apply".into())))?;
        let cublas = time(&|| Ok(x.matmul(&w.t()?)?))?;
        Ok(format!(
            "ours {:.0} GB/s ({:.1} us) · cuBLAS {:.0} GB/s ({:.1} us)",
            bytes / ours / 1e9,
            ours * 1e6,
            bytes / cublas / 1e9,
            cublas * 1e6
        ))
    })();
    rows.push(match timing {
        Ok(detail) => CheckRow {
            name: "gemv bf16 m1 n14336 k4096 read rate".into(),
            ok: true,
            detail,
        },
        Err(e) => CheckRow {
            name: "gemv timing".into(),
            ok: false,
            detail: format!("error: {e}"),
        },
    });
    rows
}
