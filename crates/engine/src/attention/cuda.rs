//! Our CUDA kernels (kernels/*.cu, compiled by build.rs into fatbins embedded here), loaded
//! with cudarc, and the checks `ferrolm gpu-check` runs against the CPU references.

use std::sync::Arc;

use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, CudaView, CudaViewMut, DevicePtr,
    DeviceRepr, LaunchConfig, PushKernelArg, ValidAsZeroBits,
};
use half::{bf16, f16};

use super::split::{choose_decode_launch, paged_decode_split_reference};
pub use super::split::{plan_prefill_tiles, PREFILL_TILE_ROWS};

const PAGED_ATTENTION_FATBIN: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/paged_attention.fatbin"));
const RESHAPE_AND_CACHE_FATBIN: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/reshape_and_cache.fatbin"));
const PREFILL_ATTENTION_FATBIN: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/prefill_attention.fatbin"));
const PAGED_ATTENTION_GQA_FATBIN: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/paged_attention_gqa.fatbin"));
pub(crate) const FUSED_FATBIN: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/fused.fatbin"));
pub(crate) const GEMV_FATBIN: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/gemv.fatbin"));

pub type CudaResult<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Element types the kernels are built for.
pub trait KernelType: DeviceRepr + ValidAsZeroBits + Copy + Send + Sync + 'static {
    const SUFFIX: &'static str;
    const DTYPE: candle_core::DType;
    fn from_f32(x: f32) -> Self;
    fn to_f32(self) -> f32;
}
impl KernelType for f32 {
    const SUFFIX: &'static str = "f32";
    const DTYPE: candle_core::DType = candle_core::DType::F32;
    fn from_f32(x: f32) -> Self {
        x
    }
    fn to_f32(self) -> f32 {
        self
    }
}
impl KernelType for f16 {
    const SUFFIX: &'static str = "f16";
    const DTYPE: candle_core::DType = candle_core::DType::F16;
    fn from_f32(x: f32) -> Self {
        f16::from_f32(x)
    }
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
}
impl KernelType for bf16 {
    const SUFFIX: &'static str = "bf16";
    const DTYPE: candle_core::DType = candle_core::DType::BF16;
    fn from_f32(x: f32) -> Self {
        bf16::from_f32(x)
    }
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
}

/// Whether libcuda can be opened (cudarc panics on first use otherwise).
pub fn cuda_driver_present() -> bool {
    // SAFETY: only tries to dlopen the driver library.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// GPU `ordinal` as a candle device for the model: its own stream (one stream every thread
/// shares, unlike candle's default per-thread stream, so weights loaded on one thread are
/// ordered with the engine thread's kernels, and the stream can be captured into CUDA
/// graphs), and no cudarc event tracking (everything is ordered by that one stream; the
/// tracking cost two events per allocation and a wait and a record per kernel argument,
/// and an event recorded outside a graph capture cannot be waited on inside one).
pub fn model_device(ordinal: usize) -> candle_core::Result<candle_core::Device> {
    if !cuda_driver_present() {
        candle_core::bail!("no CUDA driver on this host (libcuda.so not found)");
    }
    let dev = candle_core::Device::new_cuda_with_stream(ordinal)?;
    if let candle_core::Device::Cuda(d) = &dev {
        // SAFETY: every tensor of this device lives on its one stream (see above).
        unsafe { d.disable_event_tracking() };
        if keep_freed_memory() {
            set_pool_release_threshold(d, u64::MAX)
                .map_err(|e| candle_core::Error::Cuda(format!("memory pool: {e}").into()))?;
        }
    }
    Ok(dev)
}

/// FERROLM_POOL_KEEP=1: the device's stream-ordered memory pool keeps what is freed (a
/// caching allocator, as PyTorch's) instead of handing it back to the driver whenever the
/// stream is synchronised (the pool's default release threshold is 0, so every step's
/// activations are unmapped at its end and mapped again by the next). Opt-in until a GPU
/// run measures it (scripts/gpu-check.sh runs the A/B).
pub fn keep_freed_memory() -> bool {
    std::env::var("FERROLM_POOL_KEEP").is_ok_and(|v| v == "1")
}

fn default_pool(
    d: &candle_core::cuda::CudaDevice,
) -> CudaResult<cudarc::driver::sys::CUmemoryPool> {
    use cudarc::driver::sys;
    let stream = d.cuda_stream();
    stream.context().bind_to_thread()?;
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    // SAFETY: plain driver queries on the bound context's device.
    unsafe { sys::cuDeviceGetDefaultMemPool(&mut pool, stream.context().cu_device()) }.result()?;
    Ok(pool)
}

/// Bytes the device's default memory pool keeps when the stream synchronises.
pub fn set_pool_release_threshold(d: &candle_core::cuda::CudaDevice, bytes: u64) -> CudaResult<()> {
    use cudarc::driver::sys;
    let pool = default_pool(d)?;
    let mut v = bytes;
    // SAFETY: the attribute takes a u64 by pointer.
    unsafe {
        sys::cuMemPoolSetAttribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            &mut v as *mut u64 as *mut std::ffi::c_void,
        )
    }
    .result()?;
    Ok(())
}

