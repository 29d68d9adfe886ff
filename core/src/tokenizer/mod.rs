//! The byte-level BPE tokenizer: encodes text to ids and decodes ids to bytes using the
//! `tokenizer.*` tables of a weights image, in place and without a heap.
//!
//! Encoding follows HF tokenizers / llama.cpp step by step:
//!
//! 1. added tokens (GGUF types control and user-defined) are matched literally in the
//!    text, the longest one at the leftmost position first; control tokens only when the
//!    caller asks for [`Specials::Parse`], user-defined ones always (as both libraries do);
//! 2. Qwen2 vocabularies NFC-normalize the text between them (Qwen2's `tokenizer.json` has
//!    an NFC normalizer; GPT-2 and SmolLM have none);
//! 3. the text is split with the vocabulary's pre-tokenizer ([`pretokenize`]);
//! 4. each piece is BPE-merged from one token per byte ([`bpe`]).
//!
//! Every buffer is the caller's: ids go to a `&mut [u32]`, and a [`Workspace`] holds the
//! per-piece merge state and the normalized text. Anything that does not fit is an
//! error, never a truncation.

pub mod bpe;
pub mod pretokenize;
mod tables;
pub mod unicode;

use core::fmt;

use glimpse_quant::schema::{PreTokenizer, TokenizerConfig, TokenizerModel};

use crate::image::{ImageError, Model};

pub use bpe::Merges;
pub use pretokenize::Pieces;
pub use tables::UNICODE_VERSION;

/// `byte_ids` entry of a byte the vocabulary has no token for.
const NO_TOKEN: u32 = u32::MAX;

/// GGUF token type of a normal token.
pub const TOKEN_NORMAL: u8 = 1;
/// GGUF token type of a control (special) token.
pub const TOKEN_CONTROL: u8 = 3;
/// GGUF token type of a user-defined (added, not special) token.
pub const TOKEN_USER_DEFINED: u8 = 4;

/// Why the tokenizer refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum TokenizerError {
    /// The image's config has no tokenizer.
    NoTokenizer,
    /// A tokenizer model other than byte-level BPE.
    UnsupportedModel,
    /// A `tokenizer.*` table is missing or has the wrong dtype.
    Model {
        /// The table.
        table: &'static str,
        /// What the image reader said.
        error: ImageError,
    },
    /// A table's contents disagree with the config or with each other.
    BadTable {
        /// The table.
        table: &'static str,
    },
    /// The ids do not fit the output buffer.
    OutputFull {
        /// Capacity of the buffer.
        capacity: usize,
    },
    /// A piece is longer than the workspace allows.
    PieceTooLong {
        /// Bytes in the piece.
        len: usize,
        /// Longest piece the workspace takes ([`Workspace::max_piece_bytes`]).
        max: usize,
    },
    /// The normalized text does not fit the workspace's text buffer.
    TextBufferTooSmall,
    /// A character followed by more combining marks than NFC handles at once
    /// ([`unicode::MAX_NFC_SEGMENT`]).
    NormalizationSegmentTooLong,
    /// A token id at or past the vocabulary size.
    UnknownToken {
        /// The id.
        id: u32,
    },
}

impl fmt::Display for TokenizerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenizerError::NoTokenizer => f.write_str(
                "this image has no tokenizer; pass --tokens or convert with --tokenizer",
            ),
            TokenizerError::UnsupportedModel => {
                f.write_str("tokenizer model is not byte-level BPE")
            }
            TokenizerError::Model { table, error } => write!(f, "{table}: {error}"),
            TokenizerError::BadTable { table } => {
                write!(f, "{table}: contents disagree with the tokenizer config")
            }
            TokenizerError::OutputFull { capacity } => {
                write!(f, "token buffer full ({capacity} ids)")
            }
            TokenizerError::PieceTooLong { len, max } => write!(
                f,
                "a pre-tokenized piece of {len} bytes exceeds the workspace's {max}"
            ),
            TokenizerError::TextBufferTooSmall => {
                f.write_str("normalized text does not fit the workspace's text buffer")
            }
            TokenizerError::NormalizationSegmentTooLong => write!(
                f,
                "more than {} combining marks in a row",
                unicode::MAX_NFC_SEGMENT
            ),
            TokenizerError::UnknownToken { id } => {
                write!(f, "token id {id} is not in the vocabulary")
            }
        }
    }
}

