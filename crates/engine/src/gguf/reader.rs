//! A GGUF reader that trusts nothing in the file.
//!
//! Every length and offset read from the file is checked against the file's size before
//! anything is allocated or read, so a truncated or corrupt file is an error naming the
//! file and the problem, never a panic, an absurd allocation or a SIGBUS (tensor data is
//! read with positioned reads, not mapped).

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::Device;

use super::{MetaValue, TensorInfo};
use crate::error::{EngineError, Result};

const GGUF_MAGIC: u32 = 0x4655_4747; // "GGUF" little-endian
const DEFAULT_ALIGNMENT: u64 = 32;
/// No sane file has more dimensions than ggml's maximum.
const MAX_DIMS: u32 = 4;

/// A parsed GGUF header: metadata and tensor directory. Tensor data stays in the file
/// until [`GgufFile::tensor`] reads one.
pub struct GgufFile {
    path: PathBuf,
    file: File,
    file_len: u64,
    pub version: u32,
    pub metadata: HashMap<String, MetaValue>,
    pub tensors: HashMap<String, TensorInfo>,
    /// Tensor names in file order (for listing and deterministic errors).
    pub tensor_order: Vec<String>,
    data_start: u64,
}

/// Byte reader that knows how many bytes the file still has.
struct Cursor<'a> {
    inner: BufReader<&'a File>,
    pos: u64,
    len: u64,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn bad(&self, message: impl Into<String>) -> EngineError {
        EngineError::BadModelFile {
            path: self.path.to_path_buf(),
            message: message.into(),
        }
    }

    fn remaining(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }

    fn need(&self, n: u64, what: &str) -> Result<()> {
        if n > self.remaining() {
            return Err(self.bad(format!(
                "truncated or corrupt: {what} needs {n} bytes at offset {} but the file has {} bytes",
                self.pos, self.len
            )));
        }
        Ok(())
    }

    /// Fills `buf` from the file after checking the file has that many bytes left.
    fn fill(&mut self, buf: &mut [u8], what: &str) -> Result<()> {
        self.need(buf.len() as u64, what)?;
        self.inner.read_exact(buf).map_err(|e| EngineError::Io {
            path: self.path.to_path_buf(),
            source: e,
        })?;
        self.pos += buf.len() as u64;
        Ok(())
    }

    fn bytes<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let mut buf = [0u8; N];
        self.fill(&mut buf, what)?;
        Ok(buf)
    }

    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.bytes::<1>(what)?[0])
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.bytes(what)?))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.bytes(what)?))
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let len = self.u64(what)?;
        // Checked before allocating: a corrupt length must not become a huge allocation.
        self.need(len, what)?;
        let mut buf = vec![0u8; len as usize];
        self.fill(&mut buf, what)?;
        // Token pieces may hold invalid UTF-8 in broken files; keep them readable.
        Ok(match String::from_utf8(buf) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })
    }

    fn value(&mut self, ty: u32, what: &str, depth: u32) -> Result<MetaValue> {
        Ok(match ty {
            0 => MetaValue::U8(self.u8(what)?),
            1 => MetaValue::I8(self.u8(what)? as i8),
            2 => MetaValue::U16(u16::from_le_bytes(self.bytes(what)?)),
            3 => MetaValue::I16(i16::from_le_bytes(self.bytes(what)?)),
            4 => MetaValue::U32(self.u32(what)?),
            5 => MetaValue::I32(self.u32(what)? as i32),
            6 => MetaValue::F32(f32::from_le_bytes(self.bytes(what)?)),
            7 => MetaValue::Bool(self.u8(what)? != 0),
            8 => MetaValue::String(self.string(what)?),
            9 => {
                if depth > 2 {
                    return Err(self.bad(format!("{what}: arrays nested too deeply")));
                }
                let elem_ty = self.u32(what)?;
                let count = self.u64(what)?;
                // Each element takes at least one byte (8 for a string's length): a count
                // the file cannot hold is corruption, caught before allocating for it.
                let min_elem = match elem_ty {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => 12,
                    other => {
                        return Err(self.bad(format!("{what}: unknown array element type {other}")))
                    }
                };
                self.need(count.saturating_mul(min_elem), what)?;
                let mut items = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    items.push(self.value(elem_ty, what, depth + 1)?);
                }
                MetaValue::Array(items)
            }
            10 => MetaValue::U64(self.u64(what)?),
            11 => MetaValue::I64(self.u64(what)? as i64),
            12 => MetaValue::F64(f64::from_le_bytes(self.bytes(what)?)),
            other => return Err(self.bad(format!("{what}: unknown metadata value type {other}"))),
        })
    }
}

