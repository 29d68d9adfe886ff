//! The arena planner: gives every buffer of a run an offset in one arena from its size and
//! its lifetime, so buffers never live at the same time share bytes, and the exact total
//! is known before the first frame.
//!
//! Two layers:
//! - [`place`] is the general algorithm. A buffer is a [`Request`]: a size and the
//!   inclusive range of phases it is live in. Buffers go in by decreasing size (ties by
//!   first phase, then request order, so the result is deterministic), each at the lowest
//!   [`ALIGN`]-aligned offset where it overlaps no already placed buffer that is live in a
//!   common phase: the greedy-by-size first-fit placement of TensorFlow Lite Micro's
//!   `GreedyMemoryPlanner`. The total is the highest end.
//! - [`ArenaPlan`] applies it to one FastVLM (or text-only) run: the phases of
//!   [`Phase`], the buffers of [`Buf`], their sizes from the weights image and the
//!   [`PlanOptions`]. [`ArenaPlan::regions`] then hands out the buffers of a phase as
//!   disjoint slices of the arena, so execution can only touch planned bytes, and a
//!   buffer that lives through several phases keeps its contents between them.
//!
//! Offsets are relative to a [`ALIGN`]-aligned arena start; an arena that does not start
//! on such a boundary needs up to `ALIGN - 1` extra bytes (see [`ArenaPlan::needed_for`]).

use core::fmt;
use core::ops::Range;

use glimpse_quant::schema::ModelFamily;

use crate::arena::{ALIGN, padded};
use crate::decoder::{DEFAULT_CHUNK, DecoderState, KvFormat};
use crate::error::Error;
use crate::image::Model;
use crate::preprocess::max_scratch_bytes;
use crate::projector::Projector;
use crate::tokenizer::{Tokenizer, TokenizerError};
use crate::vision::{VisionEncoder, VisionPlan};

/// Most buffers one plan places.
pub const MAX_BUFFERS: usize = 32;

/// One buffer to place: `bytes` live from phase `first` to phase `last` (inclusive).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Request {
    /// Name, for reports.
    pub name: &'static str,
    /// Bytes the buffer holds (placement rounds it up to [`ALIGN`]).
    pub bytes: usize,
    /// First phase it is live in.
    pub first: u8,
    /// Last phase it is live in.
    pub last: u8,
}

/// A placed buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Placement {
    /// The request it answers.
    pub request: Request,
    /// Offset from the (aligned) arena start; a multiple of [`ALIGN`].
    pub offset: usize,
}

impl Placement {
    /// Bytes it occupies in the arena (its size rounded up to [`ALIGN`]).
    pub fn size(&self) -> usize {
        padded(self.request.bytes)
    }

    /// One past its last occupied byte.
    pub fn end(&self) -> usize {
        self.offset.saturating_add(self.size())
    }

    /// The bytes handed to the computation (exactly the requested length).
    pub fn range(&self) -> Range<usize> {
        self.offset..self.offset.saturating_add(self.request.bytes)
    }

    /// Whether it is live in `phase`.
    pub fn live_in(&self, phase: u8) -> bool {
        (self.request.first..=self.request.last).contains(&phase)
    }

    /// Whether it and `other` are live in a common phase.
    pub fn meets(&self, other: &Placement) -> bool {
        self.request.first <= other.request.last && other.request.first <= self.request.last
    }

    /// Whether it and `other` share a byte.
    pub fn overlaps(&self, other: &Placement) -> bool {
        self.size() > 0
            && other.size() > 0
            && self.offset < other.end()
            && other.offset < self.end()
    }
}

/// Where [`place`] put every request, in request order, and the total.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    items: heapless::Vec<Placement, MAX_BUFFERS>,
    total: usize,
}

impl Layout {
    /// The placements, in request order.
    pub fn placements(&self) -> &[Placement] {
        &self.items
    }

    /// Bytes from the aligned arena start to the end of the last buffer.
    pub fn total(&self) -> usize {
        self.total
    }