impl core::error::Error for TokenizerError {}

/// Whether control tokens written in the text become their ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Specials {
    /// `<|im_start|>` in the text is the control token (templates, trusted text).
    Parse,
    /// Control tokens' spellings are tokenized as plain text (untrusted user text).
    Plain,
}

/// The `tokenizer.*` tables, as slices (see `glimpse_quant::schema::TokenizerConfig`).
#[derive(Clone, Copy, Debug)]
pub struct Tables<'a> {
    /// Every token's raw bytes, concatenated in id order.
    pub token_bytes: &'a [u8],
    /// `[vocab + 1]` start offsets into `token_bytes`.
    pub token_offsets: &'a [u32],
    /// `[vocab]` GGUF token types.
    pub token_types: &'a [u8],
    /// `[n * 4]` merges `(left, right, rank, merged)` sorted by `(left, right)`.
    pub merges: &'a [u32],
    /// `[vocab]` ids sorted by their bytes.
    pub sorted_ids: &'a [u32],
}

impl<'a> Tables<'a> {
    /// The tables of `image` (an image without merges has an empty merge table).
    pub fn from_image(image: &Model<'a>) -> Result<Self, TokenizerError> {
        fn get<'a, T>(
            image: &Model<'a>,
            table: &'static str,
            f: impl Fn(&crate::image::TensorView<'a>) -> Result<T, ImageError>,
        ) -> Result<T, TokenizerError> {
            image
                .find(table)
                .and_then(|t| f(&t))
                .map_err(|error| TokenizerError::Model { table, error })
        }
        let merges = match image.find("tokenizer.merges") {
            Ok(t) => t.as_u32().map_err(|error| TokenizerError::Model {
                table: "tokenizer.merges",
                error,
            })?,
            Err(ImageError::MissingTensor) => &[],
            Err(error) => {
                return Err(TokenizerError::Model {
                    table: "tokenizer.merges",
                    error,
                });
            }
        };
        Ok(Self {
            token_bytes: get(image, "tokenizer.token_bytes", |t| t.as_u8())?,
            token_offsets: get(image, "tokenizer.token_offsets", |t| t.as_u32())?,
            token_types: get(image, "tokenizer.token_types", |t| t.as_u8())?,
            merges,
            sorted_ids: get(image, "tokenizer.sorted_ids", |t| t.as_u32())?,
        })
    }
}

/// Longest piece (in bytes) a planned tokenizer workspace holds, on the host and on
/// devices alike: the bound for natural text (words are far shorter; runs of one
/// character class longer than this, such as 10 kB of spaces, are refused).
pub const MAX_PIECE_BYTES: usize = 4096;

/// Caller-owned working memory for [`Tokenizer::encode`].
///
/// - `piece`: two words per byte of the longest piece (the merge state and the cached
///   pair ranks), so a piece may be at most `piece.len() / 2` bytes. Pieces are words,
///   single digits (Qwen2, SmolLM), digit runs (GPT-2), punctuation runs and whitespace
///   runs; 2 x 4096 words covers any natural text, while a 10 kB run of spaces is refused.
/// - `text`: room for the NFC form of the longest stretch of text between two special
///   tokens, used only by normalizing vocabularies (Qwen2) and only when the text is not
///   already NFC; NFC grows UTF-8 text at most threefold.
#[derive(Debug)]
pub struct Workspace<'w> {
    piece: &'w mut [u32],
    text: &'w mut [u8],
}

impl<'w> Workspace<'w> {
    /// Wrap the two buffers.
    pub fn new(piece: &'w mut [u32], text: &'w mut [u8]) -> Self {
        Self { piece, text }
    }

    /// Longest piece, in bytes, this workspace can merge.
    pub fn max_piece_bytes(&self) -> usize {
        self.piece.len() / 2
    }
}

/// A byte-level BPE tokenizer over an image's tables.
#[derive(Clone, Debug)]
pub struct Tokenizer<'a> {
    token_bytes: &'a [u8],
    offsets: &'a [u32],
    types: &'a [u8],
    merges: Merges<'a>,
    sorted: &'a [u32],
    byte_ids: [u32; 256],
    /// Ids `special_lo..special_hi` hold every control and user-defined token.
    special_lo: u32,
    special_hi: u32,
    /// Bit `b` is set when some added token starts with byte `b`.
    special_first: [u32; 8],
    pretokenizer: PreTokenizer,
    nfc: bool,
    add_bos: bool,
    bos: Option<u32>,
    eos: Option<u32>,
}

