//! SentencePiece vocabularies from GGUF metadata (`tokenizer.ggml.model` "llama": Gemma,
//! Llama 2, Mistral v0.1), encoded the way llama.cpp encodes them (`llm_tokenizer_spm`):
//! special tokens split out first (user-defined ones always, control ones when asked),
//! spaces written as U+2581 (with a leading one where `add_space_prefix` says), then
//! characters merged pairwise, always the adjacent pair whose joined text is the vocabulary
//! entry of highest score (the leftmost of equals), and what is left unmatched spelled out in
//! byte tokens (`<0x41>`).

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use super::gguf_bpe::token_type;

/// SentencePiece's space mark.
pub const SPACE: char = '\u{2581}';

pub struct SpmVocab {
    pieces: Vec<String>,
    scores: Vec<f32>,
    ids: HashMap<String, u32>,
    byte_ids: [Option<u32>; 256],
    /// Special tokens split out of raw text: every kind (control tokens are asked for), and
    /// user-defined ones only (always split out).
    all_specials: Specials,
    user_specials: Specials,
    add_space_prefix: bool,
}

/// A candidate merge of two adjacent symbols.
struct Bigram {
    left: usize,
    right: usize,
    score: f32,
    size: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Bigram {
    /// The heap's top: highest score, then the leftmost (llama.cpp's comparator).
    fn cmp(&self, o: &Self) -> Ordering {
        self.score
            .total_cmp(&o.score)
            .then_with(|| o.left.cmp(&self.left))
    }
}

/// A span of the text being merged (llama.cpp's `llm_symbol`).
#[derive(Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

impl SpmVocab {
    pub fn new(
        pieces: Vec<String>,
        scores: Vec<f32>,
        token_types: &[i64],
        add_space_prefix: bool,
    ) -> Self {
        let mut ids = HashMap::with_capacity(pieces.len());
        let mut byte_ids = [None; 256];
        let mut all = Vec::new();
        let mut user_only = Vec::new();
        for (i, p) in pieces.iter().enumerate() {
            let ty = token_types.get(i).copied().unwrap_or(token_type::NORMAL);
            ids.entry(p.clone()).or_insert(i as u32);
            if ty == token_type::BYTE {
                if let Some(b) = p
                    .strip_prefix("<0x")
                    .and_then(|h| h.strip_suffix('>'))
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    byte_ids[b as usize] = Some(i as u32);
                }
            }
            let user = ty == token_type::USER_DEFINED;
            if (user || ty == token_type::CONTROL || ty == token_type::UNKNOWN) && !p.is_empty() {
                all.push((p.clone(), i as u32));
                if user {
                    user_only.push((p.clone(), i as u32));
                }
            }
        }
        Self {
            pieces,
            scores,
            ids,
            byte_ids,
            all_specials: Specials::new(all),
            user_specials: Specials::new(user_only),
            add_space_prefix,
        }
    }

    /// The bytes a token stands for: its piece with U+2581 as a space, a byte token's byte,
    /// a special token's text.
    pub fn token_bytes(&self, id: usize, ty: i64) -> Vec<u8> {
        let p = &self.pieces[id];
        if ty == token_type::BYTE {
            if let Some(b) = self.byte_ids.iter().position(|&x| x == Some(id as u32)) {
                return vec![b as u8];
            }
        }
        if ty == token_type::NORMAL || ty == token_type::UNUSED {
            return p.replace(SPACE, " ").into_bytes();
        }
        p.as_bytes().to_vec()
    }

    /// Token ids of `text`; `parse_special`: control tokens' text becomes the token.
    pub fn encode(&self, text: &str, parse_special: bool) -> Vec<u32> {
        let mut out = Vec::new();
        let mut prev_special = true;
        for frag in self.partition(text, parse_special) {
            match frag {
                Fragment::Token(id) => {
                    out.push(id);
                    prev_special = true;
                }
                Fragment::Text(t) => {
                    let mut s = String::with_capacity(t.len() + 3);
                    if self.add_space_prefix && prev_special {
                        s.push(' ');
                    }
                    s.push_str(t);
                    let s = s.replace(' ', &SPACE.to_string());
                    self.encode_piece(&s, &mut out);
                    prev_special = false;
                }
            }
        }
        out
    }

