//! Continuous batching, vLLM v1 style: each step has a token budget and a sequence cap;
//! running requests go first (one decode token or their next prompt chunk), then waiting
//! requests (after a prefix-cache lookup) get what budget remains. Prompts share a step's
//! prompt tokens ([`PartialPrefills`]): a short prompt is not queued behind a long one.

mod partial;
#[allow(clippy::module_inception)]
mod scheduler;

pub use crate::config::PartialPrefills;
pub use scheduler::{ScheduledRequest, Scheduler, SchedulerConfig, SchedulerOutput, StepEvent};

#[cfg(test)]
mod proptests;
