//! The step every generation loop runs (the server's engine, offline benches, greedy
//! reference generation): lay the scheduled requests out as one flat batch, execute it,
//! choose each sampling request's token, and let the scheduler take the results. Callers
//! differ only in how they choose tokens and what they do with the events.

use std::ops::Range;

use crate::error::Result;
use crate::request::Request;
use crate::scheduler::{ScheduledRequest, Scheduler, SchedulerOutput, StepEvent};
use crate::worker::ModelRunner;

/// What the step's execution left on the host.
pub(crate) enum StepLogits {
    /// f32 logits rows `[row][vocab]` (the rows `build_batch` asked for).
    Host(Vec<Vec<f32>>),
    /// Only the greedy token of each row (on a GPU the argmax runs there).
    Greedy(Vec<u32>),
}

impl StepLogits {
    /// The greedy token of the last row of `range`, when this step samples it.
    pub fn greedy_last(&self, s: &ScheduledRequest, range: &Range<usize>) -> Option<u32> {
        if !s.samples || range.is_empty() {
            return None;
        }
        match self {
            Self::Greedy(ids) => ids.get(range.end - 1).copied(),
            Self::Host(rows) => rows.get(range.end - 1).map(|r| crate::sampling::argmax(r)),
        }
    }
}

/// Executes the scheduled step `out`: logits rows to the host when `host_logits`, else only
/// greedy ids; `choose(request, scheduled, its rows, logits)` gives each request's token (or
/// none); returns the scheduler's events (new tokens, finishes).
pub(crate) fn execute_step(
    scheduler: &mut Scheduler,
    runner: &mut ModelRunner<'_>,
    out: &SchedulerOutput,
    host_logits: bool,
    mut choose: impl FnMut(&Request, &ScheduledRequest, Range<usize>, &StepLogits) -> Option<u32>,
) -> Result<Vec<StepEvent>> {
    let (batch, rows) = scheduler.build_batch(out);
    let logits = if host_logits {
        StepLogits::Host(runner.execute(&batch)?.to_vec2::<f32>()?)
    } else {
        StepLogits::Greedy(runner.execute_greedy(&batch)?)
    };
    let sampled: Vec<Option<u32>> = out
        .scheduled
        .iter()
        .zip(rows)
        .map(|(s, range)| {
            scheduler
                .request(s.id)
                .and_then(|req| choose(req, s, range, &logits))
        })
        .collect();
    Ok(scheduler.update(out, &sampled))
}
