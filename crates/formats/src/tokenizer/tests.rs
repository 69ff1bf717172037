use super::IncrementalDecoder;

/// A tiny byte-level tokenizer is heavy to build here; the decoder's logic is exercised
/// through its byte buffer directly with a stand-in that maps ids to bytes.
fn run(pieces: &[&[u8]]) -> (Vec<String>, String) {
    let mut d = IncrementalDecoder::new(false);
    let mut deltas = Vec::new();
    for p in pieces {
        deltas.push(d.push_bytes(p));
    }
    let tail = d.finish();
    (deltas, tail)
}

#[test]
fn multibyte_characters_split_across_tokens_are_held_back() {
    // "é" = C3 A9, "😀" = F0 9F 98 80
    let (deltas, tail) = run(&[
        b"caf",
        &[0xC3],
        &[0xA9, b' '],
        &[0xF0, 0x9F],
        &[0x98],
        &[0x80, b'!'],
    ]);
    assert_eq!(deltas, vec!["caf", "", "é ", "", "", "😀!"]);
    assert_eq!(tail, "");
}

#[test]
fn invalid_bytes_become_replacement_characters() {
    let (deltas, tail) = run(&[&[0xFF, b'a'], &[0xE2, 0x82]]);
    assert_eq!(deltas, vec!["\u{FFFD}a", ""]);
    // An incomplete character at the end of the stream is shown as one U+FFFD.
    assert_eq!(tail, "\u{FFFD}");
}

#[test]
fn concatenated_deltas_equal_lossy_decode() {
    let bytes: Vec<u8> = "naïve 日本 👨‍👩‍👧".bytes().chain([0xC3]).collect();
    for split in 1..6 {
        let pieces: Vec<&[u8]> = bytes.chunks(split).collect();
        let (deltas, tail) = run(&pieces);
        let joined: String = deltas.concat() + &tail;
        assert_eq!(joined, String::from_utf8_lossy(&bytes));
    }
}
