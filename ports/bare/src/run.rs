//! Running one request on a device: verify the weights image, template and tokenize the
//! prompt, prefill, sample to a stop token or the token budget, stream every token to a
//! [`TokenSink`]. Everything lives in the caller's arena.
//!
//! [`run_request`] is the single place a firmware turns a request into tokens, so that
//! switching text-only runs to the core's VLM `Session` (frames) is a change here only.
//! Its arithmetic is the host's `glimpse run` step for step (same context size, prefill
//! chunking, copy of the logits before sampling, sampling history), which is what lets the
//! simulated ports promise the host's tokens.

use glimpse_core::Image;
use glimpse_core::arena::Arena;
use glimpse_core::chat::{self, Turn};
use glimpse_core::decoder::{Decoder, DecoderState};
use glimpse_core::sampler::{Sampler, StopTokens};
use glimpse_core::tokenizer::{Specials, Tokenizer, TokenizerError, Utf8Stream, Workspace};
use glimpse_hal::{Error as _, TokenSink};
use glimpse_quant::layout::ChatTemplate;

use crate::error::Error;
use crate::request::Request;

/// Longest pre-tokenized piece (a run of spaces or digits, a word) the device tokenizes;
/// prompts come from a host, so this is a buffer size, not a limit users meet.
pub const MAX_PIECE_BYTES: usize = 1024;

/// Bytes the chat template may add around the user's text and the system prompt (the
/// `<|im_start|>` markers, role names, and a default system prompt of at most 128 bytes).
const TEMPLATE_BYTES: usize = 512;

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
    /// Tokenizing and prefilling the prompt, up to the first sampled token.
    pub prefill: u64,
    /// Every later token.
    pub decode: u64,
}

impl Phases {
    /// All phases together.
    pub fn total(&self) -> u64 {
        self.verify
            .saturating_add(self.prefill)
            .saturating_add(self.decode)
    }
}

/// What a run produced and what it cost.
#[derive(Clone, Debug)]
pub struct Report<'a> {
    /// The model's name from the image config.
    pub model: heapless::String<64>,
    /// Prompt length in tokens (BOS and template included).
    pub prompt_tokens: usize,
    /// Generated ids, the stop token included when one ended the run.
    pub tokens: &'a [u32],
    /// Whether a stop token ended the run (rather than the token budget).
    pub stopped: bool,
    /// Most arena bytes in use at once.
    pub arena_peak: usize,
    /// Arena size.
    pub arena_capacity: usize,
    /// Weights image size.
    pub weights_bytes: usize,
    /// Counter deltas per phase.
    pub counts: Phases,
}

/// `n` zeroed `u32`s from the arena.
fn u32s<'a>(arena: &mut Arena<'a>, n: usize) -> Result<&'a mut [u32], Error> {
    let bytes = arena.bytes(n.saturating_mul(4))?;
    // Arena blocks start on a 64-byte boundary and `bytes` is 4n long, so this cannot
    // fail; an error is still an error, not a panic.
    bytemuck::try_cast_slice_mut(bytes).map_err(|_| Error::Unsupported("arena alignment"))
}

/// Longest token spelling in the vocabulary, to size the per-token text buffer.
fn longest_token(tok: &Tokenizer<'_>) -> usize {
    (0..tok.vocab_size())
        .filter_map(|id| tok.token_bytes(id).ok())
        .map(<[u8]>::len)
        .max()
        .unwrap_or(0)
}

/// Text a token completes, collected from a [`Utf8Stream`] into a fixed buffer.
struct TokenText<'b> {
    buf: &'b mut [u8],
    len: usize,
}

impl TokenText<'_> {
    fn push(&mut self, s: &str) {
        // The buffer is sized for the worst case (every byte of the longest token plus a
        // held partial character replaced by U+FFFD); a cut would only shorten the text.
        let end = (self.len + s.len()).min(self.buf.len());
        let n = end - self.len;
        if let (Some(dst), Some(src)) = (self.buf.get_mut(self.len..end), s.as_bytes().get(..n)) {
            dst.copy_from_slice(src);
            self.len = end;
        }
    }

    fn take(&mut self) -> &[u8] {
        let n = core::mem::take(&mut self.len);
        self.buf.get(..n).unwrap_or(&[])
    }
}

