//! One request's grammar state: the token mask for its next token, advanced on each
//! sampled token.

use llguidance::api::StopReason;
use llguidance::Matcher;

/// A request's compiled grammar, at its current position.
pub struct GrammarMatcher {
    matcher: Matcher,
}

impl Clone for GrammarMatcher {
    /// An independent copy (its own parser state), as `n` parallel choices need.
    fn clone(&self) -> Self {
        Self {
            matcher: self.matcher.deep_clone(),
        }
    }
}

impl std::fmt::Debug for GrammarMatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrammarMatcher")
            .field("stop_reason", &self.matcher.stop_reason())
            .finish()
    }
}

impl GrammarMatcher {
    pub(crate) fn new(matcher: Matcher) -> Self {
        Self { matcher }
    }

    /// Sets every token the grammar does not allow next to -inf (end-of-generation ids
    /// only where the grammar may end). An error means the grammar cannot go on; the
    /// request must end.
    pub fn mask_logits(&mut self, logits: &mut [f32]) -> Result<(), String> {
        // A complete grammar allows only the end-of-generation ids.
        let mask = self
            .matcher
            .compute_mask_or_eos()
            .map_err(|e| e.to_string())?;
        let mut any = false;
        for (id, l) in logits.iter_mut().enumerate() {
            if mask.is_allowed(id as u32) {
                any |= *l > f32::NEG_INFINITY;
            } else {
                *l = f32::NEG_INFINITY;
            }
        }
        if any {
            Ok(())
        } else {
            Err("no token the grammar allows remains".into())
        }
    }

    /// Moves past the sampled token.
    pub fn advance(&mut self, token: u32) -> Result<(), String> {
        if self.is_finished() {
            // The end-of-generation id the mask allowed: the request ends with it.
            return Ok(());
        }
        self.matcher.consume_token(token).map_err(|e| e.to_string())
    }

    /// Whether the grammar is complete (the next token can only end the output).
    pub fn is_finished(&self) -> bool {
        matches!(
            self.matcher.stop_reason(),
            StopReason::EndOfSentence | StopReason::NoExtension | StopReason::NoExtensionBias
        )
    }

    /// Whether the output so far may end here.
    pub fn is_accepting(&mut self) -> bool {
        self.matcher.is_accepting().unwrap_or(false)
    }
}
