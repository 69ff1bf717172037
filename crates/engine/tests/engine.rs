//! The engine thread on the real default model: batch invariance (one at a time, all at
//! once, under preemption, with and without prefix caching), aborts and refusals.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{collect, ids, load_model, read_jsonl, start_engine};
use ferrolm_engine::config::{EngineConfig, PrefillCap};
use ferrolm_engine::engine::EngineHandle;
use ferrolm_engine::request::FinishReason;
use ferrolm_engine::sampling::SamplingParams;
use ferrolm_engine::tokenizer::ChatMessage;

const MAX_TOKENS: usize = 20;

/// The 12 golden prompts plus 4 chat prompts that share the template's system block.
fn prompts() -> Vec<Vec<u32>> {
    let lm = load_model();
    let tmpl = lm.chat_template.as_ref().unwrap();
    let mut out: Vec<Vec<u32>> = read_jsonl("smollm2_q4_1_greedy.jsonl")
        .iter()
        .map(|r| ids(&r["prompt_ids"]))
        .collect();
    for q in [
        "Name a color.",
        "What is 2 + 2?",
        "Say hello in Spanish.",
        "What is rust?",
    ] {
        let text = tmpl.render(&[ChatMessage::new("user", q)], true).unwrap();
        out.push(lm.tokenizer.encode(&text, true).unwrap());
    }
    assert_eq!(out.len(), 16);
    out
}

fn start(cfg: EngineConfig) -> EngineHandle {
    start_engine(cfg)
}

fn params() -> SamplingParams {
    SamplingParams {
        max_tokens: MAX_TOKENS,
        ..Default::default()
    }
}

fn run_all_at_once(engine: &EngineHandle, prompts: &[Vec<u32>]) -> Vec<Vec<u32>> {
    let rxs: Vec<_> = prompts
        .iter()
        .map(|p| engine.add_request(p.clone(), params()).unwrap().1)
        .collect();
    rxs.into_iter().map(|rx| collect(rx).tokens).collect()
}

fn small_cfg() -> EngineConfig {
    EngineConfig {
        max_model_len: Some(512),
        ..Default::default()
    }
}

/// A second chat turn whose prompt holds the first turn's answer: with prefix caching it
/// gets the same tokens and the same log-probs, bit for bit, as on an engine that has
/// cached nothing (the answer's blocks were computed as generated rows, a prompt's rows are
/// computed in llama.cpp's prompt order: they must not be reused as prompt).
#[test]
fn a_later_turn_reusing_an_answer_equals_a_cold_run() {
    let first = prompts()[12].clone();
    let with_logprobs = SamplingParams {
        max_tokens: 12,
        logprobs: Some(1),
        ..Default::default()
    };
    let turn = |engine: &EngineHandle, p: &[u32]| {
        let mut rx = engine
            .add_request(p.to_vec(), with_logprobs.clone())
            .unwrap()
            .1;
        let mut out = Vec::new();
        while let Some(o) = rx.blocking_recv() {
            out.extend(o.logprobs.iter().map(|l| (l.token_id, l.logprob.to_bits())));
            if o.finished.is_some() {
                break;
            }
        }
        out
    };
    let engine = start(small_cfg());
    let answer: Vec<u32> = collect(
        engine
            .add_request(
                first.clone(),
                SamplingParams {
                    max_tokens: 40,
                    ignore_eos: true,
                    ..Default::default()
                },
            )
            .unwrap()
            .1,
    )
    .tokens;
    let mut second = first.clone();
    second.extend(&answer);
    second.extend(&first[first.len() - 6..]);
    let warm = turn(&engine, &second);
    assert!(
        engine.stats.get(&engine.stats.prefix_cache_hits) > 0,
        "the first turn's prompt is reused"
    );
    drop(engine);
    let cold = turn(&start(small_cfg()), &second);
    assert_eq!(warm, cold);
}

#[test]
fn batch_invariance_alone_together_preempted_and_prefix_cached() {
    let prompts = prompts();
    // One at a time.
    let engine = start(small_cfg());
    let alone: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| collect(engine.add_request(p.clone(), params()).unwrap().1).tokens)
        .collect();
    assert!(alone.iter().all(|t| !t.is_empty()));
    // Shared system block: later chat prompts hit the prefix cache.
    assert!(
        engine.stats.get(&engine.stats.prefix_cache_hits) > 0,
        "no prefix-cache hits"
    );
    drop(engine);

    // All at once on a fresh engine with `cfg`: the same tokens as one at a time. The engine
    // is handed back for the checks of its own stats.
    let all_at_once_equals_alone = |cfg: EngineConfig, differs: &str| {
        let engine = start(cfg);
        assert_eq!(run_all_at_once(&engine, &prompts), alone, "{differs}");
        engine
    };

    // All at once, prefix caching on.
    drop(all_at_once_equals_alone(
        small_cfg(),
        "all at once differs from one at a time",
    ));

    // All at once with prefix caching off.
    let engine = all_at_once_equals_alone(
        EngineConfig {
            enable_prefix_caching: false,
            ..small_cfg()
        },
        "prefix caching off differs",
    );
    assert_eq!(engine.stats.get(&engine.stats.prefix_cache_hits), 0);
    drop(engine);

    // All at once with prompts fed 24 tokens a step (the CPU server's prefill cap, smaller).
    drop(all_at_once_equals_alone(
        EngineConfig {
            max_batch_prefill_tokens: PrefillCap::Tokens(24),
            ..small_cfg()
        },
        "a prefill cap differs",
    ));

    // All at once in a pool so small that requests must be preempted and recomputed.
    let engine = all_at_once_equals_alone(
        EngineConfig {
            max_model_len: Some(128),
            num_blocks_override: Some(12),
            max_num_batched_tokens: Some(64),
            ..Default::default()
        },
        "preempted run differs",
    );
    assert!(
        engine.stats.get(&engine.stats.num_preemptions) > 0,
        "expected preemptions"
    );
    assert_eq!(engine.stats.kv_usage(), 0.0);
}

