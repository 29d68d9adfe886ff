//! `glimpse run`: chat-template a prompt, prefill it, sample tokens one at a time and
//! stream the text, then report time to first token and prefill / decode throughput.

use std::io::Write;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use glimpse_core::Image;
use glimpse_core::arena::Arena;
use glimpse_core::chat::{self, Turn};
use glimpse_core::decoder::{Decoder, DecoderState};
use glimpse_core::sampler::{Sampler, SamplerConfig, StopTokens};
use glimpse_core::tokenizer::{Specials, Tokenizer, TokenizerError, Utf8Stream};
use glimpse_quant::layout::ChatTemplate;

use crate::RunArgs;
use crate::tokenize::encode;

/// What a generation run needs besides the prompt.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    /// Most tokens to generate (a stop token counts and ends the run).
    pub max_tokens: usize,
    /// Sampling settings.
    pub sampler: SamplerConfig,
    /// Ids that end generation.
    pub stops: StopTokens,
}

/// Timings of one run.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Stats {
    /// Prompt length in tokens.
    pub prompt_tokens: usize,
    /// Tokens generated (stop token included).
    pub generated: usize,
    /// Prefill start to the first sampled token, in milliseconds.
    pub ttft_ms: f64,
    /// Prompt tokens per second of prefill.
    pub prefill_tok_s: f64,
    /// Tokens per second over the single-token decode steps.
    pub decode_tok_s: f64,
}

/// The result of [`generate`].
#[derive(Clone, Debug)]
pub struct Generation {
    /// Generated ids, the stop token included when one ended the run.
    pub tokens: Vec<u32>,
    /// Whether a stop token ended the run (rather than `max_tokens`).
    pub stopped: bool,
    /// Timings.
    pub stats: Stats,
}

/// Prefill `prompt` and generate up to `opts.max_tokens` tokens, calling `on_token` as
/// each one is chosen. The arena is a `Vec<u8>` of exactly the size the decoder state
/// asks for, for a context of prompt plus `max_tokens` (capped at the model's maximum).
pub fn generate(
    image: &Image<'_>,
    prompt: &[u32],
    opts: &GenerateOptions,
    mut on_token: impl FnMut(u32) -> Result<()>,
) -> Result<Generation> {
    if prompt.is_empty() {
        bail!("the prompt has no tokens");
    }
    let dec = Decoder::new(image)?;
    let cfg = dec.config();
    let vocab = cfg.vocab as usize;
    let want = prompt.len() + opts.max_tokens;
    let max_ctx = want.min(cfg.max_positions.max(1) as usize);
    if prompt.len() >= max_ctx && opts.max_tokens > 0 {
        bail!(
            "the prompt ({} tokens) fills the model's context ({} positions)",
            prompt.len(),
            cfg.max_positions
        );
    }
    let bytes = DecoderState::arena_bytes(
        cfg,
        max_ctx,
        glimpse_core::decoder::DEFAULT_CHUNK.min(max_ctx),
    )?;
    let mut buf = vec![0u8; bytes];
    let mut arena = Arena::new(&mut buf);
    let mut st = DecoderState::new(&mut arena, &dec, max_ctx)?;
    let mut sampler = Sampler::new(opts.sampler);
    let mut scratch = vec![0u32; if opts.sampler.is_greedy() { 0 } else { vocab }];
    let mut logits = vec![0f32; vocab];
    let mut history: Vec<u32> = prompt.to_vec();
    let mut tokens = Vec::new();
    let mut stopped = false;

    let t0 = Instant::now();
    logits.copy_from_slice(st.prefill(prompt)?);
    let t_prefill = t0.elapsed().as_secs_f64();
    let mut ttft = 0.0;
    let mut t_decode_start = Instant::now();
    let mut steps = 0usize;
    while tokens.len() < opts.max_tokens {
        let id = sampler.sample(&mut logits, &history, &mut scratch)?;
        if tokens.is_empty() {
            ttft = t0.elapsed().as_secs_f64();
            t_decode_start = Instant::now();
        }
        tokens.push(id);
        history.push(id);
        on_token(id)?;
        if opts.stops.contains(id) {
            stopped = true;
            break;
        }
        if tokens.len() == opts.max_tokens || st.pos() >= max_ctx {
            break;
        }
        logits.copy_from_slice(st.decode_one(id)?);
        steps += 1;
    }
    let t_decode = t_decode_start.elapsed().as_secs_f64();
    let rate = |n: usize, t: f64| if t > 0.0 { n as f64 / t } else { 0.0 };
    Ok(Generation {
        stats: Stats {
            prompt_tokens: prompt.len(),
            generated: tokens.len(),
            ttft_ms: ttft * 1e3,
            prefill_tok_s: rate(prompt.len(), t_prefill),
            decode_tok_s: rate(steps, t_decode),
        },
        tokens,
        stopped,
    })
}

