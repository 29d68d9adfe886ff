//! The Session API: one weights image, one planned arena, a clock and the conversation
//! so far. [`Session::run`] is the one call every caller makes (the CLI, the demo, the
//! firmwares, the tests): it adds a prompt (a chat turn, raw text or ids), optionally
//! with a picture, and streams the answer's tokens to a sink, timing each step.
//!
//! ```text
//! run(prompt, picture, sink)
//!   tokenize   chat template (first turn or follow-up), BPE around `<image>` (ids)
//!   preprocess frame -> 3 x R x R pixels                                   (pixels)
//!   encode     stem -> stages -> conv_exp                                  (features)
//!   project    mlp2x_gelu                                                  (embeddings)
//!   prefill    only the ids the KV cache does not hold yet, chunk by chunk (KV cache)
//!   decode     sample, stream to the sink, feed back, until a stop token
//! ```
//!
//! What a session keeps: the ids of the conversation (in the ids buffer) and the KV cache
//! of every position fed so far. A call without a picture continues the conversation:
//! only its new ids (and the last answer's final token, sampled but not yet fed) are
//! prefilled. A call with a picture starts a new conversation about it, but keeps the
//! cached positions of the prompt before the picture when they are the same ids (a frame
//! stream prefills its system prompt and template head once) and the plan keeps the
//! cache through the vision phases ([`PlanOptions::kv_across_pictures`]). [`Session::reset`]
//! forgets everything. Kept state is exact: chunked prefill and single-token decode do
//! the same arithmetic per position, so a kept answer equals, to the bit, the answer of a
//! fresh session fed the same ids.
//!
//! Every buffer is a region of the [`ArenaPlan`] made when the session is created, handed
//! out per phase as disjoint slices ([`ArenaPlan::regions`]), so a run can touch no byte
//! outside the plan, and an arena too small for the plan is refused by [`Session::new`]
//! before anything runs. Each call checks its inputs (picture, prompt length, ids,
//! context) before the first step, so a refused call leaves the conversation as it was.
//! A call that fails later (a sink error, say) leaves the conversation at what the KV
//! cache holds.
//!
//! Image splicing follows the two conventions of spec section 5: a chat prompt splits the
//! rendered text at `<image>` and inserts every image embedding there (Apple's `-200`
//! sentinel, [`IMAGE_SENTINEL`] here); an ids prompt takes the config's image-token id
//! either once (expanded the same way) or once per image token (overwritten in order, as
//! transformers' `FastVlm` does).

use glimpse_hal::{Error as _, ErrorType, Executor, MonotonicClock, TokenSink};

use crate::arena::{ALIGN, Arena};
use crate::chat::{IM_END, IMAGE_PLACEHOLDER, Turn, render, render_follow_up};
use crate::decoder::{DEFAULT_CHUNK, Decoder, DecoderState, Input, KvFormat, Logits};
use crate::error::Error;
use crate::image::Model;
use crate::kernels::Ctx;
use crate::kernels::linear::Q8Activations;
use crate::kernels::par::with_default_executor;
use crate::planner::{ArenaPlan, Buf, DEFAULT_CONTEXT, DEFAULT_MAX_FRAME_SIDE, PlanOptions};
use crate::preprocess::{Frame, check_frame, preprocess};
use crate::projector::Projector;
use crate::sampler::{Sampler, SamplerConfig, StopTokens};
use crate::tokenizer::{Specials, Tokenizer, TokenizerError, Utf8Stream, Workspace};
use crate::vision::VisionEncoder;

/// The id a chat prompt puts where the image goes (Apple's `IMAGE_TOKEN_INDEX`, -200, as
/// an id no vocabulary has). It shows up in [`Session::history`].
pub const IMAGE_SENTINEL: u32 = u32::MAX;

/// How a session runs.
#[derive(Clone, Debug, PartialEq)]
pub struct SessionOptions {
    /// What the arena is planned for (resolution, context, KV format, bounds).
    pub plan: PlanOptions,
    /// Sampling settings (greedy by default).
    pub sampler: SamplerConfig,
    /// Most tokens one call generates (a stop token counts and ends it).
    pub max_new_tokens: usize,
    /// Ids that end generation; `None` takes the model's (its EOS ids and `<|im_end|>`).
    pub stop: Option<StopTokens>,
    /// How the decoder's activations meet Q8_0 weights (W8A8 by default; the vision
    /// encoder and projector always run W8A8).
    pub q8_activations: Q8Activations,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            plan: PlanOptions::default(),
            sampler: SamplerConfig::default(),
            max_new_tokens: 256,
            stop: None,
            q8_activations: Q8Activations::Int8,
        }
    }
}

impl SessionOptions {
    /// The options every caller starts from for `image` (the CLI's defaults, which the
    /// firmwares use too, so host and device plan and compute the same): native
    /// resolution, a context of the model's maximum capped at [`DEFAULT_CONTEXT`], f16
    /// KV, the default prefill chunk, greedy sampling, prompts (user text plus any system
    /// text) up to `prompt_bytes`, and frames up to `frame_side` pixels on their longer
    /// side (`None`: a text-only run, no vision phases planned).
    pub fn for_model(image: &Model<'_>, frame_side: Option<usize>, prompt_bytes: usize) -> Self {
        let max_context = image
            .config()
            .decoder
            .as_ref()
            .map_or(DEFAULT_CONTEXT, |d| {
                DEFAULT_CONTEXT.min(d.max_positions.max(1) as usize)
            });
        SessionOptions {
            plan: PlanOptions {
                resolution: None,
                max_context,
                kv: KvFormat::F16,
                chunk: DEFAULT_CHUNK,
                max_frame_side: frame_side.unwrap_or(DEFAULT_MAX_FRAME_SIDE).max(1),
                max_prompt_bytes: prompt_bytes.max(1),
                sampling: false,
                vision: frame_side.is_some(),
                kv_across_pictures: false,
            },
            ..SessionOptions::default()
        }
    }

