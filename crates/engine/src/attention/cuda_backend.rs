//! The paged KV cache on a CUDA device, and attention through our kernels
//! (`reshape_and_cache`; `paged_attention` for all-decode steps; `prefill_attention` for
//! steps with prefill chunks). Runs on candle's stream, so it is ordered with candle's ops.

use std::cell::RefCell;

use candle_core::cuda::{CudaDType, CudaDevice, CudaStorage};
use candle_core::{CustomOp1, Layout, Shape, Storage, Tensor};
use cudarc::driver::CudaSlice;

use super::cuda::{plan_prefill_tiles, CudaKernels, DecodeShape, KernelType};
use super::{AttentionBackend, KvCacheLayout};
use crate::batch::FlatBatch;
use crate::error::{EngineError, Result};
use crate::ops::{contiguous_view, cuda_err};

fn engine_err(e: impl std::fmt::Display) -> EngineError {
    EngineError::Config(format!("CUDA: {e}"))
}

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

pub struct CudaPagedAttention<T> {
    layout: KvCacheLayout,
    num_heads: usize,
    kernels: CudaKernels,
    k: Vec<CudaSlice<T>>,
    v: Vec<CudaSlice<T>>,
    step: Option<StepBuffers>,
    scratch: RefCell<Scratch>,
}

impl<T: KernelType + CudaDType> CudaPagedAttention<T> {
    pub fn new(device: &CudaDevice, layout: KvCacheLayout, num_heads: usize) -> Result<Self> {
        let stream = device.cuda_stream();
        let kernels = CudaKernels::on_stream(stream.clone()).map_err(engine_err)?;
        let per_layer = layout.num_slots() * layout.num_kv_heads * layout.head_dim;
        let mut k = Vec::with_capacity(layout.num_layers);
        let mut v = Vec::with_capacity(layout.num_layers);
        for _ in 0..layout.num_layers {
            k.push(stream.alloc_zeros::<T>(per_layer).map_err(engine_err)?);
            v.push(stream.alloc_zeros::<T>(per_layer).map_err(engine_err)?);
        }
        Ok(Self {
            layout,
            num_heads,
            kernels,
            k,
            v,
            step: None,
            scratch: RefCell::new(None),
        })
    }

    fn check(&self, t: &Tensor, what: &str) -> Result<()> {
        if t.dtype() != T::DTYPE {
            return Err(EngineError::Config(format!(
                "{what} is {:?} but the KV cache holds {:?}",
                t.dtype(),
                T::DTYPE
            )));
        }
        Ok(())
    }
}

impl<T: KernelType + CudaDType> AttentionBackend for CudaPagedAttention<T> {
    fn begin_step(&mut self, batch: &FlatBatch) -> Result<()> {
        let l = self.layout;
        let n_slots = l.num_slots();
        if let Some(&bad) = batch.slot_mapping.iter().find(|&&s| s as usize >= n_slots) {
            return Err(EngineError::Config(format!(
                "slot {bad} is outside the KV cache ({n_slots} slots)"
            )));
        }
        // What the kernels trust: each table covers its context, each context holds its new
        // tokens, and the rows add up (a wrong step would read another sequence's KV).
        let qsl = &batch.query_start_loc;
        if qsl.len() != batch.num_seqs() + 1 || qsl.last().copied() != Some(batch.num_tokens()) {
            return Err(EngineError::Config(
                "query_start_loc does not match the step".into(),
            ));
        }
        for s in 0..batch.num_seqs() {
            let (ctx, new) = (batch.context_lens[s], qsl[s + 1] - qsl[s]);
            if batch.block_tables[s].len() * l.block_size < ctx || ctx < new {
                return Err(EngineError::Config(format!(
                    "sequence {s}: {} blocks for {ctx} tokens of context, {new} new",
                    batch.block_tables[s].len()
                )));
            }
        }
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
                if b as usize >= l.num_blocks {
                    return Err(EngineError::Config(format!(
                        "block {b} is outside the KV cache ({} blocks)",
                        l.num_blocks
                    )));
                }
                tables[s * max_blocks + j] = b as i32;
            }
        }
        let i32s = |v: &[usize]| -> Vec<i32> { v.iter().map(|&x| x as i32).collect() };
        let slots: Vec<i32> = batch.slot_mapping.iter().map(|&s| s as i32).collect();
        let tiles = plan_prefill_tiles(&batch.query_start_loc);
        let all_decode = batch.query_start_loc.windows(2).all(|w| w[1] - w[0] == 1);
        let st = &self.kernels.stream;
        self.step = Some(StepBuffers {
            slots: st.clone_htod(&slots).map_err(engine_err)?,
            tables: st.clone_htod(&tables).map_err(engine_err)?,
            context_lens: st
                .clone_htod(&i32s(&batch.context_lens))
                .map_err(engine_err)?,
            query_start_loc: st
                .clone_htod(&i32s(&batch.query_start_loc))
                .map_err(engine_err)?,
            num_tiles: tiles.len() / 3,
            tiles: st.clone_htod(&tiles).map_err(engine_err)?,
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
        let step = self
            .step
            .as_ref()
            .ok_or_else(|| EngineError::Config("write_kv before begin_step".into()))?;
        let width = self.layout.num_kv_heads * self.layout.head_dim;
        if k.elem_count() != step.num_tokens * width || v.elem_count() != k.elem_count() {
            return Err(EngineError::Config(
                "K/V do not match the step's tokens".into(),
            ));
        }
        let (ks, kl) = k.storage_and_layout();
        let (vs, vl) = v.storage_and_layout();
        let (Storage::Cuda(ks), Storage::Cuda(vs)) = (&*ks, &*vs) else {
            return Err(EngineError::Config("K/V are not on the GPU".into()));
        };
        let kv = contiguous_view::<T>(ks, kl)?;
        let vv = contiguous_view::<T>(vs, vl)?;
        let (kc, vc) = (&mut self.k[layer], &mut self.v[layer]);
        self.kernels
            .reshape_and_cache(&kv, &vv, kc, vc, &step.slots, step.num_tokens, width)
            .map_err(engine_err)
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
        let step = b
            .step
            .as_ref()
            .ok_or_else(|| cuda_err("attend before begin_step"))?;
        let n = layout.shape().elem_count();
        if n != step.num_tokens * b.num_heads * b.layout.head_dim {
            return Err(cuda_err("Q does not match the step's tokens"));
        }
        let q = contiguous_view::<T>(storage, layout)?;
        let stream = storage.device.cuda_stream();
        // SAFETY: the kernels write every output element.
        let mut out = unsafe { stream.alloc::<T>(n) }.map_err(cuda_err)?;
        let (kc, vc) = (&b.k[self.layer], &b.v[self.layer]);
        if step.all_decode {
            let mut scratch = b
                .scratch
                .try_borrow_mut()
                .map_err(|_| cuda_err("attention scratch in use"))?;
            b.kernels
                .paged_attention(
                    &mut out.as_view_mut(),
                    &q,
                    kc,
                    vc,
                    &step.tables,
                    &step.context_lens,
                    step.shape,
                    &mut scratch,
                )
                .map_err(cuda_err)?;
        } else {
            b.kernels
                .prefill_attention(
                    &mut out.as_view_mut(),
                    &q,
                    kc,
                    vc,
                    &step.tables,
                    &step.context_lens,
                    &step.query_start_loc,
                    &step.tiles,
                    step.num_tiles,
                    step.shape,
                )
                .map_err(cuda_err)?;
        }
        Ok((
            CudaStorage::wrap_cuda_slice(out, storage.device.clone()),
            layout.shape().clone(),
        ))
    }
}
