//! Structured outputs: a request's grammar (a JSON schema, any JSON object, a regex, a
//! choice of strings, a Lark grammar) compiled by llguidance against the model's tokenizer;
//! each step the request's matcher masks the tokens the grammar does not allow before
//! sampling, and moves on with the sampled one.

mod compiler;
mod matcher;
mod spec;
mod tok_env;

pub use compiler::{GrammarCompiler, GrammarError, GrammarLimits};
pub use matcher::GrammarMatcher;
pub use spec::{GrammarSpec, JsonLayout, StructuredOutput};
