//! What decides a request's tokens and when it stops.

use crate::error::InvalidParam;
use crate::structured::StructuredOutput;

#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    pub max_tokens: usize,
    pub min_tokens: usize,
    pub ignore_eos: bool,
    pub stop_token_ids: Vec<u32>,
    /// Stop strings: generation ends when one appears; it is cut from the text unless
    /// `include_stop_str_in_output` (vLLM's field).
    pub stop: Vec<String>,
    pub include_stop_str_in_output: bool,
    /// 0 means greedy.
    pub temperature: f32,
    /// 0 (or a value >= the vocabulary) means no top-k cut.
    pub top_k: usize,
    pub top_p: f32,
    pub min_p: f32,
    pub repetition_penalty: f32,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    pub logit_bias: Vec<(u32, f32)>,
    /// Seeds this request's draws; the same seed gives the same tokens in any batch.
    pub seed: Option<u64>,
    /// Log-probs of the chosen token plus this many alternatives per generated token.
    pub logprobs: Option<usize>,
    /// Log-probs of each prompt token plus this many alternatives.
    pub prompt_logprobs: Option<usize>,
    pub skip_special_tokens: bool,
    /// The grammar the output must follow (compiled by [`crate::engine::EngineHandle::validate`]).
    pub structured: Option<StructuredOutput>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            max_tokens: 16,
            min_tokens: 0,
            ignore_eos: false,
            stop_token_ids: Vec::new(),
            stop: Vec::new(),
            include_stop_str_in_output: false,
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logit_bias: Vec::new(),
            seed: None,
            logprobs: None,
            prompt_logprobs: None,
            skip_special_tokens: true,
            structured: None,
        }
    }
}

/// The most alternatives a request may ask for, as vLLM's default `max_logprobs`.
pub const MAX_LOGPROBS: usize = 20;

impl SamplingParams {
    /// Greedy with nothing that reads or changes the logits row on the host (penalties,
    /// bias, log-probs, a pending min_tokens): the argmax may be taken on the GPU.
    pub fn is_plain_greedy(&self, generated: usize) -> bool {
        self.temperature == 0.0
            && self.logit_bias.is_empty()
            && self.repetition_penalty == 1.0
            && self.presence_penalty == 0.0
            && self.frequency_penalty == 0.0
            && self.logprobs.is_none()
            && self.prompt_logprobs.is_none()
            && self.structured.is_none()
            && generated >= self.min_tokens
    }

    pub fn greedy(max_tokens: usize) -> Self {
        Self {
            max_tokens,
            ..Default::default()
        }
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature < 1e-5 || self.top_k == 1
    }

