//! Helpers shared by the pipeline tests: the tiny FastVLM fixture
//! (tests/scripts/make_pipeline_fixture.py) converted through the real converter, its
//! picture and expectations, and a sink that keeps what it is sent.

#![allow(dead_code)]

use std::path::PathBuf;

use glimpse_core::arena::ALIGN;
use glimpse_core::sampler::StopTokens;
use glimpse_core::session::SessionOptions;
use glimpse_hal::{ErrorType, TokenSink};
use glimpse_tests::AlignedBytes;
use glimpse_tools::convert::Options;
use glimpse_tools::run::{Picture, load_picture};
use glimpse_tools::{KeepArg, QuantArg};
use serde_json::Value;

/// `tests/fixtures/pipeline`.
pub fn fixture_dir() -> PathBuf {
    glimpse_tests::fixtures_dir().join("pipeline")
}

/// `expected.json`.
pub fn expected() -> Value {
    let path = fixture_dir().join("expected.json");
    serde_json::from_str(&std::fs::read_to_string(&path).expect("expected.json")).expect("JSON")
}

/// A JSON array of ids.
pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("id array")
        .iter()
        .map(|x| u32::try_from(x.as_u64().expect("id")).expect("u32 id"))
        .collect()
}

/// The fixture checkpoint converted with `quant` / `keep`.
pub fn converted(quant: QuantArg, keep: KeepArg) -> AlignedBytes {
    let tmp = tempfile::tempdir().expect("tempdir");
    let opts = Options {
        keep,
        ..Options::new(fixture_dir(), tmp.path().join("pipeline.glim"), quant)
    };
    glimpse_tests::convert_bytes(&opts)
}

/// The fixture picture, decoded.
pub fn picture() -> Picture {
    load_picture(&fixture_dir().join("image.png")).expect("image.png")
}

/// The reference last-position logits.
pub fn reference_logits() -> Vec<f32> {
    let (shape, v) =
        glimpse_tools::npy::read_f32(&fixture_dir().join("logits.npy")).expect("logits.npy");
    assert_eq!(shape.len(), 1);
    v
}

/// Options for greedy runs that stop only at `max_new` tokens (the reference's greedy
/// loop ignores end-of-sequence too).
pub fn greedy(max_new: usize) -> SessionOptions {
    SessionOptions {
        max_new_tokens: max_new,
        stop: Some(StopTokens::new()),
        ..SessionOptions::default()
    }
}

/// A buffer with an aligned window of `len` bytes at `shift` bytes past an ALIGN
/// boundary, and guard bytes around it.
pub struct Guarded {
    buf: Vec<u8>,
    start: usize,
    len: usize,
}

/// The guard pattern.
pub const GUARD: u8 = 0xA5;

impl Guarded {
    pub fn new(len: usize, shift: usize) -> Self {
        let buf = vec![GUARD; len + 3 * ALIGN];
        let base = buf.as_ptr().align_offset(ALIGN);
        Guarded {
            buf,
            start: base + ALIGN + shift,
            len,
        }
    }

    pub fn window(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.start + self.len]
    }

    /// Whether every byte outside the window still holds the guard pattern.
    pub fn guards_intact(&self) -> bool {
        self.buf[..self.start].iter().all(|&b| b == GUARD)
            && self.buf[self.start + self.len..]
                .iter()
                .all(|&b| b == GUARD)
    }

    /// Whether the window itself was never written.
    pub fn untouched(&self) -> bool {
        self.buf.iter().all(|&b| b == GUARD)
    }
}

/// Keeps every token and its text.
#[derive(Debug, Default)]
pub struct VecSink {
    pub tokens: Vec<u32>,
    pub text: Vec<u8>,
    pub finished: usize,
}

impl ErrorType for VecSink {
    type Error = core::convert::Infallible;
}

impl TokenSink for VecSink {
    fn token(&mut self, id: u32, bytes: &[u8]) -> Result<(), Self::Error> {
        self.tokens.push(id);
        self.text.extend_from_slice(bytes);
        Ok(())
    }

    fn finish(&mut self) -> Result<(), Self::Error> {
        self.finished += 1;
        Ok(())
    }
}
