//! Tokenizer extraction: HF `tokenizer.json` and GGUF `tokenizer.ggml.*` metadata turned
//! into the `tokenizer.*` lookup tables and [`TokenizerConfig`] an image carries.
//!
//! Tables (see `glimpse_quant::schema::TokenizerConfig`) hold raw bytes, not the GPT-2
//! "byte-to-unicode" strings byte-level BPE vocabularies are written in, so the device
//! never needs that mapping.
//!
//! `sorted_ids` order: by raw bytes, then normal tokens before any other type, then by id.
//! Two tokens can share their bytes (a special token written literally can equal a normal
//! token's bytes); putting the normal one first means the leftmost match of a binary
//! search is the token BPE would produce, and the order is total, so the table is
//! deterministic.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail, ensure};
use glimpse_quant::DType;
use glimpse_quant::schema::{ChatTemplate, PreTokenizer, TokenizerConfig, TokenizerModel};
use serde_json::Value as Json;

use super::gguf::Metadata;
use super::model::CanonTable;
use super::truncate_str;

/// GGUF token type: a normal (BPE) token.
pub const TYPE_NORMAL: u8 = 1;
/// GGUF token type: unknown.
pub const TYPE_UNKNOWN: u8 = 2;
/// GGUF token type: control (special) token.
pub const TYPE_CONTROL: u8 = 3;
/// GGUF token type: user-defined (added, not special) token.
pub const TYPE_USER_DEFINED: u8 = 4;
/// GGUF token type: unused.
pub const TYPE_UNUSED: u8 = 5;
/// GGUF token type: a single raw byte, spelled `<0xHH>`.
pub const TYPE_BYTE: u8 = 6;

/// Qwen2's split regex, as its `tokenizer.json` spells it.
pub const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The default system prompt of Qwen2-style chat templates, used when an `<|im_start|>`
/// vocabulary comes with no template text at all.
pub const QWEN2_DEFAULT_SYSTEM: &str = "You are a helpful assistant.";

/// A tokenizer ready to go into an image.
#[derive(Clone, Debug)]
pub struct TokenizerData {
    /// Settings for the config region.
    pub config: TokenizerConfig,
    /// The `tokenizer.*` tables.
    pub tables: Vec<CanonTable>,
    /// Things the user should hear about (e.g. duplicate merges dropped).
    pub notes: Vec<String>,
}

/// GPT-2's byte-to-unicode table: printable Latin-1 bytes stand for themselves, the other
/// 68 bytes are shifted to U+0100.. in byte order, so every byte has a visible character.
pub fn bytes_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for (b, slot) in table.iter_mut().enumerate() {
        let printable =
            (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
        let code = if printable {
            b as u32
        } else {
            let c = next;
            next += 1;
            c
        };
        *slot = char::from_u32(code).unwrap_or('\0');
    }
    table
}

/// Inverse of [`bytes_to_unicode`] for one string: `None` when a character is not one of
/// the 256 byte stand-ins.
pub fn decode_byte_level(s: &str, inverse: &HashMap<char, u8>) -> Option<Vec<u8>> {
    s.chars().map(|c| inverse.get(&c).copied()).collect()
}

fn inverse_table() -> HashMap<char, u8> {
    bytes_to_unicode()
        .iter()
        .enumerate()
        .map(|(b, &c)| (c, b as u8))
        .collect()
}