    /// The bytes of every buffer live in `phase` together (their padded sizes).
    pub fn live_bytes(&self, phase: u8) -> usize {
        self.items
            .iter()
            .filter(|p| p.live_in(phase))
            .fold(0usize, |a, p| a.saturating_add(p.size()))
    }

    /// The highest end of a buffer live in `phase`: the arena that phase reaches into.
    pub fn extent(&self, phase: u8) -> usize {
        self.items
            .iter()
            .filter(|p| p.live_in(phase))
            .map(Placement::end)
            .max()
            .unwrap_or(0)
    }
}

/// Place `requests` (see the module docs). Errors: more than [`MAX_BUFFERS`], a request
/// whose `first` is after its `last`, or a total past `usize::MAX`.
pub fn place(requests: &[Request]) -> Result<Layout, Error> {
    if requests.len() > MAX_BUFFERS {
        return Err(Error::Config {
            what: "more buffers than the planner places (MAX_BUFFERS)",
        });
    }
    if requests.iter().any(|r| r.first > r.last) {
        return Err(Error::Config {
            what: "a planned buffer ends before it starts",
        });
    }
    let n = requests.len();
    let mut order = [0usize; MAX_BUFFERS];
    for (i, o) in order.iter_mut().enumerate() {
        *o = i;
    }
    let order = order.get_mut(..n).unwrap_or_default();
    // The index breaks ties, so the order (and the layout) is fully determined.
    order.sort_unstable_by_key(|&i| {
        requests
            .get(i)
            .map_or((0, 0, i), |r| (usize::MAX - padded(r.bytes), r.first, i))
    });

    let mut placed: [Option<Placement>; MAX_BUFFERS] = [None; MAX_BUFFERS];
    for &i in order.iter() {
        let Some(&request) = requests.get(i) else {
            continue;
        };
        let mut p = Placement { request, offset: 0 };
        let size = p.size();
        // Live-together neighbours by offset: first fit scans the gaps between them.
        let mut rivals = [(0usize, 0usize); MAX_BUFFERS];
        let mut count = 0;
        for q in placed.iter().flatten() {
            if q.meets(&p)
                && q.size() > 0
                && let Some(slot) = rivals.get_mut(count)
            {
                *slot = (q.offset, q.end());
                count += 1;
            }
        }
        let rivals = rivals.get_mut(..count).unwrap_or_default();
        rivals.sort_unstable();
        for &(start, end) in rivals.iter() {
            if p.offset.checked_add(size).ok_or(overflow())? <= start {
                break;
            }
            p.offset = p.offset.max(end);
        }
        if p.offset.checked_add(size).is_none() {
            return Err(overflow());
        }
        if let Some(slot) = placed.get_mut(i) {
            *slot = Some(p);
        }
    }
    let mut items: heapless::Vec<Placement, MAX_BUFFERS> = heapless::Vec::new();
    for p in placed.iter().take(n).flatten() {
        // At most n <= MAX_BUFFERS items: never full.
        let _ = items.push(*p);
    }
    let total = items.iter().map(Placement::end).max().unwrap_or(0);
    Ok(Layout { items, total })
}

fn overflow() -> Error {
    Error::Config {
        what: "the arena plan does not fit in the address space",
    }
}

