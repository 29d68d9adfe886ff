//! Test support for the converter tests: a small GGUF writer (independent of the parser
//! under test) and a tiny `llama` / `qwen2` checkpoint built with it.

#![allow(dead_code)]

use std::collections::BTreeMap;

use glimpse_quant::DType;
use glimpse_quant::blocks::{dequantize_row, quantize_row};

/// GGML type codes used here (ggml.h `enum ggml_type`).
pub const GGML_F32: u32 = 0;
pub const GGML_F16: u32 = 1;
pub const GGML_Q8_0: u32 = 8;

/// A GGUF metadata value to write.
#[derive(Clone, Debug)]
pub enum V {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    /// Element type code and elements.
    Arr(u32, Vec<V>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl V {
    pub fn s(x: &str) -> V {
        V::Str(x.to_string())
    }

    pub fn strs(xs: &[&str]) -> V {
        V::Arr(8, xs.iter().map(|x| V::s(x)).collect())
    }

    fn code(&self) -> u32 {
        match self {
            V::U8(_) => 0,
            V::I8(_) => 1,
            V::U16(_) => 2,
            V::I16(_) => 3,
            V::U32(_) => 4,
            V::I32(_) => 5,
            V::F32(_) => 6,
            V::Bool(_) => 7,
            V::Str(_) => 8,
            V::Arr(..) => 9,
            V::U64(_) => 10,
            V::I64(_) => 11,
            V::F64(_) => 12,
        }
    }

    fn put(&self, b: &mut Vec<u8>) {
        match self {
            V::U8(x) => b.push(*x),
            V::I8(x) => b.extend(x.to_le_bytes()),
            V::U16(x) => b.extend(x.to_le_bytes()),
            V::I16(x) => b.extend(x.to_le_bytes()),
            V::U32(x) => b.extend(x.to_le_bytes()),
            V::I32(x) => b.extend(x.to_le_bytes()),
            V::F32(x) => b.extend(x.to_le_bytes()),
            V::Bool(x) => b.push(u8::from(*x)),
            V::Str(s) => put_str(b, s),
            V::Arr(t, xs) => {
                b.extend(t.to_le_bytes());
                b.extend((xs.len() as u64).to_le_bytes());
                for x in xs {
                    x.put(b);
                }
            }
            V::U64(x) => b.extend(x.to_le_bytes()),
            V::I64(x) => b.extend(x.to_le_bytes()),
            V::F64(x) => b.extend(x.to_le_bytes()),
        }
    }
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    b.extend((s.len() as u64).to_le_bytes());
    b.extend(s.as_bytes());
}

/// One tensor to write: GGUF name, dims innermost first, GGML type, payload.
#[derive(Clone, Debug)]
pub struct T {
    pub name: String,
    pub dims: Vec<u64>,
    pub ty: u32,
    pub data: Vec<u8>,
}

/// A GGUF file under construction.
#[derive(Clone, Debug)]
pub struct GgufWriter {
    pub version: u32,
    pub kv: Vec<(String, V)>,
    pub tensors: Vec<T>,
    pub alignment: u64,
}

impl Default for GgufWriter {
    fn default() -> Self {
        GgufWriter {
            version: 3,
            kv: Vec::new(),
            tensors: Vec::new(),
            alignment: 32,
        }
    }
}

impl GgufWriter {
    pub fn kv(&mut self, k: &str, v: V) -> &mut Self {
        self.kv.retain(|(key, _)| key != k);
        self.kv.push((k.to_string(), v));
        self
    }

    pub fn remove_kv(&mut self, k: &str) {
        self.kv.retain(|(key, _)| key != k);
    }

    pub fn remove_tensor(&mut self, name: &str) {
        self.tensors.retain(|t| t.name != name);
    }

    /// Serialize: header, metadata, tensor infos, padding, then each payload at the next
    /// multiple of the alignment.
    pub fn to_bytes(&self) -> Vec<u8> {
        let a = self.alignment as usize;
        let mut offsets = Vec::new();
        let mut at = 0usize;
        for t in &self.tensors {
            at = at.div_ceil(a) * a;
            offsets.push(at as u64);
            at += t.data.len();
        }
        let mut b = Vec::new();
        b.extend(b"GGUF");
        b.extend(self.version.to_le_bytes());
        b.extend((self.tensors.len() as u64).to_le_bytes());
        b.extend((self.kv.len() as u64).to_le_bytes());
        for (k, v) in &self.kv {
            put_str(&mut b, k);
            b.extend(v.code().to_le_bytes());
            v.put(&mut b);
        }
        for (t, off) in self.tensors.iter().zip(&offsets) {
            put_str(&mut b, &t.name);
            b.extend((t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                b.extend(d.to_le_bytes());
            }
            b.extend(t.ty.to_le_bytes());
            b.extend(off.to_le_bytes());
        }
        let data_start = b.len().div_ceil(a) * a;
        b.resize(data_start, 0);
        for (t, off) in self.tensors.iter().zip(&offsets) {
            b.resize(data_start + *off as usize, 0);
            b.extend(&t.data);
        }
        b
    }
}

/// Deterministic values in [-1, 1) (a 64-bit LCG; quality is irrelevant here).
pub fn values(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// llama.cpp's `LlamaModel.permute` on row-major `[n_head * hd, cols]` data, written out
/// from its numpy definition: `reshape(n_head, 2, hd/2, cols).swapaxes(1, 2)`, i.e. the
/// element at `[h, a, j]` moves to `[h, j, a]`.
pub fn llamacpp_permute<R: Clone>(rows: &[R], n_head: usize) -> Vec<R> {
    let hd = rows.len() / n_head;
    let half = hd / 2;
    let mut out = rows.to_vec();
    for h in 0..n_head {
        for a in 0..2 {
            for j in 0..half {
                out[h * hd + j * 2 + a] = rows[h * hd + a * half + j].clone();
            }
        }
    }
    out
}

/// Geometry of the tiny test decoder.
#[derive(Clone, Copy, Debug)]
pub struct Geometry {
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub inter: usize,
    pub layers: usize,
    pub vocab: usize,
}

pub const TINY: Geometry = Geometry {
    hidden: 64,
    heads: 2,
    kv_heads: 1,
    head_dim: 32,
    inter: 96,
    layers: 2,
    vocab: 10,
};

/// The tiny vocabulary, in GGUF (byte-to-unicode) spelling, with token types.
pub const TOKENS: [(&str, i32); 10] = [
    ("a", 1),
    ("b", 1),
    ("Ġ", 1),
    ("ab", 1),
    ("Ġa", 1),
    ("Ġab", 1),
    ("<|endoftext|>", 3),
    ("<|im_start|>", 3),
    ("<|im_end|>", 3),
    ("Ċ", 1),
];
pub const MERGES: [&str; 3] = ["a b", "Ġ a", "Ġa b"];
pub const TEMPLATE: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a tiny test model<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}";

/// How a matrix is stored in the tiny file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Store {
    F32,
    F16,
    Q8_0,
}

/// A tiny checkpoint: the writer plus the canonical tensors (HF row order, the exact
/// values the file encodes) a correct loader must produce.
#[derive(Clone, Debug)]
pub struct Tiny {
    pub w: GgufWriter,
    pub expected: BTreeMap<String, (Vec<u32>, Vec<f32>)>,
}

fn encode_rows(store: Store, rows: &[Vec<f32>]) -> (u32, Vec<Vec<u8>>, Vec<Vec<f32>>) {
    let (ty, dt) = match store {
        Store::F32 => (GGML_F32, DType::F32),
        Store::F16 => (GGML_F16, DType::F16),
        Store::Q8_0 => (GGML_Q8_0, DType::Q8_0),
    };
    let mut enc = Vec::new();
    let mut dec = Vec::new();
    for r in rows {
        let mut b = vec![0u8; dt.payload_bytes(&[r.len() as u32]).unwrap() as usize];
        quantize_row(dt, r, &mut b).unwrap();
        let mut back = vec![0f32; r.len()];
        dequantize_row(dt, &b, &mut back).unwrap();
        enc.push(b);
        dec.push(back);
    }
    (ty, enc, dec)
}

impl Tiny {
    /// `arch` is `llama` or `qwen2`; matrices are stored as `store` (norms always F32,
    /// the embedding always Q8_0). q/k rows of `llama` are written permuted the way
    /// llama.cpp's converter does.
    pub fn new(arch: &str, store: Store) -> Tiny {
        let g = TINY;
        let mut w = GgufWriter::default();
        let p = |k: &str| format!("{arch}.{k}");
        w.kv("general.architecture", V::s(arch));
        w.kv("general.name", V::s("tiny test decoder"));
        w.kv(&p("block_count"), V::U32(g.layers as u32));
        w.kv(&p("context_length"), V::U32(256));
        w.kv(&p("embedding_length"), V::U32(g.hidden as u32));
        w.kv(&p("feed_forward_length"), V::U32(g.inter as u32));
        w.kv(&p("attention.head_count"), V::U32(g.heads as u32));
        w.kv(&p("attention.head_count_kv"), V::U32(g.kv_heads as u32));
        w.kv(&p("rope.freq_base"), V::F32(100000.0));
        w.kv(&p("attention.layer_norm_rms_epsilon"), V::F32(1e-5));
        w.kv("tokenizer.ggml.model", V::s("gpt2"));
        w.kv(
            "tokenizer.ggml.pre",
            V::s(if arch == "qwen2" { "qwen2" } else { "smollm" }),
        );
        w.kv("tokenizer.ggml.tokens", V::strs(&TOKENS.map(|t| t.0)));
        w.kv(
            "tokenizer.ggml.token_type",
            V::Arr(5, TOKENS.iter().map(|t| V::I32(t.1)).collect()),
        );
        w.kv("tokenizer.ggml.merges", V::strs(&MERGES));
        w.kv("tokenizer.ggml.bos_token_id", V::U32(7));
        w.kv("tokenizer.ggml.eos_token_id", V::U32(8));
        w.kv("tokenizer.ggml.padding_token_id", V::U32(6));
        w.kv("tokenizer.ggml.add_bos_token", V::Bool(false));
        w.kv("tokenizer.chat_template", V::s(TEMPLATE));

        let mut expected = BTreeMap::new();
        let mut seed = 1u64;
        let mut add = |w: &mut GgufWriter,
                       gguf: String,
                       canon: String,
                       rows: usize,
                       cols: usize,
                       store: Store,
                       permute_heads: Option<usize>| {
            seed += 1;
            let vals = values(seed, rows * cols);
            let hf_rows: Vec<Vec<f32>> = vals.chunks(cols).map(<[f32]>::to_vec).collect();
            let (ty, enc, dec) = encode_rows(store, &hf_rows);
            let stored = match permute_heads {
                Some(n) => llamacpp_permute(&enc, n),
                None => enc,
            };
            let dims = if rows == 1 {
                vec![cols as u64]
            } else {
                vec![cols as u64, rows as u64]
            };
            w.tensors.push(T {
                name: gguf,
                dims,
                ty,
                data: stored.concat(),
            });
            let shape = if rows == 1 {
                vec![cols as u32]
            } else {
                vec![rows as u32, cols as u32]
            };
            expected.insert(canon, (shape, dec.concat()));
        };
        let llama = arch == "llama";
        add(
            &mut w,
            "token_embd.weight".into(),
            "decoder.embed.weight".into(),
            g.vocab,
            g.hidden,
            Store::Q8_0,
            None,
        );
        for i in 0..g.layers {
            let b = |s: &str| format!("blk.{i}.{s}");
            let c = |s: &str| format!("decoder.layers.{i}.{s}");
            let (q, kv) = (g.heads * g.head_dim, g.kv_heads * g.head_dim);
            add(
                &mut w,
                b("attn_norm.weight"),
                c("attn_norm.weight"),
                1,
                g.hidden,
                Store::F32,
                None,
            );
            add(
                &mut w,
                b("attn_q.weight"),
                c("attn.q.weight"),
                q,
                g.hidden,
                store,
                llama.then_some(g.heads),
            );
            add(
                &mut w,
                b("attn_k.weight"),
                c("attn.k.weight"),
                kv,
                g.hidden,
                store,
                llama.then_some(g.kv_heads),
            );
            add(
                &mut w,
                b("attn_v.weight"),
                c("attn.v.weight"),
                kv,
                g.hidden,
                store,
                None,
            );
            if !llama {
                add(
                    &mut w,
                    b("attn_q.bias"),
                    c("attn.q.bias"),
                    1,
                    q,
                    Store::F32,
                    None,
                );
                add(
                    &mut w,
                    b("attn_k.bias"),
                    c("attn.k.bias"),
                    1,
                    kv,
                    Store::F32,
                    None,
                );
                add(
                    &mut w,
                    b("attn_v.bias"),
                    c("attn.v.bias"),
                    1,
                    kv,
                    Store::F32,
                    None,
                );
            }
            add(
                &mut w,
                b("attn_output.weight"),
                c("attn.o.weight"),
                g.hidden,
                q,
                store,
                None,
            );
            add(
                &mut w,
                b("ffn_norm.weight"),
                c("mlp_norm.weight"),
                1,
                g.hidden,
                Store::F32,
                None,
            );
            add(
                &mut w,
                b("ffn_gate.weight"),
                c("mlp.gate.weight"),
                g.inter,
                g.hidden,
                store,
                None,
            );
            add(
                &mut w,
                b("ffn_up.weight"),
                c("mlp.up.weight"),
                g.inter,
                g.hidden,
                store,
                None,
            );
            add(
                &mut w,
                b("ffn_down.weight"),
                c("mlp.down.weight"),
                g.hidden,
                g.inter,
                store,
                None,
            );
        }
        add(
            &mut w,
            "output_norm.weight".into(),
            "decoder.norm.weight".into(),
            1,
            g.hidden,
            Store::F32,
            None,
        );
        Tiny { w, expected }
    }

    /// Add an untied output head.
    pub fn with_lm_head(mut self) -> Tiny {
        let g = TINY;
        let vals = values(999, g.vocab * g.hidden);
        let rows: Vec<Vec<f32>> = vals.chunks(g.hidden).map(<[f32]>::to_vec).collect();
        let (ty, enc, dec) = encode_rows(Store::F32, &rows);
        self.w.tensors.push(T {
            name: "output.weight".into(),
            dims: vec![g.hidden as u64, g.vocab as u64],
            ty,
            data: enc.concat(),
        });
        self.expected.insert(
            "decoder.lm_head.weight".into(),
            (vec![g.vocab as u32, g.hidden as u32], dec.concat()),
        );
        self
    }

    pub fn bytes(&self) -> Vec<u8> {
        self.w.to_bytes()
    }

    /// Write to `dir/name` and return the path.
    pub fn write(&self, dir: &std::path::Path, name: &str) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, self.bytes()).unwrap();
        p
    }
}
