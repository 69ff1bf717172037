//! Stop strings over a stream of text deltas: a match may span tokens; the stop string and
//! what follows it are cut; text that could be the start of a stop string is held back so a
//! stream never shows part of one.

#[derive(Debug, Clone, Default)]
pub struct StopStringMatcher {
    stops: Vec<String>,
    /// Text received but not yet released (it may begin a stop string).
    held: String,
}

impl StopStringMatcher {
    pub fn new(stops: Vec<String>) -> Self {
        Self {
            stops,
            held: String::new(),
        }
    }

    /// Adds a delta. Returns the text safe to release and whether a stop string matched
    /// (then the released text ends just before it).
    pub fn push(&mut self, delta: &str) -> (String, bool) {
        if self.stops.is_empty() {
            return (delta.to_string(), false);
        }
        self.held.push_str(delta);
        // The earliest complete match wins.
        let hit = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min();
        if let Some(pos) = hit {
            let out = self.held[..pos].to_string();
            self.held.clear();
            return (out, true);
        }
        // Hold back the longest suffix that is a proper prefix of some stop string.
        let mut keep = 0;
        for s in &self.stops {
            for (i, _) in s.char_indices().skip(1) {
                if self.held.ends_with(&s[..i]) {
                    keep = keep.max(i);
                }
            }
        }
        let cut = self.held.len() - keep;
        let out = self.held[..cut].to_string();
        self.held.drain(..cut);
        (out, false)
    }

    /// The stream ended without a match: release what was held.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], deltas: &[&str]) -> (Vec<String>, bool, String) {
        let mut m = StopStringMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = Vec::new();
        for d in deltas {
            let (t, hit) = m.push(d);
            out.push(t);
            if hit {
                return (out, true, String::new());
            }
        }
        let tail = m.flush();
        (out, false, tail)
    }

    #[test]
    fn stop_split_across_two_tokens_is_cut_and_never_shown() {
        let (out, hit, _) = run(&["\n\n"], &["Paris.", "\n", "\nThe"]);
        assert!(hit);
        assert_eq!(out, vec!["Paris.", "", ""]);
        assert_eq!(out.concat(), "Paris.");
    }

    #[test]
    fn held_text_is_released_when_it_turns_out_not_to_stop() {
        let (out, hit, tail) = run(&["STOP"], &["go ST", "OP?", "x"]);
        assert!(hit);
        assert_eq!(out.concat(), "go ");
        let (out, hit, tail2) = run(&["STOP"], &["go ST", "ART", " now S"]);
        assert!(!hit);
        assert_eq!(out.concat() + &tail2, "go START now S");
        assert_eq!(tail, "");
    }

    #[test]
    fn stop_starting_with_a_multibyte_character() {
        // The detokenizer only ever hands over whole characters; a stop string that starts
        // with "é" matches across deltas.
        let (out, hit, _) = run(&["égal"], &["c'est ", "é", "ga", "l à"]);
        assert!(hit);
        assert_eq!(out.concat(), "c'est ");
    }

    #[test]
    fn earliest_of_several_stops_wins() {
        let (out, hit, _) = run(&["b", "abc"], &["xxabc"]);
        assert!(hit);
        assert_eq!(out.concat(), "xx");
    }
}