/// Split `arena` into the byte ranges `ranges`, which must be disjoint and inside it, and
/// return them in the order asked (empty ranges give empty slices). The borrow checker
/// then keeps every computation inside its own buffer.
pub fn split_disjoint<'a, const N: usize>(
    arena: &'a mut [u8],
    ranges: [Range<usize>; N],
) -> Result<[&'a mut [u8]; N], Error> {
    let mut order: [usize; N] = core::array::from_fn(|i| i);
    order.sort_unstable_by_key(|&i| ranges.get(i).map_or(0, |r| r.start));
    let mut out: [&'a mut [u8]; N] = core::array::from_fn(|_| <&mut [u8]>::default());
    let mut rest = arena;
    let mut at = 0usize;
    for i in order {
        let Some(r) = ranges.get(i) else { continue };
        if r.is_empty() {
            continue;
        }
        let bad = Error::Length {
            what: "planned buffer outside the arena or overlapping another",
            expected: r.end,
            got: at.saturating_add(rest.len()),
        };
        if r.start < at || r.end < r.start {
            return Err(bad);
        }
        let tail = core::mem::take(&mut rest);
        let (_, tail) = tail.split_at_mut_checked(r.start - at).ok_or(bad.clone())?;
        let (mine, tail) = tail.split_at_mut_checked(r.end - r.start).ok_or(bad)?;
        if let Some(slot) = out.get_mut(i) {
            *slot = mine;
        }
        rest = tail;
        at = r.end;
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// The FastVLM run
// ---------------------------------------------------------------------------------------

/// The steps of one run. A buffer is live over a range of them.
///
/// The order is the planner's, not the clock's: a call tokenizes first (so a prompt too
/// long for the context is refused before any work), but [`Phase::Tokenize`] is planned
/// between the vision phases and [`Phase::Decode`], so the KV cache, live in both, shares
/// no byte with the tokenizer's scratch and a conversation's next turn can be tokenized
/// without touching the cache. Running tokenize before the vision phases is still safe:
/// its scratch is dead once the ids are written, and the ids buffer is live in every phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(u8)]
pub enum Phase {
    /// Frame to planar pixels (pad, resize, scale).
    Preprocess = 0,
    /// The vision stem (reads the pixels, writes the first activation buffer).
    Stem = 1,
    /// The vision stages (both activation buffers).
    Stages = 2,
    /// `conv_exp` into the features buffer.
    Head = 3,
    /// The projector into the image embeddings.
    Project = 4,
    /// Render the chat template and tokenize the prompt (first in time; see above).
    Tokenize = 5,
    /// Prefill (text ids and image embeddings) and decode.
    Decode = 6,
}

impl Phase {
    /// Every phase, in the planner's order.
    pub const ALL: [Phase; 7] = [
        Phase::Preprocess,
        Phase::Stem,
        Phase::Stages,
        Phase::Head,
        Phase::Project,
        Phase::Tokenize,
        Phase::Decode,
    ];

    /// Lowercase name.
    pub const fn name(self) -> &'static str {
        match self {
            Phase::Tokenize => "tokenize",
            Phase::Preprocess => "preprocess",
            Phase::Stem => "stem",
            Phase::Stages => "stages",
            Phase::Head => "head",
            Phase::Project => "project",
            Phase::Decode => "decode",
        }
    }
}

/// The buffers of one run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(u8)]
pub enum Buf {
    /// The rendered chat prompt (bytes).
    PromptText = 0,
    /// Tokenizer merge workspace (u32).
    TokenizerPiece,
    /// Tokenizer NFC workspace (bytes).
    TokenizerText,
    /// Prompt ids, then every generated id (u32): the sampler's history.
    Ids,
    /// Preprocessed pixels, `3 x R x R` f32.
    Pixels,
    /// Preprocessing scratch (resampling weights and the horizontal pass).
    PreprocessScratch,
    /// The encoder's first activation buffer (f32).
    VisionFirst,
    /// The encoder's second activation buffer (f32).
    VisionSecond,
    /// Layer scratch of the stem.
    StemWork,
    /// Layer scratch of the stages.
    StagesWork,
    /// Layer scratch of `conv_exp`.
    HeadWork,
    /// Encoder output, `tokens x out_dim` f32.
    Features,
    /// Projector scratch (hidden layer, linear scratch).
    ProjectorWork,
    /// Projected image embeddings, `tokens x hidden` f32.
    Embeddings,
    /// The KV cache: what a session keeps between calls.
    KvCache,
    /// The decoder's work buffers: activations, scores, logits, linear scratch.
    DecoderWork,
    /// Sampler candidate list (u32 per vocabulary entry; none when greedy).
    SamplerScratch,
    /// Text of one generated token on its way to the sink.
    TokenText,
}

/// Number of [`Buf`] kinds.
const BUF_KINDS: usize = 18;

impl Buf {
    /// Every buffer, in declaration order.
    pub const ALL: [Buf; BUF_KINDS] = [
        Buf::PromptText,
        Buf::TokenizerPiece,
        Buf::TokenizerText,
        Buf::Ids,
        Buf::Pixels,
        Buf::PreprocessScratch,
        Buf::VisionFirst,
        Buf::VisionSecond,
        Buf::StemWork,
        Buf::StagesWork,
        Buf::HeadWork,
        Buf::Features,
        Buf::ProjectorWork,
        Buf::Embeddings,
        Buf::KvCache,
        Buf::DecoderWork,
        Buf::SamplerScratch,
        Buf::TokenText,
    ];

    /// Dotted name, for reports.
    pub const fn name(self) -> &'static str {
        match self {
            Buf::PromptText => "prompt.text",
            Buf::TokenizerPiece => "tokenizer.piece",
            Buf::TokenizerText => "tokenizer.nfc",
            Buf::Ids => "ids",
            Buf::Pixels => "pixels",
            Buf::PreprocessScratch => "preprocess.scratch",
            Buf::VisionFirst => "vision.first",
            Buf::VisionSecond => "vision.second",
            Buf::StemWork => "vision.stem.work",
            Buf::StagesWork => "vision.stages.work",
            Buf::HeadWork => "vision.head.work",
            Buf::Features => "features",
            Buf::ProjectorWork => "projector.work",
            Buf::Embeddings => "embeddings",
            Buf::KvCache => "kv.cache",
            Buf::DecoderWork => "decoder.work",
            Buf::SamplerScratch => "sampler.scratch",
            Buf::TokenText => "token.text",
        }
    }
}

pub use crate::tokenizer::MAX_PIECE_BYTES;

/// Longest frame side a plan prepares preprocessing for unless told otherwise.
pub const DEFAULT_MAX_FRAME_SIDE: usize = 4096;

/// Longest user prompt (bytes) a plan prepares for unless told otherwise.
pub const DEFAULT_MAX_PROMPT_BYTES: usize = 2048;

/// Context a plan prepares for unless told otherwise (capped at the model's maximum).
pub const DEFAULT_CONTEXT: usize = 2048;

/// What a run must be ready for. Everything that sizes a buffer is here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct PlanOptions {
    /// Input resolution; `None` is the model's native one.
    pub resolution: Option<usize>,
    /// Positions of the KV cache (prompt, image tokens and generated tokens together).
    pub max_context: usize,
    /// Number format of the KV cache.
    pub kv: KvFormat,
    /// Prefill chunk (positions run together as matrix-matrix products).
    pub chunk: usize,
    /// Longest side of a camera frame preprocessing must take.
    pub max_frame_side: usize,
    /// Longest user prompt, in bytes, [`crate::session::Session::run`] must take (a custom
    /// system prompt counts against it).
    pub max_prompt_bytes: usize,
    /// Whether sampling may be non-greedy (the sampler then needs a candidate list).
    pub sampling: bool,
    /// Whether to plan the vision phases at all (`false` plans a text-only run of a VLM).
    pub vision: bool,
    /// Whether the KV cache keeps its bytes through the vision phases, so a new picture
    /// keeps the prompt prefix before it (a frame stream prefills its prefix once). Off,
    /// the cache shares bytes with the vision buffers (a smaller arena) and a new picture
    /// prefills its prompt from the start; follow-up turns keep the cache either way.
    pub kv_across_pictures: bool,
}

