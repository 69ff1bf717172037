//! ferrolm's OpenAI-compatible API surface, apart from the engine: the request and response
//! types, the checks a request passes before it reaches the engine, the error type every
//! refusal takes, and the server-sent-events framing of streams. Candle-free, so the fuzz
//! targets build it alone.

pub mod error;
pub mod messages;
pub mod openai;
pub mod reasoning;
pub mod responses;
pub mod sse;
pub mod structured;
pub mod tool_parsers;
pub mod tools;
pub mod validate;

pub use error::ApiError;
