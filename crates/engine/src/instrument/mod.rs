//! Instruments inside the hot path that cost nothing when off: the per-stage step profile
//! (FERROLM_PROFILE), layer dumps for comparing with llama.cpp (FERROLM_DUMP_DIR), and the
//! row type the GPU checks report.

mod check;
mod dump;
pub mod profile;

pub use check::CheckRow;
pub use dump::dump;
pub use profile::Marks;