/// Tokenize the request's prompt (templated unless raw) into `ids`; returns the count.
fn prompt_ids(
    tok: &Tokenizer<'_>,
    template: &ChatTemplate,
    req: &Request<'_>,
    arena: &mut Arena<'_>,
    ids: &mut [u32],
) -> Result<usize, Error> {
    let mut n = 0;
    if tok.add_bos()
        && let Some(bos) = tok.bos()
    {
        let slot = ids
            .first_mut()
            .ok_or(TokenizerError::OutputFull { capacity: 0 })?;
        *slot = bos;
        n = 1;
    }
    let out = ids.get_mut(n..).unwrap_or(&mut []);
    let text_len = req.prompt.len() + req.system.map_or(0, str::len);
    let (text, specials) = if req.raw || matches!(template, ChatTemplate::None) {
        // Raw prompts are the user's own text: control-token spellings stay text.
        (req.prompt, Specials::Plain)
    } else {
        let buf = arena.bytes(text_len + TEMPLATE_BYTES)?;
        let turn = Turn {
            system: req.system,
            user: req.prompt,
            image: false,
        };
        (chat::render(template, &turn, buf)?, Specials::Parse)
    };
    let piece = u32s(arena, 2 * MAX_PIECE_BYTES)?;
    // NFC can grow text up to threefold; only tokenizers that normalize need the room.
    let norm = arena.bytes(if tok.normalizes() {
        3 * text.len() + 16
    } else {
        0
    })?;
    let mut ws = Workspace::new(piece, norm);
    Ok(n + tok.encode(text, specials, &mut ws, out)?)
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
    let t0 = counter.read();
    let image = Image::parse(weights)?;
    image.verify()?;
    let t1 = counter.read();

    if req.frame.is_some() {
        return Err(Error::Unsupported(
            "camera frames need the VLM session, which this firmware does not run yet",
        ));
    }
    let tok = Tokenizer::from_image(&image)?;
    let template = image
        .config()
        .tokenizer
        .as_ref()
        .map_or(ChatTemplate::None, |t| t.chat.clone());
    let dec = Decoder::new(&image)?;
    let cfg = dec.config();
    let vocab = cfg.vocab as usize;
    let max_tokens = req.max_tokens as usize;

    let mut arena = Arena::new(arena);
    let capacity = arena.capacity();
    // Ids never outnumber the bytes of the NFC form (at most three times the text) plus
    // BOS; the template's own bytes are counted in.
    let text_len = req.prompt.len() + req.system.map_or(0, str::len) + TEMPLATE_BYTES;
    let ids = u32s(&mut arena, text_len.saturating_mul(3).saturating_add(17))?;
    let n_prompt = arena.scope(|a| prompt_ids(&tok, &template, req, a, ids))?;
    let prompt = ids.get(..n_prompt).unwrap_or(&[]);
    if prompt.is_empty() {
        return Err(Error::Core(glimpse_core::Error::EmptyInput));
    }

    let max_ctx = (n_prompt + max_tokens).min(cfg.max_positions.max(1) as usize);
    if n_prompt >= max_ctx && max_tokens > 0 {
        return Err(Error::Core(glimpse_core::Error::ContextOverflow {
            needed: n_prompt + 1,
            max: max_ctx,
        }));
    }
    let mut st = DecoderState::new(&mut arena, &dec, max_ctx)?;
    let logits = arena.f32s(vocab)?;
    let history = u32s(&mut arena, n_prompt + max_tokens)?;
    let scratch = u32s(&mut arena, if req.sampler.is_greedy() { 0 } else { vocab })?;
    let text_buf = arena.bytes(3 * (longest_token(&tok) + 4))?;
    let arena_peak = arena.peak();

    let capacity_ids = history.len();
    history
        .get_mut(..n_prompt)
        .ok_or(Error::Core(glimpse_core::Error::Length {
            what: "sampling history",
            expected: n_prompt,
            got: capacity_ids,
        }))?
        .copy_from_slice(prompt);
    let mut len = n_prompt;
    let mut sampler = Sampler::new(req.sampler);
    let stops = StopTokens::for_model(Some(cfg), Some(&tok));
    let mut utf8 = Utf8Stream::new();
    let mut text = TokenText {
        buf: text_buf,
        len: 0,
    };
    let sink_err = |e: S::Error| Error::Sink(e.kind());

    logits.copy_from_slice(st.prefill(prompt)?);
    let mut t2 = t1;
    let mut generated = 0usize;
    let mut stopped = false;
    while generated < max_tokens {
        let id = sampler.sample(logits, history.get(..len).unwrap_or(&[]), scratch)?;
        if generated == 0 {
            t2 = counter.read();
        }
        if let Some(slot) = history.get_mut(len) {
            *slot = id;
        }
        len += 1;
        generated += 1;
        // Control tokens (<|im_end|>, <|endoftext|>) end turns; they are not text.
        if !tok.is_control(id) {
            utf8.push(tok.token_bytes(id)?, &mut |s: &str| text.push(s));
        }
        sink.token(id, text.take()).map_err(sink_err)?;
        if stops.contains(id) {
            stopped = true;
            break;
        }
        if generated == max_tokens || st.pos() >= max_ctx {
            break;
        }
        logits.copy_from_slice(st.decode_one(id)?);
    }
    utf8.finish(&mut |s: &str| text.push(s));
    let tail = text.take();
    if !tail.is_empty() {
        // A character left incomplete at the end: reported with the last id, as its text.
        let last = history.get(len.saturating_sub(1)).copied().unwrap_or(0);
        sink.token(last, tail).map_err(sink_err)?;
    }
    sink.finish().map_err(sink_err)?;
    let t3 = counter.read();
    if generated == 0 {
        t2 = t3;
    }

    let history: &'a [u32] = history;
    Ok(Report {
        model: image.config().name.clone(),
        prompt_tokens: n_prompt,
        tokens: history.get(n_prompt..len).unwrap_or(&[]),
        stopped,
        arena_peak: arena_peak.max(arena.peak()),
        arena_capacity: capacity,
        weights_bytes: weights.len(),
        counts: Phases {
            verify: t1.wrapping_sub(t0),
            prefill: t2.wrapping_sub(t1),
            decode: t3.wrapping_sub(t2),
        },
    })
}
