//! The text decoder: a pre-norm transformer with RoPE, grouped-query attention and a
//! SwiGLU MLP (Qwen2 with q/k/v biases, Llama/SmolLM2 without), run in the arena.
//!
//! [`Decoder`] is the weights: it checks every tensor against the image's
//! [`DecoderConfig`] once, then resolves a layer's tensors by name whenever it runs it
//! (a binary search each, negligible next to the matmuls) so it stays a few words big
//! however deep the model is. [`DecoderState`] is everything that changes: the KV cache
//! and the work buffers, all allocated from the arena up front for a maximum context and
//! a maximum prefill chunk. Reading the forward pass top to bottom is
//! [`DecoderState::forward`] → `run_chunk` → `run_layer`, as in llama2.c's `forward`.
//!
//! Positions are implicit: each call continues where the previous one stopped, so a VLM
//! prompt is prefilled as text ids, then image embeddings, then text ids again.

pub mod attention;
pub mod kv_cache;
pub mod mlp;

use core::fmt::Write as _;

use glimpse_quant::DType;
use glimpse_quant::schema::DecoderConfig;

use crate::arena::{Arena, bound, padded};
use crate::error::{Dims, Error, TensorName, tensor_name};
use crate::image::{Model, TensorView};
use crate::kernels::linear::{Product, Q8Activations, Weights, linear_many, linear_scratch_bytes};
use crate::kernels::math::{add, rmsnorm, rope_cos_sin, rope_rotate_half};
use crate::kernels::{Ctx, Vector, linear, with_default_ctx};

pub use attention::Heads;
use attention::KeysValues;
pub use kv_cache::{KvCache, KvFormat, KvView};
pub use mlp::{Mlp, MlpWork};

/// Prefill chunk [`DecoderState::new`] sizes its work buffers for: long inputs are run
/// this many positions at a time, each chunk as matrix-matrix products.
pub const DEFAULT_CHUNK: usize = 64;

/// The decoder's dimensions, from its config, as `usize`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// Model width.
    pub hidden: usize,
    /// Layers.
    pub layers: usize,
    /// Head geometry.
    pub heads: Heads,
    /// MLP width.
    pub intermediate: usize,
    /// Embedding rows (and logits).
    pub vocab: usize,
}

impl Shape {
    /// Check a config and convert it.
    pub fn from_config(c: &DecoderConfig) -> Result<Self, Error> {
        let s = Shape {
            hidden: c.hidden as usize,
            layers: c.layers as usize,
            heads: Heads {
                heads: c.heads as usize,
                kv_heads: c.kv_heads as usize,
                head_dim: c.head_dim as usize,
            },
            intermediate: c.intermediate as usize,
            vocab: c.vocab as usize,
        };
        let bad = |what| Err(Error::Config { what });
        if s.hidden == 0 || s.layers == 0 || s.intermediate == 0 || s.vocab == 0 {
            return bad("hidden, layers, intermediate and vocab must be non-zero");
        }
        if s.heads.heads == 0
            || s.heads.kv_heads == 0
            || !s.heads.heads.is_multiple_of(s.heads.kv_heads)
        {
            return bad("heads must be a non-zero multiple of kv_heads");
        }
        if s.heads.head_dim == 0 || !s.heads.head_dim.is_multiple_of(2) {
            return bad("head_dim must be even and non-zero (rotate-half RoPE)");
        }
        if !c.rope_theta.is_finite() || c.rope_theta <= 0.0 || !c.norm_eps.is_finite() {
            return bad("rope_theta must be positive and norm_eps finite");
        }
        Ok(s)
    }
}

