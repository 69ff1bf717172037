//! The paged KV cache on a CUDA device, and attention through our kernels
//! (`reshape_and_cache`; `paged_attention` for all-decode steps; `prefill_attention` for
//! steps with prefill chunks). Runs on candle's stream, so it is ordered with candle's ops.

use std::cell::RefCell;

use candle_core::cuda::{CudaDType, CudaDevice, CudaStorage};
use candle_core::{CustomOp1, Layout, Shape, Storage, Tensor};
use cudarc::driver::CudaSlice;

use super::kernels::{plan_prefill_tiles, CudaKernels, DecodeKernel, DecodeShape, PagedKv};
use crate::attention::{AttentionBackend, LayerAttention};
use crate::batch::{FlatBatch, PaddedDecode};
use crate::cuda::KernelType;
use crate::cuda::{contiguous_view, cuda_err};
use crate::error::{EngineError, Result};
use crate::kv_cache::KvCacheLayout;

/// One step's metadata on the device, uploaded once and read by every layer.
struct StepBuffers {
    slots: CudaSlice<i32>,
    tables: CudaSlice<i32>,
    context_lens: CudaSlice<i32>,
    query_start_loc: CudaSlice<i32>,
    tiles: CudaSlice<i32>,
    num_tiles: usize,
    num_tokens: usize,
    all_decode: bool,
    shape: DecodeShape,
}

type Scratch = Option<(CudaSlice<f32>, CudaSlice<f32>, CudaSlice<f32>)>;

/// Fixed buffers for decode steps replayed from CUDA graphs: the graphs' kernels were
/// captured with these pointers and this shape (rows aside), so each step is copied in.
struct FixedDecode {
    slots: CudaSlice<i32>,
    tables: CudaSlice<i32>,
    context_lens: CudaSlice<i32>,
    /// Stands in for the prefill metadata a decode step never reads.
    unused: CudaSlice<i32>,
    max_seqs: usize,
    max_blocks: usize,
    max_context: usize,
    /// Split-K scratch for `max_seqs` rows at `max_context` (never reallocated, since a
    /// graph holds its pointers).
    scratch: RefCell<Scratch>,
    rows: usize,
}

/// What the kernels of the current step read: the step's own buffers, or the fixed ones.
struct StepView<'a> {
    slots: &'a CudaSlice<i32>,
    tables: &'a CudaSlice<i32>,
    context_lens: &'a CudaSlice<i32>,
    query_start_loc: &'a CudaSlice<i32>,
    tiles: &'a CudaSlice<i32>,
    num_tiles: usize,
    num_tokens: usize,
    all_decode: bool,
    shape: DecodeShape,
    scratch: &'a RefCell<Scratch>,
}

fn step_view<'a>(
    step: &'a Option<StepBuffers>,
    fixed: &'a Option<FixedDecode>,
    fixed_active: bool,
    scratch: &'a RefCell<Scratch>,
    layout: &KvCacheLayout,
    num_heads: usize,
) -> Option<StepView<'a>> {
    if fixed_active {
        let f = fixed.as_ref()?;
        return Some(StepView {
            slots: &f.slots,
            tables: &f.tables,
            context_lens: &f.context_lens,
            query_start_loc: &f.unused,
            tiles: &f.unused,
            num_tiles: 0,
            num_tokens: f.rows,
            all_decode: true,
            shape: DecodeShape {
                num_seqs: f.rows,
                num_heads,
                num_kv_heads: layout.num_kv_heads,
                head_dim: layout.head_dim,
                block_size: layout.block_size,
                max_blocks_per_seq: f.max_blocks,
                max_context_len: f.max_context,
            },
            scratch: &f.scratch,
        });
    }
    let st = step.as_ref()?;
    Some(StepView {
        slots: &st.slots,
        tables: &st.tables,
        context_lens: &st.context_lens,
        query_start_loc: &st.query_start_loc,
        tiles: &st.tiles,
        num_tiles: st.num_tiles,
        num_tokens: st.num_tokens,
        all_decode: st.all_decode,
        shape: st.shape,
        scratch,
    })
}