/// Hands the pool's unused memory back to the driver (before measuring free memory).
pub fn trim_pool(d: &candle_core::cuda::CudaDevice) -> CudaResult<()> {
    let pool = default_pool(d)?;
    // SAFETY: trims only memory no allocation holds.
    unsafe { cudarc::driver::sys::cuMemPoolTrimTo(pool, 0) }.result()?;
    Ok(())
}

pub struct CudaKernels {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    attention: Arc<CudaModule>,
    cache: Arc<CudaModule>,
    prefill: Arc<CudaModule>,
    gqa: Arc<CudaModule>,
    /// Which decode kernel `paged_attention` runs (the GQA one unless
    /// FERROLM_DECODE_KERNEL=per-head).
    pub decode_kernel: DecodeKernel,
}

/// The decode attention kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeKernel {
    /// A CTA per query head (`paged_attention_d*`).
    PerHead,
    /// A CTA per KV head serving its whole query group (`paged_attention_gqa_*`), where
    /// built for the head size and group; per-head otherwise.
    Gqa,
}

impl DecodeKernel {
    /// The GQA kernel unless FERROLM_DECODE_KERNEL=per-head: on an H200 (2026-11-27) it
    /// passed every kernel and model check and read K/V at 2680 GB/s on the B64 ctx2048
    /// shape, where the per-head kernel reads each KV head once per query head.
    pub fn from_env() -> Self {
        match std::env::var("FERROLM_DECODE_KERNEL").as_deref() {
            Ok("per-head") | Ok("v1") => Self::PerHead,
            _ => Self::Gqa,
        }
    }
}

/// Whether the GQA decode kernel is built for this head size and group size.
pub fn gqa_kernel_built(head_dim: usize, group: usize) -> bool {
    matches!(head_dim, 64 | 128) && matches!(group, 1 | 2 | 3 | 4 | 6 | 8)
}

/// Shapes of one decode attention call.
#[derive(Debug, Clone, Copy)]
pub struct DecodeShape {
    pub num_seqs: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub block_size: usize,
    pub max_blocks_per_seq: usize,
    pub max_context_len: usize,
}

impl CudaKernels {
    pub fn new(ordinal: usize) -> CudaResult<Self> {
        if !cuda_driver_present() {
            return Err("no CUDA driver on this host (libcuda.so not found)".into());
        }
        let ctx = CudaContext::new(ordinal)?;
        // Our kernels synchronise through stream order; event tracking only costs time.
        unsafe { ctx.disable_event_tracking() };
        Self::on_stream(ctx.default_stream())
    }

    /// The kernels on an existing stream (candle's, so our launches and candle's are
    /// ordered without events).
    pub fn on_stream(stream: Arc<CudaStream>) -> CudaResult<Self> {
        let ctx = stream.context().clone();
        let load = |bin: &[u8]| ctx.load_module(cudarc::nvrtc::Ptx::from_binary(bin.to_vec()));
        Ok(Self {
            attention: load(PAGED_ATTENTION_FATBIN)?,
            cache: load(RESHAPE_AND_CACHE_FATBIN)?,
            prefill: load(PREFILL_ATTENTION_FATBIN)?,
            gqa: load(PAGED_ATTENTION_GQA_FATBIN)?,
            decode_kernel: DecodeKernel::from_env(),
            ctx,
            stream,
        })
    }

