//! FastViTHD, FastVLM's vision encoder (spec `fastvlm.md` §1): the graph for any stage
//! layout a weights image describes, run on NHWC f32 activations inside the arena.
//!
//! ```text
//! pixels 3xRxR --stem--> stage 0 --[PatchEmbed, RepCPE?, blocks]--> ... --> head
//!                                  (RepMixerBlock or AttentionBlock)     conv_exp+SE+GELU
//! ```
//!
//! Memory: the blocks run in place on the current activation (`cur`); a second buffer
//! (`other`) receives what changes size or cannot run in place (PatchEmbed, RepCPE) and
//! serves the attention blocks as scratch for their QKV matrix, and the two swap roles.
//! Each layer also borrows a work region through [`Arena::scope`] and gives it back (a row
//! tile of a ConvFFN or a downsampler, conv and linear scratch; [`TILE_FLOATS`] bounds
//! it). So nothing the reference holds transiently is ever stored at full size: not
//! stem.0's output, not a ConvFFN hidden layer or its input, not an attention score
//! matrix; at 1024² the largest buffer is the stage-0 activation itself.
//! Each layer declares its work buffers once, as a [`Scratch`](crate::arena::Scratch):
//! its `work()` is that declaration's size and its `forward` carves that same
//! declaration, and one walk over the layers serves both [`VisionEncoder::plan`] and
//! [`VisionEncoder::stages`]. So [`VisionEncoder::arena_bytes`] is exactly what
//! [`VisionEncoder::encode`] allocates (tests/tests/arena_plan.rs checks each phase's
//! high-water mark against it, on one task and on a pool), and `encode` checks the arena
//! against it before it touches anything.
//!
//! The run has three steps with different needs, which the session's arena planner
//! exploits: [`VisionEncoder::stem`] reads the pixels and writes the first buffer (the
//! second is not in use yet, so the pixels can live where it will be),
//! [`VisionEncoder::stages`] needs both buffers, and [`VisionEncoder::head`] reads one of
//! them ([`VisionPlan::final_buffer`]) and writes the features wherever the caller wants.
//!
//! Layers are looked up by canonical name when they run (a binary search each) rather
//! than stored, so the encoder is a few words whatever the depth; [`VisionEncoder::new`]
//! checks every tensor against the config once.

pub mod attention;
pub mod convffn;
pub mod head;
pub mod patch_embed;
pub mod repcpe;
pub mod repmixer;
pub mod stem;

use core::fmt::{self, Write as _};

use glimpse_quant::schema::{TokenMixer, VisionConfig};

use crate::arena::{Arena, padded};
use crate::error::{Dims, Error, tensor_name};
use crate::image::{Model, TensorView};
use crate::kernels::{Ctx, Vector, Weights, linear, linear_scratch_bytes, with_default_ctx};

use attention::AttentionBlock;
use head::Head;
use patch_embed::PatchEmbed;
use repcpe::RepCpe;
use repmixer::RepMixerBlock;
use stem::Stem;

/// Values (f32) per tile of the pixel-wise layers (1x1 convs, ConvFFN, the attention
/// projection), 1 MiB: bounds the ConvFFN hidden buffer (`tile x 4C`) and the linear
/// scratch whatever the stage width, and keeps a tile in L2 while every weight row
/// passes over it.
pub const TILE_FLOATS: usize = 1 << 18;

/// Pixels per tile for a layer that holds `per_pixel` values per pixel (at least one).
pub fn tile_pixels(per_pixel: usize) -> usize {
    (TILE_FLOATS / per_pixel.max(1)).max(1)
}

/// Size of an NHWC activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Shape {
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
    /// Channels (innermost).
    pub channels: usize,
}

impl Shape {
    /// Pixels (tokens).
    pub fn pixels(&self) -> usize {
        self.height * self.width
    }

    /// Values.
    pub fn len(&self) -> usize {
        self.pixels() * self.channels
    }

    /// Whether it holds no value.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Where [`VisionEncoder::encode_observed`] reports an intermediate activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Tap {
    /// After the stem (stride 4).
    Stem,
    /// After stage `i` (downsampler, positional encoding and blocks).
    Stage(usize),
    /// The encoder output (`conv_exp` after SE and GELU).
    Head,
}