    /// The plan these options need: [`SessionOptions::plan`] with the sampler's scratch
    /// added when the sampler is not greedy (what [`Session::new`] plans).
    pub fn plan_options(&self) -> PlanOptions {
        let mut plan = self.plan;
        plan.sampling |= !self.sampler.is_greedy();
        plan
    }

    /// The same options with `sampler` (and the sampler scratch planned when it samples).
    pub fn with_sampler(mut self, sampler: SamplerConfig) -> Self {
        self.plan.sampling = !sampler.is_greedy();
        self.sampler = sampler;
        self
    }
}

/// What a call adds to the conversation.
#[derive(Clone, Copy, Debug)]
pub enum Prompt<'p> {
    /// A user turn through the model's chat template. The first turn of a conversation
    /// renders the system turn (`system`, or the template's default when `None`) and the
    /// picture's placeholder; a follow-up turn continues the transcript and ignores
    /// `system`.
    Chat {
        /// System text for a first turn (`None`: the template's default).
        system: Option<&'p str>,
        /// The user's message.
        user: &'p str,
    },
    /// Text tokenized as it is, with control-token spellings kept as text (BOS first when
    /// the tokenizer adds one and the conversation is empty). No picture can be placed.
    Text(&'p str),
    /// Token ids as they are. With a picture, the config's image-token id marks it, once
    /// or once per image token.
    Ids(&'p [u32]),
}

impl<'p> Prompt<'p> {
    /// A chat turn with the template's default system text.
    pub fn chat(user: &'p str) -> Self {
        Prompt::Chat { system: None, user }
    }
}

/// A picture: a camera frame, or pixels already preprocessed.
#[derive(Clone, Copy, Debug)]
pub enum ImageInput<'f> {
    /// RGB888 or RGB565, any size up to the plan's `max_frame_side`.
    Frame(Frame<'f>),
    /// Planar `3 x R x R` values in [0, 1] at the plan's resolution.
    Pixels(&'f [f32]),
}

/// Where [`Session::logits`] writes.
#[derive(Debug)]
pub enum LogitsOut<'o> {
    /// The last position's logits (`vocab` values).
    Last(&'o mut [f32]),
    /// Every position's (`positions x vocab`; an image contributes one row per token).
    All(&'o mut [f32]),
}

/// Microseconds per step of one call (from the session's clock). `ttft_us` runs from
/// the call to the first sampled token and includes every step before it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Timings {
    /// Chat template and tokenizer.
    pub tokenize_us: u64,
    /// Frame to pixels.
    pub preprocess_us: u64,
    /// Vision encoder.
    pub encoder_us: u64,
    /// Projector.
    pub projector_us: u64,
    /// Prefill of the positions this call added (text and image).
    pub prefill_us: u64,
    /// Call start to the first sampled token.
    pub ttft_us: u64,
    /// Every decode step after the first token.
    pub decode_us: u64,
}

/// What one call did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Report {
    /// Ids the call's prompt added (an image counts once in the chat form, once per token
    /// when the ids say so); [`Session::prompt_ids`] lists them.
    pub prompt_ids: usize,
    /// Positions this call prefilled: its prompt (image tokens included), plus the last
    /// answer's final token when the call continues a conversation.
    pub prompt_positions: usize,
    /// Positions already in the KV cache that the call kept (0 for a fresh start).
    pub reused_positions: usize,
    /// Image tokens spliced in by this call (0 without a picture).
    pub image_tokens: usize,
    /// Tokens generated, the stop token included.
    pub generated: usize,
    /// Whether a stop token ended generation (rather than the limit or the context).
    pub stopped: bool,
    /// Single-token decode steps run (generated tokens fed back).
    pub decode_steps: usize,
    /// Step timings.
    pub timings: Timings,
}

/// Where the image goes in the ids of a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Splice {
    /// The id that marks image positions.
    marker: u32,
    /// One marker stands for every image token (else one marker per token).
    expand: bool,
}

/// What a session keeps between calls: indices into the ids buffer and the number of
/// positions the KV cache holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Conversation {
    /// Ids of the conversation in the ids buffer (prompts and answers).
    ids: usize,
    /// Leading ids whose positions are in the KV cache (an answer's last id is sampled
    /// but not fed until the next call).
    fed: usize,
    /// Positions the KV cache holds (the fed ids, an expanded image counted in full).
    positions: usize,
    /// First id of the picture and how it is spliced, when the conversation has one.
    image: Option<(usize, Splice)>,
    /// The last call's prompt ids: start and count.
    prompt: (usize, usize),
    /// The last call's generated ids: start and count.
    answer: (usize, usize),
}

/// A sink for calls that generate nothing.
struct NoSink;

impl ErrorType for NoSink {
    type Error = core::convert::Infallible;
}

impl TokenSink for NoSink {
    fn token(&mut self, _: u32, _: &[u8]) -> Result<(), Self::Error> {
        Ok(())
    }
}

/// A FastVLM (or text-only) model, an arena planned for it, a clock and the conversation
/// so far. See the module docs.
pub struct Session<'a, 'w, C, X = PortDefault> {
    image: &'w Model<'w>,
    /// The aligned part of the caller's arena, exactly [`ArenaPlan::total`] bytes.
    arena: &'a mut [u8],
    plan: ArenaPlan,
    clock: C,
    options: SessionOptions,
    stops: StopTokens,
    decoder: Decoder<'w>,
    vision: Option<(VisionEncoder<'w>, Projector<'w>)>,
    tokenizer: Option<Tokenizer<'w>>,
    conv: Conversation,
    /// Where the work is split: the executor handed to the session, or [`PortDefault`]
    /// (`None` only while a call has it).
    exec: Option<X>,
}

