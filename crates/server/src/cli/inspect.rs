//! `ferrolm inspect MODEL`: what a GGUF file or a Hugging Face checkpoint holds, without
//! loading its weights.

#[derive(clap::Args, Debug)]
pub struct InspectArgs {
    /// A GGUF file, a Hugging Face checkpoint folder, or a hub id (ORG/NAME) in the local
    /// Hugging Face cache.
    pub model: String,
    /// A hub id's branch, tag or commit (default: main).
    #[arg(long)]
    pub revision: Option<String>,
}

pub fn run(args: InspectArgs, env: &ferrolm_engine::env::Switches) -> anyhow::Result<()> {
    let hub = &env.hub;
    let report = ferrolm_engine::inspect::inspect(&args.model, args.revision.as_deref(), hub)?;
    print!("{report}");
    Ok(())
}
