//! Unit tests on a toy vocabulary: 256 byte tokens, a few merges, added tokens.

use super::*;
use glimpse_quant::schema::ChatTemplate;
use std::string::String;
use std::vec;
use std::vec::Vec;

struct Toy {
    bytes: Vec<u8>,
    offsets: Vec<u32>,
    types: Vec<u8>,
    merges: Vec<u32>,
    sorted: Vec<u32>,
    cfg: TokenizerConfig,
}

/// ids 0..256 are bytes; then merged tokens; then added tokens.
fn toy(pre: PreTokenizer) -> Toy {
    let mut toks: Vec<(Vec<u8>, u8)> = (0..=255u8).map(|b| (vec![b], TOKEN_NORMAL)).collect();
    let id_of = |toks: &mut Vec<(Vec<u8>, u8)>, s: &[u8]| -> u32 {
        if let Some(i) = toks.iter().position(|t| t.0 == s) {
            return i as u32;
        }
        toks.push((s.to_vec(), TOKEN_NORMAL));
        toks.len() as u32 - 1
    };
    // Merge list in rank order.
    let pairs: [(&[u8], &[u8]); 6] = [
        (b"h", b"e"),
        (b"l", b"l"),
        (b"he", b"ll"),
        (b"hell", b"o"),
        (b" ", b"w"),
        (
            "\u{e9}".as_bytes()[..1].as_ref(),
            "\u{e9}".as_bytes()[1..].as_ref(),
        ),
    ];
    let mut rows = Vec::new();
    for (rank, (a, b)) in pairs.iter().enumerate() {
        let l = id_of(&mut toks, a);
        let r = id_of(&mut toks, b);
        let m = id_of(&mut toks, &[*a, *b].concat());
        rows.push([l, r, rank as u32, m]);
    }
    rows.sort();
    toks.push((b"<|im_start|>".to_vec(), TOKEN_CONTROL));
    toks.push((b"<|im_end|>".to_vec(), TOKEN_CONTROL));
    toks.push((b"<|im".to_vec(), TOKEN_USER_DEFINED));
    let mut bytes = Vec::new();
    let mut offsets = Vec::new();
    for t in &toks {
        offsets.push(bytes.len() as u32);
        bytes.extend_from_slice(&t.0);
    }
    offsets.push(bytes.len() as u32);
    let mut sorted: Vec<u32> = (0..toks.len() as u32).collect();
    sorted.sort_by(|&a, &b| toks[a as usize].0.cmp(&toks[b as usize].0).then(a.cmp(&b)));
    let cfg = TokenizerConfig {
        model: TokenizerModel::ByteLevelBpe,
        pretokenizer: pre,
        vocab_size: toks.len() as u32,
        merges: rows.len() as u32,
        bos: None,
        eos: Some(toks.len() as u32 - 2),
        pad: None,
        add_bos: false,
        chat: ChatTemplate::None,
    };
    Toy {
        bytes,
        offsets,
        types: toks.iter().map(|t| t.1).collect(),
        merges: rows.into_iter().flatten().collect(),
        sorted,
        cfg,
    }
}

impl Toy {
    fn tokenizer(&self) -> Tokenizer<'_> {
        Tokenizer::new(
            &self.cfg,
            Tables {
                token_bytes: &self.bytes,
                token_offsets: &self.offsets,
                token_types: &self.types,
                merges: &self.merges,
                sorted_ids: &self.sorted,
            },
        )
        .unwrap()
    }
}

fn encode(t: &Tokenizer<'_>, s: &str, sp: Specials) -> Result<Vec<u32>, TokenizerError> {
    let mut piece = vec![0u32; 64];
    let mut text = vec![0u8; 256];
    let mut ws = Workspace::new(&mut piece, &mut text);
    let mut out = vec![0u32; 64];
    let n = t.encode(s, sp, &mut ws, &mut out)?;
    out.truncate(n);
    Ok(out)
}

fn spell(t: &Tokenizer<'_>, ids: &[u32]) -> Vec<String> {
    ids.iter()
        .map(|&i| String::from_utf8_lossy(t.token_bytes(i).unwrap()).into_owned())
        .collect()
}

#[test]
fn merges_and_pieces() {
    let toy = toy(PreTokenizer::Gpt2);
    let t = toy.tokenizer();
    let ids = encode(&t, "hello world", Specials::Parse).unwrap();
    // " world": the space merges with 'w' (rank 4) only; the rest stays bytes.
    assert_eq!(spell(&t, &ids), ["hello", " w", "o", "r", "l", "d"]);
    let mut out = [0u8; 32];
    let n = t.decode(&ids, &mut out).unwrap();
    assert_eq!(&out[..n], b"hello world");
}

#[test]
fn special_tokens_longest_match_and_modes() {
    let toy = toy(PreTokenizer::Gpt2);
    let t = toy.tokenizer();
    let start = t.find_token(b"<|im_start|>").unwrap();
    let user = t.find_token(b"<|im").unwrap();
    let ids = encode(&t, "<|im_start|>hello", Specials::Parse).unwrap();
    assert_eq!(ids[0], start);
    assert_eq!(spell(&t, &ids[1..]), ["hello"]);
    // Plain mode: the control token is text, but the user-defined prefix still matches.
    let ids = encode(&t, "<|im_start|>", Specials::Plain).unwrap();
    assert_eq!(ids[0], user);
    assert_eq!(spell(&t, &ids[1..]).concat(), "_start|>");
}

