//! Property tests of the scheduler and the KV cache manager together, over random sequences
//! of add / step / abort (and the finishes that steps produce).

use proptest::prelude::*;

use super::*;
use crate::kv_cache::KvCacheManager;
use crate::request::Request;
use crate::sampling::SamplingParams;

#[derive(Debug, Clone)]
enum Op {
    Add {
        prompt_len: usize,
        max_tokens: usize,
        shared_prefix: bool,
    },
    Step,
    Abort(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1usize..48, 1usize..24, any::<bool>()).prop_map(|(prompt_len, max_tokens, shared_prefix)| Op::Add { prompt_len, max_tokens, shared_prefix }),
        6 => Just(Op::Step),
        1 => (0usize..64).prop_map(Op::Abort),
    ]
}

/// A stand-in for the model: a deterministic token that is never an end-of-generation id.
fn fake_token(id: u64, len: usize) -> u32 {
    10 + ((id as usize * 31 + len * 7) % 500) as u32
}

fn step(s: &mut Scheduler, cfg: &SchedulerConfig) -> Result<(), TestCaseError> {
    let out = s.schedule();
    prop_assert!(
        out.num_tokens() <= cfg.max_num_batched_tokens,
        "token budget exceeded"
    );
    prop_assert!(s.num_running() <= cfg.max_num_seqs, "max_num_seqs exceeded");
    if let Some(cap) = cfg.max_batch_prefill_tokens {
        let prefill: usize = out
            .scheduled
            .iter()
            .filter(|r| r.num_new_tokens > 1)
            .map(|r| r.num_new_tokens)
            .sum();
        prop_assert!(
            prefill <= cap,
            "prefill budget exceeded: {} > {}",
            prefill,
            cap
        );
    }
    let mut ids: Vec<u64> = out.scheduled.iter().map(|r| r.id).collect();
    ids.sort_unstable();
    ids.dedup();
    prop_assert_eq!(
        ids.len(),
        out.scheduled.len(),
        "a request scheduled twice in a step"
    );
    let (batch, rows) = s.build_batch(&out);
    prop_assert_eq!(rows.len(), out.scheduled.len());
    prop_assert_eq!(batch.num_tokens(), out.num_tokens());
    // Every slot the batch writes is unique and inside the pool.
    let mut slots = batch.slot_mapping.clone();
    slots.sort_unstable();
    slots.dedup();
    prop_assert_eq!(
        slots.len(),
        batch.slot_mapping.len(),
        "two tokens share a KV slot"
    );
    let sampled: Vec<Option<u32>> = out
        .scheduled
        .iter()
        .map(|r| {
            let len = s.request(r.id).map(|q| q.tokens.len()).unwrap_or(0);
            r.samples.then(|| fake_token(r.id, len))
        })
        .collect();
    s.update(&out, &sampled);
    s.kv.check_invariants().map_err(TestCaseError::fail)?;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, .. ProptestConfig::default() })]

    #[test]
    fn scheduler_and_kv_invariants_hold(
        ops in proptest::collection::vec(op(), 1..120),
        num_blocks in 6usize..40,
        block_size in prop_oneof![Just(2usize), Just(4), Just(16)],
        max_num_seqs in 1usize..8,
        max_num_batched_tokens in 8usize..96,
        max_batch_prefill_tokens in proptest::option::of(1usize..64),
        caching in any::<bool>(),
    ) {
        let max_model_len = (num_blocks * block_size).min(96);
        let cfg = SchedulerConfig {
            max_num_seqs,
            max_num_batched_tokens,
            max_model_len,
            max_batch_prefill_tokens,
        };
        let kv = KvCacheManager::new(num_blocks, block_size, caching);
        let mut s = Scheduler::new(cfg.clone(), kv, vec![2]).unwrap();
        let mut next_id = 0u64;
        let mut live: Vec<u64> = Vec::new();
        let mut work = 0usize;
        for op in ops {
            match op {
                Op::Add { prompt_len, max_tokens, shared_prefix } => {
                    let prompt: Vec<u32> = (0..prompt_len)
                        .map(|i| if shared_prefix { 100 + i as u32 } else { 1000 + (next_id as u32 * 97 + i as u32) % 3000 })
                        .collect();
                    let params = SamplingParams { max_tokens, ..Default::default() };
                    match s.add_request(Request::new(next_id, prompt, params)) {
                        Ok(()) => {
                            live.push(next_id);
                            work += prompt_len + max_tokens;
                        }
                        Err(_) => prop_assert!(prompt_len >= max_model_len),
                    }
                    next_id += 1;
                }
                Op::Step => step(&mut s, &cfg)?,
                Op::Abort(k) => {
                    if !live.is_empty() {
                        let id = live[k % live.len()];
                        s.abort(id);
                        s.kv.check_invariants().map_err(TestCaseError::fail)?;
                    }
                }
            }
        }
        // Arrivals stop: everything finishes within 2 x sum(prompt + max_tokens) steps.
        let mut steps = 0;
        while s.has_work() {
            step(&mut s, &cfg)?;
            steps += 1;
            prop_assert!(steps <= 2 * work.max(1), "not finished after {} steps", steps);
        }
        prop_assert_eq!(s.kv.pool().num_free_blocks(), num_blocks, "blocks leaked");
        prop_assert_eq!(s.kv.num_requests(), 0);
    }
}

