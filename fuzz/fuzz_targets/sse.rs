//! The server-sent-events writer: any text is framed as one event that a client's reader
//! (the HTML standard's parsing) reads back with its line ends made LF, and any chunk's JSON
//! (whatever its strings hold) is one `data:` line that reads back as the same value.
#![no_main]

use ferrolm_protocol::openai::{ChatChunkChoice, ChatDelta, ChoicesResponse};
use ferrolm_protocol::sse::{event, json_event, read_events};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (String, String, Option<String>)| {
    let (text, model, role) = input;
    // Raw text: one event, line ends normalised.
    let read = read_events(&event(&text));
    assert_eq!(read, vec![text.replace("\r\n", "\n").replace('\r', "\n")]);

    // A chat chunk carrying the text: one line, the same JSON back.
    let chunk = ChoicesResponse {
        id: "chatcmpl-1".to_string(),
        object: "chat.completion.chunk",
        created: 0,
        model,
        choices: vec![ChatChunkChoice {
            index: 0,
            delta: ChatDelta {
                role: role.map(|_| "assistant"),
                content: Some(text),
                ..ChatDelta::default()
            },
            logprobs: None,
            finish_reason: None,
        }],
        usage: None,
        prompt_logprobs: None,
    };
    let value = serde_json::to_value(&chunk).expect("a chunk serializes");
    let framed = json_event(&value);
    assert_eq!(framed.matches('\n').count(), 2, "{framed:?}");
    let read = read_events(&framed);
    assert_eq!(read.len(), 1);
    let back: serde_json::Value = serde_json::from_str(&read[0]).expect("the data is JSON");
    assert_eq!(back, value);
    // Two events in a row stay two.
    let two = format!("{framed}{}", event("[DONE]"));
    assert_eq!(read_events(&two).len(), 2);
});