/// Bytes of scratch a layer takes from the work region, added up the way the arena
/// counts them (every buffer padded to the arena alignment): the
/// [`Scratch::padded_bytes`](crate::arena::Scratch::padded_bytes) of what it declares.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Work(pub(crate) usize);

/// Look a tensor up by its canonical name.
pub(crate) fn find<'a>(
    image: &Model<'a>,
    name: fmt::Arguments<'_>,
) -> Result<TensorView<'a>, Error> {
    let mut buf = heapless::String::<128>::new();
    buf.write_fmt(name).map_err(|_| Error::Config {
        what: "tensor name longer than 128 bytes",
    })?;
    image.find(&buf).map_err(|error| Error::Tensor {
        tensor: tensor_name(&buf),
        error,
    })
}

fn expect_dims(v: &TensorView<'_>, dims: &[usize]) -> Result<(), Error> {
    let same =
        v.dims().len() == dims.len() && v.dims().iter().zip(dims).all(|(&a, &b)| a as usize == b);
    if same {
        return Ok(());
    }
    let mut want = [0u32; 4];
    for (w, &d) in want.iter_mut().zip(dims) {
        *w = u32::try_from(d).unwrap_or(u32::MAX);
    }
    Err(Error::Shape {
        tensor: tensor_name(v.name),
        expected: Dims::new(want.get(..dims.len()).unwrap_or(&[])),
        got: Dims::new(v.dims()),
    })
}

/// A kept (f32/f16/bf16) tensor of exactly `dims`.
pub(crate) fn kept<'a>(
    image: &Model<'a>,
    name: fmt::Arguments<'_>,
    dims: &[usize],
) -> Result<Vector<'a>, Error> {
    let v = find(image, name)?;
    expect_dims(&v, dims)?;
    Vector::flat(&v)
}

/// A 1-D kept tensor as a [`Vector`] (linear biases).
pub(crate) fn vector<'a>(
    image: &Model<'a>,
    name: fmt::Arguments<'_>,
    len: usize,
) -> Result<Vector<'a>, Error> {
    let v = find(image, name)?;
    expect_dims(&v, &[len])?;
    Vector::from_view(&v)
}

/// A `[rows, cols]` matrix in any stored format.
pub(crate) fn matrix<'a>(
    image: &Model<'a>,
    name: fmt::Arguments<'_>,
    rows: usize,
    cols: usize,
) -> Result<Weights<'a>, Error> {
    let v = find(image, name)?;
    expect_dims(&v, &[rows, cols])?;
    Weights::from_view(&v)
}

/// `vision.stages.{stage}.blocks.{block}`, the prefix of a block's tensors.
pub(crate) fn block_prefix(stage: usize, block: usize) -> Result<heapless::String<64>, Error> {
    let mut p = heapless::String::new();
    write!(p, "vision.stages.{stage}.blocks.{block}").map_err(|_| Error::Config {
        what: "block index too large",
    })?;
    Ok(p)
}

/// Square kernel size of a `[k, k, ...]` tensor (grouped conv kernels carry their size;
/// the config only names the ones it has fields for).
pub(crate) fn kernel_size(v: &TensorView<'_>) -> Result<usize, Error> {
    match v.dims() {
        [a, b, ..] if a == b && a % 2 == 1 => Ok(*a as usize),
        _ => Err(Error::Shape {
            tensor: tensor_name(v.name),
            expected: Dims::new(&[3, 3]),
            got: Dims::new(v.dims()),
        }),
    }
}

/// Pixels per call of [`linear_tiled`] for `w`.
fn linear_tile(w: &Weights<'_>) -> usize {
    tile_pixels(w.cols.max(w.rows))
}

/// Linear scratch [`linear_tiled`] needs for up to `pixels` pixels.
pub(crate) fn tiled_scratch_bytes(w: &Weights<'_>, pixels: usize) -> usize {
    linear_scratch_bytes(w, pixels.clamp(1, linear_tile(w)))
}