    /// Varlen causal attention for prefill chunks and mixed batches: `tiles` holds
    /// `[seq, first query row, rows]` per tile of up to [`PREFILL_TILE_ROWS`] rows.
    #[allow(clippy::too_many_arguments)]
    pub fn prefill_attention<T: KernelType>(
        &self,
        out: &mut CudaViewMut<T>,
        q: &CudaView<T>,
        k_cache: &CudaSlice<T>,
        v_cache: &CudaSlice<T>,
        block_tables: &CudaSlice<i32>,
        context_lens: &CudaSlice<i32>,
        query_start_loc: &CudaSlice<i32>,
        tiles: &CudaSlice<i32>,
        num_tiles: usize,
        s: DecodeShape,
    ) -> CudaResult<()> {
        if !matches!(s.head_dim, 64 | 128) {
            return Err(format!(
                "prefill attention: head_dim {} (built: 64, 128)",
                s.head_dim
            )
            .into());
        }
        let f = self.func(
            &self.prefill,
            &format!("prefill_attention_d{}_{}", s.head_dim, T::SUFFIX),
        )?;
        let hd = s.head_dim;
        let smem = (PREFILL_TILE_ROWS * hd + 32 * (hd + 1) + 32 * hd) * 4;
        let scale = 1.0f32 / (hd as f32).sqrt();
        let (mb, nh, nkv, bs) = (
            s.max_blocks_per_seq as i32,
            s.num_heads as i32,
            s.num_kv_heads as i32,
            s.block_size as i32,
        );
        let cfg = LaunchConfig {
            grid_dim: (num_tiles as u32, s.num_heads as u32, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: smem as u32,
        };
        unsafe {
            self.stream
                .launch_builder(&f)
                .arg(&mut *out)
                .arg(q)
                .arg(k_cache)
                .arg(v_cache)
                .arg(block_tables)
                .arg(context_lens)
                .arg(query_start_loc)
                .arg(tiles)
                .arg(&mb)
                .arg(&nh)
                .arg(&nkv)
                .arg(&bs)
                .arg(&scale)
                .launch(cfg)?
        };
        Ok(())
    }

    fn func(&self, m: &Arc<CudaModule>, name: &str) -> CudaResult<CudaFunction> {
        Ok(m.load_function(name)?)
    }

    /// Writes `key`/`value` rows (`[num_tokens, width]`) into their slots.
    pub fn reshape_and_cache<T: KernelType>(
        &self,
        key: &CudaView<T>,
        value: &CudaView<T>,
        k_cache: &mut CudaSlice<T>,
        v_cache: &mut CudaSlice<T>,
        slots: &CudaSlice<i32>,
        num_tokens: usize,
        width: usize,
    ) -> CudaResult<()> {
        let f = self.func(&self.cache, &format!("reshape_and_cache_{}", T::SUFFIX))?;
        let width_i = width as i32;
        let cfg = LaunchConfig {
            grid_dim: (num_tokens as u32, 1, 1),
            block_dim: (width.clamp(32, 512) as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        unsafe {
            self.stream
                .launch_builder(&f)
                .arg(key)
                .arg(value)
                .arg(k_cache)
                .arg(v_cache)
                .arg(slots)
                .arg(&width_i)
                .launch(cfg)?
        };
        Ok(())
    }

    /// Decode attention; chooses one pass or split-K + reduce as vLLM does.
    #[allow(clippy::too_many_arguments)]
    pub fn paged_attention<T: KernelType>(
        &self,
        out: &mut CudaViewMut<T>,
        q: &CudaView<T>,
        k_cache: &CudaSlice<T>,
        v_cache: &CudaSlice<T>,
        block_tables: &CudaSlice<i32>,
        context_lens: &CudaSlice<i32>,
        s: DecodeShape,
        scratch: &mut Option<(CudaSlice<f32>, CudaSlice<f32>, CudaSlice<f32>)>,
    ) -> CudaResult<()> {
        let group = s.num_heads / s.num_kv_heads.max(1);
        // The GQA kernel loads q with 16-byte (8 at d64 in 16-bit types) vector loads.
        let q_aligned = (q.device_ptr(&self.stream).0 as usize) % 16 == 0;
        let gqa = self.decode_kernel == DecodeKernel::Gqa
            && q_aligned
            && s.num_heads % s.num_kv_heads.max(1) == 0
            && gqa_kernel_built(s.head_dim, group);
        // The grid's width in CTAs per sequence decides split-K, as in vLLM's rule.
        let ctas_per_seq = if gqa { s.num_kv_heads } else { s.num_heads };
        let launch = choose_decode_launch(s.num_seqs, ctas_per_seq, s.max_context_len);
        let parts = launch.num_partitions;
        let name = if gqa {
            format!("paged_attention_gqa_d{}_g{group}_{}", s.head_dim, T::SUFFIX)
        } else {
            format!("paged_attention_d{}_{}", s.head_dim, T::SUFFIX)
        };
        let f = self.func(if gqa { &self.gqa } else { &self.attention }, &name)?;
        let n_part = s.num_seqs * s.num_heads * parts;
        let need = n_part * s.head_dim;
        if parts > 1
            && scratch
                .as_ref()
                .is_none_or(|x| x.0.len() < need || x.1.len() < n_part)
        {
            *scratch = Some((
                self.stream.alloc_zeros(need)?,
                self.stream.alloc_zeros(n_part)?,
                self.stream.alloc_zeros(n_part)?,
            ));
        }
        // With one partition the kernel never touches the scratch: any buffers will do
        // (kept from earlier calls, so a decode step allocates nothing).
        if scratch.is_none() {
            *scratch = Some((
                self.stream.alloc_zeros(1)?,
                self.stream.alloc_zeros(1)?,
                self.stream.alloc_zeros(1)?,
            ));
        }
        let Some((po, pm, ps)) = scratch.as_mut() else {
            unreachable!("scratch was just set")
        };
        let scale = 1.0f32 / (s.head_dim as f32).sqrt();
        let (mb, nh, nkv, bs, psize) = (
            s.max_blocks_per_seq as i32,
            s.num_heads as i32,
            s.num_kv_heads as i32,
            s.block_size as i32,
            launch.partition_size as i32,
        );
        let cfg = LaunchConfig {
            grid_dim: (ctas_per_seq as u32, s.num_seqs as u32, parts as u32),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        unsafe {
            self.stream
                .launch_builder(&f)
                .arg(&mut *out)
                .arg(&mut *po)
                .arg(&mut *pm)
                .arg(&mut *ps)
                .arg(q)
                .arg(k_cache)
                .arg(v_cache)
                .arg(block_tables)
                .arg(context_lens)
                .arg(&mb)
                .arg(&nh)
                .arg(&nkv)
                .arg(&bs)
                .arg(&scale)
                .arg(&psize)
                .launch(cfg)?
        };
        if parts > 1 {
            let r = self.func(
                &self.attention,
                &format!("paged_attention_reduce_{}", T::SUFFIX),
            )?;
            let (hd, np) = (s.head_dim as i32, parts as i32);
            let cfg = LaunchConfig {
                grid_dim: (s.num_heads as u32, s.num_seqs as u32, 1),
                block_dim: (s.head_dim.min(256) as u32, 1, 1),
                shared_mem_bytes: 0,
            };
            unsafe {
                self.stream
                    .launch_builder(&r)
                    .arg(&mut *out)
                    .arg(&*po)
                    .arg(&*pm)
                    .arg(&*ps)
                    .arg(&nh)
                    .arg(&hd)
                    .arg(&np)
                    .launch(cfg)?
            };
        }
        Ok(())
    }
}

/// Max relative error of `got` against `want` (normalised by want's max magnitude); NaN fails.
fn rel_err(got: &[f32], want: &[f32]) -> f64 {
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

/// One line of the gpu-check table.
pub struct CheckRow {
    pub name: String,
    pub ok: bool,
    pub detail: String,
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
            let q = round(crate::attention::lcg_uniform(ns * nh * hd, &mut seed));
            let knew = round(crate::attention::lcg_uniform(
                num_blocks * bs * width,
                &mut seed,
            ));
            let vnew = round(crate::attention::lcg_uniform(
                num_blocks * bs * width,
                &mut seed,
            ));
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
            let shape = DecodeShape {
                num_seqs: ns,
                num_heads: nh,
                num_kv_heads: nkv,
                head_dim: hd,
                block_size: bs,
                max_blocks_per_seq: max_blocks,
                max_context_len: ctx_max,
            };
            let mut scratch = None;
            k.paged_attention(
                &mut dout.as_view_mut(),
                &dq.as_view(),
                &kc,
                &vc,
                &dt,
                &dc,
                shape,
                &mut scratch,
            )?;
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
    let shape = DecodeShape {
        num_seqs: ns,
        num_heads: nh,
        num_kv_heads: nkv,
        head_dim: hd,
        block_size: bs,
        max_blocks_per_seq: max_blocks,
        max_context_len: ctx,
    };
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
    let ms = time(&mut || {
        k.paged_attention(
            &mut out.as_view_mut(),
            &q.as_view(),
            &kc,
            &vc,
            &dt,
            &dc,
            shape,
            &mut scratch,
        )
    })?;
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
