//! The engine loop on its own OS thread, and the handle the server talks to it through.
//! Nothing but the engine thread touches the scheduler, the KV cache or the model.
//! `core.rs` is the server's step (schedule, then `step.rs`'s execute -> choose -> update, the
//! one step every loop drives), `output.rs` what each request hears, `kv_sizing.rs` how big the cache is, `offline.rs` the same loop over token ids.

mod core;
mod handle;
mod kv_sizing;
mod offline;
mod output;
mod stats;
mod step;

pub use self::core::EngineCore;
pub use handle::EngineHandle;
pub use kv_sizing::kv_blocks;
pub use offline::{
    generate_offline, greedy_generate, random_prompts, Generation, OfflineReport, OfflineSampling,
};
pub use output::{RequestOutput, Usage};
pub use stats::EngineStats;