/// Where a session's work runs: an executor handed to it ([`Session::with_executor`]),
/// or [`PortDefault`].
pub trait Runner {
    /// Run `f` with the executor.
    fn with<R>(&mut self, f: impl FnOnce(&mut dyn Executor) -> R) -> R;
}

/// The process-wide default executor ([`with_default_executor`]: sequential unless the
/// port installed one), what a session runs on until it is handed one; the host's
/// convenience.
#[derive(Clone, Copy, Debug, Default)]
pub struct PortDefault;

impl Runner for PortDefault {
    fn with<R>(&mut self, f: impl FnOnce(&mut dyn Executor) -> R) -> R {
        with_default_executor(f)
    }
}

impl<E: Executor> Runner for E {
    fn with<R>(&mut self, f: impl FnOnce(&mut dyn Executor) -> R) -> R {
        f(self)
    }
}

impl<C, X> core::fmt::Debug for Session<'_, '_, C, X> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Session")
            .field("model", &self.image.config().name)
            .field("plan", &self.plan)
            .field("options", &self.options)
            .field("conversation", &self.conv)
            .finish_non_exhaustive()
    }
}

fn f32s(bytes: &mut [u8]) -> Result<&mut [f32], Error> {
    let len = bytes.len();
    if len == 0 {
        // An absent buffer: its dangling pointer need not be aligned.
        return Ok(&mut []);
    }
    bytemuck::try_cast_slice_mut(bytes).map_err(|_| Error::Length {
        what: "planned f32 buffer (alignment or length)",
        expected: len.next_multiple_of(4),
        got: len,
    })
}

fn u32s(bytes: &mut [u8]) -> Result<&mut [u32], Error> {
    let len = bytes.len();
    if len == 0 {
        // An absent buffer: its dangling pointer need not be aligned.
        return Ok(&mut []);
    }
    bytemuck::try_cast_slice_mut(bytes).map_err(|_| Error::Length {
        what: "planned u32 buffer (alignment or length)",
        expected: len.next_multiple_of(4),
        got: len,
    })
}

impl<'a, 'w, C: MonotonicClock> Session<'a, 'w, C> {
    /// Plan the arena for `image` and `options` and check that `arena` holds the plan
    /// (from its first [`ALIGN`]-aligned byte). Too small an arena is
    /// [`Error::Arena`] with the exact size that would do; nothing is written to it.
    pub fn new(
        image: &'w Model<'w>,
        arena: &'a mut [u8],
        clock: C,
        options: SessionOptions,
    ) -> Result<Self, Error> {
        let plan = ArenaPlan::new(image, &options.plan_options())?;
        let len = arena.len();
        let pad = arena.as_ptr().align_offset(ALIGN).min(ALIGN);
        let needed = plan.total().saturating_add(pad);
        let Some(aligned) = arena.get_mut(pad..needed) else {
            return Err(Error::Arena {
                needed,
                capacity: len,
            });
        };
        let decoder = Decoder::new(image)?.with_q8_activations(options.q8_activations);
        let vision = if plan.has_vision() {
            Some((VisionEncoder::new(image)?, Projector::new(image)?))
        } else {
            None
        };
        let tokenizer = match Tokenizer::from_image(image) {
            Ok(t) => Some(t),
            Err(TokenizerError::NoTokenizer) => None,
            Err(e) => return Err(Error::Tokenizer(e)),
        };
        let stops = match &options.stop {
            Some(s) => s.clone(),
            None => StopTokens::for_model(Some(decoder.config()), tokenizer.as_ref()),
        };
        Ok(Session {
            image,
            arena: aligned,
            plan,
            clock,
            options,
            stops,
            decoder,
            vision,
            tokenizer,
            conv: Conversation::default(),
            exec: Some(PortDefault),
        })
    }
}

impl<'a, 'w, C: MonotonicClock, X: Runner> Session<'a, 'w, C, X> {
    /// The same session running on `exec` (a firmware's executor, a host thread pool, or
    /// `&mut` one): every kernel of every call splits its work across it, whatever the
    /// process-wide default is. Results are the same to the bit for any executor.
    pub fn with_executor<E: Executor>(self, exec: E) -> Session<'a, 'w, C, E> {
        let exec = Some(exec);
        Session {
            image: self.image,
            arena: self.arena,
            plan: self.plan,
            clock: self.clock,
            options: self.options,
            stops: self.stops,
            decoder: self.decoder,
            vision: self.vision,
            tokenizer: self.tokenizer,
            conv: self.conv,
            exec,
        }
    }

    /// The plan the arena follows.
    pub fn plan(&self) -> &ArenaPlan {
        &self.plan
    }

    /// The options.
    pub fn options(&self) -> &SessionOptions {
        &self.options
    }

    /// The most tokens one call generates, changeable between calls (the plan does not
    /// depend on it).
    pub fn set_max_new_tokens(&mut self, n: usize) {
        self.options.max_new_tokens = n;
    }

    /// The clock, e.g. to read it between calls.
    pub fn clock(&mut self) -> &mut C {
        &mut self.clock
    }

    /// Forget the conversation: the next call starts from an empty KV cache.
    pub fn reset(&mut self) {
        self.conv = Conversation::default();
    }

    /// Positions the KV cache holds for the conversation.
    pub fn cached_positions(&self) -> usize {
        self.conv.positions
    }

    /// Positions of the context not used yet (the next call's prompt and answer share
    /// them; the last answer's final token takes one).
    pub fn remaining_positions(&self) -> usize {
        let pending = self.conv.ids.saturating_sub(self.conv.fed);
        self.plan
            .options
            .max_context
            .saturating_sub(self.conv.positions.saturating_add(pending))
    }

    fn ids(&self) -> &[u32] {
        let r = self.plan.range(Buf::Ids);
        let bytes = self.arena.get(r).unwrap_or(&[]);
        bytemuck::try_cast_slice(bytes).unwrap_or(&[])
    }

