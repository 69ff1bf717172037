//! A request body through every check the API makes before the engine: the JSON object,
//! the completions and chat request types and their shared fields, the refused fields, `n`,
//! `max_tokens`, log-prob counts, the sampling conventions, the chat messages, the fields that
//! would be dropped, continue_final_message and the Responses API's request. Whatever the
//! bytes, each step answers Ok or a 400/413 error whose JSON is OpenAI's error object.
#![no_main]

use ferrolm_protocol::messages::{
    cut_after_final_message, final_message_to_continue, flatten_messages,
};
use ferrolm_protocol::openai::{ChatRequest, CommonParams, CompletionRequest};
use ferrolm_protocol::responses::ResponsesRequest;
use ferrolm_protocol::validate::{
    choices_n, from_json, logprobs_count, max_tokens_or, parse_json, refuse_ignored_fields,
    refuse_structured_fields, refuse_unsupported, SamplingConventions,
};
use ferrolm_protocol::ApiError;
use libfuzzer_sys::fuzz_target;

fn refused(e: &ApiError) {
    assert!(matches!(e.status.as_u16(), 400 | 413), "{e}");
    let json = e.to_json();
    assert!(json["error"]["message"].is_string());
    assert_eq!(json["error"]["code"], e.status.as_u16());
}

fn check<T>(r: Result<T, ApiError>) -> Option<T> {
    r.map_err(|e| refused(&e)).ok()
}

fuzz_target!(|data: &[u8]| {
    let Some(body) = check(parse_json(data, 64 * 1024)) else {
        return;
    };
    let _ = check(refuse_ignored_fields(&body, true));
    let _ = check(refuse_ignored_fields(&body, false));
    let _ = check(refuse_structured_fields(&body));
    let _ = check(ferrolm_protocol::structured::structured_request(&body));
    if let Some(Some(t)) = check(ferrolm_protocol::tools::tools_request(
        &body,
        &Default::default(),
    )) {
        if let Some(schema) = t.forced_schema() {
            assert!(schema.is_object());
        }
    }
    if let Some(r) = check(from_json::<ResponsesRequest>(&body)) {
        let _ = check(r.refuse_unsupported());
        let _ = check(r.messages(&[]));
    }
    if let Some(c) = check(from_json::<CommonParams>(&body)) {
        let _ = check(refuse_unsupported(&c, false));
        let _ = check(refuse_unsupported(&c, true));
        let _ = check(choices_n(&c, 16));
        let _ = check(max_tokens_or(c.max_tokens, 16));
        let _ = check(logprobs_count("prompt_logprobs", c.prompt_logprobs));
        if let Some(s) = check(SamplingConventions::read(&c)) {
            assert!(s.logit_bias.windows(2).all(|w| w[0].0 <= w[1].0));
        }
    }
    if let Some(chat) = check(from_json::<ChatRequest>(&body)) {
        let _ = check(logprobs_count("top_logprobs", chat.top_logprobs));
        let _ = check(max_tokens_or(chat.max_completion_tokens, 16));
        let _ = check(ferrolm_protocol::messages::messages_json(&chat.messages));
        if let Some(msgs) = check(flatten_messages(&chat.messages)) {
            assert_eq!(msgs.len(), chat.messages.len());
            if let Some(content) =
                check(final_message_to_continue(&msgs, chat.add_generation_prompt))
            {
                // Any rendering: the cut is a prefix ending with the content (or the whole).
                let rendered = format!("<s>{content}</s>");
                if let Some(cut) = check(cut_after_final_message(&rendered, content, 3)) {
                    assert!(rendered.starts_with(&cut));
                }
            }
        }
    }
    if let Some(c) = check(from_json::<CompletionRequest>(&body)) {
        let _ = check(logprobs_count("logprobs", c.logprobs));
    }
});