pub struct CudaPagedAttention<T> {
    layout: KvCacheLayout,
    num_heads: usize,
    kernels: CudaKernels,
    k: Vec<CudaSlice<T>>,
    v: Vec<CudaSlice<T>>,
    step: Option<StepBuffers>,
    scratch: RefCell<Scratch>,
    fixed: Option<FixedDecode>,
    fixed_active: bool,
    /// Each layer's scale and sliding window (empty: the defaults).
    layers: Vec<LayerAttention>,
}

impl<T: KernelType + CudaDType> CudaPagedAttention<T> {
    pub fn new(
        device: &CudaDevice,
        layout: KvCacheLayout,
        num_heads: usize,
        decode_kernel: DecodeKernel,
    ) -> Result<Self> {
        let stream = device.cuda_stream();
        let mut kernels = CudaKernels::on_stream(stream.clone()).map_err(EngineError::cuda)?;
        kernels.decode_kernel = decode_kernel;
        let per_layer = layout.num_slots() * layout.num_kv_heads * layout.head_dim;
        let mut k = Vec::with_capacity(layout.num_layers);
        let mut v = Vec::with_capacity(layout.num_layers);
        for _ in 0..layout.num_layers {
            k.push(
                stream
                    .alloc_zeros::<T>(per_layer)
                    .map_err(EngineError::cuda)?,
            );
            v.push(
                stream
                    .alloc_zeros::<T>(per_layer)
                    .map_err(EngineError::cuda)?,
            );
        }
        Ok(Self {
            layout,
            num_heads,
            kernels,
            k,
            v,
            step: None,
            scratch: RefCell::new(None),
            fixed: None,
            fixed_active: false,
            layers: Vec::new(),
        })
    }

    /// Each layer's attention scale and sliding window (Gemma 3).
    pub fn with_layers(mut self, layers: Vec<LayerAttention>) -> Self {
        self.layers = layers;
        self
    }

    fn check(&self, t: &Tensor, what: &str) -> Result<()> {
        if t.dtype() != T::DTYPE {
            return Err(EngineError::Shape(format!(
                "{what} is {:?} but the KV cache holds {:?}",
                t.dtype(),
                T::DTYPE
            )));
        }
        Ok(())
    }

    /// What the kernels trust: every slot and block inside the cache, each table covering
    /// its context, each context holding its new tokens, and rows that add up (a wrong
    /// step would read or overwrite another sequence's KV).
    fn validate(&self, batch: &FlatBatch) -> Result<()> {
        let l = self.layout;
        let n_slots = l.num_slots();
        if let Some(&bad) = batch.slot_mapping.iter().find(|&&s| s as usize >= n_slots) {
            return Err(EngineError::Cache(format!(
                "slot {bad} is outside the KV cache ({n_slots} slots)"
            )));
        }
        let qsl = &batch.query_start_loc;
        if qsl.len() != batch.num_seqs() + 1 || qsl.last().copied() != Some(batch.num_tokens()) {
            return Err(EngineError::Batch(
                "query_start_loc does not match the step".into(),
            ));
        }
        for s in 0..batch.num_seqs() {
            let (ctx, new) = (batch.context_lens[s], qsl[s + 1] - qsl[s]);
            if batch.block_tables[s].len() * l.block_size < ctx || ctx < new {
                return Err(EngineError::Batch(format!(
                    "sequence {s}: {} blocks for {ctx} tokens of context, {new} new",
                    batch.block_tables[s].len()
                )));
            }
            if let Some(&b) = batch.block_tables[s]
                .iter()
                .find(|&&b| b as usize >= l.num_blocks)
            {
                return Err(EngineError::Cache(format!(
                    "block {b} is outside the KV cache ({} blocks)",
                    l.num_blocks
                )));
            }
        }
        Ok(())
    }
}