impl Default for PlanOptions {
    fn default() -> Self {
        PlanOptions {
            resolution: None,
            max_context: DEFAULT_CONTEXT,
            kv: KvFormat::F16,
            chunk: DEFAULT_CHUNK,
            max_frame_side: DEFAULT_MAX_FRAME_SIDE,
            max_prompt_bytes: DEFAULT_MAX_PROMPT_BYTES,
            sampling: false,
            vision: true,
            kv_across_pictures: false,
        }
    }
}

/// The plan of one run: every buffer's offset and the total (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArenaPlan {
    layout: Layout,
    /// Index into the layout of each [`Buf`] the run has.
    slots: [Option<u8>; BUF_KINDS],
    /// The options, with the resolution and context resolved.
    pub options: PlanOptions,
    /// The encoder's plan, when the run has vision phases.
    pub vision: Option<VisionPlan>,
    /// Image tokens (0 without vision).
    pub image_tokens: usize,
    /// Prefill chunk actually used (the option, at most the context).
    pub chunk: usize,
}

/// Bytes of `n` values of `size` bytes, saturating (a saturated size can never fit).
fn elems(n: usize, size: usize) -> usize {
    n.saturating_mul(size)
}

impl ArenaPlan {
    /// Plan a run of `image` with `options`. Errors when the model cannot run with them
    /// (a resolution that is not a multiple of the encoder stride, a context of zero or
    /// past the model's maximum, parts that do not fit together).
    pub fn new(image: &Model<'_>, options: &PlanOptions) -> Result<Self, Error> {
        let cfg = image.config();
        let dcfg = cfg.decoder.as_ref().ok_or(Error::Config {
            what: "the image has no decoder",
        })?;
        let mut opts = *options;
        if opts.max_context == 0 || opts.max_context > dcfg.max_positions as usize {
            return Err(Error::Config {
                what: "context must be between 1 and the model's max_positions",
            });
        }
        if opts.chunk == 0 {
            return Err(Error::Config {
                what: "the prefill chunk must be non-zero",
            });
        }
        let chunk = opts.chunk.min(opts.max_context);
        let hidden = dcfg.hidden as usize;
        let vocab = dcfg.vocab as usize;
        let with_vision = opts.vision && cfg.family == ModelFamily::FastVlm && cfg.vision.is_some();
        opts.vision = with_vision;

        let mut reqs: heapless::Vec<(Buf, Request), BUF_KINDS> = heapless::Vec::new();
        let mut add = |buf: Buf, bytes: usize, first: Phase, last: Phase| {
            let r = Request {
                name: buf.name(),
                bytes,
                first: first as u8,
                last: last as u8,
            };
            // BUF_KINDS slots for at most BUF_KINDS distinct kinds: never full.
            let _ = reqs.push((buf, r));
        };

        // Tokenizing happens only when the image carries a tokenizer (ask); runs from ids
        // use the ids buffer alone.
        let mut token_text = 0;
        let tokenizer = match Tokenizer::from_image(image) {
            Ok(t) => Some(t),
            Err(TokenizerError::NoTokenizer) => None,
            Err(e) => return Err(Error::Tokenizer(e)),
        };
        if let Some(tok) = tokenizer {
            let overhead = template_overhead(image);
            let text = opts.max_prompt_bytes.saturating_add(overhead);
            add(Buf::PromptText, text, Phase::Tokenize, Phase::Tokenize);
            let piece = text.clamp(1, MAX_PIECE_BYTES);
            add(
                Buf::TokenizerPiece,
                elems(2 * piece, 4),
                Phase::Tokenize,
                Phase::Tokenize,
            );
            if tok.normalizes() {
                // NFC grows UTF-8 text at most threefold.
                add(
                    Buf::TokenizerText,
                    text.saturating_mul(3),
                    Phase::Tokenize,
                    Phase::Tokenize,
                );
            }
            // A token's bytes plus up to three held back from the previous one, each byte
            // at worst a three-byte U+FFFD.
            let longest = (0..tok.vocab_size())
                .filter_map(|id| tok.token_bytes(id).ok())
                .map(<[u8]>::len)
                .max()
                .unwrap_or(0);
            token_text = longest.saturating_add(3).saturating_mul(3);
        }
        // Prompt plus generated ids never exceed the context by more than the last
        // sampled token, which is not fed back. Live in every phase: a conversation's
        // history.
        add(
            Buf::Ids,
            elems(opts.max_context.saturating_add(1), 4),
            Phase::Preprocess,
            Phase::Decode,
        );

        let mut vision = None;
        let mut image_tokens = 0;
        if with_vision {
            let enc = VisionEncoder::new(image)?;
            let proj = Projector::new(image)?;
            let res = opts.resolution.unwrap_or(enc.image_size());
            opts.resolution = Some(res);
            let vp = enc.plan(res)?;
            if proj.in_dim() != vp.out_dim || proj.out_dim() != hidden {
                return Err(Error::Config {
                    what: "projector widths do not match the encoder output and the decoder",
                });
            }
            image_tokens = vp.tokens;
            let channels = enc.config().in_channels as usize;
            let pixels = elems(elems(channels, res), elems(res, 4));
            add(Buf::Pixels, pixels, Phase::Preprocess, Phase::Stem);
            add(
                Buf::PreprocessScratch,
                max_scratch_bytes(opts.max_frame_side, res),
                Phase::Preprocess,
                Phase::Preprocess,
            );
            let [a, b] = vp.buffer_floats;
            // The head reads the buffer the last stage wrote; the other one is free then.
            let (first_last, second_last) = if vp.final_buffer == 0 {
                (Phase::Head, Phase::Stages)
            } else {
                (Phase::Stages, Phase::Head)
            };
            add(Buf::VisionFirst, elems(a, 4), Phase::Stem, first_last);
            add(Buf::VisionSecond, elems(b, 4), Phase::Stages, second_last);
            add(Buf::StemWork, vp.stem_work_bytes, Phase::Stem, Phase::Stem);
            add(
                Buf::StagesWork,
                vp.stages_work_bytes,
                Phase::Stages,
                Phase::Stages,
            );
            add(Buf::HeadWork, vp.head_work_bytes, Phase::Head, Phase::Head);
            add(
                Buf::Features,
                elems(elems(vp.tokens, vp.out_dim), 4),
                Phase::Head,
                Phase::Project,
            );
            add(
                Buf::ProjectorWork,
                proj.padded_bytes(vp.tokens),
                Phase::Project,
                Phase::Project,
            );
            add(
                Buf::Embeddings,
                elems(elems(vp.tokens, hidden), 4),
                Phase::Project,
                Phase::Decode,
            );
            vision = Some(vp);
        } else {
            opts.resolution = None;
        }

        // The cache outlives a call: through tokenizing the next turn always, through the
        // vision phases when asked (see [`Phase`]).
        let kv = DecoderState::kv_padded_bytes(dcfg, opts.max_context, opts.kv)?;
        let kv_first = if opts.kv_across_pictures {
            Phase::Preprocess
        } else {
            Phase::Tokenize
        };
        add(Buf::KvCache, kv, kv_first, Phase::Decode);
        let work = DecoderState::work_padded_bytes(dcfg, opts.max_context, chunk)?;
        add(Buf::DecoderWork, work, Phase::Decode, Phase::Decode);
        if opts.sampling {
            add(
                Buf::SamplerScratch,
                elems(vocab, 4),
                Phase::Decode,
                Phase::Decode,
            );
        }
        if token_text > 0 {
            add(Buf::TokenText, token_text, Phase::Decode, Phase::Decode);
        }

        let mut requests: heapless::Vec<Request, MAX_BUFFERS> = heapless::Vec::new();
        let mut slots = [None; BUF_KINDS];
        for (i, (buf, r)) in reqs.iter().enumerate() {
            if requests.push(*r).is_err() {
                return Err(Error::Config {
                    what: "more buffers than the planner places (MAX_BUFFERS)",
                });
            }
            if let Some(s) = slots.get_mut(*buf as usize) {
                *s = u8::try_from(i).ok();
            }
        }
        let layout = place(&requests)?;
        Ok(ArenaPlan {
            layout,
            slots,
            options: opts,
            vision,
            image_tokens,
            chunk,
        })
    }

