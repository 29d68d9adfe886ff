//! `glimpse run`: ask a model about a picture (or just answer a prompt) through the core's
//! Session API, streaming the text, then report time to first token split into its steps,
//! throughput and the arena the run was planned for.
//!
//! The arena is one host buffer of exactly the planned size (plus alignment slack), so a
//! host run exercises the same plan a board would get from `glimpse plan`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail, ensure};
use glimpse_core::Model;
use glimpse_core::arena::ALIGN;
use glimpse_core::planner::ArenaPlan;
use glimpse_core::sampler::SamplerConfig;
use glimpse_core::session::{IMAGE_SENTINEL, ImageInput, Prompt, Report, Session, SessionOptions};
use glimpse_core::tokenizer::{Tokenizer, TokenizerError};
use glimpse_hal::{ErrorKind, ErrorType, TokenSink};
use glimpse_quant::schema::ChatTemplate;

use crate::RunArgs;
use crate::plan::KvArg;

/// The pipeline options of `glimpse run` (flattened into its arguments).
#[derive(Debug, Clone, clap::Args)]
pub struct PipelineArgs {
    /// A PNG or JPEG picture to ask about (VLM images; without it they run text-only).
    #[arg(long = "image", value_name = "FILE")]
    pub picture: Option<PathBuf>,
    /// Resolution, context and KV format.
    #[command(flatten)]
    pub shape: ShapeArgs,
    /// Threads.
    #[command(flatten)]
    pub threads: ThreadsArg,
}

/// What a session's plan is sized for, as `run`, `stream` and `chat` take it.
#[derive(Debug, Clone, clap::Args)]
pub struct ShapeArgs {
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

impl ShapeArgs {
    /// Change `o`'s plan as the flags say.
    pub fn apply(&self, o: &mut SessionOptions) {
        o.plan.resolution = self.image_size;
        if let Some(c) = self.context {
            o.plan.max_context = c;
        }
        o.plan.kv = self.kv.into();
    }
}

/// How many threads a command that runs a model splits its work across.
#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub struct ThreadsArg {
    /// Threads to split the work across, the calling one included [default: the
    /// machine's physical cores]. Results are the same to the bit for any count.
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
}

impl ThreadsArg {
    /// The pool to hand the session (one thread runs on the caller alone).
    pub fn pool(&self) -> Result<glimpse_host::ThreadPool> {
        let n = self
            .threads
            .unwrap_or_else(glimpse_host::physical_cores)
            .max(1);
        glimpse_host::ThreadPool::new(n).with_context(|| format!("starting {n} threads"))
    }
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

/// The session options of `a` for `image` and an optional picture: the core's defaults
/// for the model, picture and prompt ([`SessionOptions::for_model`], which the firmwares
/// use too), with what the flags change.
pub fn session_options(
    a: &RunArgs,
    image: &Model<'_>,
    picture: Option<&Picture>,
) -> SessionOptions {
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
    let frame_side = picture.map(|pic| pic.width.max(pic.height));
    let mut o = SessionOptions::for_model(image, frame_side, prompt_bytes).with_sampler(sampler);
    a.pipeline.shape.apply(&mut o);
    o.max_new_tokens = a.max_tokens;
    o.q8_activations = a.activations.into();
    o
}

/// The prompt of `a`: `--tokens` as ids, `--raw` (or a template-less model asked
/// without a picture) as text tokenized as it is, else a chat turn.
fn prompt_of<'p>(a: &'p RunArgs, image: &Model<'_>, picture: bool) -> Prompt<'p> {
    if let Some(ids) = &a.tokens {
        return Prompt::Ids(ids);
    }
    let no_template = image
        .config()
        .tokenizer
        .as_ref()
        .is_none_or(|t| matches!(t.chat, ChatTemplate::None));
    let text = a.prompt.as_deref().unwrap_or_default();
    if a.raw || (no_template && !picture) {
        Prompt::Text(text)
    } else {
        Prompt::Chat {
            system: a.system.as_deref(),
            user: text,
        }
    }
}

fn ms(us: u64) -> f64 {
    us as f64 / 1e3
}

/// Run `glimpse run`.
pub fn run(a: &RunArgs) -> Result<ExitCode> {
    let mapped = glimpse_host::MappedImage::open(&a.image)
        .with_context(|| format!("opening {}", a.image.display()))?;
    let image = Model::parse(mapped.bytes())?;
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
    if tok.is_none() && a.tokens.is_none() {
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
    let mut pool = a.pipeline.threads.pool()?;
    let mut session =
        Session::new(&image, &mut arena, HostClock::new(), opts)?.with_executor(&mut pool);
    let mut sink = StdoutSink {
        out: std::io::stdout(),
        text: String::new(),
        tokens: Vec::new(),
        ids_only: tok.is_none(),
    };
    let frame = picture.as_ref().map(Picture::frame);
    let prompt = prompt_of(a, &image, picture.is_some());
    let report = session.run(prompt, frame.map(ImageInput::Frame), &mut sink)?;
    let prompt_ids: Vec<i64> = session
        .prompt_ids()
        .iter()
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