/// `<0xHH>` as a byte.
fn byte_token(s: &str) -> Option<u8> {
    let hex = s.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// The system prompt a chat template writes when the caller gives none: the literal text
/// between `<|im_start|>system` + newline and `<|im_end|>`, if the template has one. A
/// template that only inserts the caller's message there (quotes, `+` or braces in the
/// span) has no default.
pub fn default_system_from_template(template: &str) -> Option<String> {
    const START: &str = "<|im_start|>system";
    let mut rest = template;
    while let Some(i) = rest.find(START) {
        rest = &rest[i + START.len()..];
        let body = if let Some(b) = rest.strip_prefix('\n') {
            b
        } else if let Some(b) = rest.strip_prefix("\\n") {
            b
        } else {
            continue;
        };
        let Some(end) = body.find("<|im_end|>") else {
            continue;
        };
        let text = &body[..end];
        if !text.is_empty() && !text.contains(['\'', '"', '{', '}', '+']) {
            return Some(text.to_string());
        }
    }
    None
}

/// The vocabulary in its source spelling, with types and the raw bytes of each token.
struct Vocab {
    raw: Vec<Vec<u8>>,
    types: Vec<u8>,
}

impl Vocab {
    fn id_of_bytes(&self, b: &[u8]) -> Option<u32> {
        self.raw.iter().position(|r| r == b).map(|i| i as u32)
    }
}

/// Merges as `(left, right, merged)` ids in rank order.
type MergeIds = Vec<(u32, u32, u32)>;

fn u32_table(name: &str, shape: Vec<u32>, vals: impl Iterator<Item = u32>) -> CanonTable {
    let bytes = vals.flat_map(u32::to_le_bytes).collect();
    CanonTable {
        name: name.to_string(),
        dtype: DType::U32,
        shape,
        bytes,
    }
}

/// Build the tables; returns them with the number of merges kept.
fn build_tables(
    v: &Vocab,
    merges: &MergeIds,
    notes: &mut Vec<String>,
) -> Result<(Vec<CanonTable>, u32)> {
    let n = v.raw.len();
    ensure!(n > 0, "the tokenizer has an empty vocabulary");
    let vocab = u32::try_from(n).context("vocabulary too large")?;

    let mut bytes = Vec::new();
    let mut offsets = Vec::with_capacity(n + 1);
    for r in &v.raw {
        offsets.push(u32::try_from(bytes.len()).context("token bytes exceed 4 GiB")?);
        bytes.extend_from_slice(r);
    }
    offsets.push(u32::try_from(bytes.len()).context("token bytes exceed 4 GiB")?);
    ensure!(!bytes.is_empty(), "every token of the vocabulary is empty");

    let mut sorted: Vec<u32> = (0..vocab).collect();
    sorted.sort_by(|&a, &b| {
        let (ra, rb) = (&v.raw[a as usize], &v.raw[b as usize]);
        let (sa, sb) = (
            v.types[a as usize] != TYPE_NORMAL,
            v.types[b as usize] != TYPE_NORMAL,
        );
        ra.cmp(rb).then(sa.cmp(&sb)).then(a.cmp(&b))
    });

    let mut rows: Vec<[u32; 4]> = merges
        .iter()
        .enumerate()
        .map(|(rank, &(l, r, m))| [l, r, rank as u32, m])
        .collect();
    rows.sort_by_key(|x| (x[0], x[1], x[2]));
    let before = rows.len();
    // A pair listed twice can only ever apply at its best rank.
    rows.dedup_by_key(|x| (x[0], x[1]));
    if rows.len() != before {
        notes.push(format!(
            "tokenizer: {} duplicate merge pairs dropped (the lowest rank is kept)",
            before - rows.len()
        ));
    }
    let n_merges = u32::try_from(rows.len()).context("too many merges")?;

    let mut tables = vec![
        CanonTable {
            name: "tokenizer.token_bytes".into(),
            dtype: DType::U8,
            shape: vec![u32::try_from(bytes.len())?],
            bytes,
        },
        u32_table(
            "tokenizer.token_offsets",
            vec![vocab + 1],
            offsets.into_iter(),
        ),
        CanonTable {
            name: "tokenizer.token_types".into(),
            dtype: DType::U8,
            shape: vec![vocab],
            bytes: v.types.clone(),
        },
        u32_table("tokenizer.sorted_ids", vec![vocab], sorted.into_iter()),
    ];
    if n_merges > 0 {
        tables.push(u32_table(
            "tokenizer.merges",
            vec![n_merges, 4],
            rows.into_iter().flatten(),
        ));
    } else {
        notes.push("tokenizer: no merges, so no tokenizer.merges table".into());
    }
    Ok((tables, n_merges))
}

/// Resolve a merge `(a, b)` given in the vocabulary's own spelling.
fn resolve_merge(
    lookup: &HashMap<&str, u32>,
    a: &str,
    b: &str,
    rank: usize,
) -> Result<(u32, u32, u32)> {
    let id = |s: &str, what: &str| {
        lookup.get(s).copied().ok_or_else(|| {
            anyhow!("merge #{rank} `{a} {b}`: its {what} `{s}` is not in the vocabulary")
        })
    };
    let l = id(a, "left part")?;
    let r = id(b, "right part")?;
    let merged = format!("{a}{b}");
    let m = id(&merged, "result")?;
    Ok((l, r, m))
}

fn chat_for(v: &Vocab, template: Option<&str>) -> ChatTemplate {
    let has = |s: &str| v.id_of_bytes(s.as_bytes()).is_some();
    if !(has("<|im_start|>") && has("<|im_end|>")) {
        return ChatTemplate::None;
    }
    let system = match template {
        Some(t) => default_system_from_template(t).unwrap_or_default(),
        None => QWEN2_DEFAULT_SYSTEM.to_string(),
    };
    ChatTemplate::ImStart {
        default_system: truncate_str(&system),
    }
}

fn check_id(id: Option<u32>, vocab: usize, what: &str) -> Result<Option<u32>> {
    if let Some(i) = id {
        ensure!(
            (i as usize) < vocab,
            "tokenizer {what} id {i} is outside the vocabulary ({vocab} tokens)"
        );
    }
    Ok(id)
}

// ---------------------------------------------------------------------------------------
// tokenizer.json
// ---------------------------------------------------------------------------------------

/// Which pre-tokenizer a `tokenizer.json` describes, and whether it is byte-level at all.
fn detect_pretokenizer(pt: &Json, notes: &mut Vec<String>) -> Result<PreTokenizer> {
    let steps: Vec<&Json> = match pt.get("type").and_then(Json::as_str) {
        Some("Sequence") => pt
            .get("pretokenizers")
            .and_then(Json::as_array)
            .map(|a| a.iter().collect())
            .unwrap_or_default(),
        Some(_) => vec![pt],
        None => Vec::new(),
    };
    let ty = |s: &Json| {
        s.get("type")
            .and_then(Json::as_str)
            .unwrap_or("")
            .to_string()
    };
    let Some(bl) = steps.iter().position(|s| ty(s) == "ByteLevel") else {
        bail!(
            "tokenizer.json is not a byte-level BPE tokenizer (its pre_tokenizer has no ByteLevel step)"
        );
    };
    let bl_regex = steps[bl]
        .get("use_regex")
        .and_then(Json::as_bool)
        .unwrap_or(true);
    let qwen = steps[..bl].iter().any(|s| {
        ty(s) == "Split"
            && s.get("pattern")
                .and_then(|p| p.get("Regex"))
                .and_then(Json::as_str)
                == Some(QWEN2_PATTERN)
    });
    if qwen && !bl_regex && bl == steps.len() - 1 {
        return Ok(PreTokenizer::Qwen2);
    }
    let digits = steps[..bl].iter().any(|s| {
        ty(s) == "Digits" && s.get("individual_digits").and_then(Json::as_bool) == Some(true)
    });
    if digits && bl_regex && bl == 1 && steps.len() == 2 {
        return Ok(PreTokenizer::SmolLm);
    }
    if bl_regex && steps.len() == 1 {
        return Ok(PreTokenizer::Gpt2);
    }
    notes.push("tokenizer: unrecognized pre_tokenizer; using GPT-2's split rules".into());
    Ok(PreTokenizer::Gpt2)
}

/// The content of a `tokenizer_config.json` special-token field (a string or an
/// `AddedToken` object).
fn special_content(v: Option<&Json>) -> Option<&str> {
    match v? {
        Json::String(s) => Some(s),
        Json::Object(o) => o.get("content").and_then(Json::as_str),
        _ => None,
    }
}

/// Read `tokenizer.json` (and `tokenizer_config.json` beside it, when present).
pub fn from_tokenizer_json(path: &Path) -> Result<TokenizerData> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let side = path.with_file_name("tokenizer_config.json");
    let side_text = if side.is_file() {
        Some(
            std::fs::read_to_string(&side)
                .with_context(|| format!("cannot read {}", side.display()))?,
        )
    } else {
        None
    };
    from_json_str(&text, side_text.as_deref()).with_context(|| path.display().to_string())
}