    /// Arena bytes from a [`ALIGN`]-aligned start: what `GLIMPSE_ARENA_BYTES` says.
    pub fn total(&self) -> usize {
        self.layout.total()
    }

    /// Arena bytes needed when the arena starts at address `start` (the total plus the
    /// padding to the first aligned byte).
    pub fn needed_for(&self, start: usize) -> usize {
        let pad = (ALIGN - start % ALIGN) % ALIGN;
        self.total().saturating_add(pad)
    }

    /// The general layout underneath.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Where `buf` is, if the run has it.
    pub fn placement(&self, buf: Buf) -> Option<&Placement> {
        let i = (*self.slots.get(buf as usize)?)?;
        self.layout.items.get(i as usize)
    }

    /// Every buffer the run has, with its placement.
    pub fn buffers(&self) -> impl Iterator<Item = (Buf, &Placement)> + '_ {
        Buf::ALL
            .iter()
            .filter_map(move |&b| self.placement(b).map(|p| (b, p)))
    }

    /// Whether the run has vision phases.
    pub fn has_vision(&self) -> bool {
        self.vision.is_some()
    }

    /// Bytes of all buffers live in `phase` (padded sizes).
    pub fn live_bytes(&self, phase: Phase) -> usize {
        self.layout.live_bytes(phase as u8)
    }

    /// The highest arena byte `phase` reaches.
    pub fn extent(&self, phase: Phase) -> usize {
        self.layout.extent(phase as u8)
    }

    /// The byte range of `buf` (empty when the run does not have it).
    pub fn range(&self, buf: Buf) -> Range<usize> {
        self.placement(buf).map_or(0..0, Placement::range)
    }

    /// The buffers `bufs` as disjoint slices of `arena` (the aligned arena, at least
    /// [`ArenaPlan::total`] bytes). Buffers live in one phase never overlap, so asking for
    /// the buffers of a phase always succeeds; asking for two that share bytes is an error.
    pub fn regions<'a, const N: usize>(
        &self,
        arena: &'a mut [u8],
        bufs: [Buf; N],
    ) -> Result<[&'a mut [u8]; N], Error> {
        let arena_len = arena.len();
        let arena = arena.get_mut(..self.total()).ok_or(Error::Arena {
            needed: self.total(),
            capacity: arena_len,
        })?;
        split_disjoint(arena, bufs.map(|b| self.range(b)))
    }
}

