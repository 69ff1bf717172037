//! Shared by the integration tests: the real default model and the golden fixtures.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ferrolm_engine::config::EngineConfig;
use ferrolm_engine::engine::{EngineHandle, RequestOutput};
use ferrolm_engine::env::Switches;
use ferrolm_engine::loader::{default_model_path, LoadedModel};
use ferrolm_engine::model::LlamaModel;
use ferrolm_engine::request::FinishReason;
use ferrolm_engine::sampling::argmax;
use ferrolm_engine::worker::teacher_forced_logprobs;
use serde_json::Value;

/// The default model's path (`FERROLM_TEST_MODEL` overrides). `make test` fetches it first;
/// a missing model is a failure with the command that fixes it, never a silent skip.
pub fn model_path() -> PathBuf {
    let p = std::env::var("FERROLM_TEST_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|_| default_model_path(&Switches::from_env().model_dir));
    assert!(
        p.exists(),
        "the default model is missing at {}: run models/fetch-default.sh (make test does)",
        p.display()
    );
    p
}

/// Gemma 3 270M, `models/fetch-gemma3.sh`'s file (`FERROLM_GEMMA3_MODEL` overrides). `make
/// test` fetches it first; a missing model is a failure with the command that fixes it.
pub fn gemma3_path() -> PathBuf {
    let p = std::env::var("FERROLM_GEMMA3_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            Switches::from_env()
                .model_dir
                .join("gemma-3-270m-q4_k_m.gguf")
        });
    assert!(
        p.exists(),
        "Gemma 3 270M is missing at {}: run models/fetch-gemma3.sh (make test does)",
        p.display()
    );
    p
}

pub fn load_model() -> LoadedModel {
    LoadedModel::load(model_path(), &candle_core::Device::Cpu).expect("loading the default model")
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/golden")
        .join(name)
}

pub fn read_jsonl(name: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(fixture(name)).expect("fixture");
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("fixture line is JSON"))
        .collect()
}

pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("array of ids")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

/// The golden records' prompts.
pub fn golden_prompts() -> Vec<Vec<u32>> {
    read_jsonl("smollm2_q4_1_greedy.jsonl")
        .iter()
        .map(|r| ids(&r["prompt_ids"]))
        .collect()
}

/// The engine thread on the default model.
pub fn start_engine(cfg: EngineConfig) -> EngineHandle {
    let lm = load_model();
    EngineHandle::start(lm.model, Arc::new(lm.tokenizer), cfg).unwrap()
}

/// A request's outputs to its end.
pub struct Done {
    pub tokens: Vec<u32>,
    pub text: String,
    pub finish: FinishReason,
    pub outputs: Vec<RequestOutput>,
}

/// Reads a request's stream to its finish.
pub fn collect(mut rx: tokio::sync::mpsc::UnboundedReceiver<RequestOutput>) -> Done {
    let mut outputs = Vec::new();
    while let Some(o) = rx.blocking_recv() {
        let f = o.finished;
        outputs.push(o);
        if let Some(finish) = f {
            return Done {
                tokens: outputs
                    .iter()
                    .flat_map(|o| o.new_token_ids.clone())
                    .collect(),
                text: outputs.iter().map(|o| o.text.as_str()).collect(),
                finish,
                outputs,
            };
        }
    }
    panic!("stream ended without a finish");
}

/// Steps whose golden top-1/top-2 margin is below this are near-ties: two correct engines
/// may pick differently there.
pub const MARGIN: f64 = 0.3;
/// Share of steps whose chosen-token log-prob must be within 0.15 of llama.cpp's (the
/// issue's bar; on the default model the CPU backend reproduces llama.cpp's arithmetic and
/// measures 100%).
pub const CHOSEN_WITHIN_FLOOR: f64 = 0.99;

/// The golden token ids of a record, the end-of-generation id included when it stopped.
pub fn golden_targets(r: &Value) -> Vec<u32> {
    let mut t = ids(&r["completion_ids"]);
    if let Some(e) = r["eog_id"].as_u64() {
        t.push(e as u32);
    }
    t
}

/// Teacher-forced log-probs against llama.cpp's records (calibrated on llama.cpp itself): argmax
/// equal wherever its margin is >= 0.3, the chosen token within 0.15 at >= 99% of steps, the
/// median |delta| over its top 5 <= 0.1.
pub fn check_teacher_forced(model: &LlamaModel, records: &[Value]) {
    check_teacher_forced_with(model, records, CHOSEN_WITHIN_FLOOR, 0)
}

/// [`check_teacher_forced`] with a floor for the share of chosen tokens within 0.15 and a
/// number of argmax differences allowed at margins >= 0.3 (a model on which llama.cpp's own
/// code paths differ that much).
pub fn check_teacher_forced_with(
    model: &LlamaModel,
    records: &[Value],
    chosen_within_floor: f64,
    argmax_flips_allowed: usize,
) {
    let mut chosen_deltas = Vec::new();
    let mut top5_deltas = Vec::new();
    let mut argmax_failures = Vec::new();
    for r in records {
        let prompt = ids(&r["prompt_ids"]);
        let targets = golden_targets(r);
        let steps = r["steps"].as_array().unwrap();
        assert_eq!(steps.len(), targets.len(), "record {}", r["id"]);
        let lp = teacher_forced_logprobs(model, &prompt, &targets).unwrap();
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
        argmax_failures.len() <= argmax_flips_allowed,
        "{} steps with margin >= {MARGIN} pick another token:\n{}",
        argmax_failures.len(),
        argmax_failures.join("\n")
    );
    assert!(
        within >= chosen_within_floor,
        "only {:.2}% of steps within 0.15",
        within * 100.0
    );
    assert!(median <= 0.1, "median top-5 |Δ logprob| {median}");
}

/// Greedy output equals llama.cpp's up to the first near-tie (margin < 0.3).
pub fn assert_matches_golden(r: &Value, got: &[u32]) {
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
