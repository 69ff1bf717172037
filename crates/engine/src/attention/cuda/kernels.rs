//! The attention kernels on a stream: KV writes, decode (per-head or GQA, split-K) and varlen
//! prefill attention.

use std::sync::Arc;

use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, CudaView, CudaViewMut, DevicePtr,
    LaunchConfig, PushKernelArg,
};

use crate::attention::split::choose_decode_launch;
pub use crate::attention::split::{plan_prefill_tiles, PREFILL_TILE_ROWS};
use crate::attention::LayerAttention;
use crate::cuda::{
    cuda_driver_present, CudaResult, KernelType, PAGED_ATTENTION_FATBIN,
    PAGED_ATTENTION_GQA_FATBIN, PREFILL_ATTENTION_FATBIN, RESHAPE_AND_CACHE_FATBIN,
};

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
    /// The GQA kernel unless `per_head` (FERROLM_DECODE_KERNEL=per-head): on an H200
    /// (2026-11-27) it passed every kernel and model check and read K/V at 2680 GB/s on the
    /// B64 ctx2048 shape, where the per-head kernel reads each KV head once per query head.
    pub fn choose(per_head: bool) -> Self {
        if per_head {
            Self::PerHead
        } else {
            Self::Gqa
        }
    }
}

/// Whether the GQA decode kernel is built for this head size and group size.
pub fn gqa_kernel_built(head_dim: usize, group: usize) -> bool {
    matches!(head_dim, 32 | 64 | 128) && matches!(group, 1 | 2 | 3 | 4 | 6 | 8)
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

impl DecodeShape {
    /// `(num_seqs, num_heads, num_kv_heads, head_dim)` with block tables wide enough for
    /// `max_context_len` keys.
    pub fn new(
        (num_seqs, num_heads, num_kv_heads, head_dim): (usize, usize, usize, usize),
        block_size: usize,
        max_context_len: usize,
    ) -> Self {
        Self {
            num_seqs,
            num_heads,
            num_kv_heads,
            head_dim,
            block_size,
            max_blocks_per_seq: max_context_len.div_ceil(block_size),
            max_context_len,
        }
    }
}

/// The paged KV that decode and prefill attention read: the caches, each sequence's block
/// table (`[num_seqs, max_blocks_per_seq]`) and context length, the call's shape, and the
/// layer's scale and sliding window.
#[derive(Clone, Copy)]
pub struct PagedKv<'a, T> {
    pub k_cache: &'a CudaSlice<T>,
    pub v_cache: &'a CudaSlice<T>,
    pub block_tables: &'a CudaSlice<i32>,
    pub context_lens: &'a CudaSlice<i32>,
    pub shape: DecodeShape,
    pub layer: LayerAttention,
}

impl<'a, T> PagedKv<'a, T> {
    pub fn new(
        (k_cache, v_cache): (&'a CudaSlice<T>, &'a CudaSlice<T>),
        (block_tables, context_lens): (&'a CudaSlice<i32>, &'a CudaSlice<i32>),
        shape: DecodeShape,
    ) -> Self {
        Self {
            k_cache,
            v_cache,
            block_tables,
            context_lens,
            shape,
            layer: LayerAttention::default(),
        }
    }

    /// With a layer's own scale and sliding window.
    pub fn for_layer(self, layer: LayerAttention) -> Self {
        Self { layer, ..self }
    }

    /// The softmax scale (the layer's, or 1 / sqrt(head_dim)).
    fn scale(&self) -> f32 {
        self.layer
            .scale
            .unwrap_or(1.0 / (self.shape.head_dim as f32).sqrt())
    }

    /// The window as the kernels take it (0: none).
    fn window(&self) -> i32 {
        self.layer.window.map_or(0, |w| w.max(1) as i32)
    }
}

/// Head sizes the prefill and per-head decode kernels are built for (the GQA decode kernel:
/// 32, 64 and 128; other sizes take the per-head one).
pub const HEAD_DIMS: [usize; 4] = [32, 64, 128, 256];

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
            decode_kernel: DecodeKernel::Gqa,
            ctx,
            stream,
        })
    }

    /// Varlen causal attention for prefill chunks and mixed batches: `tiles` holds
    /// `[seq, first query row, rows]` per tile of up to [`PREFILL_TILE_ROWS`] rows.
    pub fn prefill_attention<T: KernelType>(
        &self,
        out: &mut CudaViewMut<T>,
        q: &CudaView<T>,
        kv: PagedKv<'_, T>,
        query_start_loc: &CudaSlice<i32>,
        (tiles, num_tiles): (&CudaSlice<i32>, usize),
    ) -> CudaResult<()> {
        let s = kv.shape;
        if !HEAD_DIMS.contains(&s.head_dim) {
            return Err(format!(
                "prefill attention: head_dim {} (built: {HEAD_DIMS:?})",
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
        // d256 stages 82 KB: past the 48 KB a launch gets without asking.
        if smem > 48 * 1024 {
            use cudarc::driver::sys::CUfunction_attribute_enum as A;
            f.set_attribute(
                A::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                smem as i32,
            )?;
        }
        let (scale, window) = (kv.scale(), kv.window());
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
                .arg(kv.k_cache)
                .arg(kv.v_cache)
                .arg(kv.block_tables)
                .arg(kv.context_lens)
                .arg(query_start_loc)
                .arg(tiles)
                .arg(&mb)
                .arg(&nh)
                .arg(&nkv)
                .arg(&bs)
                .arg(&scale)
                .arg(&window)
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
    pub fn paged_attention<T: KernelType>(
        &self,
        out: &mut CudaViewMut<T>,
        q: &CudaView<T>,
        kv: PagedKv<'_, T>,
        scratch: &mut Option<(CudaSlice<f32>, CudaSlice<f32>, CudaSlice<f32>)>,
    ) -> CudaResult<()> {
        let s = kv.shape;
        let group = s.num_heads / s.num_kv_heads.max(1);
        // The GQA kernel loads q with 16-byte (8 at d64 in 16-bit types) vector loads.
        let q_aligned = (q.device_ptr(&self.stream).0 as usize) % 16 == 0;
        let gqa = self.decode_kernel == DecodeKernel::Gqa
            && q_aligned
            && s.num_heads % s.num_kv_heads.max(1) == 0
            && gqa_kernel_built(s.head_dim, group);
        // The grid's width in CTAs per sequence decides split-K, as in vLLM's rule.
        let ctas_per_seq = if gqa { s.num_kv_heads } else { s.num_heads };
        // A sliding window reads at most `window` keys of each sequence.
        let keys = kv
            .layer
            .window
            .map_or(s.max_context_len, |w| w.min(s.max_context_len));
        let launch = choose_decode_launch(s.num_seqs, ctas_per_seq, keys);
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
        let (scale, window) = (kv.scale(), kv.window());
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
                .arg(kv.k_cache)
                .arg(kv.v_cache)
                .arg(kv.block_tables)
                .arg(kv.context_lens)
                .arg(&mb)
                .arg(&nh)
                .arg(&nkv)
                .arg(&bs)
                .arg(&scale)
                .arg(&psize)
                .arg(&window)
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
