//! Whole-model tests against llama.cpp's goldens on the real default model
//! (fixtures/golden/PROVENANCE.md says where they come from and how they are compared).

mod common;

use common::{ids, load_model, read_jsonl};
use ferrolm_engine::engine::greedy_generate;
use ferrolm_engine::sampling::argmax;
use ferrolm_engine::tokenizer::ChatMessage;
use ferrolm_engine::worker::teacher_forced_logprobs;
use serde_json::Value;

/// Steps whose golden top-1/top-2 margin is below this are near-ties: two correct engines
/// may pick differently there.
const MARGIN: f64 = 0.3;
/// Share of steps whose chosen-token log-prob must be within 0.15 of llama.cpp's (the
/// issue's bar; the CPU backend reproduces llama.cpp's arithmetic and measures 100%).
const CHOSEN_WITHIN_FLOOR: f64 = 0.99;

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

/// The golden token ids of a record, the end-of-generation id included when it stopped.
fn golden_targets(r: &Value) -> Vec<u32> {
    let mut t = ids(&r["completion_ids"]);
    if let Some(e) = r["eog_id"].as_u64() {
        t.push(e as u32);
    }
    t
}

#[test]
fn teacher_forced_logprobs_match_llama_cpp() {
    let lm = load_model();
    let records = read_jsonl("smollm2_q4_1_greedy.jsonl");
    let mut chosen_deltas = Vec::new();
    let mut top5_deltas = Vec::new();
    let mut argmax_failures = Vec::new();
    for r in &records {
        let prompt = ids(&r["prompt_ids"]);
        let targets = golden_targets(r);
        let steps = r["steps"].as_array().unwrap();
        assert_eq!(steps.len(), targets.len(), "record {}", r["id"]);
        let lp = teacher_forced_logprobs(&lm.model, &prompt, &targets).unwrap();
        for (i, step) in steps.iter().enumerate() {
            let row = &lp[i];
            let id = step["id"].as_u64().unwrap() as usize;
            let margin = step["margin"].as_f64().unwrap();
            if margin >= MARGIN && argmax(row) as usize != id {
                argmax_failures.push(format!(
                    "record {} step {i}: argmax {} but llama.cpp chose {id} (margin {margin})",
                    r["id"],
                    argmax(row)
                ));
            }
            chosen_deltas.push((row[id] as f64 - step["logprob"].as_f64().unwrap()).abs());
            for e in step["top5"].as_array().unwrap() {
                let tid = e[0].as_u64().unwrap() as usize;
                top5_deltas.push((row[tid] as f64 - e[2].as_f64().unwrap()).abs());
            }
        }
    }
    let within =
        chosen_deltas.iter().filter(|d| **d <= 0.15).count() as f64 / chosen_deltas.len() as f64;
    top5_deltas.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let median = top5_deltas[top5_deltas.len() / 2];
    eprintln!(
        "chosen-token |Δ logprob| <= 0.15 at {:.2}% of {} steps; top-5 median |Δ| {median:.4}, max {:.4}",
        within * 100.0,
        chosen_deltas.len(),
        top5_deltas.last().unwrap()
    );
    assert!(
        argmax_failures.is_empty(),
        "{} steps with margin >= {MARGIN} pick another token:\n{}",
        argmax_failures.len(),
        argmax_failures.join("\n")
    );
    assert!(
        within >= CHOSEN_WITHIN_FLOOR,
        "only {:.2}% of steps within 0.15",
        within * 100.0
    );
    assert!(median <= 0.1, "median top-5 |Δ logprob| {median}");
}

/// Greedy output equals llama.cpp's up to the first near-tie (margin < 0.3).
fn assert_matches_golden(r: &Value, got: &[u32]) {
    let targets = golden_targets(r);
    let steps = r["steps"].as_array().unwrap();
    let cut = steps
        .iter()
        .position(|s| s["margin"].as_f64().unwrap() < MARGIN)
        .unwrap_or(steps.len());
    // The stop token is not in `got`: compare against the completion part.
    let want = &targets[..cut.min(ids(&r["completion_ids"]).len())];
    assert!(
        got.len() >= want.len() && &got[..want.len()] == want,
        "record {}: first {} tokens differ\n  want {want:?}\n  got  {:?}",
        r["id"],
        want.len(),
        &got[..got.len().min(want.len())]
    );
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