impl<'a> Tokenizer<'a> {
    /// The tokenizer of a weights image.
    pub fn from_image(image: &Model<'a>) -> Result<Self, TokenizerError> {
        let cfg = image
            .config()
            .tokenizer
            .as_ref()
            .ok_or(TokenizerError::NoTokenizer)?;
        Self::new(cfg, Tables::from_image(image)?)
    }

    /// Check the tables against `cfg` and each other, and build the byte lookup.
    pub fn new(cfg: &TokenizerConfig, t: Tables<'a>) -> Result<Self, TokenizerError> {
        match cfg.model {
            TokenizerModel::ByteLevelBpe => {}
        }
        let vocab = cfg.vocab_size as usize;
        let bad = |table| TokenizerError::BadTable { table };
        if vocab == 0 || t.token_offsets.len() != vocab + 1 {
            return Err(bad("tokenizer.token_offsets"));
        }
        if t.token_types.len() != vocab {
            return Err(bad("tokenizer.token_types"));
        }
        if t.sorted_ids.len() != vocab {
            return Err(bad("tokenizer.sorted_ids"));
        }
        let mut prev = 0u32;
        for &o in t.token_offsets {
            if o < prev {
                return Err(bad("tokenizer.token_offsets"));
            }
            prev = o;
        }
        if prev as usize > t.token_bytes.len() {
            return Err(bad("tokenizer.token_offsets"));
        }
        let merges = Merges::new(t.merges)?;
        if merges.len() != cfg.merges as usize || !merges.is_sorted() {
            return Err(bad("tokenizer.merges"));
        }
        for i in 0..merges.len() {
            let row = t.merges.get(i * 4..i * 4 + 4).unwrap_or(&[]);
            if row.len() != 4
                || [row[0], row[1], row[3]]
                    .iter()
                    .any(|&id| id as usize >= vocab)
            {
                return Err(bad("tokenizer.merges"));
            }
        }
        let mut tok = Self {
            token_bytes: t.token_bytes,
            offsets: t.token_offsets,
            types: t.token_types,
            merges,
            sorted: t.sorted_ids,
            byte_ids: [0; 256],
            special_lo: 0,
            special_hi: 0,
            special_first: [0; 8],
            pretokenizer: cfg.pretokenizer,
            // Qwen2's tokenizer.json normalizes to NFC; the others have no normalizer.
            nfc: cfg.pretokenizer == PreTokenizer::Qwen2,
            add_bos: cfg.add_bos,
            bos: cfg.bos.filter(|&b| (b as usize) < vocab),
            eos: cfg.eos.filter(|&e| (e as usize) < vocab),
        };
        // sorted_ids must be a sorted list of valid ids, or lookups silently fail.
        let mut prev: Option<&[u8]> = None;
        for &id in tok.sorted {
            let b = tok
                .token_bytes(id)
                .map_err(|_| bad("tokenizer.sorted_ids"))?;
            if prev.is_some_and(|p| p > b) {
                return Err(bad("tokenizer.sorted_ids"));
            }
            prev = Some(b);
        }
        for byte in 0..=255u8 {
            tok.byte_ids[byte as usize] = tok.find_token(&[byte]).unwrap_or(NO_TOKEN);
        }
        let mut lo = u32::MAX;
        let mut hi = 0u32;
        for (id, &ty) in tok.types.iter().enumerate() {
            if ty == TOKEN_CONTROL || ty == TOKEN_USER_DEFINED {
                let id = id as u32;
                lo = lo.min(id);
                hi = id + 1;
                if let Some(&b) = tok.token_bytes(id)?.first() {
                    tok.special_first[(b >> 5) as usize] |= 1 << (b & 31);
                }
            }
        }
        if lo < hi {
            tok.special_lo = lo;
            tok.special_hi = hi;
        }
        Ok(tok)
    }

    /// Number of tokens.
    pub fn vocab_size(&self) -> u32 {
        self.types.len() as u32
    }

    /// Whether prompts should start with [`Tokenizer::bos`].
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// Beginning-of-sequence id.
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    /// End-of-sequence id.
    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    /// The pre-tokenizer in use.
    pub fn pretokenizer(&self) -> PreTokenizer {
        self.pretokenizer
    }

