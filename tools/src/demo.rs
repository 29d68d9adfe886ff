//! `glimpse demo`: the main job on the bundled default. Converts the tiny trained FastVLM
//! committed in `models/tiny-fastvlm` (once; again only when the checkpoint changes),
//! verifies the image, then captions its sample pictures (or the given ones) through the
//! Session API and prints each caption with its time to first token.
//!
//! [`Captioner`] is the same loop as a library, for the accuracy tests: one session, many
//! frames, one caption each.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Instant, SystemTime};

use anyhow::{Context, Result, bail, ensure};
use glimpse_core::Model;
use glimpse_core::planner::{ArenaPlan, DEFAULT_MAX_FRAME_SIDE};
use glimpse_core::preprocess::Frame;
use glimpse_core::session::{ImageInput, Prompt, Report, Session, SessionOptions};

use crate::QuantArg;
use crate::convert::{Options, convert};
use crate::run::{CollectSink, HostClock, Picture, arena_for, describe, load_picture};

/// The question the tiny model was trained on (tests/scripts/tiny_fastvlm/common.py).
pub const QUESTION: &str = "Describe the image.";

/// Arguments of `glimpse demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Checkpoint directory (transformers `fast_vlm` layout) [default: the bundled
    /// models/tiny-fastvlm of this checkout].
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// Pictures to caption [default: the model directory's samples/*.png].
    #[arg(long = "image", value_name = "FILE")]
    pub pictures: Vec<PathBuf>,
    /// Weight format of the converted image.
    #[arg(long, value_enum, default_value = "q8_0")]
    pub quant: QuantArg,
    /// The question asked about each picture.
    #[arg(long, default_value = QUESTION)]
    pub prompt: String,
    /// Where the converted image is kept [default: target/demo in this checkout].
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,
    /// Most tokens per caption.
    #[arg(long, default_value_t = 32)]
    pub max_tokens: usize,
    /// Threads.
    #[command(flatten)]
    pub threads: crate::run::ThreadsArg,
}

/// The bundled model directory of this checkout.
pub fn bundled_model() -> PathBuf {
    crate::sim::repo_root().join("models").join("tiny-fastvlm")
}

/// One caption and how it was made.
#[derive(Clone, Debug)]
pub struct Caption {
    /// The generated text (stop token excluded).
    pub text: String,
    /// Generated ids, the stop token included when one ended the run.
    pub tokens: Vec<u32>,
    /// Step timings and counts.
    pub report: Report,
}

/// Greedy captions from one session: the arena is planned once for frames up to
/// `max_frame_side` and reused for every picture (a session keeps no state between calls).
pub struct Captioner<'i, 'w> {
    image: &'i Model<'w>,
    plan: ArenaPlan,
    arena: Vec<u8>,
    options: SessionOptions,
    pool: glimpse_host::ThreadPool,
}

impl std::fmt::Debug for Captioner<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Captioner")
            .field("arena_bytes", &self.plan.total())
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl<'i, 'w> Captioner<'i, 'w> {
    /// Plan the arena for `image`: its native resolution, greedy decoding, a context of
    /// the model's maximum, f16 KV cache (what `glimpse run` uses).
    pub fn new(
        image: &'i Model<'w>,
        prompt: &str,
        max_frame_side: usize,
        max_new_tokens: usize,
    ) -> Result<Self> {
        let options = SessionOptions {
            max_new_tokens,
            ..SessionOptions::for_model(image, Some(max_frame_side), prompt.len())
        };
        let plan = ArenaPlan::new(image, &options.plan)?;
        let arena = arena_for(&plan);
        Ok(Captioner {
            image,
            plan,
            arena,
            options,
            pool: glimpse_host::ThreadPool::new(1).context("a one-thread pool")?,
        })
    }

    /// The same captioner splitting its work across `pool` (the same captions to the
    /// bit).
    pub fn with_pool(self, pool: glimpse_host::ThreadPool) -> Self {
        Captioner { pool, ..self }
    }

    /// The plan every caption runs in.
    pub fn plan(&self) -> &ArenaPlan {
        &self.plan
    }

    /// Caption one frame with the chat template's default system prompt.
    pub fn caption(&mut self, frame: Frame<'_>, prompt: &str) -> Result<Caption> {
        let mut session = Session::new(
            self.image,
            &mut self.arena,
            HostClock::new(),
            self.options.clone(),
        )?
        .with_executor(&mut self.pool);
        let mut sink = CollectSink::default();
        let report = session.run(
            Prompt::chat(prompt),
            Some(ImageInput::Frame(frame)),
            &mut sink,
        )?;
        Ok(Caption {
            text: String::from_utf8(sink.text).context("caption is not UTF-8")?,
            tokens: sink.tokens,
            report,
        })
    }
}