impl<T: KernelType + CudaDType> AttentionBackend for CudaPagedAttention<T> {
    fn begin_step(&mut self, batch: &FlatBatch) -> Result<()> {
        self.validate(batch)?;
        self.fixed_active = false;
        let l = self.layout;
        let max_blocks = batch
            .block_tables
            .iter()
            .map(Vec::len)
            .max()
            .unwrap_or(0)
            .max(1);
        let mut tables = vec![0i32; batch.num_seqs() * max_blocks];
        for (s, t) in batch.block_tables.iter().enumerate() {
            for (j, &b) in t.iter().enumerate() {
                tables[s * max_blocks + j] = b as i32;
            }
        }
        let i32s = |v: &[usize]| -> Vec<i32> { v.iter().map(|&x| x as i32).collect() };
        let slots: Vec<i32> = batch.slot_mapping.iter().map(|&s| s as i32).collect();
        let tiles = plan_prefill_tiles(&batch.query_start_loc);
        let all_decode = batch.query_start_loc.windows(2).all(|w| w[1] - w[0] == 1);
        let st = &self.kernels.stream;
        self.step = Some(StepBuffers {
            slots: st.clone_htod(&slots).map_err(EngineError::cuda)?,
            tables: st.clone_htod(&tables).map_err(EngineError::cuda)?,
            context_lens: st
                .clone_htod(&i32s(&batch.context_lens))
                .map_err(EngineError::cuda)?,
            query_start_loc: st
                .clone_htod(&i32s(&batch.query_start_loc))
                .map_err(EngineError::cuda)?,
            num_tiles: tiles.len() / 3,
            tiles: st.clone_htod(&tiles).map_err(EngineError::cuda)?,
            num_tokens: batch.num_tokens(),
            all_decode,
            shape: DecodeShape {
                num_seqs: batch.num_seqs(),
                num_heads: self.num_heads,
                num_kv_heads: l.num_kv_heads,
                head_dim: l.head_dim,
                block_size: l.block_size,
                max_blocks_per_seq: max_blocks,
                max_context_len: batch.context_lens.iter().copied().max().unwrap_or(1),
            },
        });
        Ok(())
    }

    fn write_kv(&mut self, layer: usize, k: &Tensor, v: &Tensor, _batch: &FlatBatch) -> Result<()> {
        self.check(k, "K")?;
        self.check(v, "V")?;
        let (k, v) = (k.contiguous()?, v.contiguous()?);
        let step = step_view(
            &self.step,
            &self.fixed,
            self.fixed_active,
            &self.scratch,
            &self.layout,
            self.num_heads,
        )
        .ok_or_else(|| EngineError::Batch("write_kv before begin_step".into()))?;
        let width = self.layout.num_kv_heads * self.layout.head_dim;
        if k.elem_count() != step.num_tokens * width || v.elem_count() != k.elem_count() {
            return Err(EngineError::Shape(
                "K/V do not match the step's tokens".into(),
            ));
        }
        let (ks, kl) = k.storage_and_layout();
        let (vs, vl) = v.storage_and_layout();
        let (Storage::Cuda(ks), Storage::Cuda(vs)) = (&*ks, &*vs) else {
            return Err(EngineError::Shape("K/V are not on the GPU".into()));
        };
        let kv = contiguous_view::<T>(ks, kl)?;
        let vv = contiguous_view::<T>(vs, vl)?;
        let (kc, vc) = (&mut self.k[layer], &mut self.v[layer]);
        self.kernels
            .reshape_and_cache(&kv, &vv, kc, vc, step.slots, step.num_tokens, width)
            .map_err(EngineError::cuda)
    }

    fn attend(&self, layer: usize, q: &Tensor, _batch: &FlatBatch) -> Result<Tensor> {
        self.check(q, "Q")?;
        Ok(q.contiguous()?.apply_op1_no_bwd(&Attend {
            backend: self,
            layer,
        })?)
    }

    fn layout(&self) -> KvCacheLayout {
        self.layout
    }

    fn enable_fixed_decode(&mut self, max_seqs: usize, max_context: usize) -> Result<()> {
        let l = self.layout;
        let max_blocks = max_context.div_ceil(l.block_size).max(1);
        let st = &self.kernels.stream;
        let zeros = |n: usize| st.alloc_zeros::<i32>(n.max(1)).map_err(EngineError::cuda);
        // Scratch for the widest split-K launch a step of these shapes can choose.
        let parts = max_context
            .div_ceil(crate::attention::split::PARTITION_SIZE)
            .max(1);
        let n_part = max_seqs * self.num_heads * parts;
        let scratch = (
            st.alloc_zeros::<f32>(n_part * l.head_dim)
                .map_err(EngineError::cuda)?,
            st.alloc_zeros::<f32>(n_part).map_err(EngineError::cuda)?,
            st.alloc_zeros::<f32>(n_part).map_err(EngineError::cuda)?,
        );
        self.fixed = Some(FixedDecode {
            slots: zeros(max_seqs)?,
            tables: zeros(max_seqs * max_blocks)?,
            context_lens: zeros(max_seqs)?,
            unused: zeros(1)?,
            max_seqs,
            max_blocks,
            max_context,
            scratch: RefCell::new(Some(scratch)),
            rows: 0,
        });
        self.fixed_active = false;
        Ok(())
    }

