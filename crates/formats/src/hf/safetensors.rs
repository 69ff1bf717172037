//! Safetensors files, one or sharded (`model.safetensors.index.json`), memory-mapped. Every
//! file's header is checked before a tensor is handed out: its length, its JSON, every
//! tensor's dtype, shape and byte range (contiguous, of the size dtype × shape asks, ending
//! exactly at the end of the file; the `safetensors` crate's checks); an index's every entry
//! must name a shard that exists and holds that tensor.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, Metadata, SafeTensors};

use crate::error::{Error, Result};

/// The element types we turn into model weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorDtype {
    F32,
    F16,
    BF16,
    I64,
    I32,
}

impl TensorDtype {
    pub fn size_in_bytes(self) -> usize {
        match self {
            Self::F32 | Self::I32 => 4,
            Self::F16 | Self::BF16 => 2,
            Self::I64 => 8,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::BF16 => "BF16",
            Self::I64 => "I64",
            Self::I32 => "I32",
        }
    }
}

/// One tensor's place in its file.
#[derive(Debug, Clone)]
struct Entry {
    dtype: Dtype,
    shape: Vec<usize>,
    /// Byte range within the file.
    start: usize,
    end: usize,
}

/// A tensor's type, shape and bytes (little-endian, row-major), borrowed from its file.
#[derive(Debug, Clone, Copy)]
pub struct TensorData<'a> {
    pub dtype: TensorDtype,
    pub shape: &'a [usize],
    pub bytes: &'a [u8],
}

enum Bytes {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Bytes {
    fn as_slice(&self) -> &[u8] {
        match self {
            Self::Mapped(m) => m,
            Self::Owned(v) => v,
        }
    }
}

/// One safetensors file, its header checked.
pub struct SafetensorsFile {
    path: PathBuf,
    bytes: Bytes,
    tensors: BTreeMap<String, Entry>,
}

impl SafetensorsFile {
    /// Maps the file and checks its header against its length.
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        // SAFETY: the map is read only; like every mmap-based loader (candle's, vLLM's), we
        // rely on the checkpoint not being rewritten while it is served.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_parts(path, Bytes::Mapped(map))
    }

    /// A file's bytes already in memory (tests, the fuzz target).
    pub fn from_bytes(path: &Path, bytes: Vec<u8>) -> Result<Self> {
        Self::from_parts(path, Bytes::Owned(bytes))
    }