    fn ids_at(&self, (start, len): (usize, usize)) -> &[u32] {
        self.ids()
            .get(start..start.saturating_add(len))
            .unwrap_or(&[])
    }

    /// The conversation's ids: every prompt (with [`IMAGE_SENTINEL`] or the image-token
    /// ids where the picture went) and every answer, in order.
    pub fn history(&self) -> &[u32] {
        self.ids_at((0, self.conv.ids))
    }

    /// The last call's prompt ids.
    pub fn prompt_ids(&self) -> &[u32] {
        self.ids_at(self.conv.prompt)
    }

    /// The last call's generated ids, the stop token included when one ended it.
    pub fn generated(&self) -> &[u32] {
        self.ids_at(self.conv.answer)
    }

    /// The last call's generated ids, outliving the session (a firmware reports them
    /// after the session, and its borrow of the arena, are gone).
    pub fn into_generated(self) -> &'a [u32] {
        let (start, len) = self.conv.answer;
        let arena: &'a [u8] = self.arena;
        let ids: &'a [u32] = arena
            .get(self.plan.range(Buf::Ids))
            .and_then(|b| bytemuck::try_cast_slice(b).ok())
            .unwrap_or(&[]);
        ids.get(start..start.saturating_add(len)).unwrap_or(&[])
    }

    /// Add `prompt` (with `picture`, which starts a new conversation about it) and stream
    /// the answer to `sink`; see the module docs for what is kept. Refused before any
    /// work, leaving the conversation as it was: a picture when the plan has no vision
    /// encoder or one that does not fit it, an empty or too long prompt, ids out of the
    /// vocabulary, and a turn that would overflow the context ([`Error::ContextOverflow`]).
    pub fn run<S: TokenSink>(
        &mut self,
        prompt: Prompt<'_>,
        picture: Option<ImageInput<'_>>,
        sink: &mut S,
    ) -> Result<Report, Error> {
        let max_new = self.options.max_new_tokens;
        self.call(prompt, picture, None, Some((max_new, sink)))
    }

    /// [`Session::run`] teacher-forced: add `prompt` (and `picture`) to the conversation
    /// like a turn, but write the logits of the positions this call prefills instead of
    /// generating: the last one's, or every one's (`positions x vocab`, the previous
    /// answer's final token first when the call continues a conversation; an image
    /// contributes one row per token). A wrong-sized `out` is refused before any work.
    pub fn score(
        &mut self,
        prompt: Prompt<'_>,
        picture: Option<ImageInput<'_>>,
        out: LogitsOut<'_>,
    ) -> Result<Report, Error> {
        self.call::<NoSink>(prompt, picture, Some(out), None)
    }

    /// Teacher-forced logits of prompt ids in a new conversation, with an optional image
    /// spliced at the config's image-token id: [`Session::reset`], then
    /// [`Session::score`] with [`Prompt::Ids`].
    pub fn logits(
        &mut self,
        ids: &[u32],
        image: Option<ImageInput<'_>>,
        out: LogitsOut<'_>,
    ) -> Result<Report, Error> {
        self.reset();
        self.score(Prompt::Ids(ids), image, out)
    }

    fn call<S: TokenSink>(
        &mut self,
        prompt: Prompt<'_>,
        picture: Option<ImageInput<'_>>,
        out: Option<LogitsOut<'_>>,
        generate: Option<(usize, &mut S)>,
    ) -> Result<Report, Error> {
        // The runner is moved out for the call so the session can be borrowed whole.
        let mut runner = self.exec.take().ok_or(Error::Config {
            what: "the session's executor is in use",
        })?;
        let r =
            runner.with(|exec| self.call_on(&mut Ctx::new(exec), prompt, picture, out, generate));
        self.exec = Some(runner);
        r
    }

    fn call_on<S: TokenSink>(
        &mut self,
        ctx: &mut Ctx<'_>,
        prompt: Prompt<'_>,
        picture: Option<ImageInput<'_>>,
        out: Option<LogitsOut<'_>>,
        generate: Option<(usize, &mut S)>,
    ) -> Result<Report, Error> {
        let t0 = self.clock.now_us();
        let vocab = self.decoder.shape().vocab;
        let check_out = |positions: usize| {
            let (what, want, got) = match &out {
                None => return Ok(()),
                Some(LogitsOut::Last(o)) => ("last-position logits", vocab, o.len()),
                Some(LogitsOut::All(o)) => (
                    "logits (positions x vocab)",
                    positions.saturating_mul(vocab),
                    o.len(),
                ),
            };
            if want == got {
                Ok(())
            } else {
                Err(Error::Length {
                    what,
                    expected: want,
                    got,
                })
            }
        };
        let splice = self.start_turn(prompt, picture.as_ref(), check_out)?;
        let tokenize_us = self.clock.now_us().saturating_sub(t0);
        let result = self.work(ctx, t0, picture, splice, out, generate);
        if result.is_err() {
            self.settle();
        }
        let mut report = result?;
        report.timings.tokenize_us = tokenize_us;
        Ok(report)
    }

    /// Check a picture against the plan (nothing is touched).
    fn check_picture(&self, input: &ImageInput<'_>) -> Result<(), Error> {
        let vp = self.plan.vision.ok_or(Error::Config {
            what: "a picture was given, but the session plans no vision encoder",
        })?;
        match input {
            ImageInput::Frame(f) => check_frame(f, self.plan.options.max_frame_side),
            ImageInput::Pixels(p) => {
                let want = 3usize
                    .saturating_mul(vp.resolution)
                    .saturating_mul(vp.resolution);
                if p.len() == want {
                    Ok(())
                } else {
                    Err(Error::Length {
                        what: "pixels (3 x resolution x resolution)",
                        expected: want,
                        got: p.len(),
                    })
                }
            }
        }
    }

    /// Check `prompt` and `picture`, write the prompt's ids into the conversation and say
    /// how this call's picture is spliced. A refusal leaves the conversation as it was.
    /// `check` sees the positions the call will prefill, before anything is committed.
    fn start_turn(
        &mut self,
        prompt: Prompt<'_>,
        picture: Option<&ImageInput<'_>>,
        check: impl Fn(usize) -> Result<(), Error>,
    ) -> Result<Option<Splice>, Error> {
        if let Some(p) = picture {
            self.check_picture(p)?;
        }
        let old = self.conv;
        let with_picture = picture.is_some();
        if !with_picture && old.ids > 0 {
            // A follow-up: the new ids go after the conversation.
            let (n, _) = self.write_prompt(prompt, false, old.ids)?;
            let pending = old.ids.saturating_sub(old.fed);
            self.check_context(old.positions.saturating_add(pending).saturating_add(n))?;
            check(pending.saturating_add(n))?;
            self.conv = Conversation {
                ids: old.ids.saturating_add(n),
                prompt: (old.ids, n),
                answer: (old.ids.saturating_add(n), 0),
                ..old
            };
            return Ok(None);
        }
        // A new conversation. With an old one, its ids stay in place while the new ones
        // are written behind them, so the prompt prefix they share is found exactly.
        let (at, (n, marker)) = match self.write_prompt(prompt, with_picture, old.ids) {
            Err(Error::ContextOverflow { .. }) if old.ids > 0 => {
                // No room behind the old conversation: it is given up for the new one.
                self.conv = Conversation::default();
                (0, self.write_prompt(prompt, with_picture, 0)?)
            }
            r => (old.ids, r?),
        };
        let positions = self.positions(n, marker.map(|m| m.1));
        self.check_context(positions)?;
        let reuse = if at == 0 || (with_picture && !self.plan.options.kv_across_pictures) {
            0
        } else {
            let ids = self.ids();
            let old_limit = old.fed.min(old.image.map_or(usize::MAX, |(i, _)| i));
            let new_limit = marker.map_or(n, |(i, _)| i);
            let old_ids = ids.get(..old_limit).unwrap_or(&[]);
            let new_ids = ids.get(at..at.saturating_add(new_limit)).unwrap_or(&[]);
            let same = old_ids
                .iter()
                .zip(new_ids)
                .take_while(|(a, b)| a == b)
                .count();
            // At least one position is prefilled: its logits start the answer.
            same.min(n.saturating_sub(1))
        };
        check(positions.saturating_sub(reuse))?;
        if at > 0 {
            let r = self.plan.range(Buf::Ids);
            let bytes = self.arena.get_mut(r).unwrap_or_default();
            let ids: &mut [u32] = bytemuck::try_cast_slice_mut(bytes).unwrap_or_default();
            if at.saturating_add(n) <= ids.len() {
                ids.copy_within(at..at + n, 0);
            }
        }
        self.conv = Conversation {
            ids: n,
            fed: reuse,
            positions: reuse,
            image: marker,
            prompt: (0, n),
            answer: (n, 0),
        };
        Ok(marker.map(|m| m.1))
    }

    /// After a failed call: keep what the KV cache holds, drop ids not fed.
    fn settle(&mut self) {
        let c = &mut self.conv;
        c.ids = c.fed;
        c.image = c.image.filter(|&(i, _)| i < c.fed);
        c.prompt.1 = c.prompt.1.min(c.fed.saturating_sub(c.prompt.0));
        c.answer.1 = c.answer.1.min(c.fed.saturating_sub(c.answer.0));
    }

    /// Write `prompt`'s ids into the ids buffer from index `at`; `at == 0` makes it a
    /// first turn. Returns the count and, with a picture, the marker's index (relative
    /// to `at`) and splice. Nothing before `at` is touched.
    fn write_prompt(
        &mut self,
        prompt: Prompt<'_>,
        with_picture: bool,
        at: usize,
    ) -> Result<(usize, Option<(usize, Splice)>), Error> {
        match prompt {
            Prompt::Ids(ids) => self.write_ids(ids, with_picture, at),
            Prompt::Text(text) => {
                if with_picture {
                    return Err(Error::Config {
                        what: "a raw text prompt cannot place a picture: send a chat turn, or ids with the image token",
                    });
                }
                self.write_text(text, at)
            }
            Prompt::Chat { system, user } => self.write_chat(system, user, with_picture, at),
        }
    }

    /// Copy `ids` to index `at` after checking them (see [`Prompt::Ids`]).
    fn write_ids(
        &mut self,
        ids: &[u32],
        with_picture: bool,
        at: usize,
    ) -> Result<(usize, Option<(usize, Splice)>), Error> {
        if ids.is_empty() {
            return Err(Error::EmptyInput);
        }
        let splice = if with_picture {
            let marker = self.decoder.config().image_token_id.ok_or(Error::Config {
                what: "the decoder config has no image token id",
            })?;
            let count = ids.iter().filter(|&&id| id == marker).count();
            let tokens = self.plan.image_tokens;
            let expand = match count {
                c if c == tokens => false,
                1 => true,
                c => {
                    return Err(Error::Length {
                        what: "image-token ids in the prompt (one, or one per image token)",
                        expected: tokens,
                        got: c,
                    });
                }
            };
            Some(Splice { marker, expand })
        } else {
            None
        };
        let vocab = self.decoder.shape().vocab;
        if let Some(&id) = ids
            .iter()
            .find(|&&id| id as usize >= vocab && splice.is_none_or(|s| s.marker != id))
        {
            return Err(Error::TokenOutOfRange {
                id,
                vocab: vocab as u32,
            });
        }
        let max = self.plan.options.max_context;
        let [buf] = self.plan.regions(self.arena, [Buf::Ids])?;
        let buf = u32s(buf)?;
        let dst = buf
            .get_mut(at..at.saturating_add(ids.len()))
            .ok_or(Error::ContextOverflow {
                needed: at.saturating_add(ids.len()),
                max,
            })?;
        dst.copy_from_slice(ids);
        let marker = splice.and_then(|s| ids.iter().position(|&id| id == s.marker).map(|i| (i, s)));
        Ok((ids.len(), marker))
    }

    /// Render a chat turn (a first turn at `at == 0`, else a follow-up) into the prompt
    /// buffer and tokenize it to index `at`.
    fn write_chat(
        &mut self,
        system: Option<&str>,
        user: &str,
        with_picture: bool,
        at: usize,
    ) -> Result<(usize, Option<(usize, Splice)>), Error> {
        let template = self
            .image
            .config()
            .tokenizer
            .as_ref()
            .map(|t| &t.chat)
            .ok_or(Error::Tokenizer(TokenizerError::NoTokenizer))?;
        let first = at == 0 || with_picture;
        let close = !first && {
            let end = self
                .tokenizer
                .as_ref()
                .and_then(|t| t.find_token(IM_END.as_bytes()));
            self.ids().get(at.wrapping_sub(1)).copied() != end
        };
        let turn = Turn {
            system,
            user,
            image: with_picture,
        };
        let render_into = |out: &mut [u8]| -> Result<usize, Error> {
            let r = if first {
                render(template, &turn, out)
            } else {
                render_follow_up(template, user, close, out)
            };
            match r {
                Ok(s) => Ok(s.len()),
                Err(Error::Length { expected, .. }) => Ok(expected),
                Err(e) => Err(e),
            }
        };
        // Measure the rendered prompt before writing anything (a system prompt longer than
        // the template's default uses up prompt bytes).
        let needed = render_into(&mut [])?;
        let room = self.plan.range(Buf::PromptText).len();
        if needed > room {
            return Err(Error::Length {
                what: "prompt rendered with the chat template (plan's max_prompt_bytes)",
                expected: needed,
                got: room,
            });
        }
        let [text] = self.plan.regions(self.arena, [Buf::PromptText])?;
        let len = render_into(text)?;
        self.tokenize(len, first, with_picture, Specials::Parse, at)
    }

    /// Tokenize raw `text` (control-token spellings kept as text) to index `at`.
    fn write_text(
        &mut self,
        text: &str,
        at: usize,
    ) -> Result<(usize, Option<(usize, Splice)>), Error> {
        let room = self.plan.range(Buf::PromptText).len();
        if text.len() > room {
            return Err(Error::Length {
                what: "raw prompt (plan's max_prompt_bytes)",
                expected: text.len(),
                got: room,
            });
        }
        if text.is_empty() && at > 0 {
            return Err(Error::EmptyInput);
        }
        let [buf] = self.plan.regions(self.arena, [Buf::PromptText])?;
        if let Some(dst) = buf.get_mut(..text.len()) {
            dst.copy_from_slice(text.as_bytes());
        }
        self.tokenize(text.len(), at == 0, false, Specials::Plain, at)
    }

    /// Tokenize the first `len` bytes of the prompt buffer to index `at` of the ids (BOS
    /// first on a first turn when the tokenizer adds one; with a picture, split at the
    /// placeholder around one [`IMAGE_SENTINEL`]).
    fn tokenize(
        &mut self,
        len: usize,
        first: bool,
        with_picture: bool,
        specials: Specials,
        at: usize,
    ) -> Result<(usize, Option<(usize, Splice)>), Error> {
        let tok = self
            .tokenizer
            .as_ref()
            .ok_or(Error::Tokenizer(TokenizerError::NoTokenizer))?;
        let max = self.plan.options.max_context;
        let [text, piece, nfc, ids] = self.plan.regions(
            self.arena,
            [
                Buf::PromptText,
                Buf::TokenizerPiece,
                Buf::TokenizerText,
                Buf::Ids,
            ],
        )?;
        let rendered = core::str::from_utf8(text.get(..len).unwrap_or_default()).map_err(|_| {
            Error::Config {
                what: "prompt text is not UTF-8",
            }
        })?;
        let mut ws = Workspace::new(u32s(piece)?, nfc);
        let ids = u32s(ids)?;
        let overflow = Error::ContextOverflow {
            needed: max + 1,
            max,
        };
        let mut n = at;
        if first
            && tok.add_bos()
            && let Some(bos) = tok.bos()
        {
            *ids.get_mut(n).ok_or(overflow.clone())? = bos;
            n += 1;
        }
        let encode = |text: &str, ws: &mut Workspace<'_>, ids: &mut [u32], n: usize| {
            let out = ids.get_mut(n..).unwrap_or_default();
            match tok.encode(text, specials, ws, out) {
                Ok(k) => Ok(n + k),
                // The ids buffer holds a whole context: the prompt needs more (how
                // many more is unknown without tokenizing it all).
                Err(TokenizerError::OutputFull { .. }) => Err(Error::ContextOverflow {
                    needed: max + 1,
                    max,
                }),
                Err(e) => Err(Error::Tokenizer(e)),
            }
        };
        let mut marker = None;
        if with_picture {
            let (before, after) = rendered
                .split_once(IMAGE_PLACEHOLDER)
                .unwrap_or((rendered, ""));
            n = encode(before, &mut ws, ids, n)?;
            *ids.get_mut(n).ok_or(overflow)? = IMAGE_SENTINEL;
            marker = Some((
                n - at,
                Splice {
                    marker: IMAGE_SENTINEL,
                    expand: true,
                },
            ));
            n = encode(after, &mut ws, ids, n + 1)?;
        } else {
            n = encode(rendered, &mut ws, ids, n)?;
        }
        if n == at {
            return Err(Error::EmptyInput);
        }
        Ok((n - at, marker))
    }

    /// Positions `n_ids` ids take with `splice`.
    fn positions(&self, n_ids: usize, splice: Option<Splice>) -> usize {
        match splice {
            Some(s) if s.expand => n_ids
                .saturating_sub(1)
                .saturating_add(self.plan.image_tokens),
            _ => n_ids,
        }
    }

    fn check_context(&self, needed: usize) -> Result<(), Error> {
        if needed == 0 {
            return Err(Error::EmptyInput);
        }
        let max = self.plan.options.max_context;
        if needed > max {
            return Err(Error::ContextOverflow { needed, max });
        }
        Ok(())
    }

    /// Everything after tokenizing: the vision steps when there is a picture, then the
    /// decoder. Inputs are checked and the conversation updated by the caller.
    fn work<S: TokenSink>(
        &mut self,
        ctx: &mut Ctx<'_>,
        t0: u64,
        image: Option<ImageInput<'_>>,
        splice: Option<Splice>,
        out: Option<LogitsOut<'_>>,
        generate: Option<(usize, &mut S)>,
    ) -> Result<Report, Error> {
        let mut timings = Timings::default();
        if let Some(input) = image {
            self.encode_image(ctx, input, &mut timings)?;
        }
        self.decode(ctx, t0, splice, out, generate, timings)
    }

    /// Preprocess, encode and project one picture into the embeddings buffer.
    fn encode_image(
        &mut self,
        ctx: &mut Ctx<'_>,
        input: ImageInput<'_>,
        timings: &mut Timings,
    ) -> Result<(), Error> {
        let (enc, proj) = self.vision.ok_or(Error::Config {
            what: "the session plans no vision encoder",
        })?;
        let vp = self.plan.vision.ok_or(Error::Config {
            what: "the session plans no vision encoder",
        })?;
        let res = vp.resolution;
        let plan = &self.plan;
        let clock = &mut self.clock;

        let t = clock.now_us();
        {
            let [px, scratch] = plan.regions(self.arena, [Buf::Pixels, Buf::PreprocessScratch])?;
            let px = f32s(px)?;
            match input {
                ImageInput::Frame(f) => {
                    preprocess(&f, res, plan.options.max_frame_side, px, scratch)?
                }
                ImageInput::Pixels(p) => {
                    if p.len() != px.len() {
                        return Err(Error::Length {
                            what: "pixels (3 x resolution x resolution)",
                            expected: px.len(),
                            got: p.len(),
                        });
                    }
                    px.copy_from_slice(p);
                }
            }
        }
        let t1 = clock.now_us();
        timings.preprocess_us = t1.saturating_sub(t);

        let shape = {
            let [px, first, work] =
                plan.regions(self.arena, [Buf::Pixels, Buf::VisionFirst, Buf::StemWork])?;
            enc.stem(ctx, f32s(px)?, res, f32s(first)?, &mut Arena::new(work))?
        };
        let (shape, last) = {
            let [first, second, work] = plan.regions(
                self.arena,
                [Buf::VisionFirst, Buf::VisionSecond, Buf::StagesWork],
            )?;
            enc.stages(
                ctx,
                f32s(first)?,
                f32s(second)?,
                shape,
                &mut Arena::new(work),
                &mut |_, _, _| {},
            )?
        };
        if last != vp.final_buffer || shape != vp.final_shape {
            return Err(Error::Config {
                what: "the encoder ended in another buffer than planned",
            });
        }
        {
            let src = if last == 0 {
                Buf::VisionFirst
            } else {
                Buf::VisionSecond
            };
            let [x, work, features] =
                plan.regions(self.arena, [src, Buf::HeadWork, Buf::Features])?;
            enc.head(ctx, f32s(x)?, shape, &mut Arena::new(work), f32s(features)?)?;
        }
        let t2 = clock.now_us();
        timings.encoder_us = t2.saturating_sub(t1);

        {
            let [features, work, emb] = plan.regions(
                self.arena,
                [Buf::Features, Buf::ProjectorWork, Buf::Embeddings],
            )?;
            proj.forward_on(
                ctx,
                f32s(features)?,
                vp.tokens,
                &mut Arena::new(work),
                f32s(emb)?,
            )?;
        }
        timings.projector_us = clock.now_us().saturating_sub(t2);
        Ok(())
    }

    /// Prefill the conversation's ids the KV cache does not hold yet (splicing this
    /// call's picture), then write logits and/or generate, keeping the conversation's
    /// counts in step with the cache as it goes.
    fn decode<S: TokenSink>(
        &mut self,
        ctx: &mut Ctx<'_>,
        t0: u64,
        splice: Option<Splice>,
        out: Option<LogitsOut<'_>>,
        generate: Option<(usize, &mut S)>,
        mut timings: Timings,
    ) -> Result<Report, Error> {
        let image_tokens = if splice.is_some() {
            self.plan.image_tokens
        } else {
            0
        };
        let plan = &self.plan;
        let clock = &mut self.clock;
        let conv = &mut self.conv;
        let t_prefill = clock.now_us();
        let [kv, work, emb, ids, sampler_scratch, token_text] = plan.regions(
            self.arena,
            [
                Buf::KvCache,
                Buf::DecoderWork,
                Buf::Embeddings,
                Buf::Ids,
                Buf::SamplerScratch,
                Buf::TokenText,
            ],
        )?;
        let emb: &[f32] = f32s(emb)?;
        let ids = u32s(ids)?;
        let mut kv = Arena::new(kv);
        let mut work = Arena::new(work);
        let mut state = DecoderState::with_regions(
            &mut kv,
            &mut work,
            &self.decoder,
            plan.options.max_context,
            plan.chunk,
            plan.options.kv,
        )?;
        let reused = conv.positions;
        state.resume_at(reused)?;
        let feed = ids.get(conv.fed..conv.ids).unwrap_or_default();
        let mut out = out;
        prefill(ctx, &mut state, feed, splice, emb, image_tokens, &mut out)?;
        conv.fed = conv.ids;
        conv.positions = state.pos();
        if let Some(LogitsOut::Last(o)) = &mut out {
            o.copy_from_slice(state.logits());
        }
        let t_first = clock.now_us();
        timings.prefill_us = t_first.saturating_sub(t_prefill);
        timings.ttft_us = t_first.saturating_sub(t0);

        let mut report = Report {
            prompt_ids: conv.prompt.1,
            prompt_positions: state.pos().saturating_sub(reused),
            reused_positions: reused,
            image_tokens,
            ..Report::default()
        };
        let Some((max_new, sink)) = generate else {
            report.timings = timings;
            return Ok(report);
        };

        let mut sampler = Sampler::new(self.options.sampler);
        let scratch = u32s(sampler_scratch)?;
        let mut utf8 = Utf8Stream::new();
        let mut t_decode = t_first;
        conv.answer = (conv.ids, 0);
        while report.generated < max_new {
            let history = ids.get(..conv.ids).unwrap_or_default();
            let id = sampler.sample(state.logits_mut(), history, scratch)?;
            if report.generated == 0 {
                let now = clock.now_us();
                timings.ttft_us = now.saturating_sub(t0);
                t_decode = now;
            }
            // The ids buffer holds the context plus the one sampled id that is never fed.
            let slot = ids.get_mut(conv.ids).ok_or(Error::ContextOverflow {
                needed: conv.ids.saturating_add(1),
                max: plan.options.max_context,
            })?;
            *slot = id;
            conv.ids += 1;
            conv.answer.1 += 1;
            report.generated += 1;
            let stop = self.stops.contains(id);
            let last = stop || report.generated == max_new || state.pos() >= state.max_context();

            let mut text = Collect {
                buf: &mut *token_text,
                len: 0,
            };
            if let Some(tok) = &self.tokenizer
                && !tok.is_control(id)
            {
                let bytes = tok.token_bytes(id).map_err(Error::Tokenizer)?;
                utf8.push(bytes, &mut |s: &str| text.put(s));
                if last {
                    utf8.finish(&mut |s: &str| text.put(s));
                }
            }
            let text = text.buf.get(..text.len).unwrap_or_default();
            sink.token(id, text).map_err(|e| Error::Sink(e.kind()))?;
            if last {
                report.stopped = stop;
                break;
            }
            state.forward_on(ctx, Input::Ids(&[id]), Logits::Last)?;
            conv.fed = conv.ids;
            conv.positions = state.pos();
            report.decode_steps += 1;
        }
        sink.finish().map_err(|e| Error::Sink(e.kind()))?;
        timings.decode_us = clock.now_us().saturating_sub(t_decode);
        report.timings = timings;
        Ok(report)
    }
}