/// One layer's tensors.
#[derive(Clone, Copy, Debug)]
pub struct Layer<'a> {
    /// RMSNorm before attention.
    pub attn_norm: Vector<'a>,
    /// Query projection `[heads·head_dim, hidden]`.
    pub q: Weights<'a>,
    /// Key projection `[kv_heads·head_dim, hidden]`.
    pub k: Weights<'a>,
    /// Value projection `[kv_heads·head_dim, hidden]`.
    pub v: Weights<'a>,
    /// Biases of q, k, v (Qwen2).
    pub qkv_bias: Option<[Vector<'a>; 3]>,
    /// Output projection `[hidden, heads·head_dim]`.
    pub o: Weights<'a>,
    /// RMSNorm before the MLP.
    pub mlp_norm: Vector<'a>,
    /// The MLP.
    pub mlp: Mlp<'a>,
}

/// The decoder's weights, checked against the config. `Copy`: it is a handful of
/// references into the image.
#[derive(Clone, Copy, Debug)]
pub struct Decoder<'a> {
    image: &'a Model<'a>,
    config: &'a DecoderConfig,
    shape: Shape,
    embed: Weights<'a>,
    norm: Vector<'a>,
    lm_head: Weights<'a>,
    act: Q8Activations,
}

/// `decoder.layers.{layer}.{suffix}`.
fn layer_name(layer: usize, suffix: &str) -> TensorName {
    let mut s = TensorName::new();
    // A canonical layer name is far below the capacity; a cut name would only make the
    // lookup fail with that (cut) name in the error.
    let _ = write!(s, "decoder.layers.{layer}.{suffix}");
    s
}

impl<'a> Decoder<'a> {
    /// Resolve and check every decoder tensor of `image` (names, shapes, dtypes) against
    /// its decoder config. Errors name the first tensor that does not fit.
    pub fn new(image: &'a Model<'a>) -> Result<Self, Error> {
        let config = image.config().decoder.as_ref().ok_or(Error::Config {
            what: "the image has no decoder",
        })?;
        let shape = Shape::from_config(config)?;
        let (d, v) = (shape.hidden, shape.vocab);
        let embed = matrix(image, "decoder.embed.weight", v, d)?;
        let norm = vector(image, "decoder.norm.weight", d)?;
        // Tied models read their logits off the embeddings (HF `tie_word_embeddings`);
        // the config records which one the converter found.
        let lm_head = if config.tied_embeddings {
            embed
        } else {
            matrix(image, "decoder.lm_head.weight", v, d)?
        };
        let dec = Decoder {
            image,
            config,
            shape,
            embed,
            norm,
            lm_head,
            act: Q8Activations::Int8,
        };
        for l in 0..shape.layers {
            dec.layer(l)?;
        }
        Ok(dec)
    }

    /// The same decoder with activations meeting Q8_0 weights as `act` says (every
    /// layer and the logits; the default is [`Q8Activations::Int8`]).
    pub fn with_q8_activations(self, act: Q8Activations) -> Self {
        Decoder {
            act,
            lm_head: self.lm_head.with_activations(act),
            ..self
        }
    }

    /// The config.
    pub fn config(&self) -> &'a DecoderConfig {
        self.config
    }

    /// The dimensions.
    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// The embedding matrix `[vocab, hidden]`.
    pub fn embeddings(&self) -> Weights<'a> {
        self.embed
    }

    /// The logits matrix `[vocab, hidden]` (the embeddings when tied).
    pub fn lm_head(&self) -> Weights<'a> {
        self.lm_head
    }

    /// Embedding of token `id` into `out` (`hidden` values), whatever its stored format.
    pub fn embed(&self, id: u32, out: &mut [f32]) -> Result<(), Error> {
        if id as usize >= self.shape.vocab {
            return Err(Error::TokenOutOfRange {
                id,
                vocab: self.shape.vocab as u32,
            });
        }
        self.embed.dequantize_row(id as usize, out)
    }

    /// Layer `l`'s tensors, checked.
    pub fn layer(&self, l: usize) -> Result<Layer<'a>, Error> {
        let s = &self.shape;
        let (d, qd, kvd, inter) = (s.hidden, s.heads.q_dim(), s.heads.kv_dim(), s.intermediate);
        let img = self.image;
        let act = self.act;
        let m = |suffix, rows, cols| {
            matrix(img, &layer_name(l, suffix), rows, cols).map(|w| w.with_activations(act))
        };
        let vec = |suffix, len| vector(img, &layer_name(l, suffix), len);
        if l >= s.layers {
            return Err(Error::Config {
                what: "layer index past the layer count",
            });
        }
        let qkv_bias = if self.config.qkv_bias {
            Some([
                vec("attn.q.bias", qd)?,
                vec("attn.k.bias", kvd)?,
                vec("attn.v.bias", kvd)?,
            ])
        } else {
            None
        };
        Ok(Layer {
            attn_norm: vec("attn_norm.weight", d)?,
            q: m("attn.q.weight", qd, d)?,
            k: m("attn.k.weight", kvd, d)?,
            v: m("attn.v.weight", kvd, d)?,
            qkv_bias,
            o: m("attn.o.weight", d, qd)?,
            mlp_norm: vec("mlp_norm.weight", d)?,
            mlp: Mlp {
                gate: m("mlp.gate.weight", inter, d)?,
                up: m("mlp.up.weight", inter, d)?,
                down: m("mlp.down.weight", d, inter)?,
            },
        })
    }
}