/// `y = x·Wᵀ + b` over every pixel, a tile of pixels at a time (so the scratch, which
/// holds a tile's quantized activations for Q8_0, stays bounded).
pub(crate) fn linear_tiled(
    ctx: &mut Ctx<'_>,
    w: &Weights<'_>,
    b: Option<&Vector<'_>>,
    x: &[f32],
    y: &mut [f32],
    scratch: &mut [u8],
) -> Result<(), Error> {
    let (rows, cols) = (w.rows, w.cols);
    if cols == 0 || rows == 0 || !x.len().is_multiple_of(cols) || y.len() / rows != x.len() / cols {
        return Err(Error::Length {
            what: "pixel-wise linear (input and output pixels)",
            expected: x.len() / cols.max(1) * rows,
            got: y.len(),
        });
    }
    let tile = linear_tile(w);
    for (xt, yt) in x.chunks(tile * cols).zip(y.chunks_mut(tile * rows)) {
        linear(ctx, w, b, xt, xt.len() / cols, yt, scratch)?;
    }
    Ok(())
}

/// `out = y + scale ⊙ f` per pixel (the layer-scaled residual of every block).
pub(crate) fn scaled_residual(out: &mut [f32], y: &[f32], f: &[f32], scale: &[f32]) {
    let c = scale.len().max(1);
    for ((o, y), f) in out
        .chunks_exact_mut(c)
        .zip(y.chunks_exact(c))
        .zip(f.chunks_exact(c))
    {
        for (((o, &y), &f), &s) in o.iter_mut().zip(y).zip(f).zip(scale) {
            *o = y + s * f;
        }
    }
}

/// The prefix of `buf` an activation of `len` values uses.
pub(crate) fn prefix(buf: &[f32], len: usize) -> Result<&[f32], Error> {
    buf.get(..len).ok_or(Error::Length {
        what: "activation buffer",
        expected: len,
        got: buf.len(),
    })
}

/// The mutable prefix of `buf` an activation of `len` values uses.
pub(crate) fn prefix_mut(buf: &mut [f32], len: usize) -> Result<&mut [f32], Error> {
    let got = buf.len();
    buf.get_mut(..len).ok_or(Error::Length {
        what: "activation buffer",
        expected: len,
        got,
    })
}

/// Channels of stage `i` (checked to exist by `VisionEncoder::new`).
fn stage_dim(cfg: &VisionConfig, i: usize) -> usize {
    cfg.stages.get(i).map_or(0, |s| s.dim as usize)
}

/// The FastViTHD encoder of a weights image.
#[derive(Debug, Clone, Copy)]
pub struct VisionEncoder<'a> {
    image: &'a Model<'a>,
    cfg: &'a VisionConfig,
}

/// What the arena must hold for one resolution: see [`VisionEncoder::plan`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct VisionPlan {
    /// Input resolution.
    pub resolution: usize,
    /// f32 values of the two activation buffers. The first holds the stem output and the
    /// stage-0 blocks (which run in place), so it is the larger one.
    pub buffer_floats: [usize; 2],
    /// Largest work region any layer takes, in bytes (padded): the largest of the three
    /// steps' below.
    pub work_bytes: usize,
    /// Work region of [`VisionEncoder::stem`], in bytes (padded).
    pub stem_work_bytes: usize,
    /// Work region of [`VisionEncoder::stages`], in bytes (padded).
    pub stages_work_bytes: usize,
    /// Work region of [`VisionEncoder::head`], in bytes (padded).
    pub head_work_bytes: usize,
    /// Which of the two buffers holds the last stage's output (the head's input).
    pub final_buffer: usize,
    /// Shape of the last stage's output.
    pub final_shape: Shape,
    /// Output tokens.
    pub tokens: usize,
    /// Output channels per token.
    pub out_dim: usize,
}

impl VisionPlan {
    /// Padded bytes the encoder allocates from an aligned arena position.
    pub fn padded_bytes(&self) -> usize {
        let [a, b] = self.buffer_floats.map(|n| padded(n.saturating_mul(4)));
        a.saturating_add(b).saturating_add(self.work_bytes)
    }