    /// Whether text is NFC-normalized before splitting.
    pub fn normalizes(&self) -> bool {
        self.nfc
    }

    /// Raw bytes of token `id` (a special token's literal spelling).
    pub fn token_bytes(&self, id: u32) -> Result<&'a [u8], TokenizerError> {
        let i = id as usize;
        let lo = self.offsets.get(i).copied();
        let hi = self.offsets.get(i + 1).copied();
        match (lo, hi) {
            (Some(lo), Some(hi)) if i < self.types.len() => self
                .token_bytes
                .get(lo as usize..hi as usize)
                .ok_or(TokenizerError::UnknownToken { id }),
            _ => Err(TokenizerError::UnknownToken { id }),
        }
    }

    /// GGUF type of token `id`.
    pub fn token_type(&self, id: u32) -> Option<u8> {
        self.types.get(id as usize).copied()
    }

    /// Whether `id` is a control token (decoded text usually leaves them out).
    pub fn is_control(&self, id: u32) -> bool {
        self.token_type(id) == Some(TOKEN_CONTROL)
    }

    /// The id whose bytes are exactly `bytes` (a normal token when several match).
    pub fn find_token(&self, bytes: &[u8]) -> Option<u32> {
        let i = self
            .sorted
            .partition_point(|&id| self.token_bytes(id).is_ok_and(|b| b < bytes));
        let id = *self.sorted.get(i)?;
        (self.token_bytes(id).ok()? == bytes).then_some(id)
    }

    /// The longest added token that `text` starts with.
    fn match_special(&self, text: &[u8], specials: Specials) -> Option<(u32, usize)> {
        let &first = text.first()?;
        if self.special_first[(first >> 5) as usize] & (1 << (first & 31)) == 0 {
            return None;
        }
        let mut best: Option<(u32, usize)> = None;
        for id in self.special_lo..self.special_hi {
            let ty = self.token_type(id);
            let wanted = ty == Some(TOKEN_USER_DEFINED)
                || (ty == Some(TOKEN_CONTROL) && specials == Specials::Parse);
            if !wanted {
                continue;
            }
            let Ok(b) = self.token_bytes(id) else {
                continue;
            };
            if !b.is_empty() && text.starts_with(b) && best.is_none_or(|(_, n)| b.len() > n) {
                best = Some((id, b.len()));
            }
        }
        best
    }

    /// Encode `text` into `out`; returns the number of ids. Adds no BOS (see
    /// [`Tokenizer::add_bos`]).
    pub fn encode(
        &self,
        text: &str,
        specials: Specials,
        ws: &mut Workspace<'_>,
        out: &mut [u32],
    ) -> Result<usize, TokenizerError> {
        let mut n = 0usize;
        let bytes = text.as_bytes();
        let mut start = 0usize;
        let mut i = 0usize;
        while i < bytes.len() {
            let found = if self.special_lo < self.special_hi {
                self.match_special(bytes.get(i..).unwrap_or(&[]), specials)
            } else {
                None
            };
            let Some((id, len)) = found else {
                i += 1;
                continue;
            };
            // Special tokens are ASCII-led in every vocabulary we know, but a match can only
            // start at a character boundary anyway: `text` is valid UTF-8 and so is the
            // token's spelling.
            let seg = text.get(start..i).unwrap_or("");
            n = self.encode_text(seg, ws, out, n)?;
            push(out, &mut n, id)?;
            i += len;
            start = i;
        }
        let seg = text.get(start..).unwrap_or("");
        self.encode_text(seg, ws, out, n)
    }

    /// Normalize, split and merge a stretch without special tokens; returns the new count.
    fn encode_text(
        &self,
        text: &str,
        ws: &mut Workspace<'_>,
        out: &mut [u32],
        mut n: usize,
    ) -> Result<usize, TokenizerError> {
        if text.is_empty() {
            return Ok(n);
        }
        let Workspace { piece, text: norm } = ws;
        let text = if self.nfc && !unicode::is_nfc_quick(text) {
            unicode::nfc(text, norm)?
        } else {
            text
        };
        let max = piece.len() / 2;
        let (toks, ranks) = piece.split_at_mut(max);
        for p in Pieces::new(text, self.pretokenizer) {
            let b = p.as_bytes();
            if b.len() > max {
                return Err(TokenizerError::PieceTooLong { len: b.len(), max });
            }
            // A byte without a token is dropped, and its neighbours merge as if adjacent:
            // what HF tokenizers (no unk token) and llama.cpp both do. SmolLM2 lacks 21
            // such bytes (bytes never valid in UTF-8, and a few ASCII controls).
            let mut len = 0;
            for &byte in b {
                let id = self.byte_ids[byte as usize];
                if id != NO_TOKEN {
                    toks[len] = id;
                    len += 1;
                }
            }
            let toks = &mut toks[..len];
            let k = bpe::merge(&self.merges, toks, &mut ranks[..len]);
            for &id in &toks[..k] {
                push(out, &mut n, id)?;
            }
        }
        Ok(n)
    }

    /// Concatenate the bytes of `ids` into `out`; returns the length. Special tokens
    /// decode to their spelling. The bytes need not be UTF-8 (a token can end inside a
    /// character); see [`Utf8Stream`] for streaming text.
    pub fn decode(&self, ids: &[u32], out: &mut [u8]) -> Result<usize, TokenizerError> {
        let mut n = 0usize;
        let capacity = out.len();
        for &id in ids {
            let b = self.token_bytes(id)?;
            let dst = out
                .get_mut(n..n + b.len())
                .ok_or(TokenizerError::OutputFull { capacity })?;
            dst.copy_from_slice(b);
            n += b.len();
        }
        Ok(n)
    }
}

