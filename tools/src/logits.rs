//! `glimpse logits`: teacher-forced decoder logits for a token sequence, written as a
//! `.npy` array `[n_tokens, vocab]` (or `[1, vocab]` with `--last`), for comparison with a
//! reference implementation.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Result, ensure};
use glimpse_core::Image;
use glimpse_core::arena::Arena;
use glimpse_core::decoder::{Decoder, DecoderState, Input, Logits};

use crate::npy;

/// Arguments of `glimpse logits`.
#[derive(Debug, clap::Args)]
pub struct LogitsArgs {
    /// The .glim image.
    pub image: PathBuf,
    /// Token ids, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub tokens: Vec<u32>,
    /// Output .npy path.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Only the last position's logits (one prefill), as `[1, vocab]`.
    #[arg(long)]
    pub last: bool,
    /// Prefill chunk: positions run together as one matrix-matrix pass.
    #[arg(long, default_value_t = glimpse_core::decoder::DEFAULT_CHUNK)]
    pub chunk: usize,
}

/// Logits of `tokens` through the image's decoder, every position (`n × vocab`) or the
/// last one only. The arena is one `Vec<u8>` of exactly
/// [`DecoderState::arena_bytes`] for this context and chunk.
pub fn compute(image: &Image, tokens: &[u32], last: bool, chunk: usize) -> Result<Vec<f32>> {
    ensure!(!tokens.is_empty(), "no tokens");
    let dec = Decoder::new(image)?;
    let cfg = dec.config();
    let n = tokens.len();
    let chunk = chunk.clamp(1, n);
    let bytes = DecoderState::arena_bytes(cfg, n, chunk)?;
    let mut buf = vec![0u8; bytes];
    let mut arena = Arena::new(&mut buf);
    let mut st = DecoderState::with_chunk(&mut arena, &dec, n, chunk)?;
    let vocab = cfg.vocab as usize;
    if last {
        st.forward(Input::Ids(tokens), Logits::Last)?;
        Ok(st.logits().to_vec())
    } else {
        let mut out = vec![0f32; n * vocab];
        st.forward(Input::Ids(tokens), Logits::All(&mut out))?;
        Ok(out)
    }
}

/// Run `glimpse logits`.
pub fn run(a: &LogitsArgs) -> Result<ExitCode> {
    let mapped = glimpse_host::MappedImage::open(&a.image)?;
    let image = mapped.parsed()?;
    let t = Instant::now();
    let logits = compute(&image, &a.tokens, a.last, a.chunk)?;
    let rows = if a.last { 1 } else { a.tokens.len() };
    let vocab = logits.len() / rows;
    npy::write_f32(&a.output, &[rows, vocab], &logits)?;
    eprintln!(
        "{} tokens -> {} [{rows}, {vocab}] in {:.2} s",
        a.tokens.len(),
        a.output.display(),
        t.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}
