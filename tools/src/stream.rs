//! `glimpse stream`: live captioning of a frame sequence with one session. The prompt
//! prefix before the picture is prefilled once and kept in the KV cache; each frame is
//! encoded, projected, prefilled after the prefix and decoded; frames that barely changed
//! since the last captioned one are skipped and repeat its caption (core `FrameStream`).
//!
//! Frames come from a directory (sorted by name), an animated GIF or APNG, or raw RGB24
//! on stdin (`ffmpeg -i clip.mp4 -f rawvideo -pix_fmt rgb24 - | glimpse stream M --raw
//! 640x480`). One line per frame, then a summary; `--json` writes one object per line.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use glimpse_core::Model;
use glimpse_core::planner::{ArenaPlan, DEFAULT_MAX_FRAME_SIDE};
use glimpse_core::session::{Prompt, Session, SessionOptions};
use glimpse_core::stream::FrameStream;
use glimpse_host::video::{RawFrames, VideoError, animation_frames, directory_frames, parse_size};

use crate::run::{CollectSink, HostClock, Picture, ShapeArgs, ThreadsArg, arena_for};

/// Default change threshold: 0.2% of full scale, as the mean luma difference of the
/// 16x16 thumbnails. On the bundled clip a held frame measures 0 and a 3-pixel slide
/// 0.11% (one small object) to 0.97% (three large ones), so held frames are skipped and
/// a slide is captioned once it adds up; sensor noise averages out over a thumbnail cell.
pub const DEFAULT_MIN_CHANGE: f32 = 0.002;

/// Arguments of `glimpse stream`.
#[derive(Debug, Clone, clap::Args)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["frames", "video", "raw"])))]
pub struct StreamArgs {
    /// The model (.glim) with a vision encoder.
    #[arg(value_name = "MODEL")]
    pub model: PathBuf,
    /// A directory of PNG/JPEG frames, read in name order.
    #[arg(long, value_name = "DIR")]
    pub frames: Option<PathBuf>,
    /// An animated GIF or APNG (frames expanded by their display time).
    #[arg(long, value_name = "FILE")]
    pub video: Option<PathBuf>,
    /// Raw RGB24 frames of this size on stdin, e.g. 640x480.
    #[arg(long, value_name = "WxH")]
    pub raw: Option<String>,
    /// The question asked about every frame.
    #[arg(long, default_value = "Describe the image.")]
    pub prompt: String,
    /// System text (default: the template's).
    #[arg(long)]
    pub system: Option<String>,
    /// Caption every Nth frame only (the others are dropped unseen).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub every: usize,
    /// Skip frames whose mean luma (16x16 thumbnail, fraction of full scale) differs from
    /// the last captioned frame by less than this; 0 captions every frame.
    #[arg(long, default_value_t = DEFAULT_MIN_CHANGE, value_name = "X")]
    pub min_change: f32,
    /// Most tokens per caption.
    #[arg(long, default_value_t = 64)]
    pub max_tokens: usize,
    /// Prefill the whole prompt for every frame instead of keeping the prefix (smaller
    /// arena; for comparing TTFT).
    #[arg(long)]
    pub no_prefix_reuse: bool,
    /// Resolution, context and KV format.
    #[command(flatten)]
    pub shape: ShapeArgs,
    /// Threads.
    #[command(flatten)]
    pub threads: ThreadsArg,
    /// One JSON object per frame, then a summary line.
    #[arg(long)]
    pub json: bool,
}

/// A frame source: an iterator of pictures with errors that name the frame.
type Frames = Box<dyn Iterator<Item = Result<Picture, VideoError>>>;

fn frames_of(a: &StreamArgs) -> Result<(Frames, usize)> {
    if let Some(dir) = &a.frames {
        return Ok((Box::new(directory_frames(dir)?), DEFAULT_MAX_FRAME_SIDE));
    }
    if let Some(path) = &a.video {
        let frames = animation_frames(path)?;
        let side = frames
            .iter()
            .map(|p| p.width.max(p.height))
            .max()
            .unwrap_or(1);
        return Ok((Box::new(frames.into_iter().map(Ok)), side));
    }
    let size = a.raw.as_deref().unwrap_or_default();
    let (w, h) = parse_size(size)?;
    let raw = RawFrames::new(std::io::stdin().lock(), w, h)?;
    Ok((Box::new(raw), w.max(h)))
}

/// What the summary adds up.
#[derive(Debug, Default)]
struct Totals {
    frames: usize,
    captioned: usize,
    skipped: usize,
    ttft_kept_ms: Vec<f64>,
    ttft_full_ms: Vec<f64>,
}

fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// Run `glimpse stream`.
pub fn run(a: &StreamArgs) -> Result<ExitCode> {
    ensure!(a.every >= 1, "--every must be at least 1");
    ensure!(
        a.min_change.is_finite() && a.min_change >= 0.0,
        "--min-change must be a fraction >= 0"
    );
    let mapped = glimpse_host::MappedImage::open(&a.model)
        .with_context(|| format!("opening {}", a.model.display()))?;
    let image = Model::parse(mapped.bytes())?;
    if image.config().vision.is_none() {
        bail!(
            "{} has no vision encoder: streams need a VLM",
            a.model.display()
        );
    }
    let (frames, side) = frames_of(a)?;
    let prompt_bytes = a.prompt.len() + a.system.as_deref().map_or(0, str::len);
    let mut opts = SessionOptions::for_model(&image, Some(side), prompt_bytes);
    a.shape.apply(&mut opts);
    opts.plan.kv_across_pictures = !a.no_prefix_reuse;
    opts.max_new_tokens = a.max_tokens;
    let plan = ArenaPlan::new(&image, &opts.plan)?;
    let mut arena = arena_for(&plan);
    let mut pool = a.threads.pool()?;
    let mut session =
        Session::new(&image, &mut arena, HostClock::new(), opts)?.with_executor(&mut pool);
    let prompt = Prompt::Chat {
        system: a.system.as_deref(),
        user: &a.prompt,
    };
    let mut stream = FrameStream::new(a.min_change);
    let mut out = std::io::stdout().lock();
    let mut totals = Totals::default();
    let mut last_caption = String::new();
    if !a.json {
        eprintln!(
            "streaming with {} ({} arena bytes, prefix {})",
            a.model.display(),
            plan.total(),
            if a.no_prefix_reuse {
                "prefilled per frame"
            } else {
                "kept"
            }
        );
    }
    let t0 = Instant::now();
    for (index, frame) in frames.enumerate() {
        let picture = frame?;
        if index % a.every != 0 {
            continue;
        }
        let t = Instant::now();
        let mut sink = CollectSink::default();
        let r = stream
            .caption(&mut session, prompt, picture.frame(), &mut sink)
            .with_context(|| format!("frame {index}"))?;
        let latency_ms = t.elapsed().as_secs_f64() * 1e3;
        totals.frames += 1;
        let (text, ttft_ms) = match &r.run {
            Some(rep) => {
                totals.captioned += 1;
                last_caption = String::from_utf8_lossy(&sink.text).trim().to_string();
                let ttft = rep.timings.ttft_us as f64 / 1e3;
                if rep.reused_positions > 0 {
                    totals.ttft_kept_ms.push(ttft);
                } else {
                    totals.ttft_full_ms.push(ttft);
                }
                (last_caption.clone(), Some(ttft))
            }
            None => {
                totals.skipped += 1;
                (last_caption.clone(), None)
            }
        };
        if a.json {
            let rep = r.run.unwrap_or_default();
            let obj = serde_json::json!({
                "frame": index,
                "text": text,
                "skipped": r.skipped,
                "ttft_ms": ttft_ms,
                "latency_ms": latency_ms,
                "change": r.change,
                "reused_positions": rep.reused_positions,
                "prefilled_positions": rep.prompt_positions,
                "tokens": sink.tokens,
            });
            writeln!(out, "{obj}")?;
        } else if r.skipped {
            writeln!(
                out,
                "frame {index:>4}  skipped (change {:.4})   total {latency_ms:>7.1} ms  {text}",
                r.change
            )?;
        } else {
            writeln!(
                out,
                "frame {index:>4}  TTFT {:>7.1} ms  total {:>7.1} ms  {text}",
                ttft_ms.unwrap_or(0.0),
                latency_ms
            )?;
        }
        out.flush()?;
    }
    let secs = t0.elapsed().as_secs_f64();
    let per_s = if secs > 0.0 {
        totals.captioned as f64 / secs
    } else {
        0.0
    };
    let kept = mean(&totals.ttft_kept_ms);
    let full = mean(&totals.ttft_full_ms);
    if a.json {
        let obj = serde_json::json!({ "summary": {
            "frames": totals.frames,
            "captions": totals.captioned,
            "skipped": totals.skipped,
            "seconds": secs,
            "captions_per_s": per_s,
            "mean_ttft_ms_prefix_kept": kept,
            "mean_ttft_ms_prefix_prefilled": full,
            "arena_bytes": plan.total(),
        }});
        writeln!(out, "{obj}")?;
    } else {
        let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1} ms"));
        writeln!(
            out,
            "{} frames: {} captioned, {} skipped in {secs:.2} s ({per_s:.1} captions/s); mean TTFT {} with the prefix kept, {} with it prefilled",
            totals.frames,
            totals.captioned,
            totals.skipped,
            ms(kept),
            ms(full)
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
