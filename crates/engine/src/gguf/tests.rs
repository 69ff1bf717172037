//! The candle side of GGUF reading (the reader's own tests are in ferrolm-formats).

use super::*;

#[test]
fn reads_a_tensor_through_candle() {
    let mut b = Vec::new();
    b.extend_from_slice(b"GGUF");
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&1u64.to_le_bytes()); // one tensor
    b.extend_from_slice(&0u64.to_le_bytes()); // no metadata
    b.extend_from_slice(&1u64.to_le_bytes());
    b.push(b't');
    b.extend_from_slice(&1u32.to_le_bytes());
    b.extend_from_slice(&4u64.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes()); // F32
    b.extend_from_slice(&0u64.to_le_bytes());
    b.resize(b.len().next_multiple_of(32), 0);
    for x in [1.0f32, 2.0, 3.0, 4.0] {
        b.extend_from_slice(&x.to_le_bytes());
    }
    let f = GgufFile::from_bytes(b).unwrap();
    let t = f
        .tensor("t", &Device::Cpu)
        .unwrap()
        .dequantize(&Device::Cpu)
        .unwrap();
    assert_eq!(t.to_vec1::<f32>().unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
    match f.tensor("missing", &Device::Cpu) {
        Err(EngineError::BadModelFile { message, .. }) => {
            assert!(message.contains("tensor missing is missing"), "{message}")
        }
        other => panic!("expected a bad model file, got {:?}", other.err()),
    }
}

/// The reader sizes tensors with its own table; it must agree with candle's.
#[test]
fn block_sizes_agree_with_candle() {
    for id in 0..64 {
        let (Some(ours), Some(candle)) = (GgmlType::from_id(id), ggml_dtype_from_id(id)) else {
            assert_eq!(
                GgmlType::from_id(id).is_some(),
                ggml_dtype_from_id(id).is_some()
            );
            continue;
        };
        assert_eq!(ours.block_size(), candle.block_size() as u64, "{ours:?}");
        assert_eq!(ours.type_size(), candle.type_size() as u64, "{ours:?}");
    }
}
