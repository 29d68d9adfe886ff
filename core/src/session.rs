//! The Session API: one weights image, one planned arena and a clock; [`Session::ask`]
//! turns a camera frame and a question into tokens streamed to a sink, timing each step.
//!
//! ```text
//! ask(frame, prompt)
//!   tokenize   chat template with `<image>`, split there, BPE each side   (ids)
//!   preprocess frame -> 3 x R x R pixels                                   (pixels)
//!   encode     stem -> stages -> conv_exp                                  (features)
//!   project    mlp2x_gelu                                                  (embeddings)
//!   prefill    text ids | image embeddings | text ids, chunk by chunk      (KV cache)
//!   decode     sample, stream to the sink, feed back, until a stop token
//! ```
//!
//! Every buffer is a region of the [`ArenaPlan`] made when the session is created, handed
//! out per phase as disjoint slices ([`ArenaPlan::regions`]), so a run can touch no byte
//! outside the plan, and an arena too small for the plan is refused by [`Session::new`]
//! before anything runs. Each call checks its inputs (frame, prompt length, ids, context)
//! before the first step; the session keeps no state between calls besides its options,
//! so an error leaves nothing to repair.
//!
//! Image splicing follows the two conventions of spec section 5: [`Session::ask`] splits
//! the rendered prompt at `<image>` and inserts every image embedding there (Apple's
//! `-200` sentinel); the id-level calls ([`Session::generate_ids`], [`Session::logits`])
//! take the config's image-token id either once (expanded the same way) or once per image
//! token (overwritten in order, as transformers' `FastVlm` does).

use glimpse_hal::{Error as _, ErrorType, MonotonicClock, TokenSink};

use crate::arena::{ALIGN, Arena};
use crate::chat::{IMAGE_PLACEHOLDER, Turn, render};
use crate::decoder::{Decoder, DecoderState, Input, Logits};
use crate::error::Error;
use crate::image::Image;
use crate::kernels::linear::Q8Activations;
use crate::planner::{ArenaPlan, Buf, PlanOptions};
use crate::preprocess::{Frame, check_frame, preprocess};
use crate::projector::Projector;
use crate::sampler::{Sampler, SamplerConfig, StopTokens};
use crate::tokenizer::{Specials, Tokenizer, TokenizerError, Utf8Stream, Workspace};
use crate::vision::VisionEncoder;

/// The id [`Session::ask`] puts where the image goes (Apple's `IMAGE_TOKEN_INDEX`, -200,
/// as an id no vocabulary has). It shows up in [`Session::history`].
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

/// A picture for the id-level calls: a camera frame, or pixels already preprocessed.
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
    /// Prefill of the whole prompt (text and image positions).
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
    /// Prompt ids (an image counts once in the `ask` form, once per token otherwise).
    pub prompt_ids: usize,
    /// Positions prefilled: text ids plus image tokens.
    pub prompt_positions: usize,
    /// Image tokens spliced in (0 for a text-only run).
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

/// A FastVLM (or text-only) model, an arena planned for it and a clock. See the module
/// docs.
pub struct Session<'a, 'w, C> {
    image: &'w Image<'w>,
    /// The aligned part of the caller's arena, exactly [`ArenaPlan::total`] bytes.
    arena: &'a mut [u8],
    plan: ArenaPlan,
    clock: C,
    options: SessionOptions,
    stops: StopTokens,
    decoder: Decoder<'w>,
    vision: Option<(VisionEncoder<'w>, Projector<'w>)>,
    tokenizer: Option<Tokenizer<'w>>,
    /// Ids in the ids buffer after the last call.
    history: usize,
}