/// Text of one token, gathered from the UTF-8 stream's pieces. The plan sizes the buffer
/// for the longest token plus held-back bytes, all replaced; anything past it is dropped.
struct Collect<'b> {
    buf: &'b mut [u8],
    len: usize,
}

impl Collect<'_> {
    fn put(&mut self, s: &str) {
        let end = self.len.saturating_add(s.len());
        if let Some(dst) = self.buf.get_mut(self.len..end) {
            dst.copy_from_slice(s.as_bytes());
            self.len = end;
        }
    }
}

/// Prefill `ids` into `state`: runs of text ids as ids, image positions as rows of `emb`
/// (`image_tokens x hidden`), producing the logits `out` asks for (or the last position's
/// into the state).
fn prefill(
    ctx: &mut Ctx<'_>,
    state: &mut DecoderState<'_, '_>,
    ids: &[u32],
    splice: Option<Splice>,
    emb: &[f32],
    image_tokens: usize,
    out: &mut Option<LogitsOut<'_>>,
) -> Result<(), Error> {
    let hidden = state.decoder().shape().hidden;
    let vocab = state.decoder().shape().vocab;
    let is_image = |id: u32| splice.is_some_and(|s| s.marker == id);
    let mut i = 0;
    let mut row = 0; // next embedding row (scatter form)
    let mut pos = 0; // positions done
    while i < ids.len() {
        let image = ids.get(i).is_some_and(|&id| is_image(id));
        let run = ids
            .get(i..)
            .unwrap_or_default()
            .iter()
            .take_while(|&&id| is_image(id) == image)
            .count();
        let end = i + run;
        let input = if image {
            let rows = match splice {
                Some(s) if s.expand => image_tokens.saturating_mul(run),
                _ => run,
            };
            // The expanded form has one marker, so `rows` is the whole image either way.
            let (a, b) = if splice.is_some_and(|s| s.expand) {
                (0, image_tokens)
            } else {
                (row, row + rows)
            };
            row += rows;
            Input::Embeddings(emb.get(a * hidden..b * hidden).ok_or(Error::Length {
                what: "image embeddings",
                expected: b * hidden,
                got: emb.len(),
            })?)
        } else {
            Input::Ids(ids.get(i..end).unwrap_or_default())
        };
        let n = match input {
            Input::Ids(x) => x.len(),
            Input::Embeddings(x) => x.len() / hidden.max(1),
        };
        let logits = match out {
            Some(LogitsOut::All(o)) => {
                let got = o.len();
                Logits::All(
                    o.get_mut(pos * vocab..(pos + n) * vocab)
                        .ok_or(Error::Length {
                            what: "logits (positions x vocab)",
                            expected: (pos + n) * vocab,
                            got,
                        })?,
                )
            }
            _ if end == ids.len() => Logits::Last,
            _ => Logits::None,
        };
        state.forward_on(ctx, input, logits)?;
        pos += n;
        i = end;
    }
    Ok(())
}
