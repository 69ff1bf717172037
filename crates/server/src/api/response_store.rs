//! The Responses API's stored answers: bounded in count and in bytes, oldest evicted first
//! (for `previous_response_id` and `GET /v1/responses/{id}`).

use std::collections::{HashMap, VecDeque};

use ferrolm_engine::tokenizer::ChatMessage;
use serde_json::Value;

/// Stored responses kept at most (the oldest go first).
const STORE_CAPACITY: usize = 1024;
/// Text bytes kept at most (each entry holds its whole conversation).
const STORE_BYTES: usize = 64 << 20;

/// A stored response: its object and the conversation it ends (for `previous_response_id`).
pub struct Stored {
    pub object: Value,
    pub conversation: Vec<ChatMessage>,
}

impl Stored {
    /// Its size for the byte bound: the conversation's text, twice (the object repeats the
    /// answer and the request's fields).
    fn bytes(&self) -> usize {
        2 * self
            .conversation
            .iter()
            .map(|m| m.content.len() + m.role.len())
            .sum::<usize>()
    }
}

/// The stored responses, oldest first, bounded.
#[derive(Default)]
pub struct ResponseStore {
    order: VecDeque<String>,
    pub map: HashMap<String, Stored>,
    bytes: usize,
}

impl ResponseStore {
    /// Keeps `stored`, evicting the oldest entries past either bound (one entry over the byte
    /// bound by itself is not kept).
    pub fn insert(&mut self, id: String, stored: Stored) {
        let size = stored.bytes();
        if size > STORE_BYTES {
            return;
        }
        while self.order.len() >= STORE_CAPACITY || self.bytes + size > STORE_BYTES {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some(o) = self.map.remove(&old) {
                self.bytes -= o.bytes();
            }
        }
        self.bytes += size;
        self.order.push_back(id.clone());
        self.map.insert(id, stored);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_is_bounded_and_evicts_the_oldest() {
        let mut s = ResponseStore::default();
        for i in 0..STORE_CAPACITY + 5 {
            s.insert(
                format!("r{i}"),
                Stored {
                    object: Value::Null,
                    conversation: Vec::new(),
                },
            );
        }
        assert_eq!(s.map.len(), STORE_CAPACITY);
        assert!(!s.map.contains_key("r4") && s.map.contains_key("r5"));
        // The byte bound: big conversations push the old ones out.
        let big = || Stored {
            object: Value::Null,
            conversation: vec![ChatMessage::new("user", "x".repeat(STORE_BYTES / 5))],
        };
        for i in 0..4 {
            s.insert(format!("big{i}"), big());
        }
        assert!(s.bytes <= STORE_BYTES);
        assert!(
            s.map.contains_key("big3") && s.map.contains_key("big2") && !s.map.contains_key("big0")
        );
    }
}
