//! `glimpse tokenize`: encode text with an image's tokenizer and print the ids.

use std::process::ExitCode;

use anyhow::{Context, Result};
use glimpse_core::Model;
use glimpse_core::tokenizer::{MAX_PIECE_BYTES, Specials, Tokenizer, Workspace};

use crate::TokenizeArgs;

/// Encode `text` with host-sized buffers: ids can never outnumber the bytes of the NFC
/// form, which is at most three times the input.
pub fn encode(tok: &Tokenizer<'_>, text: &str, specials: Specials) -> Result<Vec<u32>> {
    let mut piece = vec![0u32; 2 * MAX_PIECE_BYTES];
    let room = 3 * text.len() + 16;
    let mut norm = vec![0u8; if tok.normalizes() { room } else { 0 }];
    let mut ws = Workspace::new(&mut piece, &mut norm);
    let mut out = vec![0u32; room];
    let n = tok.encode(text, specials, &mut ws, &mut out)?;
    out.truncate(n);
    Ok(out)
}

/// Decode `ids` to text (invalid UTF-8 replaced, as HF and llama.cpp do).
pub fn decode(tok: &Tokenizer<'_>, ids: &[u32]) -> Result<String> {
    let mut bytes = Vec::new();
    for &id in ids {
        bytes.extend_from_slice(tok.token_bytes(id)?);
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Run `glimpse tokenize`.
pub fn run(a: &TokenizeArgs) -> Result<ExitCode> {
    let mapped = glimpse_host::MappedImage::open(&a.image)
        .with_context(|| format!("opening {}", a.image.display()))?;
    let image = Model::parse(mapped.bytes())?;
    let tok = Tokenizer::from_image(&image)?;
    let specials = if a.no_special {
        Specials::Plain
    } else {
        Specials::Parse
    };
    let mut ids = Vec::new();
    if a.bos && tok.add_bos() {
        ids.extend(tok.bos());
    }
    ids.extend(encode(&tok, &a.text, specials)?);
    if a.json {
        println!("{}", serde_json::json!({ "ids": ids }));
    } else {
        let list: Vec<String> = ids.iter().map(u32::to_string).collect();
        println!("{}", list.join(","));
    }
    Ok(ExitCode::SUCCESS)
}