#[test]
fn bounded_buffers_are_errors_not_truncation() {
    let toy = toy(PreTokenizer::Gpt2);
    let t = toy.tokenizer();
    let mut piece = [0u32; 8]; // pieces of at most 4 bytes
    let mut text = [0u8; 0];
    let mut ws = Workspace::new(&mut piece, &mut text);
    assert_eq!(ws.max_piece_bytes(), 4);
    let mut out = [0u32; 64];
    assert_eq!(
        t.encode("abcde", Specials::Parse, &mut ws, &mut out),
        Err(TokenizerError::PieceTooLong { len: 5, max: 4 })
    );
    assert!(t.encode("abcd", Specials::Parse, &mut ws, &mut out).is_ok());
    let mut out = [0u32; 2];
    assert_eq!(
        t.encode("a b c", Specials::Parse, &mut ws, &mut out),
        Err(TokenizerError::OutputFull { capacity: 2 })
    );
    let mut small = [0u8; 3];
    assert_eq!(
        t.decode(&[104, 105, 106, 107], &mut small),
        Err(TokenizerError::OutputFull { capacity: 3 })
    );
    assert_eq!(
        t.decode(&[t.vocab_size()], &mut small),
        Err(TokenizerError::UnknownToken { id: t.vocab_size() })
    );
}

#[test]
fn qwen2_normalizes_to_nfc_and_needs_room_for_it() {
    let toy = toy(PreTokenizer::Qwen2);
    let t = toy.tokenizer();
    assert!(t.normalizes());
    let composed = encode(&t, "\u{e9}", Specials::Parse).unwrap();
    assert_eq!(spell(&t, &composed), ["\u{e9}"]);
    let decomposed = encode(&t, "e\u{301}", Specials::Parse).unwrap();
    assert_eq!(decomposed, composed);
    let mut piece = [0u32; 64];
    let mut text = [0u8; 1];
    let mut ws = Workspace::new(&mut piece, &mut text);
    let mut out = [0u32; 8];
    assert_eq!(
        t.encode("e\u{301}", Specials::Parse, &mut ws, &mut out),
        Err(TokenizerError::TextBufferTooSmall)
    );
    // GPT-2 vocabularies do not normalize.
    let toy = self::toy(PreTokenizer::Gpt2);
    let t = toy.tokenizer();
    let ids = encode(&t, "e\u{301}", Specials::Parse).unwrap();
    assert_eq!(ids.len(), 3);
}

#[test]
fn corrupt_tables_are_refused() {
    let mut toy = toy(PreTokenizer::Gpt2);
    toy.sorted.swap(0, 1);
    let cfg = toy.cfg.clone();
    let tables = Tables {
        token_bytes: &toy.bytes,
        token_offsets: &toy.offsets,
        token_types: &toy.types,
        merges: &toy.merges,
        sorted_ids: &toy.sorted,
    };
    assert_eq!(
        Tokenizer::new(&cfg, tables).err(),
        Some(TokenizerError::BadTable {
            table: "tokenizer.sorted_ids"
        })
    );
    let mut toy = self::toy(PreTokenizer::Gpt2);
    toy.merges.swap(0, 4);
    let cfg = toy.cfg.clone();
    let tables = Tables {
        token_bytes: &toy.bytes,
        token_offsets: &toy.offsets,
        token_types: &toy.types,
        merges: &toy.merges,
        sorted_ids: &toy.sorted,
    };
    assert!(Tokenizer::new(&cfg, tables).is_err());
}

fn stream(chunks: &[&[u8]]) -> String {
    let mut s = Utf8Stream::new();
    let mut out = String::new();
    for c in chunks {
        s.push(c, &mut |t| out.push_str(t));
    }
    s.finish(&mut |t| out.push_str(t));
    out
}

#[test]
fn utf8_stream_holds_split_characters_and_matches_lossy() {
    let e = "é😀".as_bytes();
    assert_eq!(stream(&[&e[..1], &e[1..3], &e[3..4], &e[4..]]), "é😀");
    let cases: [&[&[u8]]; 5] = [
        &[b"a\xff", b"b"],
        &[b"\xe2\x82", b"A"],
        &[b"\xe2", b"\x82\xac"],
        &[b"\xf0\x9f", b"\x98"],
        &[b"\xe0", b"\x80x"],
    ];
    for chunks in cases {
        let whole: Vec<u8> = chunks.concat();
        assert_eq!(
            stream(chunks),
            String::from_utf8_lossy(&whole),
            "{chunks:?}"
        );
    }
}

#[test]
fn no_tokenizer_message_names_the_fixes() {
    let m = std::format!("{}", TokenizerError::NoTokenizer);
    assert_eq!(
        m,
        "this image has no tokenizer; pass --tokens or convert with --tokenizer"
    );
}
