//! The engine loop on its own OS thread, and the handle the server talks to it through.
//! Nothing but the engine thread touches the scheduler, the KV cache or the model.

mod core;
mod handle;
mod offline;
mod stats;

pub use self::core::EngineCore;
pub use handle::{
    available_cores, compute_pool, EngineConfig, EngineHandle, RequestOutput, StepObserver, Usage,
};
pub use offline::{generate_offline, random_prompts, OfflineReport};
pub use stats::EngineStats;