impl fmt::Display for ArenaPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "arena {} bytes; live per phase:", self.total())?;
        for phase in Phase::ALL {
            write!(f, " {} {}", phase.name(), self.live_bytes(phase))?;
        }
        Ok(())
    }
}

/// Bytes the chat template adds around the user's text with its default system prompt
/// and the image placeholder (0 when it has none).
fn template_overhead(image: &Model<'_>) -> usize {
    use crate::chat::{Turn, render};
    let Some(t) = image.config().tokenizer.as_ref() else {
        return 0;
    };
    let turn = Turn {
        system: None,
        user: "",
        image: true,
    };
    match render(&t.chat, &turn, &mut []) {
        Ok(s) => s.len(),
        Err(Error::Length { expected, .. }) => expected,
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec;
    use std::vec::Vec;

    fn req(bytes: usize, first: u8, last: u8) -> Request {
        Request {
            name: "t",
            bytes,
            first,
            last,
        }
    }

    /// The invariants every layout must keep.
    fn check(reqs: &[Request], l: &Layout) {
        let p = l.placements();
        assert_eq!(p.len(), reqs.len());
        for (a, r) in p.iter().zip(reqs) {
            assert_eq!(a.request, *r);
            assert_eq!(a.offset % ALIGN, 0);
            assert!(a.end() <= l.total());
        }
        for (i, a) in p.iter().enumerate() {
            for b in &p[i + 1..] {
                assert!(
                    !(a.meets(b) && a.overlaps(b)),
                    "live together and overlapping: {a:?} {b:?}"
                );
            }
        }
        // The total is reached by some buffer, and no phase can do with less than the
        // sum of what is live in it.
        assert_eq!(l.total(), p.iter().map(Placement::end).max().unwrap_or(0));
        for phase in 0..=8 {
            assert!(l.extent(phase) >= l.live_bytes(phase));
        }
    }

    #[test]
    fn disjoint_lifetimes_share_bytes() {
        let reqs = [req(1000, 0, 1), req(1000, 2, 3), req(100, 1, 2)];
        let l = place(&reqs).unwrap();
        check(&reqs, &l);
        let p = l.placements();
        assert_eq!(p[0].offset, 0);
        assert_eq!(p[1].offset, 0, "dead-by-then buffer reused");
        assert_eq!(p[2].offset, padded(1000));
        assert_eq!(l.total(), padded(1000) + padded(100));
    }

    #[test]
    fn first_fit_uses_gaps() {
        // Big A and C live together around a hole left by B (dead when D arrives).
        let reqs = [
            req(640, 0, 2), // A
            req(128, 0, 0), // B
            req(512, 0, 2), // C
            req(100, 1, 2), // D fits where B was
        ];
        let l = place(&reqs).unwrap();
        check(&reqs, &l);
        let p = l.placements();
        assert_eq!(p[0].offset, 0);
        assert_eq!(p[2].offset, 640);
        assert_eq!(p[1].offset, 1152);
        assert_eq!(p[3].offset, 1152);
        assert_eq!(l.total(), 1152 + 128);
    }

    #[test]
    fn refusals() {
        assert!(place(&[req(1, 2, 1)]).is_err());
        let many = vec![req(1, 0, 0); MAX_BUFFERS + 1];
        assert!(place(&many).is_err());
        assert!(place(&[req(usize::MAX, 0, 0), req(usize::MAX, 0, 0)]).is_err());
        assert_eq!(place(&[]).unwrap().total(), 0);
    }

    /// xorshift, so the property test needs no rand crate.
    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n.max(1)
        }
    }

    #[test]
    fn random_requests_keep_the_invariants_and_are_deterministic() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for case in 0..2000 {
            let n = rng.below(MAX_BUFFERS as u64 + 1) as usize;
            let reqs: Vec<Request> = (0..n)
                .map(|_| {
                    let a = rng.below(8) as u8;
                    let b = rng.below(8) as u8;
                    // Mostly small, sometimes huge, sometimes empty or odd-sized.
                    let bytes = match rng.below(10) {
                        0 => 0,
                        1 => rng.below(1 << 22) as usize,
                        _ => rng.below(5000) as usize,
                    };
                    req(bytes, a.min(b), a.max(b))
                })
                .collect();
            let l = place(&reqs).unwrap();
            check(&reqs, &l);
            assert_eq!(place(&reqs).unwrap(), l, "case {case}");
            // Never worse than giving every buffer its own bytes.
            let sum: usize = reqs.iter().map(|r| padded(r.bytes)).sum();
            assert!(l.total() <= sum, "case {case}");
            // And a phase's bytes really are disjoint: split them out of one arena.
            let mut arena = vec![0u8; l.total()];
            for phase in 0..8u8 {
                let live: Vec<&Placement> =
                    l.placements().iter().filter(|p| p.live_in(phase)).collect();
                if let [a, b, c, ..] = live.as_slice() {
                    let [x, y, z] =
                        split_disjoint(&mut arena, [a.range(), b.range(), c.range()]).unwrap();
                    assert_eq!(
                        (x.len(), y.len(), z.len()),
                        (a.request.bytes, b.request.bytes, c.request.bytes)
                    );
                }
            }
        }
    }

    #[test]
    fn split_disjoint_refuses_overlap_and_overrun() {
        let mut a = [0u8; 256];
        let [x, y] = split_disjoint(&mut a, [128..192, 0..64]).unwrap();
        x.fill(1);
        y.fill(2);
        assert_eq!(a[130], 1);
        assert_eq!(a[10], 2);
        assert!(split_disjoint(&mut a, [0..100, 64..128]).is_err());
        assert!(split_disjoint(&mut a, [0..0, 200..300]).is_err());
        let [e, f] = split_disjoint(&mut a, [5..5, 0..256]).unwrap();
        assert_eq!((e.len(), f.len()), (0, 256));
    }
}
