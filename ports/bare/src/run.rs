//! Running one request on a device: verify the weights image, then hand the request
//! (prompt, optional camera frame) to the core's [`Session`] over an arena planned the way
//! the host's `glimpse run` plans it, streaming every token to a [`TokenSink`] and
//! counting each phase.
//!
//! [`run_request`] is the single place a firmware turns a request into tokens. Its
//! session options come from the core's [`SessionOptions::for_model`], the defaults
//! `glimpse run` starts from too (native resolution, a context of the model's maximum
//! capped at the planner's default, f16 KV, the default prefill chunk, prompt and frame
//! bounds from the request itself), so host and firmware run the same plan and
//! arithmetic, which is what lets the simulated ports promise the host's tokens. The
//! prompt goes to [`Session::run`] as a chat turn, or as raw text; the generated ids are
//! read back through the session.

use glimpse_core::Model;
use glimpse_core::arena::ALIGN;
use glimpse_core::decoder::KvFormat;
use glimpse_core::planner::ArenaPlan;
use glimpse_core::session::{ImageInput, Prompt, Session, SessionOptions};
use glimpse_hal::{MonotonicClock, Sequential, TokenSink};
use glimpse_quant::schema::ChatTemplate;

use crate::error::Error;
use crate::request::Request;

/// A free-running counter the run is measured with: retired instructions where the port
/// can count them (QEMU with `-icount`), cycles or ticks elsewhere, 0 when there is none.
pub trait Counter {
    /// The current count.
    fn read(&mut self) -> u64;
}

/// No counter: every phase measures 0.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoCounter;

impl Counter for NoCounter {
    fn read(&mut self) -> u64 {
        0
    }
}

/// Counter deltas of the phases of one run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Phases {
    /// Parsing the image and verifying every checksum.
    pub verify: u64,
    /// Preprocessing the frame, the vision encoder and the projector (0 without a frame).
    pub vision: u64,
    /// Planning, tokenizing and prefilling the prompt, up to the first sampled token
    /// (the vision phase excluded).
    pub prefill: u64,
    /// Every later token.
    pub decode: u64,
}

impl Phases {
    /// All phases together.
    pub fn total(&self) -> u64 {
        self.verify
            .saturating_add(self.vision)
            .saturating_add(self.prefill)
            .saturating_add(self.decode)
    }
}

/// What a run produced and what it cost.
#[derive(Clone, Debug)]
pub struct Report<'a> {
    /// The model's name from the image config.
    pub model: heapless::String<64>,
    /// Prompt length in text tokens (BOS and template included, the image left out).
    pub prompt_tokens: usize,
    /// Image tokens spliced into the prompt (0 without a frame).
    pub image_tokens: usize,
    /// Generated ids, the stop token included when one ended the run.
    pub tokens: &'a [u32],
    /// Whether a stop token ended the run (rather than the token budget).
    pub stopped: bool,
    /// Arena bytes the run was planned for and used (the session's plan, plus the
    /// padding to its first aligned byte).
    pub arena_peak: usize,
    /// Arena size.
    pub arena_capacity: usize,
    /// Weights image size.
    pub weights_bytes: usize,
    /// The planned context (positions of the KV cache).
    pub context: usize,
    /// The KV cache format.
    pub kv: KvFormat,
    /// Counter deltas per phase.
    pub counts: Phases,
}

/// The firmware's counter as the session's clock: the session's "microseconds" are then
/// counter ticks (instructions under QEMU), and its per-phase timings are the counts.
struct CounterClock<'c, C>(&'c mut C);

impl<C: Counter> MonotonicClock for CounterClock<'_, C> {
    fn now_us(&mut self) -> u64 {
        self.0.read()
    }
}

/// Whether the host's `glimpse run` would take the request's prompt as ids tokenized
/// as-is (no chat template): `--raw`, or a model without a template and no picture.
fn is_raw(req: &Request<'_>, template: &ChatTemplate) -> bool {
    req.raw || (matches!(template, ChatTemplate::None) && req.frame.is_none())
}

/// The session options for `req` on `image`: the core's defaults for the model, the
/// frame and the prompt ([`SessionOptions::for_model`], which `glimpse run` starts from
/// too), with the request's sampler and token budget.
fn session_options(req: &Request<'_>, image: &Model<'_>) -> SessionOptions {
    let prompt_bytes = req.prompt.len() + req.system.map_or(0, str::len);
    let frame_side = req.frame.as_ref().map(|f| f.width.max(f.height));
    SessionOptions {
        max_new_tokens: req.max_tokens as usize,
        // W8A8: the request blob has no field for the activations yet.
        ..SessionOptions::for_model(image, frame_side, prompt_bytes).with_sampler(req.sampler)
    }
}