    fn from_parts(path: &Path, bytes: Bytes) -> Result<Self> {
        let (header_len, meta) = read_header(bytes.as_slice())
            .map_err(|m| Error::checkpoint(path, format!("not a valid safetensors file: {m}")))?;
        let base = 8 + header_len;
        let tensors = meta
            .tensors()
            .into_iter()
            .map(|(name, info)| {
                let (s, e) = info.data_offsets;
                let entry = Entry {
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    start: base + s,
                    end: base + e,
                };
                (name, entry)
            })
            .collect();
        Ok(Self {
            path: path.to_path_buf(),
            bytes,
            tensors,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tensor names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// A tensor's type and shape without its bytes (`inspect`).
    pub fn info(&self, name: &str) -> Option<(String, &[usize])> {
        self.tensors
            .get(name)
            .map(|e| (format!("{:?}", e.dtype), e.shape.as_slice()))
    }

    /// A tensor of one of the types we read; another type is an Unsupported error.
    pub fn tensor(&self, name: &str) -> Result<TensorData<'_>> {
        let e = self
            .tensors
            .get(name)
            .ok_or_else(|| Error::checkpoint(&self.path, format!("tensor {name} is missing")))?;
        let dtype = match e.dtype {
            Dtype::F32 => TensorDtype::F32,
            Dtype::F16 => TensorDtype::F16,
            Dtype::BF16 => TensorDtype::BF16,
            Dtype::I64 => TensorDtype::I64,
            Dtype::I32 => TensorDtype::I32,
            other => {
                return Err(Error::Unsupported {
                    path: self.path.clone(),
                    message: format!(
                        "tensor {name} is {other:?} (F32, F16 and BF16 weights are read)"
                    ),
                })
            }
        };
        Ok(TensorData {
            dtype,
            shape: &e.shape,
            // In range: the header check proved every range lies within the file.
            bytes: &self.bytes.as_slice()[e.start..e.end],
        })
    }
}

/// The header's length and its tensors, checked against the buffer (`safetensors` checks that
/// the ranges are contiguous, sized by dtype × shape without overflow, and end at the end of
/// the buffer).
fn read_header(buf: &[u8]) -> std::result::Result<(usize, Metadata), String> {
    SafeTensors::read_metadata(buf).map_err(|e| match e {
        safetensors::SafeTensorError::MetadataIncompleteBuffer => {
            "the data does not end where the header says (truncated or padded)".to_string()
        }
        e => e.to_string(),
    })
}

/// The weights of a checkpoint folder: `model.safetensors`, or the shards an index lists.
pub struct Checkpoint {
    files: Vec<SafetensorsFile>,
    /// Which file holds each tensor.
    index: HashMap<String, usize>,
}

/// The index file of a sharded checkpoint.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
pub const SINGLE_FILE: &str = "model.safetensors";

impl Checkpoint {
    /// Opens the weights in `dir`: the shards of `model.safetensors.index.json` (each must
    /// exist and hold the tensors the index gives it), else `model.safetensors`.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let index_path = dir.join(INDEX_FILE);
        if index_path.is_file() {
            return Self::open_index(dir, &index_path);
        }
        let single = dir.join(SINGLE_FILE);
        if single.is_file() {
            return Self::from_files(vec![SafetensorsFile::open(&single)?]);
        }
        Err(Error::checkpoint(
            dir,
            format!("no weights: neither {SINGLE_FILE} nor {INDEX_FILE} is here"),
        ))
    }

    fn open_index(dir: &Path, index_path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(index_path).map_err(|source| Error::Io {
            path: index_path.to_path_buf(),
            source,
        })?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::checkpoint(index_path, format!("not JSON: {e}")))?;
        let map = json["weight_map"]
            .as_object()
            .ok_or_else(|| Error::checkpoint(index_path, "no `weight_map` object"))?;
        let mut shards: Vec<String> = Vec::new();
        let mut wanted: Vec<(String, usize)> = Vec::with_capacity(map.len());
        for (tensor, shard) in map {
            let shard = shard.as_str().ok_or_else(|| {
                Error::checkpoint(
                    index_path,
                    format!("weight_map[{tensor:?}] is not a file name"),
                )
            })?;
            // A shard is a file in this folder, never a path out of it.
            if shard.contains(['/', '\\']) || shard.starts_with('.') {
                return Err(Error::checkpoint(
                    index_path,
                    format!("weight_map[{tensor:?}] names {shard:?}, not a file in the folder"),
                ));
            }
            let i = match shards.iter().position(|s| s == shard) {
                Some(i) => i,
                None => {
                    shards.push(shard.to_string());
                    shards.len() - 1
                }
            };
            wanted.push((tensor.clone(), i));
        }
        let mut files = Vec::with_capacity(shards.len());
        for shard in &shards {
            let path = dir.join(shard);
            if !path.is_file() {
                return Err(Error::checkpoint(
                    &path,
                    format!("shard {shard} listed in {INDEX_FILE} is missing"),
                ));
            }
            files.push(SafetensorsFile::open(&path)?);
        }
        for (tensor, i) in &wanted {
            if !files[*i].contains(tensor) {
                return Err(Error::checkpoint(
                    files[*i].path(),
                    format!("{INDEX_FILE} puts tensor {tensor} in this shard, which lacks it"),
                ));
            }
        }
        Self::from_files(files)
    }

    /// Files whose tensors are the checkpoint (a tensor in two files is an error).
    pub fn from_files(files: Vec<SafetensorsFile>) -> Result<Self> {
        let mut index = HashMap::new();
        for (i, f) in files.iter().enumerate() {
            for name in f.names() {
                if index.insert(name.to_string(), i).is_some() {
                    return Err(Error::checkpoint(
                        f.path(),
                        format!("tensor {name} appears in two shards"),
                    ));
                }
            }
        }
        Ok(Self { files, index })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// Every tensor name, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.index.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }

    pub fn files(&self) -> &[SafetensorsFile] {
        &self.files
    }

    /// The file holding `name`.
    pub fn file_of(&self, name: &str) -> Option<&SafetensorsFile> {
        self.index.get(name).map(|&i| &self.files[i])
    }

    pub fn tensor(&self, name: &str) -> Result<TensorData<'_>> {
        match self.file_of(name) {
            Some(f) => f.tensor(name),
            None => Err(Error::checkpoint(
                self.files.first().map_or(Path::new("."), |f| f.path()),
                format!("tensor {name} is missing from the checkpoint"),
            )),
        }
    }

