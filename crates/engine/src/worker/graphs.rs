//! Capturing decode steps as CUDA graphs and replaying them.
//!
//! What makes a step capturable: the model's forward over device tensors
//! ([`LlamaModel::forward_tensors`]) does no host/device copy; the attention backend reads
//! fixed buffers ([`AttentionBackend::begin_fixed_decode`]); candle's kernel parameters
//! (dims and strides of non-contiguous layouts) come from candle's capture cache, filled by
//! a warm-up run of the same step; the device has one stream and no event tracking
//! (`cuda::model_device`). Activations are allocated inside the capture (graph
//! memory nodes, reused on every replay); the logits and greedy ids are copied into fixed
//! tensors before the capture ends, and everything else is dropped inside it.

use std::sync::Arc;

use candle_core::{DType, Device, Storage, Tensor, D};
use cudarc::driver::{sys, CudaGraph, CudaStream, DevicePtr};

use crate::attention::AttentionBackend;
use crate::batch::{capture_sizes, pad_decode, padded_size, FlatBatch, PaddedDecode};
use crate::error::{EngineError, Result};
use crate::model::LlamaModel;

fn graph_err(e: impl std::fmt::Display) -> EngineError {
    EngineError::Cuda(format!("CUDA graphs: {e}"))
}

/// Device address of a contiguous tensor's first element.
fn device_ptr(t: &Tensor, stream: &Arc<CudaStream>) -> Result<sys::CUdeviceptr> {
    if !t.is_contiguous() {
        return Err(graph_err("tensor is not contiguous"));
    }
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cuda(cs) = &*storage else {
        return Err(graph_err("tensor is not on the GPU"));
    };
    let base = match t.dtype() {
        DType::U32 => cs.as_cuda_slice::<u32>()?.device_ptr(stream).0,
        DType::F32 => cs.as_cuda_slice::<f32>()?.device_ptr(stream).0,
        other => return Err(graph_err(format!("no fixed tensors of {other:?}"))),
    };
    Ok(base + (layout.start_offset() * t.dtype().size_in_bytes()) as u64)
}

/// Decode graphs for one model and KV cache, one per captured batch size.
pub struct DecodeGraphs {
    stream: Arc<CudaStream>,
    sizes: Vec<usize>,
    graphs: Vec<CudaGraph>,
    ids: Tensor,
    positions: Tensor,
    logits: Tensor,
    tokens: Tensor,
    max_blocks: usize,
    max_context: usize,
    vocab: usize,
    /// Steps replayed so far (the checks make sure the graphs were used).
    pub replays: u64,
    /// Seconds the capture took.
    pub capture_secs: f64,
}

