//! Rotary position embeddings: llama.cpp's rotation on the CPU, and on CUDA the split of a
//! stacked QKV output into rotated q, rotated k and v in one kernel (kernels/fused.cu).

use candle_core::Tensor;

use super::with_f32;
use crate::error::Result;

/// RoPE on the CPU as llama.cpp computes it ([`super::ggml_arith::rotate_pair`]) over
/// `t: [n, heads * head_dim]` with `cos`/`sin` rows `[n, 1, head_dim / 2]`; `neox` pairs
/// `i` with `i + head_dim / 2`, else `2i` with `2i + 1`.
pub fn rope_cpu(
    t: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    head_dim: usize,
    neox: bool,
) -> Result<Tensor> {
    use rayon::prelude::*;
    let half = head_dim / 2;
    let width = t.dims2()?.1;
    let out = with_f32(t, |x| {
        with_f32(cos, |c| {
            with_f32(sin, |s| {
                let mut out = x.to_vec();
                out.par_chunks_mut(width).enumerate().for_each(|(row, o)| {
                    let (c, s) = (&c[row * half..][..half], &s[row * half..][..half]);
                    for head in o.chunks_mut(head_dim) {
                        for i in 0..half {
                            let (a, b) = if neox {
                                (i, i + half)
                            } else {
                                (2 * i, 2 * i + 1)
                            };
                            (head[a], head[b]) =
                                super::ggml_arith::rotate_pair(head[a], head[b], c[i], s[i]);
                        }
                    }
                });
                out
            })
        })
    })???;
    Ok(Tensor::from_vec(out, t.dims(), t.device())?)
}

/// A stacked QKV projection's output to rotated q, rotated k and v: one kernel on CUDA
/// (when `fused`), else the split path's ops on its slices.
pub fn rope_split_qkv(
    qkv: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    (nh, nkv, hd): (usize, usize, usize),
    neox: bool,
    rope: &dyn Fn(Tensor, usize) -> Result<Tensor>,
    fused: bool,
) -> Result<(Tensor, Tensor, Tensor)> {
    #[cfg(feature = "cuda")]
    if qkv.device().is_cuda() && fused {
        let (n, half) = (qkv.dims2()?.0, hd / 2);
        let (cos, sin) = (cos.reshape((n, half))?, sin.reshape((n, half))?);
        return cuda::RopeSplitQkv { nh, nkv, hd, neox }.apply(qkv, &cos, &sin);
    }
    let _ = (cos, sin, neox, fused);
    let (qw, kw) = (nh * hd, nkv * hd);
    Ok((
        rope(qkv.narrow(1, 0, qw)?.contiguous()?, nh)?,
        rope(qkv.narrow(1, qw, kw)?.contiguous()?, nkv)?,
        qkv.narrow(1, qw + kw, kw)?.contiguous()?,
    ))
}

#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::backend::BackendStorage;
    use candle_core::cuda::CudaDType;
    use candle_core::Tensor;
    use cudarc::driver::PushKernelArg;

    use crate::cuda::{
        by_float_type, contiguous_view, cuda_err, cuda_only_op, fused_module, launch_config,
        launch_op, KernelType, OpInput, OpLaunch, OpResult,
    };
    use crate::error::Result;

    /// A stacked QKV projection's output split into rotated q, rotated k and v (kernel
    /// `rope_split_qkv`): one kernel where the split path runs two rope kernels and copies.
    pub(super) struct RopeSplitQkv {
        pub nh: usize,
        pub nkv: usize,
        pub hd: usize,
        pub neox: bool,
    }

    impl RopeSplitQkv {
        fn run<T: KernelType + CudaDType>(
            &self,
            (s1, l1): OpInput,
            (s2, l2): OpInput,
            (s3, l3): OpInput,
        ) -> OpResult {
            let (n, width) = l1.shape().dims2()?;
            let (nh, nkv, hd) = (self.nh, self.nkv, self.hd);
            if width != (nh + 2 * nkv) * hd
                || l2.shape().elem_count() != n * hd / 2
                || l3.shape().elem_count() != n * hd / 2
                || hd % 2 != 0
            {
                return Err(cuda_err("rope_split_qkv: shapes do not match"));
            }
            let qkv = contiguous_view::<T>(s1, l1)?;
            let (cos, sin) = (contiguous_view::<T>(s2, l2)?, contiguous_view::<T>(s3, l3)?);
            let name = format!("rope_split_qkv_{}", T::SUFFIX);
            let mut launch = OpLaunch::<T>::new(s1, fused_module, &name, n * width)?;
            let (n_i, nh_i, nkv_i, hd_i, neox) =
                (n as i32, nh as i32, nkv as i32, hd as i32, self.neox as i32);
            let cfg = launch_config(
                (n as u32, (nh + 2 * nkv) as u32, 1),
                (hd / 2).next_multiple_of(32).min(128) as u32,
            );
            launch_op!(
                launch,
                cfg,
                &qkv,
                &cos,
                &sin,
                &mut launch.out,
                &n_i,
                &nh_i,
                &nkv_i,
                &hd_i,
                &neox
            )?;
            Ok(launch.finish(n * width))
        }
    }

    cuda_only_op!(
        CustomOp3 for RopeSplitQkv,
        "rope_split_qkv",
        |op, s1, l1, s2, l2, s3, l3| {
            if s2.dtype() != s1.dtype() || s3.dtype() != s1.dtype() {
                return Err(cuda_err("rope_split_qkv: cos/sin differ in type from qkv"));
            }
            by_float_type!(s1.dtype(), "rope_split_qkv", T => op.run::<T>((s1, l1), (s2, l2), (s3, l3)))
        }
    );

    impl RopeSplitQkv {
        /// `qkv` `[n, (nh + 2 nkv) * hd]` to `(q [n, nh*hd], k [n, nkv*hd], v [n, nkv*hd])`,
        /// q and k rotated by `cos`/`sin` (`[n, hd/2]` in qkv's type; `neox`: rotate halves,
        /// else pairs).
        pub fn apply(
            self,
            qkv: &Tensor,
            cos: &Tensor,
            sin: &Tensor,
        ) -> Result<(Tensor, Tensor, Tensor)> {
            let n = qkv.dims2()?.0;
            let (qw, kw) = (self.nh * self.hd, self.nkv * self.hd);
            let flat = qkv.contiguous()?.apply_op3_no_bwd(
                &cos.contiguous()?,
                &sin.contiguous()?,
                &self,
            )?;
            Ok((
                flat.narrow(0, 0, n * qw)?.reshape((n, qw))?,
                flat.narrow(0, n * qw, n * kw)?.reshape((n, kw))?,
                flat.narrow(0, n * (qw + kw), n * kw)?.reshape((n, kw))?,
            ))
        }
    }
}
