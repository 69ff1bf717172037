//! The Responses API's stored answers: bounded, oldest evicted first (for
//! `previous_response_id` and `GET /v1/responses/{id}`).

use std::collections::{HashMap, VecDeque};

use ferrolm_engine::tokenizer::ChatMessage;
use serde_json::Value;

/// Stored responses kept at most (the oldest go first).
const STORE_CAPACITY: usize = 1024;

/// A stored response: its object and the conversation it ends (for `previous_response_id`).
pub struct Stored {
    pub object: Value,
    pub conversation: Vec<ChatMessage>,
}

/// The stored responses, oldest first, bounded.
#[derive(Default)]
pub struct ResponseStore {
    order: VecDeque<String>,
    pub map: HashMap<String, Stored>,
}

impl ResponseStore {
    pub fn insert(&mut self, id: String, stored: Stored) {
        while self.order.len() >= STORE_CAPACITY {
            if let Some(old) = self.order.pop_front() {
                self.map.remove(&old);
            }
        }
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
    }
}