    /// Total bytes of tensor data.
    pub fn data_bytes(&self) -> usize {
        self.files
            .iter()
            .flat_map(|f| f.tensors.values().map(|e| e.end - e.start))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A safetensors file's bytes from (name, dtype, shape, data).
    pub(crate) fn file_bytes(tensors: &[(&str, &str, &[usize], Vec<u8>)]) -> Vec<u8> {
        let mut header = serde_json::Map::new();
        let mut data = Vec::new();
        for (name, dtype, shape, bytes) in tensors {
            let start = data.len();
            data.extend_from_slice(bytes);
            header.insert(
                name.to_string(),
                serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [start, data.len()]}),
            );
        }
        let h = serde_json::Value::Object(header).to_string();
        let mut out = (h.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(&data);
        out
    }

    #[test]
    fn reads_tensors_and_refuses_bad_files() {
        let f32s: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let good = file_bytes(&[
            ("a", "F32", &[2, 2], f32s.clone()),
            ("b", "BF16", &[1], vec![0, 0x3f]),
        ]);
        let f = SafetensorsFile::from_bytes(Path::new("x"), good.clone()).unwrap();
        let a = f.tensor("a").unwrap();
        assert_eq!(
            (a.dtype, a.shape, a.bytes),
            (TensorDtype::F32, &[2usize, 2][..], &f32s[..])
        );
        assert_eq!(f.tensor("b").unwrap().dtype, TensorDtype::BF16);
        assert!(f
            .tensor("c")
            .unwrap_err()
            .to_string()
            .contains("tensor c is missing"));

        let cut = SafetensorsFile::from_bytes(Path::new("x"), good[..good.len() - 1].to_vec());
        assert!(
            cut.err().unwrap().to_string().contains("truncated"),
            "a truncated file"
        );
        let wrong = file_bytes(&[("a", "F32", &[3, 2], f32s.clone())]);
        assert!(
            SafetensorsFile::from_bytes(Path::new("x"), wrong).is_err(),
            "shape × dtype ≠ bytes"
        );
        let fp8 = file_bytes(&[("a", "F8_E4M3", &[2], vec![0, 0])]);
        let f = SafetensorsFile::from_bytes(Path::new("x"), fp8).unwrap();
        assert!(f.tensor("a").unwrap_err().to_string().contains("F8_E4M3"));
        for junk in [
            &b""[..],
            b"\xff\xff\xff\xff\xff\xff\xff\xff",
            b"\x02\0\0\0\0\0\0\0[]",
            b"\x02\0\0\0\0\0\0\0{}x",
        ] {
            assert!(SafetensorsFile::from_bytes(Path::new("x"), junk.to_vec()).is_err());
        }
    }

    #[test]
    fn sharded_checkpoints_are_checked_against_their_index() {
        let dir = std::env::temp_dir().join(format!("ferrolm-st-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let one = |v: f32| v.to_le_bytes().to_vec();
        std::fs::write(
            dir.join("s1.safetensors"),
            file_bytes(&[("a", "F32", &[1], one(1.0))]),
        )
        .unwrap();
        std::fs::write(
            dir.join("s2.safetensors"),
            file_bytes(&[("b", "F32", &[1], one(2.0))]),
        )
        .unwrap();
        let index = |map: &str| {
            std::fs::write(dir.join(INDEX_FILE), format!("{{\"weight_map\": {map}}}")).unwrap()
        };
        index(r#"{"a": "s1.safetensors", "b": "s2.safetensors"}"#);
        let c = Checkpoint::open_dir(&dir).unwrap();
        assert_eq!(c.names(), vec!["a", "b"]);
        assert_eq!(c.tensor("b").unwrap().bytes, &one(2.0)[..]);
        index(r#"{"a": "s1.safetensors", "b": "s3.safetensors"}"#);
        let e = Checkpoint::open_dir(&dir).err().unwrap().to_string();
        assert!(e.contains("shard s3.safetensors listed in"), "{e}");
        index(r#"{"a": "s2.safetensors", "b": "s2.safetensors"}"#);
        let e = Checkpoint::open_dir(&dir).err().unwrap().to_string();
        assert!(e.contains("lacks it"), "{e}");
        index(r#"{"a": "../s1.safetensors"}"#);
        assert!(Checkpoint::open_dir(&dir).is_err());
        std::fs::remove_dir_all(&dir).ok();
    }
}