#[test]
fn preemption_keeps_generated_tokens_and_recomputes() {
    // Two requests that cannot both hold their blocks: the later one is preempted.
    let cfg = SchedulerConfig {
        max_num_seqs: 4,
        max_num_batched_tokens: 64,
        max_model_len: 16,
        max_batch_prefill_tokens: None,
    };
    let kv = KvCacheManager::new(4, 4, false);
    let mut s = Scheduler::new(cfg.clone(), kv, vec![2]).unwrap();
    let params = SamplingParams {
        max_tokens: 8,
        ..Default::default()
    };
    s.add_request(Request::new(0, vec![5; 7], params.clone()))
        .unwrap();
    s.add_request(Request::new(1, vec![6; 7], params)).unwrap();
    let mut preempted = false;
    let mut finished = 0;
    for _ in 0..100 {
        let out = s.schedule();
        preempted |= !out.preempted.is_empty();
        let sampled: Vec<Option<u32>> = out
            .scheduled
            .iter()
            .map(|r| {
                r.samples
                    .then(|| fake_token(r.id, r.start + r.num_new_tokens))
            })
            .collect();
        finished += s
            .update(&out, &sampled)
            .iter()
            .filter(|e| e.finished.is_some())
            .count();
        s.kv.check_invariants().unwrap();
        if !s.has_work() {
            break;
        }
    }
    assert!(preempted, "expected a preemption");
    assert_eq!(finished, 2);
    assert_eq!(s.kv.pool().num_free_blocks(), 4);
}

#[test]
fn a_prompt_that_cannot_fit_is_refused_and_a_small_pool_is_refused() {
    let cfg = SchedulerConfig {
        max_num_seqs: 4,
        max_num_batched_tokens: 64,
        max_model_len: 16,
        max_batch_prefill_tokens: None,
    };
    assert!(Scheduler::new(cfg.clone(), KvCacheManager::new(3, 4, false), vec![]).is_err());
    // A zero prefill cap would never schedule a prompt: refused.
    let zero_cap = SchedulerConfig {
        max_batch_prefill_tokens: Some(0),
        ..cfg.clone()
    };
    assert!(Scheduler::new(zero_cap, KvCacheManager::new(4, 4, false), vec![]).is_err());
    let mut s = Scheduler::new(cfg, KvCacheManager::new(4, 4, false), vec![]).unwrap();
    assert!(s
        .add_request(Request::new(0, vec![1; 16], SamplingParams::default()))
        .is_err());
    assert!(s
        .add_request(Request::new(1, vec![], SamplingParams::default()))
        .is_err());
}

#[test]
fn parallel_samples_share_prompt_blocks_and_free_them() {
    let cfg = SchedulerConfig {
        max_num_seqs: 8,
        max_num_batched_tokens: 256,
        max_model_len: 64,
        max_batch_prefill_tokens: None,
    };
    let mut s = Scheduler::new(cfg, KvCacheManager::new(32, 4, true), vec![2]).unwrap();
    let prompt: Vec<u32> = (100..118).collect(); // 18 tokens: 4 full blocks + 2
    for i in 0..4 {
        let params = SamplingParams {
            max_tokens: 5,
            ..Default::default()
        };
        s.add_request(Request::new(i, prompt.clone(), params))
            .unwrap();
    }
    let out = s.schedule();
    assert_eq!(out.scheduled.len(), 4);
    // The first child computes the prompt; the others adopt its 4 full blocks.
    let first = s.kv.block_table(0).to_vec();
    for i in 1..4 {
        assert_eq!(
            &s.kv.block_table(i)[..4],
            &first[..4],
            "child {i} does not share"
        );
    }
    for &b in &first[..4] {
        assert_eq!(s.kv.pool().ref_cnt(b), 4);
    }
    s.kv.check_invariants().unwrap();
    let mut steps = 0;
    let mut out = out;
    loop {
        let sampled: Vec<Option<u32>> = out
            .scheduled
            .iter()
            .map(|r| r.samples.then_some(7))
            .collect();
        s.update(&out, &sampled);
        if !s.has_work() {
            break;
        }
        out = s.schedule();
        steps += 1;
        assert!(steps < 50);
    }
    assert_eq!(s.kv.pool().num_free_blocks(), 32);
    s.kv.check_invariants().unwrap();
}