/// Convert `model` to `out` unless `out` is newer than every file of the checkpoint.
/// Returns whether it converted.
pub fn convert_if_stale(model: &Path, out: &Path, quant: QuantArg) -> Result<bool> {
    let newest_input = std::fs::read_dir(model)
        .with_context(|| format!("reading {}", model.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.ends_with(".json") || name.ends_with(".safetensors")
        })
        .filter_map(|e| e.metadata().and_then(|m| m.modified()).ok())
        .max()
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let fresh = std::fs::metadata(out)
        .and_then(|m| m.modified())
        .is_ok_and(|t| t >= newest_input);
    if fresh {
        return Ok(false);
    }
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    convert(&Options::new(model.to_path_buf(), out.to_path_buf(), quant))?;
    Ok(true)
}

/// Expected captions of the bundled samples (eval.json's `samples`), keyed by file name.
fn expected_captions(model: &Path) -> Vec<(String, String)> {
    let Ok(text) = std::fs::read_to_string(model.join("eval.json")) else {
        return Vec::new();
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
        return Vec::new();
    };
    let Some(samples) = v["samples"].as_object() else {
        return Vec::new();
    };
    samples
        .iter()
        .filter_map(|(k, s)| {
            let name = Path::new(k).file_name()?.to_string_lossy().into_owned();
            Some((name, s["caption"].as_str()?.to_string()))
        })
        .collect()
}

/// The model directory's `samples/*.png`, sorted.
fn sample_pictures(model: &Path) -> Result<Vec<PathBuf>> {
    let dir = model.join("samples");
    let mut out: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {} (pass pictures with --image)", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("png") || e.eq_ignore_ascii_case("jpg"))
        })
        .collect();
    out.sort();
    ensure!(!out.is_empty(), "no pictures in {}", dir.display());
    Ok(out)
}

/// Run `glimpse demo`.
pub fn run(a: &DemoArgs) -> Result<ExitCode> {
    let model = a.model.clone().unwrap_or_else(bundled_model);
    if !model.join("config.json").is_file() {
        bail!(
            "{} holds no checkpoint (config.json); pass --model DIR",
            model.display()
        );
    }
    let cache = a
        .cache
        .clone()
        .unwrap_or_else(|| crate::sim::repo_root().join("target").join("demo"));
    let stem = model
        .file_name()
        .map_or_else(|| "model".into(), |n| n.to_string_lossy().into_owned());
    let quant = quant_name(a.quant);
    let out = cache.join(format!("{stem}.{quant}.glim"));
    let t0 = Instant::now();
    if convert_if_stale(&model, &out, a.quant)? {
        eprintln!(
            "converted {} to {} ({quant}) in {:.2} s",
            model.display(),
            out.display(),
            t0.elapsed().as_secs_f64()
        );
    }

    let mapped = glimpse_host::MappedImage::open(&out)
        .with_context(|| format!("opening {}", out.display()))?;
    let image = Model::parse(mapped.bytes())?;
    image
        .verify()
        .with_context(|| format!("verifying {}", out.display()))?;
    ensure!(
        image.config().vision.is_some(),
        "{} has no vision encoder",
        model.display()
    );

    let paths = if a.pictures.is_empty() {
        sample_pictures(&model)?
    } else {
        a.pictures.clone()
    };
    let pictures = paths
        .iter()
        .map(|p| load_picture(p))
        .collect::<Result<Vec<Picture>>>()?;
    let side = pictures
        .iter()
        .map(|p| p.width.max(p.height))
        .max()
        .unwrap_or(DEFAULT_MAX_FRAME_SIDE);
    let mut captioner =
        Captioner::new(&image, &a.prompt, side, a.max_tokens)?.with_pool(a.threads.pool()?);
    let expected = expected_captions(&model);

    let mut stdout = std::io::stdout().lock();
    writeln!(
        stdout,
        "{}: {} weights, {} bytes; arena {} bytes",
        out.display(),
        quant,
        mapped.bytes().len(),
        captioner.plan().total()
    )?;
    let mut last = None;
    for (path, pic) in paths.iter().zip(&pictures) {
        let cap = captioner.caption(pic.frame(), &a.prompt)?;
        let name = path
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let want = expected.iter().find(|(n, _)| *n == name).map(|(_, c)| c);
        let check = match want {
            Some(w) if *w == cap.text => "  (as expected)".to_string(),
            Some(w) => format!("  (expected: {w})"),
            None => String::new(),
        };
        let t = cap.report.timings;
        writeln!(
            stdout,
            "{} ({}x{}): {}{check}\n  TTFT {:.1} ms (encoder {:.1} ms, prefill {:.1} ms), {} tokens",
            path.display(),
            pic.width,
            pic.height,
            cap.text,
            t.ttft_us as f64 / 1e3,
            t.encoder_us as f64 / 1e3,
            t.prefill_us as f64 / 1e3,
            cap.report.generated,
        )?;
        last = Some(cap.report);
    }
    stdout.flush()?;
    if let Some(r) = last {
        eprint!("last caption: {}", describe(&r, captioner.plan()));
    }
    Ok(ExitCode::SUCCESS)
}

/// The `--quant` spelling of a format (for file names).
fn quant_name(q: QuantArg) -> String {
    use clap::ValueEnum;
    q.to_possible_value()
        .map_or_else(|| format!("{q:?}"), |v| v.get_name().to_string())
}
