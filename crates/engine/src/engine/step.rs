//! The step every generation loop runs (the server's engine, offline benches, greedy
//! reference generation): lay the scheduled requests out as one flat batch, execute it,
//! choose each sampling request's token, and let the scheduler take the results. Callers
//! differ only in how they choose tokens and what they do with the events.

use std::ops::Range;

use crate::error::Result;
use crate::request::{Request, RequestId};
use crate::sampling::select::SampleSpec;
use crate::sampling::TokenLogprob;
use crate::scheduler::{ScheduledRequest, Scheduler, SchedulerOutput, StepEvent};
use crate::worker::ModelRunner;

/// What the step's execution left on the host.
pub(crate) enum StepLogits {
    /// f32 logits rows `[row][vocab]` (the rows `build_batch` asked for).
    Host(Vec<Vec<f32>>),
    /// Only the greedy token of each row (on a GPU the argmax runs there).
    Greedy(Vec<u32>),
    /// Only each row's token (and its log-probs where asked), drawn by the device sampler
    /// (`StepMode::Sampled`).
    Sampled(Vec<(u32, Option<TokenLogprob>)>),
}

impl StepLogits {
    /// The token of the last row of `range`, when this step samples it: the greedy one, or
    /// the device sampler's draw.
    pub fn last_token(&self, s: &ScheduledRequest, range: &Range<usize>) -> Option<u32> {
        if !s.samples || range.is_empty() {
            return None;
        }
        match self {
            Self::Greedy(ids) => ids.get(range.end - 1).copied(),
            Self::Sampled(rows) => rows.get(range.end - 1).map(|r| r.0),
            Self::Host(rows) => rows.get(range.end - 1).map(|r| crate::sampling::argmax(r)),
        }
    }

    /// The device sampler's log-probs for the last row of `range`, if it computed them.
    pub fn last_logprobs(&self, range: &Range<usize>) -> Option<TokenLogprob> {
        match self {
            Self::Sampled(rows) if !range.is_empty() => rows.get(range.end - 1)?.1.clone(),
            _ => None,
        }
    }
}

/// Where a step's tokens are chosen.
pub(crate) enum StepMode<'a> {
    /// Logits rows to the host (each request chooses there).
    Host,
    /// Only greedy ids (plain greedy requests).
    Greedy,
    /// Each sampling row drawn away from the host as its request's spec says.
    Sampled(&'a (dyn Fn(&Request) -> SampleSpec + Sync)),
}

/// Executes the scheduled step `out`: logits rows to the host, greedy ids or the device
/// sampler's draws as `mode` says; `choose(request, scheduled, its rows, logits)` gives each request's choice (or
/// none), `token` its token id (if it sampled one). With host logits the requests choose in parallel (rayon:
/// each choice depends only on its own request, so the results do not depend on the
/// threads). Returns the scheduler's events (new tokens, finishes) and the choices.
pub(crate) fn execute_step<C: Send>(
    scheduler: &mut Scheduler,
    runner: &mut ModelRunner<'_>,
    out: &SchedulerOutput,
    mode: StepMode<'_>,
    choose: impl Fn(&Request, &ScheduledRequest, Range<usize>, &StepLogits) -> Option<C> + Sync,
    token: impl Fn(&C) -> Option<u32>,
) -> Result<(Vec<StepEvent>, Vec<(RequestId, C)>)> {
    use rayon::prelude::*;
    // On the CPU the other workers poll through the step instead of sleeping between its
    // parallel regions (each wake-up costs ~10 us).
    let _warm = (!runner.on_gpu())
        .then(crate::worker::WarmWorkers::start)
        .flatten();
    let (batch, rows) = scheduler.build_batch(out);
    let sched = &*scheduler;
    let logits = match mode {
        StepMode::Host => StepLogits::Host(runner.execute(&batch)?.to_vec2::<f32>()?),
        StepMode::Greedy => StepLogits::Greedy(runner.execute_greedy(&batch)?),
        StepMode::Sampled(spec) => {
            // One spec per logits row: a sampling request's last row, argmax elsewhere.
            let mut specs = Vec::with_capacity(rows.last().map_or(0, |r| r.end));
            for (s, range) in out.scheduled.iter().zip(&rows) {
                for row in range.clone() {
                    let last = s.samples && row + 1 == range.end;
                    specs.push(match sched.request(s.id) {
                        Some(req) if last => spec(req),
                        _ => SampleSpec::unused(),
                    });
                }
            }
            StepLogits::Sampled(runner.execute_sampled(&batch, &specs)?)
        }
    };
    let one = |(s, range): (&ScheduledRequest, Range<usize>)| {
        sched
            .request(s.id)
            .and_then(|req| choose(req, s, range, &logits))
    };
    let work: Vec<_> = out.scheduled.iter().zip(rows).collect();
    let chosen: Vec<Option<C>> = match &logits {
        StepLogits::Host(_) if work.len() > 1 => work.into_par_iter().map(one).collect(),
        _ => work.into_iter().map(one).collect(),
    };
    let sampled: Vec<Option<u32>> = chosen.iter().map(|c| c.as_ref().and_then(&token)).collect();
    let events = scheduler.update(out, &sampled);
    let choices = out
        .scheduled
        .iter()
        .zip(chosen)
        .filter_map(|(s, c)| c.map(|c| (s.id, c)))
        .collect();
    Ok((events, choices))
}
