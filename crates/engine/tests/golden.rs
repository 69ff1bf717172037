//! Whole-model tests against llama.cpp's goldens on the real default model
//! (fixtures/golden/PROVENANCE.md says where they come from and how they are compared).

mod common;

use common::{assert_matches_golden, check_teacher_forced, ids, load_model, read_jsonl};
use ferrolm_engine::engine::greedy_generate;
use ferrolm_engine::tokenizer::ChatMessage;

#[test]
fn tokenizer_matches_llama_cpp_on_all_records() {
    let lm = load_model();
    let records = read_jsonl("smollm2_tokenizer.jsonl");
    assert_eq!(records.len(), 44);
    let mut failures = Vec::new();
    for r in &records {
        let text = r["text"].as_str().unwrap();
        let special = r["special"].as_bool().unwrap();
        let want = ids(&r["ids"]);
        let got = lm.tokenizer.encode(text, special).unwrap();
        if got != want {
            failures.push(format!(
                "{} special={special}: {text:?}\n  want {want:?}\n  got  {got:?}",
                r["source"]
            ));
        }
        // Decoding gives the text back (no BOS is added for this model).
        assert_eq!(
            lm.tokenizer.decode(&got, false),
            text,
            "round trip of {text:?}"
        );
    }
    assert!(
        failures.is_empty(),
        "{} of 44 differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn chat_template_renders_the_golden_prompts() {
    let lm = load_model();
    let tmpl = lm
        .chat_template
        .as_ref()
        .expect("the default model has a chat template");
    for r in read_jsonl("smollm2_q4_1_greedy.jsonl") {
        let Some(msgs) = r["messages"].as_array() else {
            continue;
        };
        let msgs: Vec<ChatMessage> = msgs
            .iter()
            .map(|m| ChatMessage::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
            .collect();
        let text = tmpl.render(&msgs, true).unwrap();
        assert_eq!(text, r["prompt"].as_str().unwrap());
        assert_eq!(
            lm.tokenizer.encode(&text, true).unwrap(),
            ids(&r["prompt_ids"])
        );
    }
}

#[test]
fn teacher_forced_logprobs_match_llama_cpp() {
    let lm = load_model();
    check_teacher_forced(&lm.model, &read_jsonl("smollm2_q4_1_greedy.jsonl"));
}

#[test]
fn free_running_greedy_matches_llama_cpp_one_at_a_time_and_batched() {
    let lm = load_model();
    let tok = &lm.tokenizer;
    let records = read_jsonl("smollm2_q4_1_greedy.jsonl");
    let prompts: Vec<Vec<u32>> = records.iter().map(|r| ids(&r["prompt_ids"])).collect();
    let stop = &tok.eog_ids;
    let mut singles = Vec::new();
    for (r, p) in records.iter().zip(&prompts) {
        let g = greedy_generate(&lm.model, std::slice::from_ref(p), 48, stop).unwrap();
        assert_matches_golden(r, &g.tokens[0]);
        singles.push(g.tokens[0].clone());
    }
    // All twelve prompts in one flat batch per step give the same tokens as one at a time.
    let batched = greedy_generate(&lm.model, &prompts, 48, stop).unwrap();
    for (i, (a, b)) in singles.iter().zip(&batched.tokens).enumerate() {
        assert_eq!(a, b, "record {i}: batched output differs from single");
    }
}

#[test]
fn end_of_generation_ids_are_those_of_llama_cpp() {
    let lm = load_model();
    assert_eq!(lm.tokenizer.eog_ids, vec![0, 2, 4]);
    assert_eq!(lm.tokenizer.bos_id, Some(1));
    assert_eq!(lm.tokenizer.eos_id, Some(2));
    assert!(!lm.tokenizer.add_bos);
}