    /// Arena bytes [`VisionEncoder::encode`] needs whatever the alignment of the arena's
    /// start (what [`crate::arena::bound`] would say for these buffers).
    pub fn arena_bytes(&self) -> usize {
        self.padded_bytes().saturating_add(crate::arena::ALIGN - 1)
    }
}

/// The two activation buffers while planning: which one holds the activation, and the
/// most each is asked to hold.
struct Slots {
    floats: [usize; 2],
    cur: usize,
}

impl Slots {
    fn need_cur(&mut self, n: usize) {
        if let Some(f) = self.floats.get_mut(self.cur) {
            *f = (*f).max(n);
        }
    }
    fn need_other(&mut self, n: usize) {
        if let Some(f) = self.floats.get_mut(1 - self.cur) {
            *f = (*f).max(n);
        }
    }
    fn swap(&mut self) {
        self.cur = 1 - self.cur;
    }
}

/// One step of [`VisionEncoder::walk`].
#[derive(Clone, Copy)]
enum Step<'s, 'a> {
    /// Run this layer.
    Layer(&'s Layer<'a>),
    /// Stage `i` is done (its output is in the current buffer).
    StageEnd(usize),
}

/// A layer of the stages.
#[derive(Clone, Copy)]
enum Layer<'a> {
    /// A stage's downsampler: reads the current buffer, writes the other.
    Down(PatchEmbed<'a>),
    /// A positional encoding: reads the current buffer, writes the other.
    Pos(RepCpe<'a>),
    /// A RepMixer block, in place.
    Mixer(RepMixerBlock<'a>),
    /// An attention block, in place, with the other buffer as scratch.
    Attention(AttentionBlock<'a>),
}

impl Layer<'_> {
    /// Its declared work-region scratch for an input of `shape`.
    fn work(&self, shape: Shape) -> Work {
        match self {
            Layer::Down(l) => l.work(shape),
            Layer::Pos(l) => l.work(shape),
            Layer::Mixer(l) => l.work(shape),
            Layer::Attention(l) => l.work(shape),
        }
    }

    /// Its output shape.
    fn out_shape(&self, shape: Shape) -> Shape {
        match self {
            Layer::Down(l) => l.out_shape(shape),
            _ => shape,
        }
    }

    /// Values of the other buffer it uses.
    fn other_floats(&self, shape: Shape) -> usize {
        match self {
            Layer::Down(l) => l.out_shape(shape).len(),
            Layer::Pos(_) => shape.len(),
            Layer::Mixer(_) => 0,
            Layer::Attention(l) => l.other_floats(shape),
        }
    }

    /// Whether its output lands in the other buffer (which then becomes the current one).
    fn writes_other(&self) -> bool {
        matches!(self, Layer::Down(_) | Layer::Pos(_))
    }
}

impl<'a> VisionEncoder<'a> {
    /// The encoder of `image`, after checking that its config describes a FastViTHD the
    /// runtime can run and that every tensor it names exists with the implied shape and
    /// a usable format.
    pub fn new(image: &'a Model<'a>) -> Result<Self, Error> {
        let cfg = image.config().vision.as_ref().ok_or(Error::Config {
            what: "the image has no vision encoder",
        })?;
        let enc = VisionEncoder { image, cfg };
        enc.check_config()?;
        // Loading every layer checks every tensor.
        Stem::load(image, cfg)?;
        enc.walk(|_| Ok(()))?;
        Head::load(image, cfg)?;
        Ok(enc)
    }

    fn check_config(&self) -> Result<(), Error> {
        let cfg = self.cfg;
        let bad = |what| Err(Error::Config { what });
        if cfg.stages.is_empty() {
            return bad("vision config has no stages");
        }
        if cfg.in_channels == 0 || cfg.out_dim == 0 {
            return bad("vision config has zero input or output channels");
        }
        for (i, st) in cfg.stages.iter().enumerate() {
            if st.dim == 0 || st.ffn_dim == 0 {
                return bad("vision stage with zero channels");
            }
            if i > 0
                && !st
                    .dim
                    .is_multiple_of(cfg.stages.get(i - 1).map_or(1, |p| p.dim))
            {
                return bad("stage width not a multiple of the previous one (grouped downsampler)");
            }
            if st.mixer == TokenMixer::Attention
                && (cfg.head_dim == 0 || !st.dim.is_multiple_of(cfg.head_dim))
            {
                return bad("attention stage width not a multiple of head_dim");
            }
        }
        let last = cfg.stages.last().map_or(1, |s| s.dim);
        if !cfg.out_dim.is_multiple_of(last) {
            return bad("conv_exp width not a multiple of the last stage's");
        }
        for k in [
            cfg.mixer_kernel,
            cfg.ffn_kernel,
            cfg.down_kernel,
            cfg.pos_kernel,
        ] {
            if k.is_multiple_of(2) {
                return bad("even conv kernel size");
            }
        }
        if !(cfg.norm_eps.is_finite() && cfg.norm_eps >= 0.0) {
            return bad("norm epsilon is negative or not finite");
        }
        Ok(())
    }

    /// The config.
    pub fn config(&self) -> &'a VisionConfig {
        self.cfg
    }

    /// The native resolution the checkpoint was made for.
    pub fn image_size(&self) -> usize {
        self.cfg.image_size as usize
    }

    /// Total stride: resolutions must be multiples of it.
    pub fn stride(&self) -> usize {
        self.cfg.stride() as usize
    }

    /// Output channels per token.
    pub fn out_dim(&self) -> usize {
        self.cfg.out_dim as usize
    }

    /// Output tokens at `resolution` (`(resolution / stride)²`).
    pub fn tokens(&self, resolution: usize) -> usize {
        let g = resolution / self.stride().max(1);
        g.saturating_mul(g)
    }

    fn check_resolution(&self, resolution: usize) -> Result<(), Error> {
        let s = self.stride();
        if resolution == 0 || !resolution.is_multiple_of(s) {
            return Err(Error::Config {
                what: "resolution is not a positive multiple of the encoder's stride",
            });
        }
        // Every buffer the plan sizes is at most a few times the largest activation
        // (a stage's input, its QKV or its ConvFFN hidden layer, or the stem's first
        // output); bounding that in u64 keeps the plan's usize arithmetic exact on
        // 32-bit targets too.
        let cfg = self.cfg;
        let too_big = Error::Config {
            what: "resolution too large for this target's address space",
        };
        let mut largest = u64::from(cfg.stages.first().map_or(0, |st| st.dim))
            .checked_mul(
                (resolution as u64 / 2)
                    .checked_pow(2)
                    .ok_or(too_big.clone())?,
            )
            .ok_or(too_big.clone())?;
        for (i, st) in cfg.stages.iter().enumerate() {
            let grid = resolution as u64 >> (2 + i.min(60));
            let widest = [
                u64::from(st.dim) * 3,
                u64::from(st.ffn_dim),
                u64::from(cfg.out_dim),
            ];
            for w in widest {
                let v = w.checked_mul(grid * grid).ok_or(too_big.clone())?;
                largest = largest.max(v);
            }
        }
        // 4 bytes per value, and room for the handful of such buffers the plan adds up.
        match largest.checked_mul(64) {
            Some(b) if b <= usize::MAX as u64 => Ok(()),
            _ => Err(too_big),
        }
    }

    /// Every layer of the stages in the order they run ([`Step::Layer`]), with
    /// [`Step::StageEnd`] after each stage: the one list both [`VisionEncoder::plan`] and
    /// [`VisionEncoder::stages`] go through.
    fn walk(&self, mut f: impl FnMut(Step<'_, 'a>) -> Result<(), Error>) -> Result<(), Error> {
        let (img, cfg) = (self.image, self.cfg);
        for (i, st) in cfg.stages.iter().enumerate() {
            let dim = st.dim as usize;
            if i > 0 {
                let pe = PatchEmbed::load(img, i, stage_dim(cfg, i - 1), dim)?;
                f(Step::Layer(&Layer::Down(pe)))?;
            }
            if st.pos_emb {
                f(Step::Layer(&Layer::Pos(RepCpe::load(img, cfg, i, dim)?)))?;
            }
            for b in 0..st.depth as usize {
                f(Step::Layer(&match st.mixer {
                    TokenMixer::RepMixer => Layer::Mixer(RepMixerBlock::load(img, cfg, i, b, st)?),
                    TokenMixer::Attention => {
                        Layer::Attention(AttentionBlock::load(img, cfg, i, b, st)?)
                    }
                }))?;
            }
            f(Step::StageEnd(i))?;
        }
        Ok(())
    }

    /// The arena plan for `resolution`: buffer sizes, from each layer's declared scratch
    /// along the one walk over the layers that [`VisionEncoder::stages`] runs too.
    pub fn plan(&self, resolution: usize) -> Result<VisionPlan, Error> {
        self.check_resolution(resolution)?;
        let (img, cfg) = (self.image, self.cfg);
        let mut slots = Slots {
            floats: [0, 0],
            cur: 0,
        };
        let stem = Stem::load(img, cfg)?;
        let mut shape = stem.out_shape(resolution);
        slots.need_cur(shape.len());
        let stem_work = stem.work(resolution).0;
        let mut work = 0;
        self.walk(|step| {
            if let Step::Layer(layer) = step {
                work = work.max(layer.work(shape).0);
                let out = layer.out_shape(shape);
                slots.need_other(layer.other_floats(shape));
                if layer.writes_other() {
                    slots.swap();
                }
                shape = out;
            }
            Ok(())
        })?;
        let head = Head::load(img, cfg)?;
        let head_work = head.work(shape).0;
        let out = head.out_shape(shape);
        Ok(VisionPlan {
            resolution,
            buffer_floats: slots.floats,
            work_bytes: stem_work.max(work).max(head_work),
            stem_work_bytes: stem_work,
            stages_work_bytes: work,
            head_work_bytes: head_work,
            final_buffer: slots.cur,
            final_shape: shape,
            tokens: out.pixels(),
            out_dim: out.channels,
        })
    }

    /// Arena bytes [`VisionEncoder::encode`] needs at `resolution`, for an arena of any
    /// start alignment (the output buffer is the caller's and not included).
    pub fn arena_bytes(&self, resolution: usize) -> Result<usize, Error> {
        Ok(self.plan(resolution)?.arena_bytes())
    }

    /// Encode `pixels` (planar `in_channels x R x R`, already preprocessed) into `out`
    /// (`tokens x out_dim`, tokens row-major over the output grid).
    pub fn encode(
        &self,
        pixels: &[f32],
        resolution: usize,
        arena: &mut Arena<'_>,
        out: &mut [f32],
    ) -> Result<(), Error> {
        self.encode_observed(pixels, resolution, arena, out, &mut |_, _, _| {})
    }

    /// [`VisionEncoder::encode`], calling `observe(tap, activation, shape)` with the NHWC
    /// activation after the stem, after every stage and at the end (for per-stage checks
    /// and debugging).
    pub fn encode_observed(
        &self,
        pixels: &[f32],
        resolution: usize,
        arena: &mut Arena<'_>,
        out: &mut [f32],
        observe: &mut dyn FnMut(Tap, &[f32], Shape),
    ) -> Result<(), Error> {
        let plan = self.plan(resolution)?;
        self.check_io(&plan, pixels, out)?;
        arena.check(plan.padded_bytes())?;
        let [a, b] = plan.buffer_floats;
        let mut bufs = [arena.f32s(a)?, arena.f32s(b)?];
        with_default_ctx(|ctx| {
            let [first, second] = &mut bufs;
            let shape = self.stem(ctx, pixels, resolution, first, arena)?;
            observe(Tap::Stem, prefix(first, shape.len())?, shape);
            let (shape, last) = self.stages(ctx, first, second, shape, arena, observe)?;
            let x = bufs.get(last).map_or(&[][..], |b| &b[..]);
            let shape = self.head(ctx, x, shape, arena, out)?;
            observe(Tap::Head, prefix(out, shape.len())?, shape);
            Ok(())
        })
    }

    /// Check the pixel and output lengths against `plan`.
    fn check_io(&self, plan: &VisionPlan, pixels: &[f32], out: &[f32]) -> Result<(), Error> {
        let r = plan.resolution;
        let in_len = (self.cfg.in_channels as usize)
            .saturating_mul(r)
            .saturating_mul(r);
        if pixels.len() != in_len {
            return Err(Error::Length {
                what: "input pixels (channels x resolution x resolution)",
                expected: in_len,
                got: pixels.len(),
            });
        }
        let out_len = plan.tokens.saturating_mul(plan.out_dim);
        if out.len() != out_len {
            return Err(Error::Length {
                what: "vision output (tokens x out_dim)",
                expected: out_len,
                got: out.len(),
            });
        }
        Ok(())
    }

    /// Step 1: the stem, from planar `pixels` (`in_channels x R x R`) into `first` (which
    /// must hold `plan.buffer_floats[0]` values), with layer scratch from `work`
    /// (`plan.stem_work_bytes` from an aligned start). Returns the stem's output shape.
    pub fn stem(
        &self,
        ctx: &mut Ctx<'_>,
        pixels: &[f32],
        resolution: usize,
        first: &mut [f32],
        work: &mut Arena<'_>,
    ) -> Result<Shape, Error> {
        self.check_resolution(resolution)?;
        let (img, cfg) = (self.image, self.cfg);
        let in_len = (cfg.in_channels as usize)
            .saturating_mul(resolution)
            .saturating_mul(resolution);
        if pixels.len() != in_len {
            return Err(Error::Length {
                what: "input pixels (channels x resolution x resolution)",
                expected: in_len,
                got: pixels.len(),
            });
        }
        Stem::load(img, cfg)?.forward(ctx, pixels, resolution, first, work)
    }

    /// Step 2: every stage, starting from the stem output (`shape`) in `first` and using
    /// `second` as the other buffer (they hold `plan.buffer_floats` values), with layer
    /// scratch from `work` (`plan.stages_work_bytes`). `observe` sees each stage's output.
    /// Returns the last stage's shape and which buffer (0 = `first`) holds it.
    pub fn stages(
        &self,
        ctx: &mut Ctx<'_>,
        first: &mut [f32],
        second: &mut [f32],
        mut shape: Shape,
        work: &mut Arena<'_>,
        observe: &mut dyn FnMut(Tap, &[f32], Shape),
    ) -> Result<(Shape, usize), Error> {
        let (mut cur, mut other) = (first, second);
        let mut which = 0;
        self.walk(|step| {
            match step {
                Step::Layer(Layer::Down(pe)) => {
                    shape = pe.forward(ctx, cur, other, shape, work)?;
                }
                Step::Layer(Layer::Pos(pos)) => pos.forward(ctx, cur, other, shape, work)?,
                Step::Layer(Layer::Mixer(block)) => block.forward(ctx, cur, shape, work)?,
                Step::Layer(Layer::Attention(block)) => {
                    block.forward(ctx, cur, other, shape, work)?;
                }
                Step::StageEnd(i) => observe(Tap::Stage(i), prefix(cur, shape.len())?, shape),
            }
            if let Step::Layer(layer) = step
                && layer.writes_other()
            {
                core::mem::swap(&mut cur, &mut other);
                which = 1 - which;
            }
            Ok(())
        })?;
        Ok((shape, which))
    }

    /// Step 3: `conv_exp` + SE + GELU from the last stage's output `x` (of `shape`) into
    /// `out` (`tokens x out_dim`, tokens row-major over the grid), with layer scratch from
    /// `work` (`plan.head_work_bytes`). Returns the output shape.
    pub fn head(
        &self,
        ctx: &mut Ctx<'_>,
        x: &[f32],
        shape: Shape,
        work: &mut Arena<'_>,
        out: &mut [f32],
    ) -> Result<Shape, Error> {
        let head = Head::load(self.image, self.cfg)?;
        let out_shape = head.out_shape(shape);
        if out.len() != out_shape.len() {
            return Err(Error::Length {
                what: "vision output (tokens x out_dim)",
                expected: out_shape.len(),
                got: out.len(),
            });
        }
        head.forward(ctx, x, out, shape, work)
    }
}
