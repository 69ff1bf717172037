//! The incremental decoder over arbitrary byte pieces: it never holds more than an
//! unfinished character, and its deltas add up to the lossy decode of all the bytes.
#![no_main]

use ferrolm_formats::tokenizer::IncrementalDecoder;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (bool, Vec<Vec<u8>>)| {
    let (skip_special, pieces) = input;
    let mut decoder = IncrementalDecoder::new(skip_special);
    let mut joined = String::new();
    for piece in &pieces {
        joined.push_str(&decoder.push_bytes(piece));
        assert!(decoder.pending_len() < 4, "held back more than a character");
    }
    joined.push_str(&decoder.finish());
    assert_eq!(decoder.pending_len(), 0);
    assert_eq!(joined, String::from_utf8_lossy(&pieces.concat()));
});
