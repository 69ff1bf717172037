//! Grammars compiled once per text: llguidance's parser factory over the model's
//! tokenizer, a bounded cache of compiled grammars (a new request with the same schema
//! copies the compiled parser), and the limits that keep compilation cheap.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use llguidance::{Matcher, ParserFactory, TokenParser};

use super::matcher::GrammarMatcher;
use super::spec::{GrammarSpec, JsonLayout};
use super::tok_env::tok_env;
use crate::tokenizer::Tokenizer;

/// Bounds on what a request may ask a grammar to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrammarLimits {
    /// Bytes of a schema, regex, grammar or the choices together (`--max-grammar-bytes`).
    pub max_bytes: usize,
    /// Compiled grammars kept for reuse.
    pub cache_entries: usize,
    /// llguidance's bound on a grammar's size (symbols in productions).
    pub max_grammar_size: usize,
    /// llguidance's fuel for building the lexer (about 50k a millisecond).
    pub initial_lexer_fuel: u64,
}

impl Default for GrammarLimits {
    fn default() -> Self {
        Self {
            max_bytes: 64 * 1024,
            cache_entries: 256,
            max_grammar_size: 200_000,
            // ~100 ms of lexer construction at most.
            initial_lexer_fuel: 5_000_000,
        }
    }
}

/// A grammar that does not compile, or is over the limits.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct GrammarError(pub String);

/// Compiles request grammars against one model's tokenizer.
pub struct GrammarCompiler {
    factory: ParserFactory,
    limits: GrammarLimits,
    cache: Mutex<Lru>,
}

impl GrammarCompiler {
    /// For `tokenizer`, with logits rows `vocab_size` wide.
    pub fn new(
        tokenizer: Arc<Tokenizer>,
        vocab_size: usize,
        limits: GrammarLimits,
    ) -> Result<Self, GrammarError> {
        let env = tok_env(tokenizer, vocab_size);
        let mut factory =
            ParserFactory::new_simple(&env).map_err(|e| GrammarError(e.to_string()))?;
        factory.quiet();
        let l = factory.limits_mut();
        l.max_grammar_size = limits.max_grammar_size;
        l.initial_lexer_fuel = limits.initial_lexer_fuel;
        l.verbose_errors = false;
        Ok(Self {
            factory,
            limits,
            cache: Mutex::new(Lru::default()),
        })
    }

    pub fn limits(&self) -> &GrammarLimits {
        &self.limits
    }

    /// A matcher at the start of `spec`'s grammar.
    pub fn compile(
        &self,
        spec: &GrammarSpec,
        layout: &JsonLayout,
    ) -> Result<GrammarMatcher, GrammarError> {
        let key = spec.cache_key(layout);
        if key.len() > self.limits.max_bytes {
            return Err(GrammarError(format!(
                "the {} is {} bytes; the limit is {} (--max-grammar-bytes)",
                spec.kind(),
                key.len(),
                self.limits.max_bytes
            )));
        }
        if matches!(spec, GrammarSpec::Choice(c) if c.is_empty()) {
            return Err(GrammarError("no choices to pick from".into()));
        }
        if let Some(parser) = self.cached(&key) {
            return Ok(GrammarMatcher::new(Matcher::new(Ok(parser))));
        }
        let parser = self
            .factory
            .create_parser(spec.to_grammar(layout))
            .map_err(|e| GrammarError(first_line(&e.to_string())))?;
        if let Ok(mut c) = self.cache.lock() {
            c.insert(key, parser.deep_clone(), self.limits.cache_entries);
        }
        Ok(GrammarMatcher::new(Matcher::new(Ok(parser))))
    }

    fn cached(&self, key: &str) -> Option<TokenParser> {
        self.cache.lock().ok()?.get(key).map(|p| p.deep_clone())
    }
}

/// llguidance's errors can carry the whole grammar after their first line.
fn first_line(s: &str) -> String {
    let line = s.lines().next().unwrap_or(s);
    line.chars().take(500).collect()
}

/// Least recently used compiled parsers, by key.
#[derive(Default)]
struct Lru {
    map: HashMap<String, TokenParser>,
    order: VecDeque<String>,
}

impl Lru {
    fn get(&mut self, key: &str) -> Option<&TokenParser> {
        let pos = self.order.iter().position(|k| k == key)?;
        if let Some(k) = self.order.remove(pos) {
            self.order.push_back(k);
        }
        self.map.get(key)
    }

    fn insert(&mut self, key: String, parser: TokenParser, cap: usize) {
        if cap == 0 {
            return;
        }
        if self.map.insert(key.clone(), parser).is_none() {
            self.order.push_back(key);
        }
        while self.order.len() > cap {
            if let Some(old) = self.order.pop_front() {
                self.map.remove(&old);
            }
        }
    }
}
