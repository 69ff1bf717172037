//! Shared by the integration tests: the real default model and the golden fixtures.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ferrolm_engine::config::EngineConfig;
use ferrolm_engine::engine::{EngineHandle, RequestOutput};
use ferrolm_engine::loader::{default_model_path, LoadedModel};
use ferrolm_engine::request::FinishReason;
use serde_json::Value;

/// The default model's path (`FERROLM_TEST_MODEL` overrides). `make test` fetches it first;
/// a missing model is a failure with the command that fixes it, never a silent skip.
pub fn model_path() -> PathBuf {
    let p = std::env::var("FERROLM_TEST_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|_| default_model_path());
    assert!(
        p.exists(),
        "the default model is missing at {}: run models/fetch-default.sh (make test does)",
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
