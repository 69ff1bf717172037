//! Stop strings over a stream of text deltas: a match may span tokens; the stop string and
//! what follows it are cut; text that could be the start of a stop string is held back so a
//! stream never shows part of one.

//!
//! The stop strings are one Aho-Corasick automaton over bytes (built once per request), so
//! each delta costs its own length whatever the number and size of the stop strings; the
//! automaton's state also says how much text to hold back (the longest suffix that begins
//! some stop string).

use std::collections::VecDeque;

/// One state of the automaton: a trie node with its failure link.
#[derive(Debug, Clone, Default)]
struct Node {
    /// Outgoing trie edges, sorted by byte.
    edges: Vec<(u8, u32)>,
    /// The state of the longest proper suffix of this node's text that is a trie node.
    fail: u32,
    /// Bytes from the root: the length of the text this state stands for.
    depth: u32,
    /// The longest stop string ending here (this node's, or one its suffixes end), 0 if none.
    longest_match: u32,
}

/// The stop strings as an automaton.
#[derive(Debug, Clone, Default)]
struct Automaton {
    nodes: Vec<Node>,
}

impl Automaton {
    fn new(stops: &[String]) -> Self {
        let mut nodes = vec![Node::default()];
        for s in stops {
            let mut at = 0usize;
            for &b in s.as_bytes() {
                at = match nodes[at].edges.binary_search_by_key(&b, |e| e.0) {
                    Ok(i) => nodes[at].edges[i].1 as usize,
                    Err(i) => {
                        let next = nodes.len();
                        let depth = nodes[at].depth + 1;
                        nodes[at].edges.insert(i, (b, next as u32));
                        nodes.push(Node {
                            depth,
                            ..Node::default()
                        });
                        next
                    }
                };
            }
            nodes[at].longest_match = nodes[at].depth;
        }
        // Failure links breadth first: a node's fail is found from its parent's.
        let mut queue: VecDeque<usize> = nodes[0].edges.iter().map(|e| e.1 as usize).collect();
        while let Some(n) = queue.pop_front() {
            let inherited = nodes[nodes[n].fail as usize].longest_match;
            nodes[n].longest_match = nodes[n].longest_match.max(inherited);
            for (b, child) in nodes[n].edges.clone() {
                let mut f = nodes[n].fail as usize;
                let fail = loop {
                    if let Some(t) = Self::edge(&nodes[f], b) {
                        break t;
                    }
                    if f == 0 {
                        break 0;
                    }
                    f = nodes[f].fail as usize;
                };
                nodes[child as usize].fail = fail;
                queue.push_back(child as usize);
            }
        }
        Self { nodes }
    }

    fn edge(node: &Node, b: u8) -> Option<u32> {
        node.edges
            .binary_search_by_key(&b, |e| e.0)
            .ok()
            .map(|i| node.edges[i].1)
    }