impl<C> core::fmt::Debug for Session<'_, '_, C> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Session")
            .field("model", &self.image.config().name)
            .field("plan", &self.plan)
            .field("options", &self.options)
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
        image: &'w Image<'w>,
        arena: &'a mut [u8],
        clock: C,
        options: SessionOptions,
    ) -> Result<Self, Error> {
        let mut plan_opts = options.plan;
        plan_opts.sampling |= !options.sampler.is_greedy();
        let plan = ArenaPlan::new(image, &plan_opts)?;
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
            history: 0,
        })
    }

    /// The plan the arena follows.
    pub fn plan(&self) -> &ArenaPlan {
        &self.plan
    }

    /// The options.
    pub fn options(&self) -> &SessionOptions {
        &self.options
    }

    /// The ids buffer after the last call: the prompt ids (with [`IMAGE_SENTINEL`] or the
    /// image-token ids where the image went) followed by the generated ids.
    pub fn history(&self) -> &[u32] {
        let r = self.plan.range(Buf::Ids);
        let bytes = self.arena.get(r).unwrap_or(&[]);
        let ids: &[u32] = bytemuck::try_cast_slice(bytes).unwrap_or(&[]);
        ids.get(..self.history).unwrap_or(ids)
    }

    /// The clock, e.g. to read it between calls.
    pub fn clock(&mut self) -> &mut C {
        &mut self.clock
    }

    /// Ask about `frame` (or, without one or for a text-only model, just answer `prompt`)
    /// with the model's chat template and default system prompt; tokens stream to `sink`.
    pub fn ask<S: TokenSink>(
        &mut self,
        frame: Option<Frame<'_>>,
        prompt: &str,
        sink: &mut S,
    ) -> Result<Report, Error> {
        self.ask_turn(frame, None, prompt, sink)
    }

    /// [`Session::ask`] with a system prompt (`None` is the template's default).
    pub fn ask_turn<S: TokenSink>(
        &mut self,
        frame: Option<Frame<'_>>,
        system: Option<&str>,
        prompt: &str,
        sink: &mut S,
    ) -> Result<Report, Error> {
        let t0 = self.clock.now_us();
        self.history = 0;
        let frame = match (frame, self.plan.has_vision()) {
            (Some(f), true) => {
                check_frame(&f, self.plan.options.max_frame_side)?;
                Some(f)
            }
            _ => None,
        };
        let tok = self
            .tokenizer
            .as_ref()
            .ok_or(Error::Tokenizer(TokenizerError::NoTokenizer))?;
        let template = self
            .image
            .config()
            .tokenizer
            .as_ref()
            .map(|t| &t.chat)
            .ok_or(Error::Tokenizer(TokenizerError::NoTokenizer))?;
        let turn = Turn {
            system,
            user: prompt,
            image: frame.is_some(),
        };
        // Measure the rendered prompt before writing anything (a system prompt longer than
        // the template's default uses up prompt bytes).
        let needed = match render(template, &turn, &mut []) {
            Ok(s) => s.len(),
            Err(Error::Length { expected, .. }) => expected,
            Err(e) => return Err(e),
        };
        let room = self.plan.range(Buf::PromptText).len();
        if needed > room {
            return Err(Error::Length {
                what: "prompt rendered with the chat template (plan's max_prompt_bytes)",
                expected: needed,
                got: room,
            });
        }
        let n_ids = {
            let [text, piece, nfc, ids] = self.plan.regions(
                self.arena,
                [
                    Buf::PromptText,
                    Buf::TokenizerPiece,
                    Buf::TokenizerText,
                    Buf::Ids,
                ],
            )?;
            let rendered = render(template, &turn, text)?;
            let mut ws = Workspace::new(u32s(piece)?, nfc);
            let ids = u32s(ids)?;
            let mut n = 0;
            if tok.add_bos()
                && let (Some(bos), Some(slot)) = (tok.bos(), ids.first_mut())
            {
                *slot = bos;
                n = 1;
            }
            let max = self.plan.options.max_context;
            let encode = |text: &str, ws: &mut Workspace<'_>, ids: &mut [u32], n: usize| {
                let out = ids.get_mut(n..).unwrap_or_default();
                match tok.encode(text, Specials::Parse, ws, out) {
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
            if frame.is_some() {
                let (before, after) = rendered
                    .split_once(IMAGE_PLACEHOLDER)
                    .unwrap_or((rendered, ""));
                n = encode(before, &mut ws, ids, n)?;
                let slot = ids.get_mut(n).ok_or(Error::ContextOverflow {
                    needed: max + 1,
                    max,
                })?;
                *slot = IMAGE_SENTINEL;
                n = encode(after, &mut ws, ids, n + 1)?;
            } else {
                n = encode(rendered, &mut ws, ids, n)?;
            }
            n
        };
        let splice = frame.map(|_| Splice {
            marker: IMAGE_SENTINEL,
            expand: true,
        });
        self.check_positions(n_ids, splice)?;
        let tokenize_us = self.clock.now_us().saturating_sub(t0);
        let max_new = self.options.max_new_tokens;
        let mut report = self.run(
            t0,
            n_ids,
            frame.map(ImageInput::Frame),
            splice,
            None,
            Some((max_new, sink)),
        )?;
        report.timings.tokenize_us = tokenize_us;
        Ok(report)
    }

    /// Generate from prompt ids (no template, no tokenizer needed), with an optional
    /// image spliced at the config's image-token id (see the module docs). Tokens stream
    /// to `sink` (with their text when the image has a tokenizer).
    pub fn generate_ids<S: TokenSink>(
        &mut self,
        ids: &[u32],
        image: Option<ImageInput<'_>>,
        sink: &mut S,
    ) -> Result<Report, Error> {
        let t0 = self.clock.now_us();
        let splice = self.load_ids(ids, image.as_ref())?;
        let max_new = self.options.max_new_tokens;
        self.run(t0, ids.len(), image, splice, None, Some((max_new, sink)))
    }

    /// Teacher-forced logits of prompt ids, with an optional image spliced at the
    /// config's image-token id: the last position's or every position's.
    pub fn logits(
        &mut self,
        ids: &[u32],
        image: Option<ImageInput<'_>>,
        out: LogitsOut<'_>,
    ) -> Result<Report, Error> {
        let t0 = self.clock.now_us();
        let splice = self.load_ids(ids, image.as_ref())?;
        let positions = self.positions(ids.len(), splice);
        let vocab = self.decoder.shape().vocab;
        let (what, want, got) = match &out {
            LogitsOut::Last(o) => ("last-position logits", vocab, o.len()),
            LogitsOut::All(o) => (
                "logits (positions x vocab)",
                positions.saturating_mul(vocab),
                o.len(),
            ),
        };
        if want != got {
            return Err(Error::Length {
                what,
                expected: want,
                got,
            });
        }
        self.run::<NoSink>(t0, ids.len(), image, splice, Some(out), None)
    }

    /// Check the image input and the ids, copy the ids into the ids buffer and say how the
    /// image is spliced. Nothing else is touched.
    fn load_ids(
        &mut self,
        ids: &[u32],
        image: Option<&ImageInput<'_>>,
    ) -> Result<Option<Splice>, Error> {
        self.history = 0;
        if ids.is_empty() {
            return Err(Error::EmptyInput);
        }
        let splice = match image {
            None => None,
            Some(input) => {
                let vp = self.plan.vision.ok_or(Error::Config {
                    what: "an image was given, but the session plans no vision encoder",
                })?;
                match input {
                    ImageInput::Frame(f) => check_frame(f, self.plan.options.max_frame_side)?,
                    ImageInput::Pixels(p) => {
                        let want = 3usize
                            .saturating_mul(vp.resolution)
                            .saturating_mul(vp.resolution);
                        if p.len() != want {
                            return Err(Error::Length {
                                what: "pixels (3 x resolution x resolution)",
                                expected: want,
                                got: p.len(),
                            });
                        }
                    }
                }
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
            }
        };
        self.check_positions(ids.len(), splice)?;
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
        let [buf] = self.plan.regions(self.arena, [Buf::Ids])?;
        let buf = u32s(buf)?;
        let dst = buf.get_mut(..ids.len()).ok_or(Error::ContextOverflow {
            needed: ids.len(),
            max: self.plan.options.max_context,
        })?;
        dst.copy_from_slice(ids);
        Ok(splice)
    }

    /// Positions `n_ids` prompt ids take with `splice`.
    fn positions(&self, n_ids: usize, splice: Option<Splice>) -> usize {
        match splice {
            Some(s) if s.expand => n_ids
                .saturating_sub(1)
                .saturating_add(self.plan.image_tokens),
            _ => n_ids,
        }
    }

    fn check_positions(&self, n_ids: usize, splice: Option<Splice>) -> Result<(), Error> {
        let needed = self.positions(n_ids, splice);
        if needed == 0 {
            return Err(Error::EmptyInput);
        }
        let max = self.plan.options.max_context;
        if needed > max {
            return Err(Error::ContextOverflow { needed, max });
        }
        Ok(())
    }

    /// Everything after tokenizing: the vision steps when there is an image, then the
    /// decoder. Inputs are checked by the caller.
    fn run<S: TokenSink>(
        &mut self,
        t0: u64,
        n_ids: usize,
        image: Option<ImageInput<'_>>,
        splice: Option<Splice>,
        out: Option<LogitsOut<'_>>,
        generate: Option<(usize, &mut S)>,
    ) -> Result<Report, Error> {
        let mut timings = Timings::default();
        if let Some(input) = image {
            self.encode_image(input, &mut timings)?;
        }
        self.decode(t0, n_ids, splice, out, generate, timings)
    }

    /// Preprocess, encode and project one picture into the embeddings buffer.
    fn encode_image(&mut self, input: ImageInput<'_>, timings: &mut Timings) -> Result<(), Error> {
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
            enc.stem(f32s(px)?, res, f32s(first)?, &mut Arena::new(work))?
        };
        let (shape, last) = {
            let [first, second, work] = plan.regions(
                self.arena,
                [Buf::VisionFirst, Buf::VisionSecond, Buf::StagesWork],
            )?;
            enc.stages(
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
            enc.head(f32s(x)?, shape, &mut Arena::new(work), f32s(features)?)?;
        }
        let t2 = clock.now_us();
        timings.encoder_us = t2.saturating_sub(t1);

        {
            let [features, work, emb] = plan.regions(
                self.arena,
                [Buf::Features, Buf::ProjectorWork, Buf::Embeddings],
            )?;
            proj.forward(
                f32s(features)?,
                vp.tokens,
                &mut Arena::new(work),
                f32s(emb)?,
            )?;
        }
        timings.projector_us = clock.now_us().saturating_sub(t2);
        Ok(())
    }

    /// Prefill the prompt (splicing the embeddings), then write logits and/or generate.
    fn decode<S: TokenSink>(
        &mut self,
        t0: u64,
        n_ids: usize,
        splice: Option<Splice>,
        out: Option<LogitsOut<'_>>,
        generate: Option<(usize, &mut S)>,
        mut timings: Timings,
    ) -> Result<Report, Error> {
        let positions = self.positions(n_ids, splice);
        let image_tokens = if splice.is_some() {
            self.plan.image_tokens
        } else {
            0
        };
        let plan = &self.plan;
        let clock = &mut self.clock;
        let t_prefill = clock.now_us();
        let [region, emb, ids, sampler_scratch, token_text] = plan.regions(
            self.arena,
            [
                Buf::Decoder,
                Buf::Embeddings,
                Buf::Ids,
                Buf::SamplerScratch,
                Buf::TokenText,
            ],
        )?;
        let emb: &[f32] = f32s(emb)?;
        let ids = u32s(ids)?;
        let mut arena = Arena::new(region);
        let mut state = DecoderState::with_format(
            &mut arena,
            &self.decoder,
            plan.options.max_context,
            plan.chunk,
            plan.options.kv,
        )?;
        let prompt = ids.get(..n_ids).unwrap_or_default();
        let mut out = out;
        prefill(&mut state, prompt, splice, emb, image_tokens, &mut out)?;
        if let Some(LogitsOut::Last(o)) = &mut out {
            o.copy_from_slice(state.logits());
        }
        let t_first = clock.now_us();
        timings.prefill_us = t_first.saturating_sub(t_prefill);
        timings.ttft_us = t_first.saturating_sub(t0);

        let mut report = Report {
            prompt_ids: n_ids,
            prompt_positions: positions,
            image_tokens,
            ..Report::default()
        };
        self.history = n_ids;
        let Some((max_new, sink)) = generate else {
            report.timings = timings;
            return Ok(report);
        };

        let mut sampler = Sampler::new(self.options.sampler);
        let scratch = u32s(sampler_scratch)?;
        let mut utf8 = Utf8Stream::new();
        let mut n_hist = n_ids;
        let mut t_decode = t_first;
        while report.generated < max_new {
            let history = ids.get(..n_hist).unwrap_or_default();
            let id = sampler.sample(state.logits_mut(), history, scratch)?;
            if report.generated == 0 {
                let now = clock.now_us();
                timings.ttft_us = now.saturating_sub(t0);
                t_decode = now;
            }
            if let Some(slot) = ids.get_mut(n_hist) {
                *slot = id;
                n_hist += 1;
            }
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
            state.decode_one(id)?;
            report.decode_steps += 1;
        }
        self.history = n_hist;
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
        state.forward(input, logits)?;
        pos += n;
        i = end;
    }
    Ok(())
}