/// [`from_tokenizer_json`] on the texts of `tokenizer.json` and, optionally,
/// `tokenizer_config.json`.
pub fn from_json_str(
    tokenizer_json: &str,
    tokenizer_config: Option<&str>,
) -> Result<TokenizerData> {
    let t: Json =
        serde_json::from_str(tokenizer_json).context("tokenizer.json is not valid JSON")?;
    let side: Option<Json> = tokenizer_config
        .map(serde_json::from_str)
        .transpose()
        .context("tokenizer_config.json is not valid JSON")?;
    let mut notes = Vec::new();

    let model = t
        .get("model")
        .ok_or_else(|| anyhow!("tokenizer.json has no `model`"))?;
    match model.get("type").and_then(Json::as_str) {
        Some("BPE") => {}
        other => bail!("tokenizer model {other:?} is not supported (only BPE)"),
    }
    let pre = detect_pretokenizer(t.get("pre_tokenizer").unwrap_or(&Json::Null), &mut notes)?;

    let vocab_map = model
        .get("vocab")
        .and_then(Json::as_object)
        .ok_or_else(|| anyhow!("tokenizer.json model has no `vocab` object"))?;
    let mut slots: Vec<Option<(String, u8)>> = Vec::new();
    let mut put = |id: u64, s: &str, ty: u8, replace: bool| -> Result<()> {
        let i = usize::try_from(id)
            .ok()
            .filter(|&i| i < 1 << 24)
            .ok_or_else(|| anyhow!("token id {id} is too large"))?;
        if slots.len() <= i {
            slots.resize(i + 1, None);
        }
        if slots[i].is_some() && !replace {
            bail!("token id {id} is used twice in the vocabulary");
        }
        slots[i] = Some((s.to_string(), ty));
        Ok(())
    };
    let mut lookup: HashMap<&str, u32> = HashMap::with_capacity(vocab_map.len());
    for (s, id) in vocab_map {
        let id = id
            .as_u64()
            .ok_or_else(|| anyhow!("vocab entry `{s}` has a non-integer id"))?;
        put(id, s, TYPE_NORMAL, false)?;
        lookup.insert(s.as_str(), u32::try_from(id)?);
    }
    if let Some(added) = t.get("added_tokens").and_then(Json::as_array) {
        for a in added {
            let id = a
                .get("id")
                .and_then(Json::as_u64)
                .ok_or_else(|| anyhow!("added token without an id"))?;
            let content = a
                .get("content")
                .and_then(Json::as_str)
                .ok_or_else(|| anyhow!("added token {id} has no content"))?;
            let special = a.get("special").and_then(Json::as_bool).unwrap_or(false);
            let ty = if special {
                TYPE_CONTROL
            } else {
                TYPE_USER_DEFINED
            };
            put(id, content, ty, true)?;
        }
    }
    let inverse = inverse_table();
    let mut raw = Vec::with_capacity(slots.len());
    let mut types = Vec::with_capacity(slots.len());
    for (id, slot) in slots.iter().enumerate() {
        let (s, ty) = slot.as_ref().ok_or_else(|| {
            anyhow!("the vocabulary has no token with id {id} (ids must be dense)")
        })?;
        let bytes = if *ty == TYPE_NORMAL {
            decode_byte_level(s, &inverse).ok_or_else(|| {
                anyhow!("token {id} `{s}` is not byte-level BPE text (a character outside GPT-2's byte map)")
            })?
        } else {
            s.as_bytes().to_vec()
        };
        raw.push(bytes);
        types.push(*ty);
    }
    let vocab = Vocab { raw, types };

    let merges_json = model
        .get("merges")
        .and_then(Json::as_array)
        .ok_or_else(|| anyhow!("tokenizer.json model has no `merges` array"))?;
    let mut merges = Vec::with_capacity(merges_json.len());
    for (rank, m) in merges_json.iter().enumerate() {
        let (a, b) = match m {
            Json::String(s) => split_merge(s, rank)?,
            Json::Array(p) if p.len() == 2 => match (p[0].as_str(), p[1].as_str()) {
                (Some(a), Some(b)) => (a, b),
                _ => bail!("merge #{rank} is not a pair of strings"),
            },
            _ => bail!("merge #{rank} is neither \"a b\" nor [a, b]"),
        };
        merges.push(resolve_merge(&lookup, a, b, rank)?);
    }

    let (tables, n_merges) = build_tables(&vocab, &merges, &mut notes)?;
    let n = vocab.raw.len();
    let field = |k: &str| side.as_ref().and_then(|s| s.get(k));
    let id_of = |k: &str| -> Result<Option<u32>> {
        match special_content(field(k)) {
            None => Ok(None),
            Some(c) => vocab
                .id_of_bytes(c.as_bytes())
                .map(Some)
                .ok_or_else(|| anyhow!("tokenizer_config.json {k} `{c}` is not in the vocabulary")),
        }
    };
    let template = match field("chat_template") {
        Some(Json::String(s)) => Some(s.clone()),
        Some(Json::Array(list)) => list
            .iter()
            .find(|e| e.get("name").and_then(Json::as_str) == Some("default"))
            .and_then(|e| e.get("template").and_then(Json::as_str))
            .map(str::to_string),
        _ => None,
    };
    let config = TokenizerConfig {
        model: TokenizerModel::ByteLevelBpe,
        pretokenizer: pre,
        vocab_size: u32::try_from(n)?,
        merges: n_merges,
        bos: check_id(id_of("bos_token")?, n, "bos")?,
        eos: check_id(id_of("eos_token")?, n, "eos")?,
        pad: check_id(id_of("pad_token")?, n, "pad")?,
        add_bos: field("add_bos_token")
            .and_then(Json::as_bool)
            .unwrap_or(false),
        chat: chat_for(&vocab, template.as_deref()),
    };
    Ok(TokenizerData {
        config,
        tables,
        notes,
    })
}