fn find<'a>(image: &'a Model<'a>, name: &str) -> Result<TensorView<'a>, Error> {
    image.find(name).map_err(|error| Error::Tensor {
        tensor: tensor_name(name),
        error,
    })
}

fn check_dims(t: &TensorView, want: &[u32]) -> Result<(), Error> {
    if t.dims() != want {
        return Err(Error::Shape {
            tensor: tensor_name(t.name),
            expected: Dims::new(want),
            got: Dims::new(t.dims()),
        });
    }
    Ok(())
}

fn matrix<'a>(
    image: &'a Model<'a>,
    name: &str,
    rows: usize,
    cols: usize,
) -> Result<Weights<'a>, Error> {
    let t = find(image, name)?;
    check_dims(&t, &[rows as u32, cols as u32])?;
    Weights::from_view(&t)
}

fn vector<'a>(image: &'a Model<'a>, name: &str, len: usize) -> Result<Vector<'a>, Error> {
    let t = find(image, name)?;
    check_dims(&t, &[len as u32])?;
    Vector::from_view(&t)
}

/// What a forward call reads.
#[derive(Clone, Copy, Debug)]
pub enum Input<'x> {
    /// Token ids, embedded through the embedding matrix.
    Ids(&'x [u32]),
    /// Precomputed input embeddings, `n × hidden` f32 rows (e.g. projected image
    /// features spliced into a prompt).
    Embeddings(&'x [f32]),
}

/// Which logits a forward call produces.
#[derive(Debug)]
pub enum Logits<'o> {
    /// None (a prefill whose continuation is not sampled yet).
    None,
    /// The last position's, into the state's buffer ([`DecoderState::logits`]).
    Last,
    /// Every position's, `n × vocab`, into the caller's buffer.
    All(&'o mut [f32]),
}

/// Arena sizes of a state, in allocation order (bytes).
fn plan(s: &Shape, max_context: usize, chunk: usize, format: KvFormat) -> [usize; 14] {
    let f = |n: usize| n.saturating_mul(chunk.max(1)).saturating_mul(4);
    let kv = KvCache::tensor_bytes_as(s.layers, max_context, s.heads.kv_dim(), format);
    let (d, qd, inter) = (s.hidden, s.heads.q_dim(), s.intermediate);
    let one = |n: usize| n.saturating_mul(4);
    [
        kv,
        kv,
        f(d),                    // x: the residual stream
        f(d),                    // xn: normed input / block output
        f(qd),                   // q
        f(qd.max(d)),            // attention output, then MLP output
        f(inter),                // gate
        f(inter),                // up
        f(s.heads.head_dim),     // rope cos and sin, chunk × head_dim/2 each
        one(max_context),        // attention scores
        one(s.vocab),            // last logits
        scratch_bytes(s, chunk), // linear scratch
        f(s.heads.kv_dim()),     // new keys, rotated here before caching
        f(s.heads.kv_dim()),     // new values
    ]
}

/// [`plan`] for a state that can exist: a context and a chunk of at least one position.
fn checked_plan(
    s: &Shape,
    max_context: usize,
    chunk: usize,
    format: KvFormat,
) -> Result<[usize; 14], Error> {
    if max_context == 0 || chunk == 0 {
        return Err(Error::Config {
            what: "max_context and the prefill chunk must be non-zero",
        });
    }
    Ok(plan(s, max_context, chunk, format))
}

/// Largest linear scratch any decoder matrix needs for `n` rows, over every format a
/// matrix may be stored in (the lm_head runs with `n` rows when all logits are asked).
fn scratch_bytes(s: &Shape, n: usize) -> usize {
    const FORMATS: [DType; 7] = [
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::Q8_0,
        DType::E4M3,
        DType::E5M2,
        DType::MxFp8,
    ];
    let mut most = 0;
    for cols in [s.hidden, s.heads.q_dim(), s.intermediate] {
        for dtype in FORMATS {
            let w = Weights {
                dtype,
                rows: 0,
                cols,
                data: &[],
                act: Q8Activations::Int8,
                layout: glimpse_quant::layout::TensorLayout::RowMajor,
            };
            most = most.max(linear_scratch_bytes(&w, n));
        }
    }
    most
}

/// The run-time state of one sequence: KV cache, work buffers and position.
#[derive(Debug)]
pub struct DecoderState<'a, 'w> {
    dec: Decoder<'w>,
    kv: KvCache<'a>,
    chunk: usize,
    pos: usize,
    x: &'a mut [f32],
    xn: &'a mut [f32],
    q: &'a mut [f32],
    att: &'a mut [f32],
    gate: &'a mut [f32],
    up: &'a mut [f32],
    rope: &'a mut [f32],
    scores: &'a mut [f32],
    logits: &'a mut [f32],
    scratch: &'a mut [u8],
    new_k: &'a mut [f32],
    new_v: &'a mut [f32],
}

impl<'a, 'w> DecoderState<'a, 'w> {
    /// Arena bytes a state with an f32 KV cache for `config`, `max_context` positions and
    /// prefill chunks of `chunk` positions needs, whatever the arena's start alignment.
    pub fn arena_bytes(
        config: &DecoderConfig,
        max_context: usize,
        chunk: usize,
    ) -> Result<usize, Error> {
        Self::arena_bytes_as(config, max_context, chunk, KvFormat::F32)
    }

    /// [`DecoderState::arena_bytes`] with the KV cache in `format`.
    pub fn arena_bytes_as(
        config: &DecoderConfig,
        max_context: usize,
        chunk: usize,
        format: KvFormat,
    ) -> Result<usize, Error> {
        let s = Shape::from_config(config)?;
        Ok(bound(&plan(&s, max_context, chunk.max(1), format)))
    }

    /// Bytes the state takes from an arena whose free space starts on an
    /// [`crate::arena::ALIGN`] boundary (what a planned region must hold).
    pub fn padded_bytes(
        config: &DecoderConfig,
        max_context: usize,
        chunk: usize,
        format: KvFormat,
    ) -> Result<usize, Error> {
        Ok(Self::kv_padded_bytes(config, max_context, format)?
            .saturating_add(Self::work_padded_bytes(config, max_context, chunk)?))
    }

    /// Bytes of the KV cache alone (its two tensors, each padded), for a planned region
    /// of its own ([`DecoderState::with_regions`]).
    pub fn kv_padded_bytes(
        config: &DecoderConfig,
        max_context: usize,
        format: KvFormat,
    ) -> Result<usize, Error> {
        let s = Shape::from_config(config)?;
        let [k, v, ..] = plan(&s, max_context, 1, format);
        Ok(padded(k).saturating_add(padded(v)))
    }

    /// Bytes of everything but the KV cache (activations, scores, logits, scratch), each
    /// padded: the other region of [`DecoderState::with_regions`].
    pub fn work_padded_bytes(
        config: &DecoderConfig,
        max_context: usize,
        chunk: usize,
    ) -> Result<usize, Error> {
        let s = Shape::from_config(config)?;
        Ok(plan(&s, max_context, chunk.max(1), KvFormat::F32)
            .iter()
            .skip(2)
            .fold(0usize, |a, &b| a.saturating_add(padded(b))))
    }

    /// A state for up to `max_context` positions, prefilling [`DEFAULT_CHUNK`] (or
    /// `max_context`, if smaller) positions at a time.
    pub fn new(
        arena: &mut Arena<'a>,
        decoder: &Decoder<'w>,
        max_context: usize,
    ) -> Result<Self, Error> {
        Self::with_chunk(arena, decoder, max_context, DEFAULT_CHUNK.min(max_context))
    }

    /// A state for up to `max_context` positions, prefilling `chunk` positions at a
    /// time, with an f32 KV cache. Checks that everything fits before allocating anything.
    pub fn with_chunk(
        arena: &mut Arena<'a>,
        decoder: &Decoder<'w>,
        max_context: usize,
        chunk: usize,
    ) -> Result<Self, Error> {
        Self::with_format(arena, decoder, max_context, chunk, KvFormat::F32)
    }

    /// [`DecoderState::with_chunk`] with the KV cache in `format`.
    pub fn with_format(
        arena: &mut Arena<'a>,
        decoder: &Decoder<'w>,
        max_context: usize,
        chunk: usize,
        format: KvFormat,
    ) -> Result<Self, Error> {
        let s = decoder.shape;
        let sizes = checked_plan(&s, max_context, chunk, format)?;
        arena.check(
            sizes
                .iter()
                .fold(0usize, |a, &b| a.saturating_add(padded(b))),
        )?;
        let kv = KvCache::with_format(arena, s.layers, max_context, s.heads.kv_dim(), format)?;
        Self::carve_work(kv, arena, decoder, max_context, chunk, format)
    }

    /// A state whose KV cache is carved from `kv` and everything else from `work`: two
    /// planned regions, so the cache can live longer than the work buffers (a session
    /// keeps it between calls; see [`DecoderState::resume_at`]). The cache's bytes are
    /// taken as they are ([`KvCache::kept`]), not zeroed.
    pub fn with_regions(
        kv: &mut Arena<'a>,
        work: &mut Arena<'a>,
        decoder: &Decoder<'w>,
        max_context: usize,
        chunk: usize,
        format: KvFormat,
    ) -> Result<Self, Error> {
        let s = decoder.shape;
        let [k, v, rest @ ..] = checked_plan(&s, max_context, chunk, format)?;
        kv.check(padded(k).saturating_add(padded(v)))?;
        work.check(
            rest.iter()
                .fold(0usize, |a, &b| a.saturating_add(padded(b))),
        )?;
        let cache = KvCache::kept(kv, s.layers, max_context, s.heads.kv_dim(), format)?;
        Self::carve_work(cache, work, decoder, max_context, chunk, format)
    }

    /// Carve the work buffers of a state around `kv` (sizes checked by the caller).
    fn carve_work(
        kv: KvCache<'a>,
        arena: &mut Arena<'a>,
        decoder: &Decoder<'w>,
        max_context: usize,
        chunk: usize,
        format: KvFormat,
    ) -> Result<Self, Error> {
        let s = decoder.shape;
        let sizes = plan(&s, max_context, chunk, format);
        let [
            _,
            _,
            x,
            xn,
            q,
            att,
            gate,
            up,
            rope,
            scores,
            logits,
            scratch,
            new_k,
            new_v,
        ] = sizes;
        Ok(DecoderState {
            dec: *decoder,
            kv,
            chunk,
            pos: 0,
            x: arena.f32s(x / 4)?,
            xn: arena.f32s(xn / 4)?,
            q: arena.f32s(q / 4)?,
            att: arena.f32s(att / 4)?,
            gate: arena.f32s(gate / 4)?,
            up: arena.f32s(up / 4)?,
            rope: arena.f32s(rope / 4)?,
            scores: arena.f32s(scores / 4)?,
            logits: arena.f32s(logits / 4)?,
            scratch: arena.bytes(scratch)?,
            new_k: arena.f32s(new_k / 4)?,
            new_v: arena.f32s(new_v / 4)?,
        })
    }

    /// The KV cache's number format.
    pub fn kv_format(&self) -> KvFormat {
        self.kv.format()
    }

    /// The decoder this state runs.
    pub fn decoder(&self) -> &Decoder<'w> {
        &self.dec
    }

    /// Positions processed so far (the next input's position).
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// Positions the KV cache holds.
    pub fn max_context(&self) -> usize {
        self.kv.max_context()
    }

    /// Start a new sequence (the cache is overwritten as it refills).
    pub fn reset(&mut self) {
        self.pos = 0;
    }

    /// Continue after `pos` positions already in the cache: the cache's bytes hold them
    /// from an earlier state over the same region, with the same decoder, context and
    /// format (what a session keeps between calls). Past the context is an error.
    pub fn resume_at(&mut self, pos: usize) -> Result<(), Error> {
        if pos > self.max_context() {
            return Err(Error::ContextOverflow {
                needed: pos,
                max: self.max_context(),
            });
        }
        self.pos = pos;
        Ok(())
    }

    /// Forget every position from `pos` on (no-op if `pos` is not before the current
    /// position), e.g. to reuse a cached prompt prefix.
    pub fn truncate(&mut self, pos: usize) {
        self.pos = self.pos.min(pos);
    }

    /// The logits of the last position of the last call that asked for [`Logits::Last`].
    pub fn logits(&self) -> &[f32] {
        self.logits
    }

    /// The same logits, writable (samplers penalise repeated tokens in place).
    pub fn logits_mut(&mut self) -> &mut [f32] {
        self.logits
    }

    /// Prefill token ids; returns the last position's logits.
    pub fn prefill(&mut self, ids: &[u32]) -> Result<&[f32], Error> {
        self.forward(Input::Ids(ids), Logits::Last)?;
        Ok(self.logits)
    }

    /// Prefill token ids, writing every position's logits (`ids.len() × vocab`) to `out`.
    pub fn prefill_all(&mut self, ids: &[u32], out: &mut [f32]) -> Result<(), Error> {
        self.forward(Input::Ids(ids), Logits::All(out))
    }

    /// Prefill precomputed embeddings (`n × hidden`); returns the last position's logits.
    pub fn prefill_embeddings(&mut self, rows: &[f32]) -> Result<&[f32], Error> {
        self.forward(Input::Embeddings(rows), Logits::Last)?;
        Ok(self.logits)
    }

    /// Run one token; returns its logits.
    pub fn decode_one(&mut self, id: u32) -> Result<&[f32], Error> {
        self.forward(Input::Ids(&[id]), Logits::Last)?;
        Ok(self.logits)
    }

    /// Run `input` at the next positions, producing the `logits` asked for, on the
    /// default executor. Every check (ids, lengths, context) happens before the cache or
    /// the position changes.
    pub fn forward(&mut self, input: Input, logits: Logits) -> Result<(), Error> {
        with_default_ctx(|ctx| self.forward_on(ctx, input, logits))
    }

    /// [`DecoderState::forward`] with the work split across `ctx`'s tasks (the same
    /// bits for any executor).
    pub fn forward_on(
        &mut self,
        ctx: &mut Ctx<'_>,
        input: Input,
        mut logits: Logits,
    ) -> Result<(), Error> {
        let s = self.dec.shape;
        let n = match input {
            Input::Ids(ids) => {
                if let Some(&id) = ids.iter().find(|&&id| id as usize >= s.vocab) {
                    return Err(Error::TokenOutOfRange {
                        id,
                        vocab: s.vocab as u32,
                    });
                }
                ids.len()
            }
            Input::Embeddings(rows) => {
                if !rows.len().is_multiple_of(s.hidden) {
                    return Err(Error::Length {
                        what: "input embeddings (whole rows of hidden)",
                        expected: rows.len().next_multiple_of(s.hidden),
                        got: rows.len(),
                    });
                }
                rows.len() / s.hidden
            }
        };
        if n == 0 {
            return Err(Error::EmptyInput);
        }
        let needed = self.pos.saturating_add(n);
        if needed > self.max_context() {
            return Err(Error::ContextOverflow {
                needed,
                max: self.max_context(),
            });
        }
        if let Logits::All(out) = &logits
            && out.len() != n.saturating_mul(s.vocab)
        {
            return Err(Error::Length {
                what: "logits output (positions × vocab)",
                expected: n.saturating_mul(s.vocab),
                got: out.len(),
            });
        }

        let mut start = 0;
        while start < n {
            let m = self.chunk.min(n - start);
            let chunk_in = match input {
                Input::Ids(ids) => Input::Ids(ids.get(start..start + m).unwrap_or_default()),
                Input::Embeddings(rows) => Input::Embeddings(
                    rows.get(start * s.hidden..(start + m) * s.hidden)
                        .unwrap_or_default(),
                ),
            };
            let chunk_out = match &mut logits {
                Logits::None => Logits::None,
                Logits::Last if start + m == n => Logits::Last,
                Logits::Last => Logits::None,
                Logits::All(out) => Logits::All(
                    out.get_mut(start * s.vocab..(start + m) * s.vocab)
                        .unwrap_or_default(),
                ),
            };
            self.run_chunk(ctx, chunk_in, self.pos + start, m, chunk_out)?;
            start += m;
        }
        self.pos += n;
        Ok(())
    }

    /// `m` positions starting at `p0`: embed, run every layer, produce logits.
    fn run_chunk(
        &mut self,
        ctx: &mut Ctx<'_>,
        input: Input,
        p0: usize,
        m: usize,
        logits: Logits,
    ) -> Result<(), Error> {
        let s = self.dec.shape;
        let d = s.hidden;
        let x = self.x.get_mut(..m * d).unwrap_or_default();
        match input {
            Input::Ids(ids) => {
                for (row, &id) in x.chunks_exact_mut(d).zip(ids) {
                    self.dec.embed(id, row)?;
                }
            }
            Input::Embeddings(rows) => x.copy_from_slice(rows.get(..m * d).unwrap_or_default()),
        }

        // RoPE angles depend on the position only: one table per chunk, shared by every
        // layer and head.
        let half = s.heads.head_dim / 2;
        let theta = self.dec.config.rope_theta;
        let rope_len = self.rope.len();
        let (cos, sin) =
            self.rope
                .split_at_mut_checked(self.chunk * half)
                .ok_or(Error::Length {
                    what: "rope table",
                    expected: self.chunk * half * 2,
                    got: rope_len,
                })?;
        for (i, (c, sn)) in cos
            .chunks_exact_mut(half)
            .zip(sin.chunks_exact_mut(half))
            .take(m)
            .enumerate()
        {
            rope_cos_sin(p0 + i, theta, s.heads.head_dim, c, sn)?;
        }

        for l in 0..s.layers {
            let layer = self.dec.layer(l)?;
            self.run_layer(ctx, l, &layer, p0, m)?;
        }

        let eps = self.dec.config.norm_eps;
        let lm = self.dec.lm_head;
        let x = self.x.get(..m * d).unwrap_or_default();
        match logits {
            Logits::None => Ok(()),
            Logits::Last => {
                let last = x.get((m - 1) * d..).unwrap_or_default();
                let xn = self.xn.get_mut(..d).unwrap_or_default();
                rmsnorm(xn, last, &self.dec.norm, eps)?;
                linear(ctx, &lm, None, xn, 1, self.logits, self.scratch)
            }
            Logits::All(out) => {
                let xn = self.xn.get_mut(..m * d).unwrap_or_default();
                rmsnorm(xn, x, &self.dec.norm, eps)?;
                linear(ctx, &lm, None, xn, m, out, self.scratch)
            }
        }
    }

    /// One pre-norm layer over the chunk: `x += attn(norm(x))`, `x += mlp(norm(x))`.
    fn run_layer(
        &mut self,
        ctx: &mut Ctx<'_>,
        l: usize,
        layer: &Layer,
        p0: usize,
        m: usize,
    ) -> Result<(), Error> {
        let s = self.dec.shape;
        let g = s.heads;
        let (d, qd, half) = (s.hidden, g.q_dim(), g.head_dim / 2);
        let eps = self.dec.config.norm_eps;
        let x = self.x.get_mut(..m * d).unwrap_or_default();
        let xn = self.xn.get_mut(..m * d).unwrap_or_default();
        let q = self.q.get_mut(..m * qd).unwrap_or_default();
        let att = self.att.get_mut(..m * qd).unwrap_or_default();
        let scratch = &mut *self.scratch;
        let (cos, sin) = self
            .rope
            .split_at_checked(self.chunk * half)
            .ok_or(Error::Length {
                what: "rope table",
                expected: self.chunk * half * 2,
                got: 0,
            })?;

        // Attention.
        rmsnorm(xn, x, &layer.attn_norm, eps)?;
        let [bq, bk, bv] = match &layer.qkv_bias {
            Some([a, b, c]) => [Some(a), Some(b), Some(c)],
            None => [None; 3],
        };
        {
            let k = self.new_k.get_mut(..m * g.kv_dim()).unwrap_or_default();
            let v = self.new_v.get_mut(..m * g.kv_dim()).unwrap_or_default();
            // q, k and v read the same normalized rows: one pass (one quantization of
            // them, one wait for the executor's tasks).
            linear_many(
                ctx,
                &mut [
                    Product {
                        w: &layer.q,
                        bias: bq,
                        y: &mut *q,
                    },
                    Product {
                        w: &layer.k,
                        bias: bk,
                        y: &mut *k,
                    },
                    Product {
                        w: &layer.v,
                        bias: bv,
                        y: &mut *v,
                    },
                ],
                xn,
                m,
                scratch,
            )?;
            for (i, (qi, ki)) in q
                .chunks_exact_mut(qd)
                .zip(k.chunks_exact_mut(g.kv_dim()))
                .enumerate()
            {
                let c = cos.get(i * half..(i + 1) * half).unwrap_or_default();
                let sn = sin.get(i * half..(i + 1) * half).unwrap_or_default();
                rope_rotate_half(qi, c, sn)?;
                rope_rotate_half(ki, c, sn)?;
            }
            self.kv.store(l, p0, k, v)?;
        }
        match self.kv.prefix(l, p0 + m)? {
            // The linear scratch is idle until the output projection: it lends the
            // extra tasks their score rows.
            KvView::F32 { k, v } => attention::causal(
                ctx,
                g,
                q,
                KeysValues { k, v, p0 },
                self.scores,
                scratch,
                att,
            )?,
            KvView::F16 { k, v } => attention::causal(
                ctx,
                g,
                q,
                KeysValues { k, v, p0 },
                self.scores,
                scratch,
                att,
            )?,
        }
        linear(ctx, &layer.o, None, att, m, xn, scratch)?;
        add(x, xn)?;

        // MLP; its output goes to the attention buffer, free again and sized for it.
        rmsnorm(xn, x, &layer.mlp_norm, eps)?;
        let out = self.att.get_mut(..m * d).unwrap_or_default();
        layer.mlp.forward(
            ctx,
            xn,
            m,
            MlpWork {
                gate: self.gate,
                up: self.up,
                scratch,
            },
            out,
        )?;
        add(x, out)
    }
}

#[cfg(test)]
mod tests;