/// ggml's type ids, as written in GGUF tensor infos.
pub fn ggml_dtype_from_id(id: u32) -> Option<GgmlDType> {
    Some(match id {
        0 => GgmlDType::F32,
        1 => GgmlDType::F16,
        2 => GgmlDType::Q4_0,
        3 => GgmlDType::Q4_1,
        6 => GgmlDType::Q5_0,
        7 => GgmlDType::Q5_1,
        8 => GgmlDType::Q8_0,
        9 => GgmlDType::Q8_1,
        10 => GgmlDType::Q2K,
        11 => GgmlDType::Q3K,
        12 => GgmlDType::Q4K,
        13 => GgmlDType::Q5K,
        14 => GgmlDType::Q6K,
        15 => GgmlDType::Q8K,
        30 => GgmlDType::BF16,
        _ => return None,
    })
}

impl GgufFile {
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| EngineError::Io {
            path: path.clone(),
            source: e,
        })?;
        let file_len = file
            .metadata()
            .map_err(|e| EngineError::Io {
                path: path.clone(),
                source: e,
            })?
            .len();
        let mut cur = Cursor {
            inner: BufReader::with_capacity(1 << 20, &file),
            pos: 0,
            len: file_len,
            path: &path,
        };
        let magic = cur.u32("magic")?;
        if magic != GGUF_MAGIC {
            return Err(cur.bad(format!("not a GGUF file (magic {magic:#010x})")));
        }
        let version = cur.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(cur.bad(format!(
                "unsupported GGUF version {version} (2 and 3 are read)"
            )));
        }
        let n_tensors = cur.u64("tensor count")?;
        let n_kv = cur.u64("metadata count")?;
        // Smallest possible entries: a kv is 8+4+1 bytes, a tensor info 8+4+8+4+8.
        cur.need(n_kv.saturating_mul(13), "metadata entries")?;
        let mut metadata = HashMap::new();
        for _ in 0..n_kv {
            let key = cur.string("metadata key")?;
            let ty = cur.u32(&key)?;
            let value = cur.value(ty, &key, 0)?;
            metadata.insert(key, value);
        }
        cur.need(n_tensors.saturating_mul(32), "tensor infos")?;
        let mut infos = Vec::with_capacity(n_tensors as usize);
        for _ in 0..n_tensors {
            let name = cur.string("tensor name")?;
            let n_dims = cur.u32(&name)?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(cur.bad(format!("tensor {name}: {n_dims} dimensions")));
            }
            let mut ne = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                ne.push(cur.u64(&name)?);
            }
            let type_id = cur.u32(&name)?;
            let offset = cur.u64(&name)?;
            infos.push((name, ne, type_id, offset));
        }
        let alignment = match metadata.get("general.alignment") {
            Some(v) => v
                .as_u64()
                .filter(|a| *a > 0 && a.is_power_of_two())
                .ok_or_else(|| cur.bad(format!("general.alignment {v:?} is not a power of two")))?,
            None => DEFAULT_ALIGNMENT,
        };
        let data_start = cur.pos.div_ceil(alignment) * alignment;

        let mut tensors = HashMap::new();
        let mut tensor_order = Vec::with_capacity(infos.len());
        for (name, ne, type_id, offset) in infos {
            let info = TensorInfo::new(&name, ne, type_id, offset, data_start, file_len)
                .map_err(|m| cur.bad(m))?;
            tensor_order.push(name.clone());
            if tensors.insert(name.clone(), info).is_some() {
                return Err(cur.bad(format!("tensor {name} appears twice")));
            }
        }
        drop(cur);
        Ok(Self {
            path,
            file,
            file_len,
            version,
            metadata,
            tensors,
            tensor_order,
            data_start,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    pub fn data_start(&self) -> u64 {
        self.data_start
    }

    fn bad(&self, message: impl Into<String>) -> EngineError {
        EngineError::BadModelFile {
            path: self.path.clone(),
            message: message.into(),
        }
    }

    pub fn meta(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }

    pub fn meta_str(&self, key: &str) -> Result<&str> {
        self.meta(key)
            .and_then(MetaValue::as_str)
            .ok_or_else(|| self.bad(format!("metadata {key} is missing or not a string")))
    }

    pub fn meta_u64(&self, key: &str) -> Result<u64> {
        self.meta(key)
            .and_then(MetaValue::as_u64)
            .ok_or_else(|| self.bad(format!("metadata {key} is missing or not an integer")))
    }

    pub fn meta_f32(&self, key: &str) -> Result<f32> {
        self.meta(key)
            .and_then(MetaValue::as_f64)
            .map(|v| v as f32)
            .ok_or_else(|| self.bad(format!("metadata {key} is missing or not a number")))
    }

    /// The raw bytes of a tensor, bounds already checked when the header was read.
    pub fn tensor_bytes(&self, name: &str) -> Result<Vec<u8>> {
        let info = self
            .tensors
            .get(name)
            .ok_or_else(|| self.bad(format!("tensor {name} is missing")))?;
        let mut buf = vec![0u8; info.size_bytes as usize];
        self.file
            .read_exact_at(&mut buf, info.abs_offset)
            .map_err(|e| EngineError::Io {
                path: self.path.clone(),
                source: e,
            })?;
        Ok(buf)
    }

    /// A tensor as candle's quantized tensor on `device`, dims in row-major order
    /// (GGUF stores them innermost first).
    pub fn tensor(&self, name: &str, device: &Device) -> Result<QTensor> {
        let info = self
            .tensors
            .get(name)
            .ok_or_else(|| self.bad(format!("tensor {name} is missing")))?;
        let dtype = info.dtype.ok_or_else(|| EngineError::Unsupported {
            path: self.path.clone(),
            message: format!(
                "tensor {name} has ggml type {} which we do not read",
                info.type_id
            ),
        })?;
        let bytes = self.tensor_bytes(name)?;
        let mut dims: Vec<usize> = info.ne.iter().map(|&d| d as usize).collect();
        dims.reverse();
        Ok(candle_core::quantized::ggml_file::qtensor_from_ggml(
            dtype, &bytes, dims, device,
        )?)
    }

    /// Re-reads the file's length and fails if it shrank since the header was read.
    pub fn check_unchanged(&self) -> Result<()> {
        let now = self
            .file
            .metadata()
            .map_err(|e| EngineError::Io {
                path: self.path.clone(),
                source: e,
            })?
            .len();
        if now < self.file_len {
            return Err(self.bad("the file shrank while being read"));
        }
        Ok(())
    }
}

impl TensorInfo {
    fn new(
        name: &str,
        ne: Vec<u64>,
        type_id: u32,
        offset: u64,
        data_start: u64,
        file_len: u64,
    ) -> std::result::Result<Self, String> {
        let dtype = ggml_dtype_from_id(type_id);
        let elems = ne
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| format!("tensor {name}: element count overflows"))?;
        // Types we cannot read still get their size checked when ggml knows it.
        let size_bytes = match dtype {
            Some(dt) => {
                let bs = dt.block_size() as u64;
                if ne.first().copied().unwrap_or(0) % bs != 0 {
                    return Err(format!(
                        "tensor {name}: row of {} elements is not a multiple of the {dt:?} block of {bs}",
                        ne[0]
                    ));
                }
                elems / bs * dt.type_size() as u64
            }
            None => 0,
        };
        let abs_offset = data_start
            .checked_add(offset)
            .ok_or_else(|| format!("tensor {name}: offset overflows"))?;
        let end = abs_offset
            .checked_add(size_bytes)
            .ok_or_else(|| format!("tensor {name}: size overflows"))?;
        if end > file_len {
            return Err(format!(
                "truncated or corrupt: tensor {name} spans bytes {abs_offset}..{end} but the file has {file_len} bytes"
            ));
        }
        Ok(Self {
            ne,
            type_id,
            dtype,
            abs_offset,
            size_bytes,
        })
    }
}
