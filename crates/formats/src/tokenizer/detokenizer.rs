//! Incremental detokenization: text deltas that never split a UTF-8 character.

use super::Tokenizer;

/// Turns a stream of token ids into text deltas. Bytes that end in the middle of a UTF-8
/// character are held back until the character completes; bytes that can never form a
/// character become U+FFFD, as a whole-sequence decode would show them.
#[derive(Debug, Default, Clone)]
pub struct IncrementalDecoder {
    pending: Vec<u8>,
    skip_special: bool,
}

impl IncrementalDecoder {
    pub fn new(skip_special: bool) -> Self {
        Self {
            pending: Vec::new(),
            skip_special,
        }
    }

    /// Adds one token; returns the text that is now complete (possibly empty).
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> String {
        if self.skip_special && tokenizer.is_control(id) {
            return String::new();
        }
        self.push_bytes(tokenizer.token_bytes(id))
    }

    /// Adds raw bytes (one token's worth); returns the text now complete.
    pub fn push_bytes(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        self.drain(false)
    }

    /// Bytes held back for an incomplete character.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Ends the stream: whatever is still held becomes U+FFFD.
    pub fn finish(&mut self) -> String {
        self.drain(true)
    }

    fn drain(&mut self, at_end: bool) -> String {
        let mut out = String::new();
        let mut start = 0;
        loop {
            match std::str::from_utf8(&self.pending[start..]) {
                Ok(s) => {
                    out.push_str(s);
                    start = self.pending.len();
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // SAFETY-free: from_utf8 just said these bytes are valid.
                    out.push_str(
                        std::str::from_utf8(&self.pending[start..start + valid]).unwrap_or(""),
                    );
                    start += valid;
                    match e.error_len() {
                        // Invalid bytes: they can never complete.
                        Some(bad) => {
                            out.push('\u{FFFD}');
                            start += bad;
                        }
                        // An incomplete character at the end: wait for more bytes.
                        None => {
                            if at_end {
                                out.push('\u{FFFD}');
                                start = self.pending.len();
                            }
                            break;
                        }
                    }
                }
            }
        }
        self.pending.drain(..start);
        out
    }
}
