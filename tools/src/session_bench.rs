//! `glimpse bench --session`: what kept state saves, measured side by side in one run.
//!
//! Per resolution, on synthetic frames (smooth gradients that differ per frame):
//! - a stream of frames with the prompt prefix kept in the KV cache against the same
//!   frames with the whole prompt prefilled per frame: TTFT per frame after the first;
//! - a follow-up turn about the same picture (prefills only its own ids) against asking
//!   the same thing from scratch (re-encoding the picture and re-prefilling the whole
//!   transcript): TTFT of the turn.
//!
//! Timings come from the session's clock (TTFT: call start to first sampled token).

use anyhow::Result;
use glimpse_core::Model;
use glimpse_core::planner::ArenaPlan;
use glimpse_core::preprocess::{Frame, PixelFormat};
use glimpse_core::session::{IMAGE_SENTINEL, ImageInput, Prompt, Report, Session, SessionOptions};

use crate::run::{CollectSink, HostClock, arena_for};

/// Figures of one resolution.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct SessionBench {
    /// Input resolution.
    pub resolution: usize,
    /// TTFT of the first frame (prefix prefilled), ms.
    pub first_frame_ttft_ms: f64,
    /// Mean TTFT of the later frames with the prefix kept, ms.
    pub frame_ttft_kept_ms: f64,
    /// Mean TTFT of the same later frames with the whole prompt prefilled, ms.
    pub frame_ttft_prefilled_ms: f64,
    /// Positions the kept prefix saves per frame.
    pub prefix_positions: usize,
    /// TTFT of a follow-up turn with the conversation kept, ms.
    pub follow_up_ttft_ms: f64,
    /// Positions that turn prefilled.
    pub follow_up_positions: usize,
    /// TTFT of asking the same from scratch (encode and whole transcript), ms.
    pub from_scratch_ttft_ms: f64,
    /// Positions asking from scratch prefilled.
    pub from_scratch_positions: usize,
}

/// A `side x side` RGB888 gradient, different for each `k`.
fn frame_bytes(side: usize, k: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(side * side * 3);
    for y in 0..side {
        for x in 0..side {
            let t = k * 37;
            v.push(((x * 255 / side + t) % 256) as u8);
            v.push(((y * 255 / side + 2 * t) % 256) as u8);
            v.push((((x + y) * 127 / side + 3 * t) % 256) as u8);
        }
    }
    v
}

fn ms(us: u64) -> f64 {
    us as f64 / 1e3
}

const QUESTION: &str = "Describe the image.";
const FOLLOW_UP: &str = "What is in the top left corner, and what colour is it?";

fn run_frames(
    image: &Model<'_>,
    opts: &SessionOptions,
    frames: &[Vec<u8>],
    side: usize,
) -> Result<Vec<Report>> {
    let plan = ArenaPlan::new(image, &opts.plan)?;
    let mut arena = arena_for(&plan);
    let mut s = Session::new(image, &mut arena, HostClock::new(), opts.clone())?;
    let mut out = Vec::new();
    for f in frames {
        let frame = Frame {
            width: side,
            height: side,
            format: PixelFormat::Rgb888,
            data: f,
        };
        out.push(s.run(
            Prompt::chat(QUESTION),
            Some(ImageInput::Frame(frame)),
            &mut CollectSink::default(),
        )?);
    }
    Ok(out)
}

/// Measure at `resolution` with `frames` frames of the stream (at least 2).
pub fn bench_session(image: &Model<'_>, resolution: usize, frames: usize) -> Result<SessionBench> {
    let side = resolution;
    let pictures: Vec<Vec<u8>> = (0..frames.max(2)).map(|k| frame_bytes(side, k)).collect();
    let mut opts =
        SessionOptions::for_model(image, Some(side), FOLLOW_UP.len().max(QUESTION.len()));
    opts.plan.resolution = Some(resolution);
    opts.max_new_tokens = 1;
    let mut kept_opts = opts.clone();
    kept_opts.plan.kv_across_pictures = true;
    let kept = run_frames(image, &kept_opts, &pictures, side)?;
    let full = run_frames(image, &opts, &pictures, side)?;
    let mean = |r: &[Report]| {
        r.iter().skip(1).map(|r| ms(r.timings.ttft_us)).sum::<f64>() / (r.len() - 1) as f64
    };
    let mut b = SessionBench {
        resolution,
        first_frame_ttft_ms: ms(kept[0].timings.ttft_us),
        frame_ttft_kept_ms: mean(&kept),
        frame_ttft_prefilled_ms: mean(&full),
        prefix_positions: kept.get(1).map_or(0, |r| r.reused_positions),
        ..SessionBench::default()
    };

    // A conversation: a 16-token answer, then the follow-up; then the same transcript
    // asked from scratch in a reset session.
    let plan = ArenaPlan::new(image, &opts.plan)?;
    let mut arena = arena_for(&plan);
    let mut s = Session::new(image, &mut arena, HostClock::new(), opts.clone())?;
    let frame = Frame {
        width: side,
        height: side,
        format: PixelFormat::Rgb888,
        data: &pictures[0],
    };
    s.set_max_new_tokens(16);
    s.run(
        Prompt::chat(QUESTION),
        Some(ImageInput::Frame(frame)),
        &mut CollectSink::default(),
    )?;
    s.set_max_new_tokens(1);
    let r = s.run(Prompt::chat(FOLLOW_UP), None, &mut CollectSink::default())?;
    b.follow_up_ttft_ms = ms(r.timings.ttft_us);
    b.follow_up_positions = r.prompt_positions;
    let marker = image
        .config()
        .decoder
        .as_ref()
        .and_then(|d| d.image_token_id)
        .ok_or_else(|| anyhow::anyhow!("the model has no image token id"))?;
    let transcript: Vec<u32> = s
        .history()
        .iter()
        .map(|&id| if id == IMAGE_SENTINEL { marker } else { id })
        .collect();
    s.reset();
    let r = s.run(
        Prompt::Ids(&transcript),
        Some(ImageInput::Frame(frame)),
        &mut CollectSink::default(),
    )?;
    b.from_scratch_ttft_ms = ms(r.timings.ttft_us);
    b.from_scratch_positions = r.prompt_positions;
    Ok(b)
}

/// Print one table of [`SessionBench`] rows.
pub fn print(rows: &[SessionBench]) {
    println!(
        "| res  | first frame | later frames: prefix kept | prefilled | (prefix) | follow-up turn (positions) | from scratch (positions) |"
    );
    println!(
        "|------|-------------|---------------------------|-----------|----------|----------------------------|--------------------------|"
    );
    for r in rows {
        println!(
            "| {:>4} | {:>8.1} ms | {:>22.1} ms | {:>6.1} ms | {:>8} | {:>14.1} ms ({:>5}) | {:>12.1} ms ({:>5}) |",
            r.resolution,
            r.first_frame_ttft_ms,
            r.frame_ttft_kept_ms,
            r.frame_ttft_prefilled_ms,
            r.prefix_positions,
            r.follow_up_ttft_ms,
            r.follow_up_positions,
            r.from_scratch_ttft_ms,
            r.from_scratch_positions
        );
    }
}