    fn begin_fixed_decode(&mut self, batch: &FlatBatch, padded: &PaddedDecode) -> Result<()> {
        if batch.num_seqs() > 0 {
            self.validate(batch)?;
        }
        let f = self
            .fixed
            .as_mut()
            .ok_or_else(|| EngineError::Batch("fixed decode buffers not enabled".into()))?;
        let rows = padded.rows;
        if rows > f.max_seqs
            || padded.max_context > f.max_context
            || padded.block_tables.len() != rows * f.max_blocks
        {
            return Err(EngineError::Batch(format!(
                "a padded decode step of {rows} rows (context {}) does not fit the fixed buffers ({} rows, context {})",
                padded.max_context, f.max_seqs, f.max_context
            )));
        }
        let st = &self.kernels.stream;
        st.memcpy_htod(&padded.slots, &mut f.slots.slice_mut(0..rows))
            .map_err(EngineError::cuda)?;
        st.memcpy_htod(
            &padded.block_tables,
            &mut f.tables.slice_mut(0..rows * f.max_blocks),
        )
        .map_err(EngineError::cuda)?;
        st.memcpy_htod(&padded.context_lens, &mut f.context_lens.slice_mut(0..rows))
            .map_err(EngineError::cuda)?;
        f.rows = rows;
        self.fixed_active = true;
        Ok(())
    }
}

/// Attention of one layer as a candle op (so its output is a candle tensor).
struct Attend<'a, T> {
    backend: &'a CudaPagedAttention<T>,
    layer: usize,
}

impl<T: KernelType + CudaDType> CustomOp1 for Attend<'_, T> {
    fn name(&self) -> &'static str {
        "paged_attention"
    }

    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, Shape)> {
        Err(cuda_err("the CUDA KV cache attends CUDA queries only"))
    }

    fn cuda_fwd(
        &self,
        storage: &CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let b = self.backend;
        let step = step_view(
            &b.step,
            &b.fixed,
            b.fixed_active,
            &b.scratch,
            &b.layout,
            b.num_heads,
        )
        .ok_or_else(|| cuda_err("attend before begin_step"))?;
        let n = layout.shape().elem_count();
        if n != step.num_tokens * b.num_heads * b.layout.head_dim {
            return Err(cuda_err("Q does not match the step's tokens"));
        }
        let q = contiguous_view::<T>(storage, layout)?;
        let stream = storage.device.cuda_stream();
        // SAFETY: the kernels write every output element.
        let mut out = unsafe { stream.alloc::<T>(n) }.map_err(cuda_err)?;
        let kv = PagedKv {
            k_cache: &b.k[self.layer],
            v_cache: &b.v[self.layer],
            block_tables: step.tables,
            context_lens: step.context_lens,
            shape: step.shape,
            layer: b.layers.get(self.layer).copied().unwrap_or_default(),
        };
        let mut out_view = out.as_view_mut();
        if step.all_decode {
            let mut scratch = step
                .scratch
                .try_borrow_mut()
                .map_err(|_| cuda_err("attention scratch in use"))?;
            b.kernels
                .paged_attention(&mut out_view, &q, kv, &mut scratch)
                .map_err(cuda_err)?;
        } else {
            let tiles = (step.tiles, step.num_tiles);
            b.kernels
                .prefill_attention(&mut out_view, &q, kv, step.query_start_loc, tiles)
                .map_err(cuda_err)?;
        }
        Ok((
            CudaStorage::wrap_cuda_slice(out, storage.device.clone()),
            layout.shape().clone(),
        ))
    }
}