fn push(out: &mut [u32], n: &mut usize, id: u32) -> Result<(), TokenizerError> {
    let capacity = out.len();
    let slot = out
        .get_mut(*n)
        .ok_or(TokenizerError::OutputFull { capacity })?;
    *slot = id;
    *n += 1;
    Ok(())
}

/// Turns a stream of token bytes into text: holds an incomplete UTF-8 sequence until the
/// next token completes it, and replaces invalid bytes with U+FFFD exactly as
/// `String::from_utf8_lossy` would on the whole stream.
#[derive(Clone, Debug, Default)]
pub struct Utf8Stream {
    pending: [u8; 4],
    len: usize,
}

impl Utf8Stream {
    /// An empty stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feed `bytes`; `emit` receives every complete stretch of text.
    pub fn push(&mut self, mut bytes: &[u8], emit: &mut impl FnMut(&str)) {
        // First finish a sequence left over from the previous call, one byte at a time.
        while self.len > 0 {
            let Some((&b, rest)) = bytes.split_first() else {
                return;
            };
            if let Some(slot) = self.pending.get_mut(self.len) {
                *slot = b;
                self.len += 1;
            }
            bytes = rest;
            let held = self.pending;
            let held = held.get(..self.len).unwrap_or(&[]);
            match core::str::from_utf8(held) {
                Ok(s) => {
                    emit(s);
                    self.len = 0;
                }
                Err(e) => match e.error_len() {
                    None if self.len < 4 => {}
                    _ => {
                        // Invalid: one replacement for the bad prefix, then reread what
                        // followed it as fresh input.
                        let bad = e.error_len().unwrap_or(self.len);
                        emit("\u{FFFD}");
                        let mut rest_held = [0u8; 4];
                        let tail = held.get(bad..).unwrap_or(&[]);
                        let k = tail.len();
                        rest_held[..k].copy_from_slice(tail);
                        self.len = 0;
                        self.push(&rest_held[..k], emit);
                    }
                },
            }
        }
        loop {
            match core::str::from_utf8(bytes) {
                Ok(s) => {
                    if !s.is_empty() {
                        emit(s);
                    }
                    return;
                }
                Err(e) => {
                    let (valid, rest) = bytes.split_at(e.valid_up_to());
                    if let Ok(s) = core::str::from_utf8(valid)
                        && !s.is_empty()
                    {
                        emit(s);
                    }
                    match e.error_len() {
                        Some(k) => {
                            emit("\u{FFFD}");
                            bytes = rest.get(k..).unwrap_or(&[]);
                        }
                        None => {
                            // An incomplete sequence at the end (at most three bytes).
                            let k = rest.len().min(4);
                            self.pending[..k].copy_from_slice(&rest[..k]);
                            self.len = k;
                            return;
                        }
                    }
                }
            }
        }
    }

    /// End of stream: an unfinished sequence becomes one U+FFFD.
    pub fn finish(&mut self, emit: &mut impl FnMut(&str)) {
        if self.len > 0 {
            emit("\u{FFFD}");
            self.len = 0;
        }
    }
}

#[cfg(test)]
mod tests;
