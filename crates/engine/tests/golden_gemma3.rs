//! The second real model, Gemma 3 270M (base, GGUF Q4_K_M: SentencePiece vocabulary, Q4_K /
//! Q5_0 / Q6_K / Q8_0 weights, sliding-window layers), against llama.cpp's goldens
//! (fixtures/golden/PROVENANCE.md), compared as the default model's are.

mod common;

use common::{assert_matches_golden, check_teacher_forced_with, ids, read_jsonl};
use ferrolm_engine::engine::greedy_generate;
use ferrolm_engine::loader::LoadedModel;

fn gemma3() -> LoadedModel {
    LoadedModel::load(common::gemma3_path(), &candle_core::Device::Cpu)
        .expect("loading Gemma 3 270M")
}

#[test]
fn tokenizer_matches_llama_cpp() {
    let lm = gemma3();
    let records = read_jsonl("gemma3_270m_tokenizer.jsonl");
    assert!(records.len() >= 20, "{} records", records.len());
    let bos = lm.tokenizer.bos_id;
    let mut failures = Vec::new();
    for r in &records {
        let text = r["text"].as_str().unwrap();
        let special = r["special"].as_bool().unwrap();
        let want = ids(&r["ids"]);
        let mut want = want;
        let mut got = lm.tokenizer.encode(text, special).unwrap();
        // Records made without BOS: ours always adds Gemma's (unless the text starts with
        // its own, parsed).
        if r["add_bos"].as_bool() == Some(false) && want.first().copied() != bos {
            if got.first().copied() == bos {
                got.remove(0);
            }
        }
        // A literal BOS at the start of a prompt: llama.cpp adds a second (with a warning);
        // we keep one, as vLLM's chat path does (formats/tokenizer/mod.rs).
        if want.len() >= 2 && want[0] == want[1] && Some(want[0]) == bos {
            want.remove(0);
        }
        if got != want {
            failures.push(format!(
                "{} special={special}: {text:?}\n  want {want:?}\n  got  {got:?}",
                r["source"]
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} differ:\n{}",
        failures.len(),
        records.len(),
        failures.join("\n")
    );
}

#[test]
fn teacher_forced_logprobs_match_llama_cpp() {
    let lm = gemma3();
    // Calibrated on llama.cpp itself (PROVENANCE.md): its default build (weights repacked)
    // against these goldens (repacking off) has 97.2% of the chosen tokens within 0.15 and
    // one argmax difference at margin 1.02. ferrolm, every matmul now giving ggml's no-repack
    // bits (quant/ggml_fixture.rs), measures 98.3% and no difference (96.9% and that one
    // difference through candle's matmuls). ggml's f16-table GELU (GGML_GELU_FP16) was tried:
    // top-5 median 0.066 instead of 0.078 but 97.2% and the one difference, and it moves the
    // GGUF fixture off transformers, so the GELU stays f32. The default model's bar (99%) is
    // not met yet; what is left lies outside the matmuls.
    check_teacher_forced_with(
        &lm.model,
        &read_jsonl("gemma3_270m_q4_k_m_greedy.jsonl"),
        0.98,
        0,
    );
}

#[test]
fn free_running_greedy_matches_llama_cpp() {
    let lm = gemma3();
    let records = read_jsonl("gemma3_270m_q4_k_m_greedy.jsonl");
    for r in &records {
        let p = ids(&r["prompt_ids"]);
        let g = greedy_generate(
            &lm.model,
            std::slice::from_ref(&p),
            48,
            &lm.tokenizer.eog_ids,
        )
        .unwrap();
        assert_matches_golden(r, &g.tokens[0]);
    }
}

#[test]
fn special_ids_are_those_of_llama_cpp() {
    let lm = gemma3();
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(common::fixture("gemma3_270m_gguf_metadata.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(lm.tokenizer.bos_id.map(u64::from), meta["bos_id"].as_u64());
    assert_eq!(lm.tokenizer.eos_id.map(u64::from), meta["eos_id"].as_u64());
    assert!(lm.tokenizer.add_bos);
    let eog: Vec<u32> = ids(&meta["eog_ids"]);
    assert_eq!(lm.tokenizer.eog_ids, eog);
}