impl DecodeGraphs {
    /// Captures a graph for each of [`capture_sizes`]`(max_seqs)`, largest first as vLLM
    /// does, each after a warm-up run of the same step.
    pub fn capture(
        model: &LlamaModel,
        attn: &mut dyn AttentionBackend,
        max_seqs: usize,
        max_context: usize,
    ) -> Result<Self> {
        let Device::Cuda(dev) = model.device() else {
            return Err(graph_err("the model is not on a GPU"));
        };
        let started = std::time::Instant::now();
        let stream = dev.cuda_stream();
        let sizes = capture_sizes(max_seqs);
        let rows = *sizes.last().unwrap_or(&1);
        let max_context = max_context.max(1);
        let block_size = attn.layout().block_size;
        attn.enable_fixed_decode(rows, max_context)?;
        let vocab = model.config.vocab_size;
        let device = model.device();
        let mut me = Self {
            ids: Tensor::zeros(rows, DType::U32, device)?,
            positions: Tensor::zeros(rows, DType::U32, device)?,
            logits: Tensor::zeros((rows, vocab), DType::F32, device)?,
            tokens: Tensor::zeros(rows, DType::U32, device)?,
            stream: stream.clone(),
            sizes: Vec::new(),
            graphs: Vec::new(),
            max_blocks: max_context.div_ceil(block_size).max(1),
            max_context,
            vocab,
            replays: 0,
            capture_secs: 0.0,
        };
        // candle caches its kernel parameter uploads while this guard lives (the warm-up
        // fills the cache, the capture reads it).
        let _cache = dev.enable_cuda_graph_htod_cache();
        let empty = FlatBatch::default();
        let mut captured = Vec::with_capacity(sizes.len());
        for &b in sizes.iter().rev() {
            let pad = pad_decode(&empty, b, me.max_blocks)?;
            me.load(attn, &empty, &pad)?;
            me.body(model, attn, b)?;
            stream.synchronize().map_err(graph_err)?;
            stream
                .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED)
                .map_err(graph_err)?;
            let body = me.body(model, attn, b);
            // End the capture whatever happened, so the stream is usable again.
            let graph = stream.end_capture(
                sys::CUgraphInstantiate_flags::CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH,
            );
            body?;
            let graph = graph
                .map_err(graph_err)?
                .ok_or_else(|| graph_err(format!("capturing batch {b} gave no graph")))?;
            graph.upload().map_err(graph_err)?;
            captured.push((b, graph));
        }
        captured.reverse();
        (me.sizes, me.graphs) = captured.into_iter().unzip();
        stream.synchronize().map_err(graph_err)?;
        me.capture_secs = started.elapsed().as_secs_f64();
        Ok(me)
    }

    /// One decode step over the fixed tensors: logits into `self.logits`, greedy ids into
    /// `self.tokens`. Everything it allocates is dropped before it returns.
    fn body(&self, model: &LlamaModel, attn: &mut dyn AttentionBackend, rows: usize) -> Result<()> {
        let ids = self.ids.narrow(0, 0, rows)?;
        let positions = self.positions.narrow(0, 0, rows)?;
        let logits = model.forward_tensors(&FlatBatch::default(), &ids, &positions, None, attn)?;
        let logits = logits.contiguous()?;
        let tokens = logits.argmax(D::Minus1)?.contiguous()?;
        let s = &self.stream;
        // SAFETY: both sides are live device buffers of these sizes on this stream.
        unsafe {
            cudarc::driver::result::memcpy_dtod_async(
                device_ptr(&self.logits, s)?,
                device_ptr(&logits, s)?,
                rows * self.vocab * 4,
                s.cu_stream(),
            )
            .map_err(graph_err)?;
            cudarc::driver::result::memcpy_dtod_async(
                device_ptr(&self.tokens, s)?,
                device_ptr(&tokens, s)?,
                rows * 4,
                s.cu_stream(),
            )
            .map_err(graph_err)?;
        }
        Ok(())
    }

    /// Copies a padded step into the fixed tensors and the backend's fixed buffers.
    fn load(
        &self,
        attn: &mut dyn AttentionBackend,
        batch: &FlatBatch,
        pad: &PaddedDecode,
    ) -> Result<()> {
        attn.begin_fixed_decode(batch, pad)?;
        let s = &self.stream;
        // SAFETY: the fixed tensors hold at least `pad.rows` u32s; pageable host memory is
        // staged before the call returns, so the vectors may go right after.
        unsafe {
            cudarc::driver::result::memcpy_htod_async(
                device_ptr(&self.ids, s)?,
                &pad.token_ids,
                s.cu_stream(),
            )
            .map_err(graph_err)?;
            cudarc::driver::result::memcpy_htod_async(
                device_ptr(&self.positions, s)?,
                &pad.positions,
                s.cu_stream(),
            )
            .map_err(graph_err)?;
        }
        Ok(())
    }

    /// The captured size a step would replay, if it can replay one.
    pub fn size_for(&self, batch: &FlatBatch) -> Option<usize> {
        if !crate::batch::is_plain_decode(batch)
            || batch.context_lens.iter().any(|&c| c > self.max_context)
            || batch.block_tables.iter().any(|t| t.len() > self.max_blocks)
        {
            return None;
        }
        padded_size(&self.sizes, batch.num_seqs())
    }

    /// Replays the graph that fits `batch` (see [`Self::size_for`]) and returns true, or
    /// returns false when none does (the step runs eagerly); read the results with
    /// [`Self::greedy`] or [`Self::logits`].
    pub fn replay(&mut self, attn: &mut dyn AttentionBackend, batch: &FlatBatch) -> Result<bool> {
        let Some(rows) = self.size_for(batch) else {
            return Ok(false);
        };
        let i = self
            .sizes
            .iter()
            .position(|&s| s == rows)
            .ok_or_else(|| graph_err("size not captured"))?;
        let pad = pad_decode(batch, rows, self.max_blocks)?;
        self.load(attn, batch, &pad)?;
        self.graphs[i].launch().map_err(graph_err)?;
        self.replays += 1;
        Ok(true)
    }

    /// Greedy ids of the last replay's first `n` rows.
    pub fn greedy(&self, n: usize) -> Result<Vec<u32>> {
        Ok(self.tokens.narrow(0, 0, n)?.to_vec1::<u32>()?)
    }

    /// A copy of the last replay's first `n` rows of logits (the fixed tensor is
    /// overwritten by the next replay).
    pub fn logits(&self, n: usize) -> Result<Tensor> {
        Ok(self.logits.narrow(0, 0, n)?.copy()?)
    }

    pub fn sizes(&self) -> &[usize] {
        &self.sizes
    }
}