/// The prompt ids for `a`: `--tokens` as given, or the (templated) prompt encoded.
fn prompt_ids(
    a: &RunArgs,
    tok: Option<&Tokenizer<'_>>,
    template: &ChatTemplate,
) -> Result<Vec<u32>> {
    if let Some(ids) = &a.tokens {
        return Ok(ids.clone());
    }
    let Some(tok) = tok else {
        return Err(TokenizerError::NoTokenizer.into());
    };
    let prompt = a.prompt.as_deref().unwrap_or_default();
    let mut ids = Vec::new();
    if tok.add_bos() {
        ids.extend(tok.bos());
    }
    if a.raw || matches!(template, ChatTemplate::None) {
        // Raw prompts are the user's own text: control-token spellings stay text.
        ids.extend(encode(tok, prompt, Specials::Plain)?);
        return Ok(ids);
    }
    let turn = Turn {
        system: a.system.as_deref(),
        user: prompt,
        image: false,
    };
    let mut buf = vec![0u8; prompt.len() + a.system.as_deref().map_or(0, str::len) + 512];
    let text = chat::render(template, &turn, &mut buf)?;
    ids.extend(encode(tok, text, Specials::Parse)?);
    Ok(ids)
}

/// Run `glimpse run`.
pub fn run(a: &RunArgs) -> Result<ExitCode> {
    let mapped = glimpse_host::MappedImage::open(&a.image)
        .with_context(|| format!("opening {}", a.image.display()))?;
    let image = Image::parse(mapped.bytes())?;
    let tok = match Tokenizer::from_image(&image) {
        Ok(t) => Some(t),
        Err(TokenizerError::NoTokenizer) => None,
        Err(e) => return Err(e.into()),
    };
    let template = image
        .config()
        .tokenizer
        .as_ref()
        .map_or(ChatTemplate::None, |t| t.chat.clone());
    let prompt = prompt_ids(a, tok.as_ref(), &template)?;

    let sampler = SamplerConfig {
        temperature: a.temp,
        top_k: a.top_k,
        top_p: a.top_p,
        repeat_penalty: a.repeat_penalty,
        repeat_last_n: a.repeat_last_n,
        seed: a.seed,
    };
    let opts = GenerateOptions {
        max_tokens: a.max_tokens,
        sampler,
        stops: StopTokens::for_model(image.config().decoder.as_ref(), tok.as_ref()),
    };

    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut text = String::new();
    let mut utf8 = Utf8Stream::new();
    let emit = |s: &str, out: &mut std::io::StdoutLock<'_>, text: &mut String| -> Result<()> {
        text.push_str(s);
        out.write_all(s.as_bytes())?;
        out.flush()?;
        Ok(())
    };
    let run = generate(&image, &prompt, &opts, |id| {
        let Some(t) = &tok else {
            // No vocabulary: stream the ids themselves.
            return emit(&format!("{id} "), &mut out, &mut text);
        };
        // Control tokens (<|im_end|>, <|endoftext|>) end turns; they are not text.
        if t.is_control(id) {
            return Ok(());
        }
        let mut err = Ok(());
        utf8.push(t.token_bytes(id)?, &mut |s: &str| {
            if err.is_ok() {
                err = emit(s, &mut out, &mut text);
            }
        });
        err
    })?;
    utf8.finish(&mut |s: &str| {
        text.push_str(s);
        let _ = out.write_all(s.as_bytes());
    });
    writeln!(out)?;
    let s = run.stats;
    eprintln!(
        "prompt {} tokens, generated {}{}; TTFT {:.1} ms, prefill {:.1} tok/s, decode {:.1} tok/s",
        s.prompt_tokens,
        s.generated,
        if run.stopped { " (stop token)" } else { "" },
        s.ttft_ms,
        s.prefill_tok_s,
        s.decode_tok_s
    );
    if a.json {
        let obj = serde_json::json!({
            "prompt_ids": prompt,
            "tokens": run.tokens,
            "text": text,
            "stats": {
                "ttft_ms": s.ttft_ms,
                "prefill_tok_s": s.prefill_tok_s,
                "decode_tok_s": s.decode_tok_s,
            },
        });
        writeln!(out, "{obj}")?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
