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

fn step(
    s: &mut Scheduler,
    cfg: &SchedulerConfig,
    partial: &PartialPrefills,
) -> Result<(), TestCaseError> {
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
    // Prompts part-way through their prefill: at most max_num_partial_prefills, and of them
    // at most max_long_partial_prefills long ones (when prompts share steps).
    let threshold = s.long_prefill_threshold();
    let left: Vec<usize> = s
        .running()
        .iter()
        .map(|r| r.tokens.len() - r.num_computed)
        .filter(|&n| n > 1)
        .collect();
    prop_assert!(
        left.len() <= partial.max_num_partial_prefills,
        "{} partial prefills: {:?}",
        left.len(),
        left
    );
    if partial.max_num_partial_prefills > 1 {
        let long = left.iter().filter(|&&n| n > threshold).count();
        prop_assert!(
            long <= partial.max_long_partial_prefills,
            "{} long partial prefills (threshold {}): {:?}",
            long,
            threshold,
            left
        );
    }
    Ok(())
}

fn partial_prefills() -> impl Strategy<Value = PartialPrefills> {
    (1usize..5, 1usize..3, proptest::option::of(1usize..64)).prop_map(|(n, long, t)| {
        PartialPrefills {
            max_num_partial_prefills: n,
            max_long_partial_prefills: long,
            long_prefill_token_threshold: t,
        }
    })
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
        partial in partial_prefills(),
    ) {
        let max_model_len = (num_blocks * block_size).min(96);
        let cfg = SchedulerConfig {
            max_num_seqs,
            max_num_batched_tokens,
            max_model_len,
            max_batch_prefill_tokens,
        };
        let kv = KvCacheManager::new(num_blocks, block_size, caching);
        let mut s = Scheduler::new(cfg.clone(), kv, vec![2])
            .unwrap()
            .with_partial_prefills(partial)
            .unwrap();
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
                Op::Step => step(&mut s, &cfg, &partial)?,
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
            step(&mut s, &cfg, &partial)?;
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
        let sampled = fake_sampled(&out);
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

/// One step with fake tokens; returns the requests that sampled their first token.
fn run_step(s: &mut Scheduler) -> (SchedulerOutput, Vec<u64>) {
    let out = s.schedule();
    let first: Vec<u64> = out
        .scheduled
        .iter()
        .filter(|r| r.samples && s.request(r.id).is_some_and(|q| q.num_output() == 0))
        .map(|r| r.id)
        .collect();
    let sampled = fake_sampled(&out);
    s.update(&out, &sampled);
    s.kv.check_invariants().unwrap();
    (out, first)
}

/// A token for every sampling request of a step ([`fake_token`]).
fn fake_sampled(out: &SchedulerOutput) -> Vec<Option<u32>> {
    out.scheduled
        .iter()
        .map(|r| {
            r.samples
                .then(|| fake_token(r.id, r.start + r.num_new_tokens))
        })
        .collect()
}

/// The CPU server's step: 256 tokens, at most 128 of them prompt tokens; room for
/// `max_model_len`-token requests.
fn cpu_scheduler(max_model_len: usize, partial: PartialPrefills) -> Scheduler {
    let cfg = SchedulerConfig {
        max_num_seqs: 16,
        max_num_batched_tokens: 256,
        max_model_len,
        max_batch_prefill_tokens: Some(128),
    };
    let kv = KvCacheManager::new(16 * max_model_len / 16, 16, true);
    Scheduler::new(cfg, kv, vec![2])
        .unwrap()
        .with_partial_prefills(partial)
        .unwrap()
}

fn prompt(id: u64, len: usize) -> Vec<u32> {
    (0..len)
        .map(|i| 1000 + (id as u32 * 131 + i as u32) % 3000)
        .collect()
}

fn params(max_tokens: usize) -> SamplingParams {
    SamplingParams {
        max_tokens,
        ignore_eos: true,
        ..Default::default()
    }
}

/// Steps (counting from 1) until each of `ids` samples its first token, at most `limit`.
fn steps_to_first_token(s: &mut Scheduler, ids: &[u64], limit: usize) -> Vec<Option<usize>> {
    let mut at = vec![None; ids.len()];
    for step in 1..=limit {
        let (_, first) = run_step(s);
        for (slot, id) in at.iter_mut().zip(ids) {
            if first.contains(id) {
                *slot = Some(step);
            }
        }
        if at.iter().all(Option::is_some) {
            break;
        }
    }
    at
}

#[test]
fn a_short_prompt_is_not_starved_by_a_long_prefill() {
    // Issue 18, item 8: a 4-token request sent while a 2,000-token prompt is prefilled in
    // 128-token chunks waited for all of them.
    let mut s = cpu_scheduler(4096, PartialPrefills::default());
    s.add_request(Request::new(0, prompt(0, 2000), params(8)))
        .unwrap();
    for _ in 0..3 {
        let (out, _) = run_step(&mut s);
        assert_eq!(
            out.num_tokens(),
            128,
            "a lone long prompt takes the whole cap"
        );
    }
    s.add_request(Request::new(1, prompt(1, 4), params(8)))
        .unwrap();
    let (out, first) = run_step(&mut s);
    assert_eq!(
        first,
        vec![1],
        "the short prompt's first token, the step after it arrived"
    );
    assert_eq!(
        out.num_tokens(),
        128,
        "the long prompt takes the rest: {out:?}"
    );
    // The long prompt loses no step: 2,000 tokens in 16 steps of 128, as alone.
    let at = steps_to_first_token(&mut s, &[0], 20);
    assert_eq!(at, vec![Some(12)]);
}

#[test]
fn one_partial_prefill_queues_the_short_prompt_behind_the_long_one() {
    // max_num_partial_prefills = 1 is first come, first served (vLLM's default).
    let fcfs = PartialPrefills {
        max_num_partial_prefills: 1,
        ..Default::default()
    };
    let mut s = cpu_scheduler(4096, fcfs);
    s.add_request(Request::new(0, prompt(0, 2000), params(8)))
        .unwrap();
    for _ in 0..3 {
        run_step(&mut s);
    }
    s.add_request(Request::new(1, prompt(1, 4), params(8)))
        .unwrap();
    assert_eq!(
        steps_to_first_token(&mut s, &[0, 1], 20),
        vec![Some(13), Some(13)]
    );
}

#[test]
fn short_prompts_pass_a_waiting_long_one_and_long_ones_go_oldest_first() {
    let mut s = cpu_scheduler(4096, PartialPrefills::default());
    s.add_request(Request::new(0, prompt(0, 600), params(4)))
        .unwrap();
    run_step(&mut s);
    // A second long prompt, then a burst of short ones behind it.
    s.add_request(Request::new(1, prompt(1, 600), params(4)))
        .unwrap();
    for id in 2..5 {
        s.add_request(Request::new(id, prompt(id, 20), params(4)))
            .unwrap();
    }
    let (out, first) = run_step(&mut s);
    assert_eq!(first, vec![2, 3, 4], "{out:?}");
    assert_eq!(out.num_tokens(), 128);
    assert!(
        out.scheduled.iter().all(|r| r.id != 1),
        "the second long prompt waits for the first: {out:?}"
    );
    // The first long prompt still finishes first; the second starts as it ends.
    let at = steps_to_first_token(&mut s, &[0, 1], 20);
    assert_eq!(at, vec![Some(4), Some(8)], "{at:?}");
}

#[test]
fn parallel_samples_of_a_long_prompt_start_together() {
    // n = 8 of a 300-token prompt: the first computes it in 128-token chunks, the others
    // adopt its blocks and start in the step it finishes (as without sharing).
    let mut s = cpu_scheduler(1024, PartialPrefills::default());
    let p = prompt(0, 300);
    for id in 0..8 {
        s.add_request(Request::new(id, p.clone(), params(4)))
            .unwrap();
    }
    let ids: Vec<u64> = (0..8).collect();
    let at = steps_to_first_token(&mut s, &ids, 10);
    assert_eq!(at, vec![Some(3); 8], "{at:?}");
}

#[test]
fn running_decodes_are_not_squeezed_out_by_an_older_prompt() {
    // A step of 64 tokens, no prompt cap: the long prompt, admitted first, must leave room
    // for the decodes of the requests that started after it.
    let cfg = SchedulerConfig {
        max_num_seqs: 8,
        max_num_batched_tokens: 64,
        max_model_len: 1024,
        max_batch_prefill_tokens: None,
    };
    let kv = KvCacheManager::new(512, 16, true);
    let mut s = Scheduler::new(cfg, kv, vec![2]).unwrap();
    s.add_request(Request::new(0, prompt(0, 900), params(4)))
        .unwrap();
    run_step(&mut s);
    for id in 1..4 {
        s.add_request(Request::new(id, prompt(id, 4), params(8)))
            .unwrap();
    }
    let (_, first) = run_step(&mut s);
    assert_eq!(first, vec![1, 2, 3]);
    for _ in 0..5 {
        let (out, _) = run_step(&mut s);
        let decodes = out.scheduled.iter().filter(|r| r.id != 0).count();
        assert_eq!(decodes, 3, "{out:?}");
        assert_eq!(out.num_tokens(), 64, "the prompt takes the rest: {out:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    /// Long prompts (one long prefill at a time) and short prompts arriving one by one: each
    /// short prompt samples its first token within 2 steps of arriving, and everything ends.
    #[test]
    fn short_prompts_start_within_two_steps(
        longs in proptest::collection::vec(100usize..1200, 1..4),
        shorts in proptest::collection::vec((3usize..12, 1usize..=64), 1..6),
        cap in 16usize..160,
        max_num_partial_prefills in 2usize..6,
    ) {
        let partial = PartialPrefills {
            max_num_partial_prefills,
            ..Default::default()
        };
        let max_model_len = 1300;
        let cfg = SchedulerConfig {
            max_num_seqs: 16,
            max_num_batched_tokens: cap + 16,
            max_model_len,
            max_batch_prefill_tokens: Some(cap),
        };
        let kv = KvCacheManager::new(16 * max_model_len / 4, 4, false);
        let mut s = Scheduler::new(cfg, kv, vec![2]).unwrap().with_partial_prefills(partial).unwrap();
        let mut work = 0;
        for (id, &len) in longs.iter().enumerate() {
            s.add_request(Request::new(id as u64, prompt(id as u64, len), params(4))).unwrap();
            work += len;
        }
        let mut id = longs.len() as u64;
        for &(gap, len) in &shorts {
            for _ in 0..gap {
                run_step(&mut s);
            }
            // Short: within one step's prompt tokens, a long prompt's floor apart.
            let len = len.min(cap / max_num_partial_prefills).max(1);
            s.add_request(Request::new(id, prompt(id, len), params(4))).unwrap();
            work += len;
            let at = steps_to_first_token(&mut s, &[id], 2);
            prop_assert!(at[0].is_some(), "short prompt {} of {} tokens waited over 2 steps", id, len);
            id += 1;
        }
        let mut steps = 0;
        while s.has_work() {
            run_step(&mut s);
            steps += 1;
            prop_assert!(steps <= work / cap + 8 * (longs.len() + shorts.len()), "not finished after {} steps", steps);
        }
    }
}

/// The case the property above found (longs 553, 104, 100; a 30-token prompt after 4 steps;
/// a 123-token pool in 2 partial slots): in the step the first long prompt finishes, the
/// next long one must not take the step's tokens from the short prompt that just arrived.
#[test]
fn a_short_prompt_arriving_as_a_long_one_finishes_starts_at_once() {
    let (cap, max_num_partial_prefills) = (123usize, 2usize);
    let partial = PartialPrefills {
        max_num_partial_prefills,
        ..Default::default()
    };
    let cfg = SchedulerConfig {
        max_num_seqs: 16,
        max_num_batched_tokens: cap + 16,
        max_model_len: 1300,
        max_batch_prefill_tokens: Some(cap),
    };
    let kv = KvCacheManager::new(16 * 1300 / 4, 4, false);
    let mut s = Scheduler::new(cfg, kv, vec![2])
        .unwrap()
        .with_partial_prefills(partial)
        .unwrap();
    for (id, &len) in [553usize, 104, 100].iter().enumerate() {
        s.add_request(Request::new(id as u64, prompt(id as u64, len), params(4)))
            .unwrap();
    }
    for _ in 0..4 {
        run_step(&mut s);
    }
    s.add_request(Request::new(3, prompt(3, 30), params(4)))
        .unwrap();
    let (_, first) = run_step(&mut s);
    assert_eq!(
        first,
        vec![0, 3],
        "the finishing long prompt and the short one sample"
    );
}
