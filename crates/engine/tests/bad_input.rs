//! Bad input gets a clear error, never a panic: missing and truncated model files, empty and
//! over-long prompts.

mod common;

use std::io::Write;

use candle_core::Device;
use common::{load_model, model_path};
use ferrolm_engine::engine::greedy_generate;
use ferrolm_engine::loader::LoadedModel;
use ferrolm_engine::worker::teacher_forced_logprobs;
use ferrolm_engine::EngineError;

fn truncated_copy(len: u64, name: &str) -> std::path::PathBuf {
    let src = std::fs::read(model_path()).unwrap();
    let dir = std::env::temp_dir().join(format!("ferrolm-bad-input-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    let mut f = std::fs::File::create(&p).unwrap();
    f.write_all(&src[..len as usize]).unwrap();
    p
}

fn load_err(path: &std::path::Path) -> String {
    match LoadedModel::load(path, &Device::Cpu) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn missing_model_file_is_a_clear_error() {
    let msg = load_err(std::path::Path::new("/nonexistent/model.gguf"));
    assert!(
        msg.contains("/nonexistent/model.gguf") && msg.contains("no such file"),
        "{msg}"
    );
}

#[test]
fn truncated_in_the_metadata_is_a_clear_error() {
    let p = truncated_copy(1 << 20, "cut-1mb.gguf");
    let msg = load_err(&p);
    assert!(
        msg.contains("cut-1mb.gguf") && msg.contains("truncated"),
        "{msg}"
    );
}

#[test]
fn truncated_in_the_tensor_data_is_a_clear_error() {
    let full = std::fs::metadata(model_path()).unwrap().len();
    let p = truncated_copy(full / 2, "cut-half.gguf");
    let msg = load_err(&p);
    assert!(
        msg.contains("cut-half.gguf") && msg.contains("truncated") && msg.contains("tensor"),
        "{msg}"
    );
}

#[test]
fn not_a_gguf_is_a_clear_error() {
    let dir = std::env::temp_dir();
    let p = dir.join(format!("ferrolm-not-gguf-{}.gguf", std::process::id()));
    std::fs::write(&p, b"hello, this is not a model").unwrap();
    let msg = load_err(&p);
    assert!(msg.contains("not a GGUF file"), "{msg}");
    std::fs::write(&p, b"").unwrap();
    let msg = load_err(&p);
    assert!(msg.contains("truncated"), "{msg}");
}

#[test]
fn empty_and_overlong_prompts_are_errors() {
    let lm = load_model();
    let never: &[u32] = &[];
    match greedy_generate(&lm.model, &[vec![]], 4, never) {
        Err(EngineError::InvalidRequest(m)) => assert!(m.contains("empty"), "{m}"),
        other => panic!("empty prompt: {other:?}"),
    }
    let ctx = lm.max_model_len();
    let long = vec![504u32; ctx + 1];
    match greedy_generate(&lm.model, &[long.clone()], 4, never) {
        Err(e @ EngineError::PromptTooLong { .. }) => {
            let m = e.to_string();
            assert!(
                m.contains(&format!("{}", ctx + 1)) && m.contains(&ctx.to_string()),
                "{m}"
            )
        }
        other => panic!("over-long prompt: {other:?}"),
    }
    assert!(teacher_forced_logprobs(&lm.model, &[], &[1]).is_err());
    // A token id outside the vocabulary is refused, not indexed.
    assert!(greedy_generate(&lm.model, &[vec![1_000_000]], 1, never).is_err());
}