#[test]
fn abort_frees_blocks_within_a_step_and_impossible_prompts_are_refused() {
    let engine = start(small_cfg());
    let p = prompts()[6].clone();
    let (id, mut rx) = engine
        .add_request(
            p,
            SamplingParams {
                max_tokens: 400,
                ignore_eos: true,
                ..Default::default()
            },
        )
        .unwrap();
    // Wait for the first token, then abort.
    let first = rx.blocking_recv().unwrap();
    assert!(first.finished.is_none());
    assert!(engine.stats.kv_usage() > 0.0);
    engine.abort(id);
    let t0 = Instant::now();
    loop {
        match rx.blocking_recv() {
            Some(o) if o.finished == Some(FinishReason::Abort) => break,
            Some(_) => continue,
            None => panic!("stream closed without an abort"),
        }
    }
    while engine.stats.kv_usage() > 0.0 && t0.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(engine.stats.kv_usage(), 0.0, "blocks not freed after abort");
    assert_eq!(engine.stats.get(&engine.stats.num_running), 0);

    // A prompt as long as the context can never run: refused, not queued.
    let err = engine.add_request(vec![504; 512], params()).unwrap_err();
    assert!(err.to_string().contains("512"), "{err}");
    assert!(engine.add_request(vec![], params()).is_err());
    assert_eq!(engine.stats.get(&engine.stats.num_waiting), 0);

    // A dropped receiver is aborted by the engine at its next token: one token generated,
    // not 400.
    let generated_before = engine.stats.get(&engine.stats.generation_tokens);
    let (_, rx) = engine
        .add_request(
            prompts()[0].clone(),
            SamplingParams {
                max_tokens: 400,
                ignore_eos: true,
                ..Default::default()
            },
        )
        .unwrap();
    drop(rx);
    // Until the engine has run it (its first token counted) and freed it; 60 s is a bound
    // against a hang, not a speed check.
    let generated = || engine.stats.get(&engine.stats.generation_tokens) - generated_before;
    let t0 = Instant::now();
    while (generated() == 0
        || engine.stats.kv_usage() > 0.0
        || engine.stats.get(&engine.stats.num_running) > 0)
        && t0.elapsed() < Duration::from_secs(60)
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        engine.stats.kv_usage(),
        0.0,
        "a dropped stream kept its blocks"
    );
    let generated = generated();
    assert_eq!(
        generated, 1,
        "the dropped stream ran on for {generated} tokens"
    );
}

#[test]
fn a_pool_that_cannot_hold_one_sequence_is_refused_at_start() {
    let lm = load_model();
    let err = EngineHandle::start(
        lm.model,
        Arc::new(lm.tokenizer),
        EngineConfig {
            max_model_len: Some(1024),
            num_blocks_override: Some(10),
            ..Default::default()
        },
    )
    .err()
    .expect("a 10-block pool cannot hold 1024 tokens");
    assert!(err.to_string().contains("blocks"), "{err}");
}

#[test]
fn engine_greedy_equals_the_plain_runner_and_reports_usage() {
    let lm = load_model();
    let p = prompts()[0].clone();
    let want = ferrolm_engine::engine::greedy_generate(
        &lm.model,
        std::slice::from_ref(&p),
        MAX_TOKENS,
        &lm.tokenizer.eog_ids,
    )
    .unwrap()
    .tokens
    .remove(0);
    let engine = EngineHandle::start(lm.model, Arc::new(lm.tokenizer), small_cfg()).unwrap();
    let (_, mut rx) = engine.add_request(p.clone(), params()).unwrap();
    let mut toks = Vec::new();
    let mut text = String::new();
    let last = loop {
        let o = rx.blocking_recv().unwrap();
        toks.extend(&o.new_token_ids);
        text.push_str(&o.text);
        if o.finished.is_some() {
            break o;
        }
    };
    assert_eq!(toks, want);
    assert_eq!(last.finished, Some(FinishReason::Length));
    assert_eq!(last.usage.prompt_tokens, p.len());
    assert_eq!(last.usage.completion_tokens, MAX_TOKENS);
    assert_eq!(text, engine.tokenizer.decode(&toks, true));
    assert!(text.starts_with(" Paris"), "{text}");
    assert_eq!(
        engine.stats.get(&engine.stats.generation_tokens),
        MAX_TOKENS as u64
    );
    assert_eq!(
        engine.stats.get(&engine.stats.prompt_tokens),
        p.len() as u64
    );
}
