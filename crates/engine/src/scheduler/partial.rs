//! How prompts share a step's prompt tokens (vLLM's partial prefills). Without sharing, the
//! oldest prompt takes every prompt token of a step until its prefill is done, so a 4-token
//! request behind a 2,000-token prompt waits for all of its 128-token chunks. With sharing:
//! a short prompt (at most half a step's prompt tokens by default) is never queued behind a
//! long one: it passes long prompts in the queue and takes its tokens before them, while each
//! long prompt keeps at least `1 / max_num_partial_prefills` of the step's prompt tokens.

use crate::config::PartialPrefills;

impl PartialPrefills {
    pub(super) fn check(&self) -> Result<(), String> {
        if self.max_num_partial_prefills == 0
            || self.max_long_partial_prefills == 0
            || self.long_prefill_token_threshold == Some(0)
        {
            return Err("max_num_partial_prefills, max_long_partial_prefills and \
                        long_prefill_token_threshold must be positive"
                .into());
        }
        Ok(())
    }

    /// Whether prompts share steps (more than one partial prefill at a time).
    pub(super) fn shares(&self) -> bool {
        self.max_num_partial_prefills > 1
    }

    /// One step's plan: `pool` prompt tokens to hand out; `running` the tokens left to compute
    /// of each running prompt (in running order) and whether it began long, `waiting` those of
    /// each waiting request
    /// (queue order, not counting the prefix cache), `seats` how many may be admitted.
    pub(super) fn plan(
        &self,
        pool: usize,
        threshold: usize,
        running: impl Iterator<Item = (usize, bool)>,
        waiting: impl Iterator<Item = usize>,
        seats: usize,
    ) -> PrefillPlan {
        let k = self.max_num_partial_prefills;
        let mut plan = PrefillPlan {
            threshold,
            long_chunk: pool,
            sharing: self.shares(),
            max_partial: k,
            max_long: self.max_long_partial_prefills,
            long_starts: 0,
            short_reserve: 0,
        };
        if !plan.sharing {
            return plan;
        }
        // The prompts that share this step: every running one, then the waiting ones that
        // may start, up to k in all.
        let (mut count, mut longs, mut short_tokens) = (0usize, 0usize, 0usize);
        for (left, began_long) in running {
            count += 1;
            if left > threshold || began_long {
                longs += 1;
            } else {
                short_tokens += left;
            }
        }
        let mut admitted = 0;
        for left in waiting {
            if count >= k || admitted >= seats {
                break;
            }
            if left > threshold {
                if longs >= plan.max_long {
                    continue; // waits for a long slot; shorter ones behind it pass
                }
                longs += 1;
                plan.long_starts += 1;
            } else {
                short_tokens += left;
                plan.short_reserve += left;
            }
            count += 1;
            admitted += 1;
        }
        if longs > 0 {
            // Short prompts take what they need; long ones share the rest, each at least 1/k.
            let floor = (pool / k).max(1);
            plan.long_chunk = (pool.saturating_sub(short_tokens) / longs).max(floor);
        }
        plan
    }
}

/// How many prompt tokens each prompt may take in one step.
#[derive(Debug, Clone, Copy)]
pub(super) struct PrefillPlan {
    pub threshold: usize,
    /// Most tokens a long prompt gets this step (short ones: whatever is left).
    pub long_chunk: usize,
    pub sharing: bool,
    pub max_partial: usize,
    pub max_long: usize,
    /// Waiting long prompts planned to start this step.
    pub long_starts: usize,
    /// Tokens of the waiting short prompts planned to start this step: a long prompt that
    /// starts unplanned (a long slot freed during the step) leaves them.
    pub short_reserve: usize,
}

impl PrefillPlan {
    /// The most tokens a prompt with `left` tokens to compute may take this step.
    pub fn cap(&self, left: usize) -> usize {
        if left > self.threshold {
            self.long_chunk
        } else {
            usize::MAX
        }
    }

    pub fn is_long(&self, left: usize) -> bool {
        self.sharing && left > self.threshold
    }
}

/// Prompts left part-way through their prefill after the step being scheduled.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct PartialCount {
    pub all: usize,
    pub long: usize,
}

impl PartialCount {
    /// A prompt that had `left` tokens to compute and stays part-way.
    pub fn add(&mut self, plan: &PrefillPlan, left: usize) {
        self.all += 1;
        if plan.is_long(left) {
            self.long += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(p: PartialPrefills, running: &[usize], waiting: &[usize]) -> PrefillPlan {
        p.plan(
            128,
            128,
            running.iter().map(|&n| (n, n > 128)),
            waiting.iter().copied(),
            8,
        )
    }

    #[test]
    fn a_lone_long_prompt_takes_the_whole_pool() {
        let p = PartialPrefills::default();
        assert_eq!(plan(p, &[2000], &[]).long_chunk, 128);
        // Another long prompt waiting does not share: it waits for the long slot.
        assert_eq!(plan(p, &[2000], &[1500]).long_chunk, 128);
    }

    #[test]
    fn short_prompts_take_what_they_need_and_long_ones_keep_a_floor() {
        let p = PartialPrefills::default();
        assert_eq!(plan(p, &[2000], &[4]).long_chunk, 124);
        // A long prompt waiting for its slot does not stop a short one behind it.
        assert_eq!(plan(p, &[2000], &[1500, 4]).long_chunk, 124);
        // Shorts asking for more than the pool: the long one keeps 128 / 4.
        assert_eq!(plan(p, &[2000], &[100, 100, 100, 100]).long_chunk, 32);
        // Two long slots: the long prompts split what the short ones leave.
        let two = PartialPrefills {
            max_long_partial_prefills: 2,
            ..p
        };
        assert_eq!(plan(two, &[2000], &[1500, 8]).long_chunk, 60);
    }

    #[test]
    fn one_partial_prefill_is_first_come_first_served() {
        let p = PartialPrefills {
            max_num_partial_prefills: 1,
            ..Default::default()
        };
        let pl = plan(p, &[2000], &[4]);
        assert_eq!(pl.long_chunk, 128);
        assert!(!pl.is_long(2000));
        assert!(p.check().is_ok());
        assert!(PartialPrefills {
            max_long_partial_prefills: 0,
            ..p
        }
        .check()
        .is_err());
    }
}