    /// Checks ranges as vLLM does; the error names the field. The one check of a request's
    /// parameters (through [`crate::engine::EngineHandle::validate`]).
    pub fn check(&self, vocab_size: usize) -> std::result::Result<(), InvalidParam> {
        let bad = |param: &'static str, m: String| Err(InvalidParam::new(param, m));
        // A value in [lo, hi] (or (lo, hi] when `open_low`); NaN is in no range.
        let within = |param: &'static str, v: f32, lo: f32, hi: f32, open_low: bool| {
            let ok = (if open_low { v > lo } else { v >= lo }) && v <= hi;
            let bracket = if open_low { "(" } else { "[" };
            match ok {
                true => Ok(()),
                false => bad(
                    param,
                    format!("{param} must be in {bracket}{lo}, {hi}], got {v}"),
                ),
            }
        };
        within("temperature", self.temperature, 0.0, 100.0, false)?;
        within("top_p", self.top_p, 0.0, 1.0, true)?;
        within("min_p", self.min_p, 0.0, 1.0, false)?;
        within(
            "repetition_penalty",
            self.repetition_penalty,
            0.0,
            100.0,
            true,
        )?;
        within("presence_penalty", self.presence_penalty, -2.0, 2.0, false)?;
        within(
            "frequency_penalty",
            self.frequency_penalty,
            -2.0,
            2.0,
            false,
        )?;
        if self.top_k > vocab_size {
            return bad(
                "top_k",
                format!(
                    "top_k must be at most the vocabulary size {vocab_size}, got {}",
                    self.top_k
                ),
            );
        }
        if self.max_tokens == 0 {
            return bad("max_tokens", "max_tokens must be at least 1".into());
        }
        if self.min_tokens > self.max_tokens {
            return bad(
                "min_tokens",
                format!(
                    "min_tokens ({}) must not exceed max_tokens ({})",
                    self.min_tokens, self.max_tokens
                ),
            );
        }
        for &(t, b) in &self.logit_bias {
            if t as usize >= vocab_size {
                return bad(
                    "logit_bias",
                    format!("logit_bias has token id {t}, outside the vocabulary of {vocab_size}"),
                );
            }
            if !(-100.0..=100.0).contains(&b) {
                return bad(
                    "logit_bias",
                    format!("logit_bias values must be in [-100, 100], got {b}"),
                );
            }
        }
        if let Some(&t) = self
            .stop_token_ids
            .iter()
            .find(|&&t| t as usize >= vocab_size)
        {
            return bad(
                "stop_token_ids",
                format!("stop_token_ids has {t}, outside the vocabulary of {vocab_size}"),
            );
        }
        for (param, v) in [
            ("logprobs", self.logprobs),
            ("prompt_logprobs", self.prompt_logprobs),
        ] {
            if let Some(n) = v.filter(|&n| n > MAX_LOGPROBS) {
                return bad(
                    param,
                    format!("{param} must be at most {MAX_LOGPROBS}, got {n}"),
                );
            }
        }
        if self.stop.iter().any(|s| s.is_empty()) {
            return bad("stop", "stop strings must not be empty".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every out-of-range field is refused with its own (OpenAI) name, and the edges of each
    /// range are accepted.
    #[test]
    fn check_names_the_field_out_of_range() {
        let vocab = 100;
        let p = SamplingParams::default;
        let cases: Vec<(&str, SamplingParams)> = vec![
            (
                "temperature",
                SamplingParams {
                    temperature: -0.1,
                    ..p()
                },
            ),
            (
                "temperature",
                SamplingParams {
                    temperature: f32::NAN,
                    ..p()
                },
            ),
            (
                "temperature",
                SamplingParams {
                    temperature: 100.5,
                    ..p()
                },
            ),
            ("top_p", SamplingParams { top_p: 0.0, ..p() }),
            ("top_p", SamplingParams { top_p: 1.01, ..p() }),
            (
                "top_k",
                SamplingParams {
                    top_k: vocab + 1,
                    ..p()
                },
            ),
            ("min_p", SamplingParams { min_p: -0.5, ..p() }),
            ("min_p", SamplingParams { min_p: 1.5, ..p() }),
            (
                "repetition_penalty",
                SamplingParams {
                    repetition_penalty: 0.0,
                    ..p()
                },
            ),
            (
                "repetition_penalty",
                SamplingParams {
                    repetition_penalty: 101.0,
                    ..p()
                },
            ),
            (
                "presence_penalty",
                SamplingParams {
                    presence_penalty: 2.5,
                    ..p()
                },
            ),
            (
                "frequency_penalty",
                SamplingParams {
                    frequency_penalty: -2.5,
                    ..p()
                },
            ),
            (
                "max_tokens",
                SamplingParams {
                    max_tokens: 0,
                    ..p()
                },
            ),
            (
                "min_tokens",
                SamplingParams {
                    min_tokens: 17,
                    ..p()
                },
            ),
            (
                "logit_bias",
                SamplingParams {
                    logit_bias: vec![(vocab as u32, 1.0)],
                    ..p()
                },
            ),
            (
                "logit_bias",
                SamplingParams {
                    logit_bias: vec![(3, 101.0)],
                    ..p()
                },
            ),
            (
                "stop_token_ids",
                SamplingParams {
                    stop_token_ids: vec![vocab as u32],
                    ..p()
                },
            ),
            (
                "logprobs",
                SamplingParams {
                    logprobs: Some(MAX_LOGPROBS + 1),
                    ..p()
                },
            ),
            (
                "prompt_logprobs",
                SamplingParams {
                    prompt_logprobs: Some(MAX_LOGPROBS + 1),
                    ..p()
                },
            ),
            (
                "stop",
                SamplingParams {
                    stop: vec![String::new()],
                    ..p()
                },
            ),
        ];
        for (field, params) in cases {
            let err = params.check(vocab).expect_err(field);
            assert_eq!(err.param, field, "{params:?}: {}", err.message);
            assert!(err.message.contains(field), "{}", err.message);
        }
        let edges = SamplingParams {
            temperature: 100.0,
            top_p: 1.0,
            top_k: vocab,
            min_p: 1.0,
            repetition_penalty: 100.0,
            presence_penalty: -2.0,
            frequency_penalty: 2.0,
            min_tokens: 16,
            logit_bias: vec![(vocab as u32 - 1, -100.0)],
            stop_token_ids: vec![vocab as u32 - 1],
            logprobs: Some(MAX_LOGPROBS),
            prompt_logprobs: Some(0),
            stop: vec!["x".into()],
            ..p()
        };
        assert_eq!(edges.check(vocab), Ok(()));
    }
}
