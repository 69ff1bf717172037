//! Sampling: the parameters a vLLM user sends, the logits processing they ask for, seeded
//! draws that do not depend on the batch, log-probs, and stop strings.

#[cfg(feature = "cuda")]
mod device;
#[cfg(feature = "cuda")]
mod device_checks;
mod logits;
mod logprobs;
mod params;
mod rng;
mod sampler;
pub mod select;
mod stop;

#[cfg(feature = "cuda")]
pub use device::sample_on_device;
#[cfg(feature = "cuda")]
pub use device_checks::sampling_checks;
pub use logits::{argmax, log_softmax_rows};
pub use logprobs::{top_logprobs, TokenLogprob};
pub use params::{SamplingParams, MAX_LOGPROBS};
pub use rng::draw_uniform;
pub use sampler::{apply_penalties_and_bias, sample_token, Sampled};
pub use stop::StopStringMatcher;
