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

use super::{GgmlType, MetaValue, TensorInfo};
use crate::error::{Error, GgufError, Result};

const GGUF_MAGIC: u32 = 0x4655_4747; // "GGUF" little-endian
const DEFAULT_ALIGNMENT: u64 = 32;
/// No sane file has more dimensions than ggml's maximum.
const MAX_DIMS: u32 = 4;
/// Read buffer for the header (the vocabulary of a large model is tens of MiB).
const READ_BUFFER: u64 = 1 << 20;
/// What [`GgufFile::from_bytes`] calls its input in errors.
const MEMORY_PATH: &str = "<memory>";

type Parse<T> = std::result::Result<T, GgufError>;

/// Where the tensor bytes are: the open file, or the bytes [`GgufFile::from_bytes`] took.
enum Data {
    File(File),
    Memory(Vec<u8>),
}

/// A parsed GGUF header: metadata and tensor directory. Tensor data stays where it is
/// until [`GgufFile::tensor_bytes`] reads one.
pub struct GgufFile {
    path: PathBuf,
    data: Data,
    file_len: u64,
    pub version: u32,
    pub metadata: HashMap<String, MetaValue>,
    pub tensors: HashMap<String, TensorInfo>,
    /// Tensor names in file order (for listing and deterministic errors).
    pub tensor_order: Vec<String>,
    data_start: u64,
}

/// What the header holds, before it is tied to a file.
struct Header {
    version: u32,
    metadata: HashMap<String, MetaValue>,
    tensors: HashMap<String, TensorInfo>,
    tensor_order: Vec<String>,
    data_start: u64,
}

/// Byte reader that knows how many bytes the file still has.
struct Cursor<R> {
    inner: R,
    pos: u64,
    len: u64,
}

impl<R: Read> Cursor<R> {
    fn remaining(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }

    fn need(&self, n: u64, what: &str) -> Parse<()> {
        if n > self.remaining() {
            return Err(GgufError::Truncated {
                what: what.to_string(),
                needed: n,
                offset: self.pos,
                len: self.len,
            });
        }
        Ok(())
    }

    /// Fills `buf` from the file after checking the file has that many bytes left.
    fn fill(&mut self, buf: &mut [u8], what: &str) -> Parse<()> {
        self.need(buf.len() as u64, what)?;
        self.inner.read_exact(buf)?;
        self.pos += buf.len() as u64;
        Ok(())
    }

    fn bytes<const N: usize>(&mut self, what: &str) -> Parse<[u8; N]> {
        let mut buf = [0u8; N];
        self.fill(&mut buf, what)?;
        Ok(buf)
    }

    fn u8(&mut self, what: &str) -> Parse<u8> {
        Ok(self.bytes::<1>(what)?[0])
    }
    fn u32(&mut self, what: &str) -> Parse<u32> {
        Ok(u32::from_le_bytes(self.bytes(what)?))
    }
    fn u64(&mut self, what: &str) -> Parse<u64> {
        Ok(u64::from_le_bytes(self.bytes(what)?))
    }

    fn string(&mut self, what: &str) -> Parse<String> {
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

    fn value(&mut self, ty: u32, what: &str, depth: u32) -> Parse<MetaValue> {
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
                    return Err(GgufError::Nesting { key: what.into() });
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
                    ty => {
                        return Err(GgufError::ElementType {
                            key: what.into(),
                            ty,
                        })
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
            ty => {
                return Err(GgufError::ValueType {
                    key: what.into(),
                    ty,
                })
            }
        })
    }
}

/// Reads the header from `inner`, the first bytes of a file of `len` bytes.
fn read_header(inner: impl Read, len: u64) -> Parse<Header> {
    let mut cur = Cursor { inner, pos: 0, len };
    let magic = cur.u32("magic")?;
    if magic != GGUF_MAGIC {
        return Err(GgufError::Magic(magic));
    }
    let version = cur.u32("version")?;
    if !(2..=3).contains(&version) {
        return Err(GgufError::Version(version));
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
            return Err(GgufError::Dims { name, n_dims });
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
            .ok_or_else(|| GgufError::Alignment(format!("{v:?}")))?,
        None => DEFAULT_ALIGNMENT,
    };
    let data_start = cur
        .pos
        .checked_next_multiple_of(alignment)
        .ok_or_else(|| GgufError::Alignment(alignment.to_string()))?;

    let mut tensors = HashMap::new();
    let mut tensor_order = Vec::with_capacity(infos.len());
    for (name, ne, type_id, offset) in infos {
        let info = TensorInfo::new(&name, ne, type_id, offset, data_start, len)?;
        tensor_order.push(name.clone());
        if tensors.insert(name.clone(), info).is_some() {
            return Err(GgufError::Duplicate(name));
        }
    }
    Ok(Header {
        version,
        metadata,
        tensors,
        tensor_order,
        data_start,
    })
}

