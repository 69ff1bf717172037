//! Loading our kernel modules once per process and viewing candle's CUDA storage, for the
//! custom ops in `ops/` and the attention backend.

use std::sync::{Arc, Mutex};

use candle_core::cuda::{CudaDType, CudaStorage};
use candle_core::Layout;
use cudarc::driver::{CudaModule, CudaStream, CudaView};

use super::kernels::{FUSED_FATBIN, GEMV_FATBIN, QUANT_MATMUL_FATBIN, SAMPLING_FATBIN};

/// candle's error for anything the CUDA driver says.
pub(crate) fn cuda_err(e: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Cuda(e.to_string().into())
}

/// A module of our kernels, loaded once per process (on the first stream that asks).
fn load_once(
    cell: &Mutex<Option<Arc<CudaModule>>>,
    fatbin: &[u8],
    stream: &Arc<CudaStream>,
) -> candle_core::Result<Arc<CudaModule>> {
    let mut m = cell.lock().map_err(cuda_err)?;
    if let Some(m) = m.as_ref() {
        return Ok(m.clone());
    }
    let loaded = stream
        .context()
        .load_module(cudarc::nvrtc::Ptx::from_binary(fatbin.to_vec()))
        .map_err(cuda_err)?;
    *m = Some(loaded.clone());
    Ok(loaded)
}

pub(crate) fn fused_module(stream: &Arc<CudaStream>) -> candle_core::Result<Arc<CudaModule>> {
    static MODULE: Mutex<Option<Arc<CudaModule>>> = Mutex::new(None);
    load_once(&MODULE, FUSED_FATBIN, stream)
}

pub(crate) fn gemv_module(stream: &Arc<CudaStream>) -> candle_core::Result<Arc<CudaModule>> {
    static MODULE: Mutex<Option<Arc<CudaModule>>> = Mutex::new(None);
    load_once(&MODULE, GEMV_FATBIN, stream)
}

pub(crate) fn quant_module(stream: &Arc<CudaStream>) -> candle_core::Result<Arc<CudaModule>> {
    static MODULE: Mutex<Option<Arc<CudaModule>>> = Mutex::new(None);
    load_once(&MODULE, QUANT_MATMUL_FATBIN, stream)
}

pub(crate) fn sampling_module(stream: &Arc<CudaStream>) -> candle_core::Result<Arc<CudaModule>> {
    static MODULE: Mutex<Option<Arc<CudaModule>>> = Mutex::new(None);
    load_once(&MODULE, SAMPLING_FATBIN, stream)
}

/// The contiguous elements of a CUDA tensor's storage as laid out by `layout`.
pub(crate) fn contiguous_view<'a, T: CudaDType>(
    s: &'a CudaStorage,
    layout: &Layout,
) -> candle_core::Result<CudaView<'a, T>> {
    let (a, b) = layout
        .contiguous_offsets()
        .ok_or_else(|| cuda_err("fused op: input is not contiguous"))?;
    Ok(s.as_cuda_slice::<T>()?.slice(a..b))
}

/// `impl candle_core::$trait for $op` (`CustomOp1`, `2` or `3`, one storage/layout name pair
/// per input) for an op that runs on CUDA only (its CPU body is a plain function beside it,
/// chosen before the op is applied): `cpu_fwd` refuses, and `cuda_fwd` binds `self` and the
/// storages/layouts to the given names and runs `$body`.
macro_rules! cuda_only_op {
    ($trait:ident for $op:ident $(<$lt:lifetime>)?, $name:expr,
     |$this:ident $(, $s:ident, $l:ident)+| $body:block) => {
        impl candle_core::$trait for $op$(<$lt>)? {
            fn name(&self) -> &'static str {
                $name
            }
            #[allow(unused_variables, clippy::too_many_arguments)]
            fn cpu_fwd(
                &self,
                $($s: &candle_core::CpuStorage, $l: &candle_core::Layout),+
            ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
                Err($crate::cuda::cuda_err(format!("{} runs on CUDA only", $name)))
            }
            #[allow(clippy::too_many_arguments)]
            fn cuda_fwd(
                &self,
                $($s: &candle_core::cuda::CudaStorage, $l: &candle_core::Layout),+
            ) -> candle_core::Result<(candle_core::cuda::CudaStorage, candle_core::Shape)> {
                let $this = self;
                $body
            }
        }
    };
}
pub(crate) use cuda_only_op;