    /// Raw text and special tokens, in order (llama.cpp's `tokenizer_st_partition`, with one
    /// leftmost-longest scan instead of one pass per special token: the same split wherever
    /// special tokens do not overlap in the text, and linear in its length).
    fn partition<'t>(&self, text: &'t str, parse_special: bool) -> Vec<Fragment<'t>> {
        let sp = if parse_special {
            &self.all_specials
        } else {
            &self.user_specials
        };
        let mut frags = Vec::new();
        let mut last = 0;
        if let Some(ac) = &sp.automaton {
            for m in ac.find_iter(text) {
                if m.start() > last {
                    frags.push(Fragment::Text(&text[last..m.start()]));
                }
                frags.push(Fragment::Token(sp.ids[m.pattern().as_usize()]));
                last = m.end();
            }
        }
        if last < text.len() {
            frags.push(Fragment::Text(&text[last..]));
        }
        frags
    }

    fn score_of(&self, s: &str) -> Option<(u32, f32)> {
        let &id = self.ids.get(s)?;
        Some((id, self.scores.get(id as usize).copied().unwrap_or(0.0)))
    }

    /// One fragment (spaces already U+2581), merged as llama.cpp merges it.
    fn encode_piece(&self, text: &str, out: &mut Vec<u32>) {
        if text.is_empty() {
            return;
        }
        let mut syms: Vec<Symbol> = Vec::new();
        for (start, c) in text.char_indices() {
            let i = syms.len();
            syms.push(Symbol {
                start,
                len: c.len_utf8(),
                prev: i.checked_sub(1),
                next: None,
            });
            if i > 0 {
                syms[i - 1].next = Some(i);
            }
        }
        let mut heap = BinaryHeap::new();
        let add =
            |l: Option<usize>, r: Option<usize>, syms: &[Symbol], heap: &mut BinaryHeap<Bigram>| {
                let (Some(l), Some(r)) = (l, r) else { return };
                let (a, b) = (syms[l], syms[r]);
                let span = &text[a.start..a.start + a.len + b.len];
                if let Some((_, score)) = self.score_of(span) {
                    heap.push(Bigram {
                        left: l,
                        right: r,
                        score,
                        size: span.len(),
                    });
                }
            };
        for i in 1..syms.len() {
            add(Some(i - 1), Some(i), &syms, &mut heap);
        }
        while let Some(bg) = heap.pop() {
            let (l, r) = (syms[bg.left], syms[bg.right]);
            // Stale: one side has been merged since.
            if l.len == 0 || r.len == 0 || l.len + r.len != bg.size {
                continue;
            }
            syms[bg.left].len += r.len;
            syms[bg.right].len = 0;
            syms[bg.left].next = r.next;
            if let Some(n) = r.next {
                syms[n].prev = Some(bg.left);
            }
            let left = syms[bg.left];
            add(left.prev, Some(bg.left), &syms, &mut heap);
            add(Some(bg.left), left.next, &syms, &mut heap);
        }
        // Every merge made a token, so a symbol is a token or one character without one,
        // which is spelled in byte tokens (llama.cpp's `resegment`).
        let mut i = Some(0);
        while let Some(k) = i {
            let s = syms[k];
            let span = &text[s.start..s.start + s.len];
            match self.score_of(span) {
                Some((id, _)) => out.push(id),
                None => out.extend(span.bytes().filter_map(|b| self.byte_ids[b as usize])),
            }
            i = s.next;
        }
    }
}

/// A set of special tokens' texts and one automaton that finds them.
struct Specials {
    automaton: Option<aho_corasick::AhoCorasick>,
    ids: Vec<u32>,
}

impl Specials {
    fn new(tokens: Vec<(String, u32)>) -> Self {
        let automaton = aho_corasick::AhoCorasick::builder()
            .match_kind(aho_corasick::MatchKind::LeftmostLongest)
            .build(tokens.iter().map(|(t, _)| t.as_str()))
            .ok()
            .filter(|_| !tokens.is_empty());
        Self {
            automaton,
            ids: tokens.into_iter().map(|(_, id)| id).collect(),
        }
    }
}

enum Fragment<'t> {
    Text(&'t str),
    Token(u32),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vocab() -> SpmVocab {
        let mut pieces: Vec<String> = vec!["<pad>".into(), "<bos>".into(), "<eos>".into()];
        let mut types = vec![token_type::CONTROL; 3];
        let mut scores = vec![0.0; 3];
        for b in 0..=255u8 {
            pieces.push(format!("<0x{b:02X}>"));
            types.push(token_type::BYTE);
            scores.push(0.0);
        }
        for (p, s) in [
            ("▁", -1.0),
            ("h", -2.0),
            ("e", -2.0),
            ("l", -2.0),
            ("o", -2.0),
            ("he", -3.0),
            ("ll", -3.5),
            ("hell", -4.0),
            ("hello", -5.0),
            ("▁hello", -6.0),
            ("<start_of_turn>", 0.0),
        ] {
            pieces.push(p.into());
            types.push(if p.starts_with('<') {
                token_type::USER_DEFINED
            } else {
                token_type::NORMAL
            });
            scores.push(s);
        }
        SpmVocab::new(pieces, scores, &types, false)
    }

    #[test]
    fn merges_by_score_falls_back_to_bytes_and_splits_specials() {
        let v = vocab();
        let id = |p: &str| v.ids[p];
        assert_eq!(v.encode("hello", false), vec![id("hello")]);
        assert_eq!(v.encode(" hello", false), vec![id("▁hello")]);
        // "é" has no piece: its two UTF-8 bytes.
        assert_eq!(
            v.encode("hé", false),
            vec![id("h"), id("<0xC3>"), id("<0xA9>")]
        );
        assert_eq!(
            v.encode("<start_of_turn>hello", false),
            vec![id("<start_of_turn>"), id("hello")]
        );
        // Control tokens' text is text unless asked.
        assert_eq!(v.encode("<eos>", true), vec![2]);
        assert_ne!(v.encode("<eos>", false), vec![2]);
        assert_eq!(
            v.token_bytes(id("▁hello") as usize, token_type::NORMAL),
            b" hello"
        );
        assert_eq!(
            v.token_bytes(id("<0xC3>") as usize, token_type::BYTE),
            vec![0xC3]
        );
    }
}