/// Run `req` against the weights image in `weights`, streaming every generated token to
/// `sink`, with every buffer carved from `arena`. Verifies every checksum of the image
/// first. The returned report borrows the generated ids from the arena.
pub fn run_request<'a, S: TokenSink, C: Counter>(
    weights: &[u8],
    req: &Request<'_>,
    arena: &'a mut [u8],
    sink: &mut S,
    counter: &mut C,
) -> Result<Report<'a>, Error> {
    if req.stream.is_some() {
        return Err(Error::Unsupported(
            "a frame stream request: run it with run_stream",
        ));
    }
    let t0 = counter.read();
    let image = Model::parse(weights)?;
    image.verify()?;
    let t1 = counter.read();

    if req.frame.is_some() && image.config().vision.is_none() {
        return Err(Error::Unsupported(
            "camera frames need a VLM image; this one has no vision encoder",
        ));
    }
    let template = image
        .config()
        .tokenizer
        .as_ref()
        .map_or(ChatTemplate::None, |t| t.chat.clone());
    let raw = is_raw(req, &template);
    if raw && req.frame.is_some() {
        return Err(Error::Unsupported(
            "a raw prompt cannot place the picture; send it chat-templated",
        ));
    }
    let opts = session_options(req, &image);
    let plan = ArenaPlan::new(&image, &opts.plan)?;
    let capacity = arena.len();
    let pad = arena.as_ptr().align_offset(ALIGN).min(ALIGN);
    // One core: the session is handed the sequential executor explicitly.
    let mut session =
        Session::new(&image, arena, CounterClock(&mut *counter), opts)?.with_executor(Sequential);
    let prompt = if raw {
        Prompt::Text(req.prompt)
    } else {
        Prompt::Chat {
            system: req.system,
            user: req.prompt,
        }
    };
    let report = session.run(prompt, req.frame.map(ImageInput::Frame), sink)?;
    let tokens = session.into_generated();
    let t3 = counter.read();

    let t = report.timings;
    let vision = t
        .preprocess_us
        .saturating_add(t.encoder_us)
        .saturating_add(t.projector_us);
    // Planning and tokenizing count as prefill: everything from the verified image to the
    // first token that is not the vision phase.
    let run = t3.wrapping_sub(t1);
    let decode = t.decode_us.min(run);
    let prefill = run.saturating_sub(decode).saturating_sub(vision);
    Ok(Report {
        model: image.config().name.clone(),
        // Text positions: the image's one placeholder id is counted as its image tokens.
        prompt_tokens: report.prompt_positions.saturating_sub(report.image_tokens),
        image_tokens: report.image_tokens,
        tokens,
        stopped: report.stopped,
        arena_peak: plan.total().saturating_add(pad),
        arena_capacity: capacity,
        weights_bytes: weights.len(),
        context: plan.options.max_context,
        kv: plan.options.kv,
        counts: Phases {
            verify: t1.wrapping_sub(t0),
            vision,
            prefill,
            decode,
        },
    })
}

/// What happened to one frame of a stream.
#[derive(Clone, Copy, Debug)]
pub struct FrameOutcome<'t> {
    /// 0-based index in the stream.
    pub index: usize,
    /// Skipped by the change gate (nothing was run; its caption is the last one).
    pub skipped: bool,
    /// Its difference from the last captioned frame (fraction of full scale).
    pub change: f32,
    /// The caption's ids (empty when skipped).
    pub tokens: &'t [u32],
    /// Whether a stop token ended the caption.
    pub stopped: bool,
    /// Positions prefilled for this frame (its image tokens and the prompt after them,
    /// plus the prefix when it was not kept).
    pub prefilled: usize,
    /// Positions kept in the KV cache from the previous frame (the prompt prefix).
    pub reused: usize,
    /// Counter delta of the frame: capture, gate, encoder, prefill and decode.
    pub count: u64,
}

