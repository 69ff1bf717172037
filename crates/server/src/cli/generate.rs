//! `ferrolm generate`: one prompt through the engine, printed to stdout, with a timing line.

use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use ferrolm_engine::config::EngineConfig;
use ferrolm_engine::engine::EngineHandle;
use ferrolm_engine::env::Switches;
use ferrolm_engine::loader::LoadedModel;

use super::model_args::ModelArgs;
use ferrolm_engine::sampling::SamplingParams;
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
    #[command(flatten)]
    pub model: ModelArgs,
    /// 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0.0)]
    pub min_p: f32,
    #[arg(long)]
    pub seed: Option<u64>,
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f32,
    #[arg(long, default_value_t = 0.0)]
    pub presence_penalty: f32,
    #[arg(long, default_value_t = 0.0)]
    pub frequency_penalty: f32,
    /// A stop string (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    #[arg(long, default_value_t = 0)]
    pub min_tokens: usize,
    #[arg(long)]
    pub ignore_eos: bool,
    /// cpu, cuda or auto.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Print the chosen token's log-prob and this many alternatives per token (stderr).
    #[arg(long)]
    pub logprobs: Option<usize>,
}

pub fn run(args: GenerateArgs, env: &Switches) -> anyhow::Result<()> {
    let load = args.model.load_options(&args.device, env)?;
    let t_load = Instant::now();
    let lm = LoadedModel::load_with(&load).with_context(|| format!("loading {}", load.model))?;
    let load_s = t_load.elapsed().as_secs_f64();
    if args.prompt.is_empty() {
        anyhow::bail!("the prompt is empty");
    }
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
    let params = SamplingParams {
        max_tokens: args.max_tokens,
        min_tokens: args.min_tokens,
        ignore_eos: args.ignore_eos,
        stop: args.stop.clone(),
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        min_p: args.min_p,
        repetition_penalty: args.repetition_penalty,
        presence_penalty: args.presence_penalty,
        frequency_penalty: args.frequency_penalty,
        seed: args.seed,
        logprobs: args.logprobs,
        ..Default::default()
    };
    let max_model_len = lm.max_model_len().min(prompt.len() + args.max_tokens + 16);
    let engine = EngineHandle::start(
        lm.model,
        Arc::new(lm.tokenizer),
        EngineConfig {
            max_model_len: Some(max_model_len.max(16)),
            // One sequence: a pool just big enough for it.
            num_blocks_override: Some(max_model_len.max(16).div_ceil(16) + 1),
            switches: env.engine,
            ..Default::default()
        },
    )?;
    let t0 = Instant::now();
    let (_, mut rx) = engine.add_request(prompt.clone(), params)?;
    let mut stdout = std::io::stdout().lock();
    let mut first_token_s = None;
    let mut generated = 0;
    while let Some(o) = rx.blocking_recv() {
        if first_token_s.is_none() && !o.new_token_ids.is_empty() {
            first_token_s = Some(t0.elapsed().as_secs_f64());
        }
        generated += o.new_token_ids.len();
        write!(stdout, "{}", o.text)?;
        stdout.flush()?;
        for lp in &o.logprobs {
            let alts: Vec<String> = lp.top.iter().map(|(t, l)| format!("{t}:{l:.3}")).collect();
            eprintln!(
                "  token {} logprob {:.4} top [{}]",
                lp.token_id,
                lp.logprob,
                alts.join(", ")
            );
        }
        if o.finished.is_some() {
            break;
        }
    }
    writeln!(stdout)?;
    let total_s = t0.elapsed().as_secs_f64();
    let ttft = first_token_s.unwrap_or(total_s);
    let decode_tokens = generated.saturating_sub(1);
    eprintln!(
        "[{} prompt tokens: {:.1} tok/s · {} generated: {:.1} tok/s decode · load {:.2}s]",
        prompt.len(),
        prompt.len() as f64 / ttft.max(1e-9),
        generated,
        decode_tokens as f64 / (total_s - ttft).max(1e-9),
        load_s
    );
    engine.shutdown();
    Ok(())
}