    /// The state after `b` from `state`.
    fn next(&self, mut state: u32, b: u8) -> u32 {
        loop {
            let node = &self.nodes[state as usize];
            if let Some(t) = Self::edge(node, b) {
                return t;
            }
            if state == 0 {
                return 0;
            }
            state = node.fail;
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct StopStringMatcher {
    automaton: Option<Automaton>,
    /// The automaton's state after the text so far.
    state: u32,
    /// Text received but not yet released (it may begin a stop string): always the last
    /// `depth` bytes of the state.
    held: String,
    /// Whether the released text ends with the stop string that matched (vLLM's
    /// `include_stop_str_in_output`) rather than just before it.
    include: bool,
}

impl StopStringMatcher {
    pub fn new(stops: Vec<String>) -> Self {
        let automaton = (!stops.is_empty()).then(|| Automaton::new(&stops));
        Self {
            automaton,
            state: 0,
            held: String::new(),
            include: false,
        }
    }

    /// The same, keeping the matched stop string in the text.
    pub fn including_stop(mut self, include: bool) -> Self {
        self.include = include;
        self
    }

    /// Adds a delta. Returns the text safe to release and whether a stop string matched
    /// (then the released text ends just before it, or with it when including it). Of the
    /// matches complete by the end of the delta, the one that starts first wins.
    pub fn push(&mut self, delta: &str) -> (String, bool) {
        let Some(a) = &self.automaton else {
            return (delta.to_string(), false);
        };
        let base = self.held.len();
        // The first-starting match: (start, end) in `held` after the delta.
        let mut first: Option<(usize, usize)> = None;
        for (i, &b) in delta.as_bytes().iter().enumerate() {
            self.state = a.next(self.state, b);
            let len = a.nodes[self.state as usize].longest_match as usize;
            if len > 0 {
                let (start, end) = (base + i + 1 - len, base + i + 1);
                if first.is_none_or(|(s, _)| start < s) {
                    first = Some((start, end));
                }
            }
        }
        self.held.push_str(delta);
        if let Some((start, end)) = first {
            let cut = if self.include { end } else { start };
            let out = self.held[..cut].to_string();
            self.held.clear();
            self.state = 0;
            return (out, true);
        }
        // Hold back the longest suffix that begins some stop string: the state's depth
        // (a stop string's first byte starts a character, so the cut is on a boundary).
        let keep = a.nodes[self.state as usize].depth as usize;
        let cut = self.held.len() - keep.min(self.held.len());
        let out = self.held[..cut].to_string();
        self.held.drain(..cut);
        (out, false)
    }

    /// The stream ended without a match: release what was held.
    pub fn flush(&mut self) -> String {
        self.state = 0;
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
    fn an_included_stop_string_ends_the_text() {
        // vLLM's include_stop_str_in_output: the text runs through the stop string, split
        // across tokens or not; the first-starting match still wins.
        let run_incl = |stops: &[&str], deltas: &[&str]| {
            let mut m = StopStringMatcher::new(stops.iter().map(|s| s.to_string()).collect())
                .including_stop(true);
            let mut out = String::new();
            for d in deltas {
                let (t, hit) = m.push(d);
                out.push_str(&t);
                if hit {
                    return (out, true);
                }
            }
            out.push_str(&m.flush());
            (out, false)
        };
        assert_eq!(
            run_incl(&["\n\n"], &["Paris.", "\n", "\nThe"]),
            ("Paris.\n\n".into(), true)
        );
        assert_eq!(run_incl(&["."], &["Paris. Then"]), ("Paris.".into(), true));
        assert_eq!(
            run_incl(&["is a", "a b"], &["this is a b"]),
            ("this is a".into(), true)
        );
        assert_eq!(run_incl(&["zz"], &["no stop"]), ("no stop".into(), false));
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

    /// The matcher's answer against the plain definition (earliest start among the matches
    /// complete in the text so far; hold back the longest suffix that begins a stop string),
    /// over random deltas of a small alphabet.
    #[test]
    fn automaton_agrees_with_the_definition() {
        fn naive(stops: &[String], deltas: &[String]) -> (String, bool) {
            let mut held = String::new();
            let mut out = String::new();
            for d in deltas {
                held.push_str(d);
                if let Some(pos) = stops.iter().filter_map(|s| held.find(s.as_str())).min() {
                    out.push_str(&held[..pos]);
                    return (out, true);
                }
            }
            (out + &held, false)
        }
        let mut seed = 7u64;
        let mut pick = |n: usize| (crate::lcg::lcg_next(&mut seed) % n as u64) as usize;
        for _ in 0..3000 {
            let word = |pick: &mut dyn FnMut(usize) -> usize, max: usize| -> String {
                (0..1 + pick(max))
                    .map(|_| ["a", "b", "é"][pick(3)])
                    .collect()
            };
            let stops: Vec<String> = (0..1 + pick(4)).map(|_| word(&mut pick, 4)).collect();
            let deltas: Vec<String> = (0..1 + pick(6)).map(|_| word(&mut pick, 5)).collect();
            let mut m = StopStringMatcher::new(stops.clone());
            let (mut got, mut hit) = (String::new(), false);
            for d in &deltas {
                let (t, h) = m.push(d);
                got.push_str(&t);
                if h {
                    hit = true;
                    break;
                }
            }
            if !hit {
                got.push_str(&m.flush());
            }
            assert_eq!((got, hit), naive(&stops, &deltas), "{stops:?} {deltas:?}");
        }
    }

    /// Many long stop strings that share prefixes: held back while they may still match,
    /// matched when one completes.
    #[test]
    fn many_long_stop_strings_are_matched_by_one_automaton() {
        let stops: Vec<String> = (0..64)
            .map(|i| format!("{i:02}{}", "x".repeat(1000)))
            .collect();
        let mut m = StopStringMatcher::new(stops);
        let text = "42".to_string() + &"x".repeat(999);
        let mut released = String::new();
        for c in text.chars() {
            let (t, hit) = m.push(&c.to_string());
            assert!(!hit);
            released.push_str(&t);
        }
        assert_eq!(released, "", "all of it may still begin a stop string");
        let (t, hit) = m.push("x");
        assert!(hit);
        assert_eq!(t, "");
    }

    #[test]
    fn earliest_of_several_stops_wins() {
        let (out, hit, _) = run(&["b", "abc"], &["xxabc"]);
        assert!(hit);
        assert_eq!(out.concat(), "xx");
    }
}
