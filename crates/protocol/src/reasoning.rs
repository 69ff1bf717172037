//! `--reasoning-parser`: models that think in `<think>…</think>` before answering get the
//! thinking split into `reasoning` (vLLM's field; `reasoning_content`, its former name, is sent
//! too) and the answer into `content`, whole or streamed.
//! - `qwen3`: an output that opens with `<think>` thinks until `</think>` (all of it, if cut
//!   short); any other output is all content (thinking off, `enable_thinking: false`).
//! - `deepseek_r1`: the template opens the thinking, so the output thinks from its start
//!   until `</think>` (all of it, if cut short).

const START: &str = "<think>";
const END: &str = "</think>";

/// A `--reasoning-parser`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReasoningParser {
    Qwen3,
    DeepSeekR1,
}

/// An output split into its thinking and its answer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Split {
    pub reasoning: Option<String>,
    pub content: String,
}

impl ReasoningParser {
    pub const NAMES: [&'static str; 2] = ["qwen3", "deepseek_r1"];

    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "qwen3" => Some(Self::Qwen3),
            "deepseek_r1" => Some(Self::DeepSeekR1),
            _ => None,
        }
    }

    /// Where the thinking starts in `text` (after an opening `<think>`), if it thinks.
    fn thinking_start(self, text: &str) -> Option<usize> {
        let lead = text.len() - text.trim_start().len();
        match self {
            Self::Qwen3 => text[lead..]
                .starts_with(START)
                .then_some(lead + START.len()),
            Self::DeepSeekR1 => Some(if text[lead..].starts_with(START) {
                lead + START.len()
            } else {
                0
            }),
        }
    }

    /// A whole output's thinking and answer.
    pub fn split(self, text: &str) -> Split {
        let Some(start) = self.thinking_start(text) else {
            return Split {
                reasoning: None,
                content: text.to_string(),
            };
        };
        match text[start..].find(END) {
            Some(end) => Split {
                reasoning: Some(text[start..start + end].to_string()),
                content: text[start + end + END.len()..].to_string(),
            },
            None => Split {
                reasoning: Some(text[start..].to_string()),
                content: String::new(),
            },
        }
    }
}

/// The parser over a stream: the pieces add up to [`ReasoningParser::split`] of the whole.
pub struct StreamingReasoning {
    parser: ReasoningParser,
    text: String,
    /// Bytes of `text` already sent (as reasoning or content).
    sent: usize,
}

impl StreamingReasoning {
    pub fn new(parser: ReasoningParser) -> Self {
        Self {
            parser,
            text: String::new(),
            sent: 0,
        }
    }

    /// The reasoning and content this piece adds (each may be empty).
    pub fn push(&mut self, piece: &str) -> (String, String) {
        self.text.push_str(piece);
        self.advance(false)
    }

    /// The rest at the end of the output.
    pub fn finish(&mut self) -> (String, String) {
        self.advance(true)
    }

    fn advance(&mut self, last: bool) -> (String, String) {
        let text = &self.text;
        let trimmed = text.trim_start();
        // Before it is known whether the output opens with `<think>`.
        if self.sent == 0 && !last && START.starts_with(trimmed) && trimmed.len() < START.len() {
            return (String::new(), String::new());
        }
        let Some(start) = self.parser.thinking_start(text) else {
            let c = text[self.sent..].to_string();
            self.sent = text.len();
            return (String::new(), c);
        };
        let from = self.sent.max(start);
        match text[start..].find(END) {
            Some(end) => {
                let end = start + end;
                let r = text.get(from..end).unwrap_or_default().to_string();
                let cstart = (end + END.len()).max(self.sent);
                let c = text[cstart..].to_string();
                self.sent = text.len();
                (r, c)
            }
            None => {
                // Hold back a tail that could begin `</think>`.
                let mut upto = text.len();
                if !last {
                    for k in (1..END.len()).rev() {
                        if text.len() >= k
                            && text.is_char_boundary(text.len() - k)
                            && END.starts_with(&text[text.len() - k..])
                        {
                            upto = text.len() - k;
                            break;
                        }
                    }
                }
                let upto = upto.max(from);
                let r = text[from..upto].to_string();
                self.sent = upto;
                (r, String::new())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_split_as_vllm_does_and_streams_add_up() {
        let cases = [
            (
                ReasoningParser::Qwen3,
                "<think>\nLet me see.\n</think>\n\nParis.",
                Some("\nLet me see.\n"),
                "\n\nParis.",
            ),
            (ReasoningParser::Qwen3, "Paris.", None, "Paris."),
            (
                ReasoningParser::Qwen3,
                "<think>cut sho",
                Some("cut sho"),
                "",
            ),
            (ReasoningParser::Qwen3, "<th", None, "<th"),
            (ReasoningParser::Qwen3, "", None, ""),
            (
                ReasoningParser::DeepSeekR1,
                "Thinking…</think>Answer",
                Some("Thinking…"),
                "Answer",
            ),
            (
                ReasoningParser::DeepSeekR1,
                "<think>a</think>b</think>c",
                Some("a"),
                "b</think>c",
            ),
            (
                ReasoningParser::DeepSeekR1,
                "only thoughts",
                Some("only thoughts"),
                "",
            ),
        ];
        for (p, text, reasoning, content) in cases {
            let whole = p.split(text);
            assert_eq!(whole.reasoning.as_deref(), reasoning, "{p:?} {text:?}");
            assert_eq!(whole.content, content, "{p:?} {text:?}");
            let bounds: Vec<usize> = (0..=text.len())
                .filter(|&i| text.is_char_boundary(i))
                .collect();
            let mut splits: Vec<Vec<&str>> = bounds
                .iter()
                .map(|&i| vec![&text[..i], &text[i..]])
                .collect();
            splits.push(bounds.windows(2).map(|w| &text[w[0]..w[1]]).collect());
            for pieces in splits {
                let mut s = StreamingReasoning::new(p);
                let (mut r, mut c) = (String::new(), String::new());
                for piece in &pieces {
                    let (a, b) = s.push(piece);
                    r += &a;
                    c += &b;
                }
                let (a, b) = s.finish();
                r += &a;
                c += &b;
                assert_eq!(r, reasoning.unwrap_or_default(), "{p:?} {pieces:?}");
                assert_eq!(c, content, "{p:?} {pieces:?}");
            }
        }
    }
}
