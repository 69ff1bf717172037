//! An arbitrary template rendering arbitrary messages: an error or text within the
//! renderer's own output limit, never a panic, a hang or a runaway allocation.
//!
//! Input: one flags byte (bit 0: add_generation_prompt), then the template source, then
//! messages, each after a NUL, as `role` 0x1F `content` (no 0x1F: a user message).
#![no_main]

use ferrolm_formats::tokenizer::{ChatMessage, ChatTemplate};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let mut parts = text.split('\0');
    let source = parts.next().unwrap_or_default();
    let messages: Vec<ChatMessage> = parts
        .map(|m| match m.split_once('\x1f') {
            Some((role, content)) => ChatMessage::new(role, content),
            None => ChatMessage::new("user", m),
        })
        .collect();
    let Ok(template) = ChatTemplate::new(source, "<|im_start|>", "<|im_end|>") else {
        return;
    };
    let Ok(out) = template.render(&messages, flags & 1 == 1) else {
        return;
    };
    let limits = template.limits();
    let input: usize = messages
        .iter()
        .map(|m| m.role.len() + m.content.len())
        .sum();
    assert!(out.len() <= limits.output_bytes + limits.output_per_input_byte * input);
});