fn split_merge(s: &str, rank: usize) -> Result<(&str, &str)> {
    match s.split_once(' ') {
        Some((a, b)) if !a.is_empty() && !b.is_empty() && !b.contains(' ') => Ok((a, b)),
        _ => bail!("merge #{rank} `{s}` is not two tokens separated by one space"),
    }
}

// ---------------------------------------------------------------------------------------
// GGUF metadata
// ---------------------------------------------------------------------------------------

fn str_array<'a>(m: &'a Metadata, key: &str) -> Result<Option<Vec<&'a str>>> {
    let Some(a) = m.array(key)? else {
        return Ok(None);
    };
    a.iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_str()
                .ok_or_else(|| anyhow!("GGUF `{key}`[{i}] is not a string"))
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// The tokenizer in a GGUF file's metadata; `None` when it has none.
pub fn from_gguf(m: &Metadata) -> Result<Option<TokenizerData>> {
    let Some(model) = m.str("tokenizer.ggml.model")? else {
        return Ok(None);
    };
    ensure!(
        model == "gpt2",
        "GGUF tokenizer model `{model}` is not supported (only `gpt2` byte-level BPE); \
         pass --tokenizer with a tokenizer.json"
    );
    let mut notes = Vec::new();
    let pre = match m.str("tokenizer.ggml.pre")? {
        None | Some("gpt-2") | Some("default") => PreTokenizer::Gpt2,
        Some("qwen2") => PreTokenizer::Qwen2,
        Some("smollm") => PreTokenizer::SmolLm,
        Some(other) => bail!(
            "GGUF tokenizer.ggml.pre `{other}` is not supported (known: gpt-2, default, qwen2, smollm)"
        ),
    };
    let tokens = str_array(m, "tokenizer.ggml.tokens")?
        .ok_or_else(|| anyhow!("GGUF metadata lacks `tokenizer.ggml.tokens`"))?;
    let types: Vec<u8> = match m.array("tokenizer.ggml.token_type")? {
        None => vec![TYPE_NORMAL; tokens.len()],
        Some(a) => {
            ensure!(
                a.len() == tokens.len(),
                "GGUF has {} token types for {} tokens",
                a.len(),
                tokens.len()
            );
            a.iter()
                .enumerate()
                .map(|(i, v)| match v.as_i64() {
                    Some(t @ 1..=6) => Ok(t as u8),
                    _ => Err(anyhow!("GGUF token {i} has an unknown token type {v:?}")),
                })
                .collect::<Result<_>>()?
        }
    };
    let inverse = inverse_table();
    let mut raw = Vec::with_capacity(tokens.len());
    for (id, (&s, &ty)) in tokens.iter().zip(&types).enumerate() {
        let bytes = match ty {
            TYPE_NORMAL => decode_byte_level(s, &inverse).ok_or_else(|| {
                anyhow!("token {id} `{s}` is not byte-level BPE text (a character outside GPT-2's byte map)")
            })?,
            TYPE_BYTE => match byte_token(s) {
                Some(b) => vec![b],
                None => decode_byte_level(s, &inverse).unwrap_or_else(|| s.as_bytes().to_vec()),
            },
            _ => s.as_bytes().to_vec(),
        };
        raw.push(bytes);
    }
    let vocab = Vocab { raw, types };

    // Merges name tokens by their stored spelling; a normal token wins over a special one
    // of the same spelling, since merges only ever produce normal tokens.
    let mut lookup: HashMap<&str, u32> = HashMap::with_capacity(tokens.len());
    for pass_normal in [true, false] {
        for (id, &s) in tokens.iter().enumerate() {
            if (vocab.types[id] == TYPE_NORMAL) == pass_normal {
                lookup.entry(s).or_insert(id as u32);
            }
        }
    }
    let merge_strs = str_array(m, "tokenizer.ggml.merges")?.unwrap_or_default();
    let mut merges = Vec::with_capacity(merge_strs.len());
    for (rank, s) in merge_strs.iter().enumerate() {
        let (a, b) = split_merge(s, rank)?;
        merges.push(resolve_merge(&lookup, a, b, rank)?);
    }
    let (tables, n_merges) = build_tables(&vocab, &merges, &mut notes)?;

    let n = tokens.len();
    let id = |k: &str| -> Result<Option<u32>> {
        let v = m.u64(k)?.map(u32::try_from).transpose()?;
        check_id(v, n, k)
    };
    let template = m.str("tokenizer.chat_template")?;
    let config = TokenizerConfig {
        model: TokenizerModel::ByteLevelBpe,
        pretokenizer: pre,
        vocab_size: u32::try_from(n)?,
        merges: n_merges,
        bos: id("tokenizer.ggml.bos_token_id")?,
        eos: id("tokenizer.ggml.eos_token_id")?,
        pad: id("tokenizer.ggml.padding_token_id")?,
        add_bos: m.bool("tokenizer.ggml.add_bos_token")?.unwrap_or(false),
        chat: chat_for(&vocab, template),
    };
    Ok(Some(TokenizerData {
        config,
        tables,
        notes,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table<'a>(d: &'a TokenizerData, name: &str) -> &'a CanonTable {
        d.tables
            .iter()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("no {name}"))
    }

    fn u32s(t: &CanonTable) -> Vec<u32> {
        t.bytes
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }

    fn token(d: &TokenizerData, id: usize) -> Vec<u8> {
        let off = u32s(table(d, "tokenizer.token_offsets"));
        table(d, "tokenizer.token_bytes").bytes[off[id] as usize..off[id + 1] as usize].to_vec()
    }

    const QWEN_PRE: &str = r#"{"type":"Sequence","pretokenizers":[
        {"type":"Split","pattern":{"Regex":"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},"behavior":"Isolated","invert":false},
        {"type":"ByteLevel","add_prefix_space":false,"trim_offsets":false,"use_regex":false}]}"#;

    fn tiny_json(pre: &str, merges: &str) -> String {
        format!(
            r#"{{"version":"1.0","pre_tokenizer":{pre},
            "added_tokens":[
              {{"id":6,"content":"<|endoftext|>","special":true}},
              {{"id":7,"content":"<|im_start|>","special":true}},
              {{"id":8,"content":"<|im_end|>","special":true}},
              {{"id":9,"content":"<x>","special":false}}],
            "model":{{"type":"BPE","vocab":{{"a":0,"b":1,"Ġ":2,"ab":3,"Ġa":4,"Ġab":5,"<|endoftext|>":6}},
              "merges":{merges}}}}}"#
        )
    }

    const SIDE: &str = r#"{"eos_token":"<|im_end|>","pad_token":{"content":"<|endoftext|>"},"bos_token":null,
        "chat_template":"{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}{% endfor %}"}"#;

    #[test]
    fn byte_to_unicode_is_gpt2s() {
        let t = bytes_to_unicode();
        let inv = inverse_table();
        assert_eq!(inv.len(), 256, "the map is not a bijection");
        assert_eq!(t[0x20], 'Ġ');
        assert_eq!(t[b'\n' as usize], 'Ċ');
        assert_eq!(t[b'a' as usize], 'a');
        assert_eq!(t[0xAD], 'Ń'); // the last non-printable Latin-1 byte: 256 + 67
        assert_eq!(decode_byte_level("Ġhello", &inv).unwrap(), b" hello");
        assert_eq!(
            decode_byte_level("Ã©", &inv).unwrap(),
            "é".as_bytes(),
            "UTF-8 bytes come back"
        );
        assert!(decode_byte_level("☃", &inv).is_none());
        assert_eq!(byte_token("<0x0A>"), Some(10));
        assert_eq!(byte_token("<0xA>"), None);
    }

    #[test]
    fn tiny_tokenizer_json_tables() {
        let d = from_json_str(
            &tiny_json(QWEN_PRE, r#"["a b", "Ġ a", ["Ġa", "b"]]"#),
            Some(SIDE),
        )
        .unwrap();
        let c = &d.config;
        assert_eq!(c.pretokenizer, PreTokenizer::Qwen2);
        assert_eq!(c.vocab_size, 10);
        assert_eq!(c.merges, 3);
        assert_eq!(
            (c.bos, c.eos, c.pad, c.add_bos),
            (None, Some(8), Some(6), false)
        );
        assert_eq!(
            c.chat,
            ChatTemplate::ImStart {
                default_system: truncate_str("You are a helpful assistant.")
            }
        );
        let raw: Vec<Vec<u8>> = (0..10).map(|i| token(&d, i)).collect();
        let want: [&[u8]; 10] = [
            b"a",
            b"b",
            b" ",
            b"ab",
            b" a",
            b" ab",
            b"<|endoftext|>",
            b"<|im_start|>",
            b"<|im_end|>",
            b"<x>",
        ];
        assert_eq!(raw, want);
        assert_eq!(
            table(&d, "tokenizer.token_types").bytes,
            [1, 1, 1, 1, 1, 1, 3, 3, 3, 4]
        );
        let m = u32s(table(&d, "tokenizer.merges"));
        assert_eq!(table(&d, "tokenizer.merges").shape, [3, 4]);
        // (left, right, rank, merged), sorted by (left, right).
        assert_eq!(m, [0, 1, 0, 3, 2, 0, 1, 4, 4, 1, 2, 5]);
        for r in m.chunks(4) {
            let joined = [raw[r[0] as usize].clone(), raw[r[1] as usize].clone()].concat();
            assert_eq!(joined, raw[r[3] as usize], "merge {r:?} is inconsistent");
        }
        let sorted = u32s(table(&d, "tokenizer.sorted_ids"));
        assert_eq!(sorted, [2, 4, 5, 9, 6, 8, 7, 0, 3, 1]);
        for w in sorted.windows(2) {
            assert!(raw[w[0] as usize] <= raw[w[1] as usize]);
        }
    }

    #[test]
    fn pretokenizer_detection() {
        let smol = r#"{"type":"Sequence","pretokenizers":[{"type":"Digits","individual_digits":true},
            {"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":true}]}"#;
        let gpt2 = r#"{"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true}"#;
        let odd = r#"{"type":"Sequence","pretokenizers":[{"type":"Split","pattern":{"Regex":"x"}},{"type":"ByteLevel","use_regex":false}]}"#;
        let m = r#"["a b"]"#;
        let get = |pre: &str| from_json_str(&tiny_json(pre, m), None).unwrap();
        assert_eq!(get(smol).config.pretokenizer, PreTokenizer::SmolLm);
        assert_eq!(get(gpt2).config.pretokenizer, PreTokenizer::Gpt2);
        let d = get(odd);
        assert_eq!(d.config.pretokenizer, PreTokenizer::Gpt2);
        assert!(
            d.notes
                .iter()
                .any(|n| n.contains("unrecognized pre_tokenizer"))
        );
        // No template at all: the Qwen2 default system prompt.
        assert_eq!(
            d.config.chat,
            ChatTemplate::ImStart {
                default_system: truncate_str(QWEN2_DEFAULT_SYSTEM)
            }
        );
        let e = from_json_str(&tiny_json(r#"{"type":"Whitespace"}"#, m), None).unwrap_err();
        assert!(e.to_string().contains("not a byte-level BPE"), "{e}");
    }

    #[test]
    fn inconsistent_merges_and_vocab_are_errors() {
        let e = from_json_str(&tiny_json(QWEN_PRE, r#"["a b", "b a"]"#), None).unwrap_err();
        assert!(
            e.to_string().contains("merge #1 `b a`: its result `ba`"),
            "{e}"
        );
        let e = from_json_str(&tiny_json(QWEN_PRE, r#"["a c"]"#), None).unwrap_err();
        assert!(e.to_string().contains("right part `c`"), "{e}");
        let e = from_json_str(&tiny_json(QWEN_PRE, r#"["a  b"]"#), None).unwrap_err();
        assert!(e.to_string().contains("not two tokens"), "{e}");
        // A hole in the ids.
        let holey = tiny_json(QWEN_PRE, r#"["a b"]"#).replace(r#""id":9"#, r#""id":11"#);
        let e = from_json_str(&holey, None).unwrap_err();
        assert!(e.to_string().contains("no token with id 9"), "{e}");
        // A normal token that is not byte-level text.
        let bad = tiny_json(QWEN_PRE, r#"["a b"]"#).replace(r#""Ġab":5"#, r#""☃":5"#);
        let e = from_json_str(&bad, None).unwrap_err();
        assert!(e.to_string().contains("token 5"), "{e}");
        // An eos that is not in the vocabulary.
        let e = from_json_str(
            &tiny_json(QWEN_PRE, r#"["a b"]"#),
            Some(r#"{"eos_token":"</s>"}"#),
        )
        .unwrap_err();
        assert!(e.to_string().contains("</s>"), "{e}");
    }

    #[test]
    fn duplicate_merges_keep_the_best_rank() {
        let d = from_json_str(&tiny_json(QWEN_PRE, r#"["Ġ a", "a b", "Ġ a"]"#), None).unwrap();
        assert_eq!(d.config.merges, 2);
        assert_eq!(
            u32s(table(&d, "tokenizer.merges")),
            [0, 1, 1, 3, 2, 0, 0, 4]
        );
        assert!(d.notes.iter().any(|n| n.contains("1 duplicate")));
    }

    #[test]
    fn equal_bytes_sort_normal_first_then_by_id() {
        // Special "<s>" (id 0) and normal "<s>" (id 2) share their bytes.
        let j = r#"{"pre_tokenizer":{"type":"ByteLevel"},
            "added_tokens":[{"id":0,"content":"<s>","special":true}],
            "model":{"type":"BPE","vocab":{"x":1,"<s>":2,"<":3,"s>":4,"s":5,">":6},"merges":["s >","< s>"]}}"#;
        let d = from_json_str(j, None).unwrap();
        let sorted = u32s(table(&d, "tokenizer.sorted_ids"));
        // "<" < "<s>"(normal 2) < "<s>"(special 0) < ">" < "s" < "s>" < "x"
        assert_eq!(sorted, [3, 2, 0, 6, 5, 4, 1]);
        assert_eq!(d.config.chat, ChatTemplate::None);
    }

    #[test]
    fn default_system_extraction() {
        let smol = "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}";
        assert_eq!(
            default_system_from_template(smol).as_deref(),
            Some("You are a helpful AI assistant named SmolLM, trained by Hugging Face")
        );
        let escaped = r"{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}";
        assert_eq!(
            default_system_from_template(escaped).as_deref(),
            Some("You are a helpful assistant.")
        );
        // Qwen3 only ever writes the caller's system message there.
        let qwen3 = "{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}";
        assert_eq!(default_system_from_template(qwen3), None);
        // A literal later in the template still counts.
        let both = format!("{qwen3}{smol}");
        assert!(
            default_system_from_template(&both)
                .unwrap()
                .contains("SmolLM")
        );
    }
}