impl GgufFile {
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let io = |source| Error::Io {
            path: path.clone(),
            source,
        };
        let file = File::open(&path).map_err(io)?;
        let file_len = file.metadata().map_err(io)?.len();
        let buffer = file_len.clamp(1, READ_BUFFER) as usize;
        let header = read_header(BufReader::with_capacity(buffer, &file), file_len)
            .map_err(|e| Error::gguf(&path, e))?;
        Ok(Self::new(path, Data::File(file), file_len, header))
    }

    /// A GGUF held in memory (tests, fuzzing); errors name it `<memory>`.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self> {
        let len = bytes.len() as u64;
        let header = read_header(bytes.as_slice(), len).map_err(|e| Error::gguf(MEMORY_PATH, e))?;
        Ok(Self::new(
            MEMORY_PATH.into(),
            Data::Memory(bytes),
            len,
            header,
        ))
    }

    fn new(path: PathBuf, data: Data, file_len: u64, h: Header) -> Self {
        Self {
            path,
            data,
            file_len,
            version: h.version,
            metadata: h.metadata,
            tensors: h.tensors,
            tensor_order: h.tensor_order,
            data_start: h.data_start,
        }
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

    /// This file's error for `source`.
    pub fn error(&self, source: GgufError) -> Error {
        Error::gguf(&self.path, source)
    }

    pub fn meta(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }

    fn meta_as<'a, T>(
        &'a self,
        key: &str,
        want: &'static str,
        f: impl Fn(&'a MetaValue) -> Option<T>,
    ) -> Result<T> {
        self.meta(key).and_then(f).ok_or_else(|| {
            self.error(GgufError::Meta {
                key: key.into(),
                want,
            })
        })
    }

    pub fn meta_str(&self, key: &str) -> Result<&str> {
        self.meta_as(key, "a string", MetaValue::as_str)
    }

    pub fn meta_u64(&self, key: &str) -> Result<u64> {
        self.meta_as(key, "an integer", MetaValue::as_u64)
    }

    pub fn meta_f32(&self, key: &str) -> Result<f32> {
        self.meta_as(key, "a number", |v| v.as_f64().map(|v| v as f32))
    }

    pub fn meta_array(&self, key: &str) -> Result<&[MetaValue]> {
        self.meta_as(key, "an array", MetaValue::as_array)
    }

    pub fn tensor_info(&self, name: &str) -> Result<&TensorInfo> {
        self.tensors
            .get(name)
            .ok_or_else(|| self.error(GgufError::MissingTensor(name.into())))
    }

    /// The raw bytes of a tensor, bounds already checked when the header was read.
    pub fn tensor_bytes(&self, name: &str) -> Result<Vec<u8>> {
        let info = self.tensor_info(name)?;
        let past_end = || {
            self.error(GgufError::PastEnd {
                name: name.into(),
                start: info.abs_offset,
                end: info.abs_offset.saturating_add(info.size_bytes),
                len: self.file_len,
            })
        };
        match &self.data {
            Data::File(file) => {
                let mut buf = vec![0u8; info.size_bytes as usize];
                file.read_exact_at(&mut buf, info.abs_offset)
                    .map_err(|e| self.error(e.into()))?;
                Ok(buf)
            }
            Data::Memory(bytes) => {
                let start = usize::try_from(info.abs_offset).map_err(|_| past_end())?;
                let end = usize::try_from(info.size_bytes)
                    .ok()
                    .and_then(|n| start.checked_add(n))
                    .ok_or_else(past_end)?;
                bytes
                    .get(start..end)
                    .map(<[u8]>::to_vec)
                    .ok_or_else(past_end)
            }
        }
    }

    /// Re-reads the file's length and fails if it shrank since the header was read.
    pub fn check_unchanged(&self) -> Result<()> {
        if let Data::File(file) = &self.data {
            let now = file.metadata().map_err(|e| self.error(e.into()))?.len();
            if now < self.file_len {
                return Err(self.error(GgufError::Shrank));
            }
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
    ) -> Parse<Self> {
        let overflow = |what| GgufError::Overflow {
            name: name.into(),
            what,
        };
        let ggml_type = GgmlType::from_id(type_id);
        let elems = ne
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| overflow("element count"))?;
        // Types we cannot read still get their size checked when ggml knows it.
        let size_bytes = match ggml_type {
            Some(ty) => {
                let block = ty.block_size();
                let row = ne.first().copied().unwrap_or(0);
                if row % block != 0 {
                    return Err(GgufError::Row {
                        name: name.into(),
                        row,
                        ty,
                        block,
                    });
                }
                (elems / block)
                    .checked_mul(ty.type_size())
                    .ok_or_else(|| overflow("size"))?
            }
            None => 0,
        };
        let abs_offset = data_start
            .checked_add(offset)
            .ok_or_else(|| overflow("offset"))?;
        let end = abs_offset
            .checked_add(size_bytes)
            .ok_or_else(|| overflow("size"))?;
        if end > file_len {
            return Err(GgufError::PastEnd {
                name: name.into(),
                start: abs_offset,
                end,
                len: file_len,
            });
        }
        Ok(Self {
            ne,
            type_id,
            ggml_type,
            abs_offset,
            size_bytes,
        })
    }
}
