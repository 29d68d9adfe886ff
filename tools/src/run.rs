//! `glimpse run`: ask a model about a picture (or just answer a prompt) through the core's
//! Session API, streaming the text, then report time to first token split into its steps,
//! throughput and the arena the run was planned for.
//!
//! The arena is one host buffer of exactly the planned size (plus alignment slack), so a
//! host run exercises the same plan a board would get from `glimpse plan`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use glimpse_core::Image;
use glimpse_core::arena::{ALIGN, Arena};
use glimpse_core::decoder::{DEFAULT_CHUNK, Decoder, DecoderState};
use glimpse_core::kernels::linear::Q8Activations;
use glimpse_core::planner::{ArenaPlan, DEFAULT_MAX_FRAME_SIDE, PlanOptions};
use glimpse_core::sampler::{Sampler, SamplerConfig, StopTokens};
use glimpse_core::session::{IMAGE_SENTINEL, ImageInput, Report, Session, SessionOptions};
use glimpse_core::tokenizer::{Specials, Tokenizer, TokenizerError};
use glimpse_hal::{ErrorKind, ErrorType, TokenSink};
use glimpse_quant::layout::ChatTemplate;

use crate::RunArgs;
use crate::plan::{KvArg, default_context};
use crate::tokenize::encode;

/// The pipeline options of `glimpse run` (flattened into its arguments).
#[derive(Debug, Clone, clap::Args)]
pub struct PipelineArgs {
    /// A PNG or JPEG picture to ask about (VLM images; without it they run text-only).
    #[arg(long = "image", value_name = "FILE")]
    pub picture: Option<PathBuf>,
    /// Input resolution (a multiple of the encoder stride; default: the model's).
    #[arg(long, value_name = "R")]
    pub image_size: Option<usize>,
    /// Context positions the arena is planned for (default: 2048, or the model's maximum).
    #[arg(long, value_name = "N")]
    pub context: Option<usize>,
    /// KV cache format.
    #[arg(long, value_enum, default_value = "f16")]
    pub kv: KvArg,
}

pub use glimpse_host::{HostClock, Picture};

/// Decode a PNG or JPEG into RGB888 (alpha dropped, grey widened).
pub fn load_picture(path: &Path) -> Result<Picture> {
    Ok(Picture::open(path)?)
}

/// A host arena: a buffer with room for the plan from its first aligned byte.
pub fn arena_for(plan: &ArenaPlan) -> Vec<u8> {
    vec![0u8; plan.total() + ALIGN - 1]
}

/// What a generation run needs besides the prompt.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    /// Most tokens to generate (a stop token counts and ends the run).
    pub max_tokens: usize,
    /// Sampling settings.
    pub sampler: SamplerConfig,
    /// Ids that end generation.
    pub stops: StopTokens,
    /// How activations meet Q8_0 weights.
    pub activations: Q8Activations,
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
/// each one is chosen: the decoder alone, without the Session API (which `glimpse run`
/// uses), for tests that compare the decoder with a reference token by token. The arena is a `Vec<u8>` of exactly the size the decoder state
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
    let dec = Decoder::new(image)?.with_q8_activations(opts.activations);
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

/// Prompt ids for `--tokens`, `--raw`, or a template-less model without a picture (the
/// chat-templated path tokenizes in the core).
fn direct_ids(
    a: &RunArgs,
    tok: Option<&Tokenizer<'_>>,
    image: &Image<'_>,
) -> Result<Option<Vec<u32>>> {
    if let Some(ids) = &a.tokens {
        return Ok(Some(ids.clone()));
    }
    let no_template = image
        .config()
        .tokenizer
        .as_ref()
        .is_none_or(|t| matches!(t.chat, ChatTemplate::None));
    let raw = a.raw || (no_template && a.pipeline.picture.is_none());
    let (Some(tok), true) = (tok, raw) else {
        return Ok(None);
    };
    let mut ids = Vec::new();
    if tok.add_bos() {
        ids.extend(tok.bos());
    }
    // Raw prompts are the user's own text: control-token spellings stay text.
    ids.extend(encode(
        tok,
        a.prompt.as_deref().unwrap_or_default(),
        Specials::Plain,
    )?);
    Ok(Some(ids))
}

