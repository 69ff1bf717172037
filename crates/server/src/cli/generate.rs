//! `ferrolm generate`: one prompt, greedy, printed to stdout with a timing line.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use candle_core::Device;
use ferrolm_engine::loader::{default_model_path, LoadedModel};
use ferrolm_engine::runner::greedy_generate;
use ferrolm_engine::tokenizer::ChatMessage;

#[derive(clap::Args, Debug)]
pub struct GenerateArgs {
    /// The prompt text.
    #[arg(long)]
    pub prompt: String,
    /// Render the prompt as a user message through the model's chat template.
    #[arg(long)]
    pub chat: bool,
    /// Maximum number of tokens to generate.
    #[arg(long, default_value_t = 64)]
    pub max_tokens: usize,
    /// Path of a GGUF model file (default: the default model, see models/fetch-default.sh).
    #[arg(long)]
    pub model: Option<PathBuf>,
}

pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let path = args.model.unwrap_or_else(default_model_path);
    let t_load = Instant::now();
    let lm = LoadedModel::load(&path, &Device::Cpu)
        .with_context(|| format!("loading {}", path.display()))?;
    let load_s = t_load.elapsed().as_secs_f64();
    let text = if args.chat {
        let tmpl = lm
            .chat_template
            .as_ref()
            .context("the model has no chat template; drop --chat")?;
        tmpl.render(&[ChatMessage::new("user", args.prompt.clone())], true)?
    } else {
        args.prompt.clone()
    };
    let prompt = lm.tokenizer.encode(&text, args.chat)?;
    if args.prompt.is_empty() || prompt.is_empty() {
        anyhow::bail!("the prompt is empty");
    }
    let tok = &lm.tokenizer;
    let g = greedy_generate(
        &lm.model,
        std::slice::from_ref(&prompt),
        args.max_tokens,
        &|t| tok.is_eog(t),
    )?;
    let out = &g.tokens[0];
    // The first generated token comes out of the prefill step; the rest are decode steps.
    let decode_tokens = out.len().saturating_sub(1);
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{}", tok.decode(out, true))?;
    eprintln!(
        "[{} prompt tokens: {:.1} tok/s · {} generated: {:.1} tok/s decode · load {:.2}s]",
        prompt.len(),
        prompt.len() as f64 / g.prefill_secs.max(1e-9),
        out.len(),
        decode_tokens as f64 / g.decode_secs.max(1e-9),
        load_s
    );
    Ok(())
}