/// `$e` with the type name `$t` bound to the storage's float type (f32, f16 or bf16); any
/// other type is an error naming `$what`.
macro_rules! by_float_type {
    ($dtype:expr, $what:expr, $t:ident => $e:expr) => {
        match $dtype {
            candle_core::DType::F32 => {
                type $t = f32;
                $e
            }
            candle_core::DType::F16 => {
                type $t = half::f16;
                $e
            }
            candle_core::DType::BF16 => {
                type $t = half::bf16;
                $e
            }
            other => Err($crate::cuda::cuda_err(format!("{}: {other:?}", $what))),
        }
    };
}
pub(crate) use by_float_type;

/// A custom op's launch of one of our kernels: the function, on the input's stream, and
/// its output buffer (uninitialised: the kernels write every element they are given).
pub(crate) struct OpLaunch<T> {
    pub stream: Arc<CudaStream>,
    pub func: cudarc::driver::CudaFunction,
    pub out: cudarc::driver::CudaSlice<T>,
    device: candle_core::cuda::CudaDevice,
}

impl<T: CudaDType + cudarc::driver::DeviceRepr> OpLaunch<T> {
    /// Kernel `name` of `module` on `input`'s stream, with `len` output elements.
    pub fn new(
        input: &CudaStorage,
        module: fn(&Arc<CudaStream>) -> candle_core::Result<Arc<CudaModule>>,
        name: &str,
        len: usize,
    ) -> candle_core::Result<Self> {
        let stream = input.device.cuda_stream();
        let func = module(&stream)?.load_function(name).map_err(cuda_err)?;
        // SAFETY: the kernel writes every output element before anything reads it.
        let out = unsafe { stream.alloc::<T>(len) }.map_err(cuda_err)?;
        Ok(Self {
            stream,
            func,
            out,
            device: input.device.clone(),
        })
    }

    /// The output as the op's result, of `shape`.
    pub fn finish(self, shape: impl Into<candle_core::Shape>) -> (CudaStorage, candle_core::Shape) {
        (
            CudaStorage::wrap_cuda_slice(self.out, self.device),
            shape.into(),
        )
    }
}

/// One input of a custom op: its storage and layout.
pub(crate) type OpInput<'a> = (&'a CudaStorage, &'a Layout);

/// What a custom op's `cuda_fwd` returns.
pub(crate) type OpResult = candle_core::Result<(CudaStorage, candle_core::Shape)>;

/// Launches an [`OpLaunch`]'s kernel with a launch config and the kernel's arguments in
/// order (`&mut launch.out` where the kernel writes its output); a candle error on failure.
macro_rules! launch_op {
    ($launch:ident, $cfg:expr, $($arg:expr),+ $(,)?) => {{
        let mut args = $launch.stream.launch_builder(&$launch.func);
        $(args.arg($arg);)+
        // SAFETY: each op passes its kernel's parameters in number, order and type, and
        // sizes the grid to the buffers it passes.
        unsafe { args.launch($cfg) }.map_err($crate::cuda::cuda_err)
    }};
}
pub(crate) use launch_op;

/// A launch of `grid` blocks of `block` threads, no dynamic shared memory.
pub(crate) fn launch_config(grid: (u32, u32, u32), block: u32) -> cudarc::driver::LaunchConfig {
    cudarc::driver::LaunchConfig {
        grid_dim: grid,
        block_dim: (block, 1, 1),
        shared_mem_bytes: 0,
    }
}