/// Keeps what a run generates: the ids and the text bytes.
#[derive(Clone, Debug, Default)]
pub struct CollectSink {
    /// Generated ids, in order.
    pub tokens: Vec<u32>,
    /// Their text (whole UTF-8 characters, as the core hands them).
    pub text: Vec<u8>,
}

impl ErrorType for CollectSink {
    type Error = ErrorKind;
}

impl TokenSink for CollectSink {
    fn token(&mut self, id: u32, bytes: &[u8]) -> Result<(), ErrorKind> {
        self.tokens.push(id);
        self.text.extend_from_slice(bytes);
        Ok(())
    }
}

/// Streams generated text to stdout and keeps it.
struct StdoutSink {
    out: std::io::Stdout,
    text: String,
    tokens: Vec<u32>,
    ids_only: bool,
}

impl ErrorType for StdoutSink {
    type Error = ErrorKind;
}

impl TokenSink for StdoutSink {
    fn token(&mut self, id: u32, bytes: &[u8]) -> Result<(), ErrorKind> {
        self.tokens.push(id);
        let piece = if self.ids_only {
            format!("{id} ")
        } else {
            // The core hands whole UTF-8 characters.
            String::from_utf8_lossy(bytes).into_owned()
        };
        self.text.push_str(&piece);
        let mut out = self.out.lock();
        out.write_all(piece.as_bytes()).map_err(|_| ErrorKind::Io)?;
        out.flush().map_err(|_| ErrorKind::Io)
    }
}

/// The session options of `a` for `image` and an optional picture.
pub fn session_options(
    a: &RunArgs,
    image: &Image<'_>,
    picture: Option<&Picture>,
) -> SessionOptions {
    let p = &a.pipeline;
    let sampler = SamplerConfig {
        temperature: a.temp,
        top_k: a.top_k,
        top_p: a.top_p,
        repeat_penalty: a.repeat_penalty,
        repeat_last_n: a.repeat_last_n,
        seed: a.seed,
    };
    let prompt_bytes =
        a.prompt.as_deref().map_or(0, str::len) + a.system.as_deref().map_or(0, str::len);
    SessionOptions {
        plan: PlanOptions {
            resolution: p.image_size,
            max_context: p.context.unwrap_or_else(|| default_context(image)),
            kv: p.kv.into(),
            chunk: DEFAULT_CHUNK,
            max_frame_side: picture.map_or(DEFAULT_MAX_FRAME_SIDE, |pic| pic.width.max(pic.height)),
            max_prompt_bytes: prompt_bytes.max(1),
            sampling: !sampler.is_greedy(),
            vision: picture.is_some(),
        },
        sampler,
        max_new_tokens: a.max_tokens,
        stop: None,
        q8_activations: a.activations.into(),
    }
}