/// Where a stream's frames go as they are captioned: the caption's text streams through
/// the [`TokenSink`], then [`FrameObserver::frame`] sees the outcome.
pub trait FrameObserver {
    /// One frame is done (captioned or skipped).
    fn frame(&mut self, outcome: &FrameOutcome<'_>) -> Result<(), Error>;
}

/// What a stream did.
#[derive(Clone, Debug)]
pub struct StreamReport {
    /// The model's name from the image config.
    pub model: heapless::String<64>,
    /// Frames captured.
    pub frames: usize,
    /// Frames captioned.
    pub captioned: usize,
    /// Frames skipped by the gate.
    pub skipped: usize,
    /// Arena bytes: the session's plan (with its alignment padding) and the capture buffer.
    pub arena_peak: usize,
    /// Arena size.
    pub arena_capacity: usize,
    /// Counter delta of parsing and verifying the weights image.
    pub verify: u64,
    /// Counter deltas of the first captioned frame and of all later captioned ones.
    pub first_frame: u64,
    /// Sum over the captioned frames after the first.
    pub later_frames: u64,
}

/// Caption every frame of `req`'s stream with one session (prompt prefix kept unless the
/// request says not to, unchanged frames skipped), capturing each from the ring through
/// a [`RingSource`](crate::request::RingSource) into a buffer carved from `arena` after the session's plan. Text
/// streams to `out`, which also sees each frame's outcome.
pub fn run_stream<O: TokenSink + FrameObserver, C: Counter>(
    weights: &[u8],
    req: &Request<'_>,
    arena: &mut [u8],
    out: &mut O,
    counter: &mut C,
) -> Result<StreamReport, Error> {
    use glimpse_core::preprocess::Frame;
    use glimpse_core::stream::FrameStream;
    use glimpse_hal::FrameSource;

    use crate::request::RingSource;

    let t0 = counter.read();
    let image = Model::parse(weights)?;
    image.verify()?;
    let verify = counter.read().wrapping_sub(t0);
    let stream = req
        .stream
        .ok_or(Error::Unsupported("the request holds no frame stream"))?;
    if image.config().vision.is_none() {
        return Err(Error::Unsupported(
            "camera frames need a VLM image; this one has no vision encoder",
        ));
    }
    if req.raw {
        return Err(Error::Unsupported(
            "a raw prompt cannot place the picture; send it chat-templated",
        ));
    }
    let mut opts = session_options(req, &image);
    opts.plan.kv_across_pictures = stream.keep_prefix;
    let plan = ArenaPlan::new(&image, &opts.plan)?;
    let capacity = arena.len();
    let pad = arena.as_ptr().align_offset(ALIGN).min(ALIGN);
    let session_len = plan.total().saturating_add(pad);
    let frame_len = stream.frames.frame_len();
    let needed = session_len.saturating_add(frame_len);
    if needed > capacity {
        return Err(Error::Core(glimpse_core::Error::Arena { needed, capacity }));
    }
    let (front, capture) = arena.split_at_mut(session_len);
    let capture = capture.get_mut(..frame_len).unwrap_or_default();
    let mut session =
        Session::new(&image, front, CounterClock(&mut *counter), opts)?.with_executor(Sequential);
    let prompt = Prompt::Chat {
        system: req.system,
        user: req.prompt,
    };
    let mut source = RingSource::new(stream.frames);
    let mut gate = FrameStream::new(stream.min_change);
    let mut report = StreamReport {
        model: image.config().name.clone(),
        frames: 0,
        captioned: 0,
        skipped: 0,
        arena_peak: needed,
        arena_capacity: capacity,
        verify,
        first_frame: 0,
        later_frames: 0,
    };
    while source.remaining() > 0 {
        let start = session.clock().now_us();
        let info = source
            .capture(capture)
            .map_err(|_| Error::Unsupported("the frame ring ended early"))?;
        let frame = Frame {
            width: info.width as usize,
            height: info.height as usize,
            format: info.format,
            data: &*capture,
        };
        let r = gate.caption(&mut session, prompt, frame, &mut *out)?;
        let count = session.clock().now_us().wrapping_sub(start);
        let run = r.run.unwrap_or_default();
        if !r.skipped {
            if gate.counts().captioned == 1 {
                report.first_frame = count;
            } else {
                report.later_frames = report.later_frames.saturating_add(count);
            }
        }
        let outcome = FrameOutcome {
            index: r.frame,
            skipped: r.skipped,
            change: r.change,
            tokens: if r.skipped { &[] } else { session.generated() },
            stopped: run.stopped,
            prefilled: run.prompt_positions,
            reused: run.reused_positions,
            count,
        };
        out.frame(&outcome)?;
    }
    let c = gate.counts();
    report.frames = c.frames;
    report.captioned = c.captioned;
    report.skipped = c.skipped;
    Ok(report)
}
