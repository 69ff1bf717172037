//! The reader on small files made here: valid, and broken in each way a file can be.

use super::*;

/// Writes a GGUF v3 file: metadata `(key, type, value bytes)` and one F32 tensor `t` of
/// `n` elements at data offset `tensor_offset`.
pub(crate) fn gguf_bytes(
    meta: &[(&str, u32, Vec<u8>)],
    n: u64,
    tensor_offset: u64,
    data: &[f32],
) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(b"GGUF");
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&1u64.to_le_bytes());
    b.extend_from_slice(&(meta.len() as u64).to_le_bytes());
    for (k, ty, v) in meta {
        b.extend_from_slice(&str_value(k));
        b.extend_from_slice(&ty.to_le_bytes());
        b.extend_from_slice(v);
    }
    b.extend_from_slice(&str_value("t"));
    b.extend_from_slice(&1u32.to_le_bytes());
    b.extend_from_slice(&n.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes()); // F32
    b.extend_from_slice(&tensor_offset.to_le_bytes());
    while b.len() % 32 != 0 {
        b.push(0);
    }
    for x in data {
        b.extend_from_slice(&x.to_le_bytes());
    }
    b
}

pub(crate) fn str_value(x: &str) -> Vec<u8> {
    let mut v = (x.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(x.as_bytes());
    v
}

fn err(name: &str, bytes: &[u8]) -> String {
    match GgufFile::from_bytes(bytes.to_vec()) {
        Ok(_) => panic!("{name}: opened"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn reads_metadata_and_tensor_bytes() {
    let meta = [
        ("general.architecture", 8, str_value("llama")),
        ("answer", 4, 42u32.to_le_bytes().to_vec()),
    ];
    let bytes = gguf_bytes(&meta, 4, 0, &[1.0, 2.0, 3.0, 4.0]);
    let f = GgufFile::from_bytes(bytes.clone()).unwrap();
    assert_eq!(f.meta_str("general.architecture").unwrap(), "llama");
    assert_eq!(f.meta_u64("answer").unwrap(), 42);
    let info = f.tensor_info("t").unwrap();
    assert_eq!(info.ggml_type, Some(GgmlType::F32));
    let data: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    assert_eq!(f.tensor_bytes("t").unwrap(), data);
    let msg = f.tensor_bytes("missing").unwrap_err().to_string();
    assert!(msg.contains("tensor missing is missing"), "{msg}");
    let msg = f.meta_str("answer").unwrap_err().to_string();
    assert!(
        msg.contains("metadata answer is missing or not a string"),
        "{msg}"
    );

    // The same bytes from a file.
    let p = std::env::temp_dir().join(format!("ferrolm-formats-{}.gguf", std::process::id()));
    std::fs::write(&p, &bytes).unwrap();
    let f = GgufFile::open(&p).unwrap();
    assert_eq!(f.tensor_bytes("t").unwrap(), data);
    f.check_unchanged().unwrap();
    std::fs::write(&p, &bytes[..40]).unwrap();
    let msg = f.check_unchanged().unwrap_err().to_string();
    assert!(msg.contains("shrank"), "{msg}");
    std::fs::remove_file(&p).unwrap();
}

#[test]
fn absurd_lengths_are_errors_not_allocations() {
    // A string claiming 2^60 bytes.
    let mut huge = (1u64 << 60).to_le_bytes().to_vec();
    huge.extend_from_slice(b"x");
    let msg = err(
        "huge-string",
        &gguf_bytes(&[("k", 8, huge)], 4, 0, &[0.0; 4]),
    );
    assert!(msg.contains("truncated or corrupt"), "{msg}");
    // An array claiming 2^40 u32 elements.
    let mut arr = 4u32.to_le_bytes().to_vec();
    arr.extend_from_slice(&(1u64 << 40).to_le_bytes());
    let msg = err("huge-array", &gguf_bytes(&[("k", 9, arr)], 4, 0, &[0.0; 4]));
    assert!(msg.contains("truncated or corrupt"), "{msg}");
}

#[test]
fn tensor_past_the_end_is_an_error() {
    let msg = err("past-end", &gguf_bytes(&[], 4, 1 << 20, &[0.0; 4]));
    assert!(
        msg.contains("tensor t") && msg.contains("truncated"),
        "{msg}"
    );
    let msg = err("short-data", &gguf_bytes(&[], 1000, 0, &[0.0; 4]));
    assert!(msg.contains("tensor t"), "{msg}");
}

/// Found by fuzz/gguf_read (crash-b4c32ed0): the element count fit in 64 bits but its size
/// in bytes did not, which panicked in checked builds and wrapped to a small size otherwise.
#[test]
fn a_tensor_size_past_64_bits_is_an_error() {
    let msg = err("size-overflow", &gguf_bytes(&[], 1 << 62, 0, &[0.0; 4]));
    assert!(msg.contains("tensor t: size overflows"), "{msg}");
    let bytes = include_bytes!("../../../../fuzz/corpus/gguf_read/crash-b4c32ed094c15b1d");
    let msg = err("fuzz-crash-b4c32ed0", bytes);
    assert!(msg.contains("size overflows"), "{msg}");
}

#[test]
fn unknown_value_type_and_bad_magic_are_errors() {
    let msg = err(
        "bad-type",
        &gguf_bytes(&[("k", 99, vec![0; 8])], 4, 0, &[0.0; 4]),
    );
    assert!(msg.contains("unknown metadata value type 99"), "{msg}");
    let mut b = gguf_bytes(&[], 4, 0, &[0.0; 4]);
    b[0] = b'X';
    assert!(err("bad-magic", &b).contains("not a GGUF file"));
    // Every prefix of a valid file fails cleanly.
    let full = gguf_bytes(
        &[("general.architecture", 8, str_value("llama"))],
        4,
        0,
        &[0.0; 4],
    );
    for cut in 0..full.len() - 16 {
        assert!(
            GgufFile::from_bytes(full[..cut].to_vec()).is_err(),
            "prefix {cut} opened"
        );
    }
}

#[test]
fn io_errors_stay_io_errors() {
    match GgufFile::open("/nonexistent/ferrolm.gguf") {
        Err(crate::Error::Io { path, .. }) => assert!(path.ends_with("ferrolm.gguf")),
        Err(e) => panic!("expected an I/O error, got {e}"),
        Ok(_) => panic!("opened a missing file"),
    }
}