fn ms(us: u64) -> f64 {
    us as f64 / 1e3
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
    let picture = match &a.pipeline.picture {
        None => None,
        Some(p) => {
            ensure!(
                image.config().vision.is_some(),
                "{} has no vision encoder; run it without --image",
                a.image.display()
            );
            Some(load_picture(p)?)
        }
    };
    let direct = direct_ids(a, tok.as_ref(), &image)?;
    if direct.is_none() && tok.is_none() {
        bail!(
            "{} carries no tokenizer: pass the prompt as --tokens",
            a.image.display()
        );
    }
    if a.raw && picture.is_some() && a.tokens.is_none() {
        bail!(
            "--raw cannot place the picture; drop --raw, or pass --tokens with the image token id"
        );
    }

    let opts = session_options(a, &image, picture.as_ref());
    let plan = ArenaPlan::new(&image, &opts.plan)?;
    let mut arena = arena_for(&plan);
    let mut session = Session::new(&image, &mut arena, HostClock::new(), opts)?;
    let mut sink = StdoutSink {
        out: std::io::stdout(),
        text: String::new(),
        tokens: Vec::new(),
        ids_only: tok.is_none(),
    };
    let frame = picture.as_ref().map(Picture::frame);
    let report = match &direct {
        Some(ids) => session.generate_ids(ids, frame.map(ImageInput::Frame), &mut sink)?,
        None => session.ask_turn(
            frame,
            a.system.as_deref(),
            a.prompt.as_deref().unwrap_or_default(),
            &mut sink,
        )?,
    };
    let prompt_ids: Vec<i64> = session
        .history()
        .iter()
        .take(report.prompt_ids)
        .map(|&id| {
            if id == IMAGE_SENTINEL {
                -200
            } else {
                i64::from(id)
            }
        })
        .collect();
    let plan = session.plan().clone();
    drop(session);

    let mut out = std::io::stdout().lock();
    writeln!(out)?;
    eprint!("{}", describe(&report, &plan));
    if a.json {
        let t = report.timings;
        let rate = |n: usize, us: u64| {
            if us > 0 {
                n as f64 * 1e6 / us as f64
            } else {
                0.0
            }
        };
        let obj = serde_json::json!({
            "prompt_ids": prompt_ids,
            "tokens": sink.tokens,
            "text": sink.text,
            "stats": {
                "ttft_ms": ms(t.ttft_us),
                "prefill_tok_s": rate(report.prompt_positions, t.prefill_us),
                "decode_tok_s": rate(report.decode_steps, t.decode_us),
                "tokenize_ms": ms(t.tokenize_us),
                "preprocess_ms": ms(t.preprocess_us),
                "encoder_ms": ms(t.encoder_us),
                "projector_ms": ms(t.projector_us),
                "prefill_ms": ms(t.prefill_us),
                "decode_ms": ms(t.decode_us),
                "prompt_positions": report.prompt_positions,
                "image_tokens": report.image_tokens,
                "generated": report.generated,
                "stopped": report.stopped,
            },
            "arena_bytes": plan.total(),
            "kv": plan.options.kv.name(),
            "context": plan.options.max_context,
            "resolution": plan.options.resolution,
        });
        writeln!(out, "{obj}")?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// The stderr summary of a run: tokens, the TTFT split, throughput, the arena.
pub fn describe(r: &Report, plan: &ArenaPlan) -> String {
    let t = r.timings;
    let rate = |n: usize, us: u64| {
        if us > 0 {
            n as f64 * 1e6 / us as f64
        } else {
            0.0
        }
    };
    let image = if r.image_tokens > 0 {
        format!(", {} image tokens", r.image_tokens)
    } else {
        String::new()
    };
    let mut s = format!(
        "prompt {} ids ({} positions{image}), generated {}{}\n",
        r.prompt_ids,
        r.prompt_positions,
        r.generated,
        if r.stopped { " (stop token)" } else { "" }
    );
    s += &format!(
        "TTFT {:.1} ms: tokenize {:.1} + preprocess {:.1} + encoder {:.1} + projector {:.1} + prefill {:.1} ms\n",
        ms(t.ttft_us),
        ms(t.tokenize_us),
        ms(t.preprocess_us),
        ms(t.encoder_us),
        ms(t.projector_us),
        ms(t.prefill_us)
    );
    s += &format!(
        "prefill {:.1} tok/s, decode {:.1} tok/s ({} steps in {:.1} ms)\n",
        rate(r.prompt_positions, t.prefill_us),
        rate(r.decode_steps, t.decode_us),
        r.decode_steps,
        ms(t.decode_us)
    );
    s += &format!(
        "arena {} bytes ({:.2} MiB): context {}, KV {}{}\n",
        plan.total(),
        plan.total() as f64 / (1024.0 * 1024.0),
        plan.options.max_context,
        plan.options.kv.name(),
        plan.options
            .resolution
            .map_or(String::new(), |r| format!(", {r}x{r}"))
    );
    s
}
