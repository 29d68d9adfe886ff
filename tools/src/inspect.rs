//! `glimpse inspect`: shows an image's config, tensor table and sizes, and verifies every
//! checksum and padding byte, as a human-readable report or one JSON object.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

use glimpse_core::image::{ImageError, Model};
use glimpse_host::MappedImage;
use glimpse_quant::DType;
use glimpse_quant::layout::{TensorLayout, VERSION_MAJOR};
use glimpse_quant::schema::{ChatTemplate, ModelConfig};
use serde_json::{Value, json};

use crate::InspectArgs;

/// One row of the tensor table.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorRow {
    /// Canonical name.
    pub name: String,
    /// Storage format.
    pub dtype: DType,
    /// Row arrangement.
    pub layout: TensorLayout,
    /// Shape, outermost first.
    pub shape: Vec<u32>,
    /// Payload bytes.
    pub bytes: u64,
    /// Absolute payload offset.
    pub offset: u64,
    /// Whether the payload matches its CRC.
    pub crc_ok: bool,
}

/// Everything `inspect` found in one image.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// Length of the file.
    pub file_len: u64,
    /// Format version (major, minor), when the header parsed.
    pub version: Option<(u16, u16)>,
    /// The config, when the image parsed.
    pub config: Option<ModelConfig>,
    /// Every tensor, in table order (empty when the image did not parse).
    pub tensors: Vec<TensorRow>,
    /// Every problem found; the first is the headline. Empty means verified.
    pub errors: Vec<String>,
}

impl Report {
    /// Whether the image parsed and every checksum and padding byte is right.
    pub fn verified(&self) -> bool {
        self.errors.is_empty() && self.config.is_some()
    }

    /// Payload bytes of all tensors.
    pub fn total_bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.bytes).sum()
    }

    /// Payload bytes per dtype, for dtypes that occur, in dtype code order.
    pub fn bytes_by_dtype(&self) -> Vec<(DType, u64, usize)> {
        DType::ALL
            .iter()
            .filter_map(|&d| {
                let of = self.tensors.iter().filter(|t| t.dtype == d);
                let n = of.clone().count();
                (n > 0).then(|| (d, of.map(|t| t.bytes).sum(), n))
            })
            .collect()
    }
}

fn describe(e: &ImageError, img: Option<&Model<'_>>) -> String {
    let index = match e {
        ImageError::TensorChecksum { index }
        | ImageError::WrongShape { index }
        | ImageError::WrongDType { index, .. } => Some(*index),
        _ => None,
    };
    let msg = e.to_string();
    match index.and_then(|i| img?.tensor(i as usize).ok()) {
        Some(t) => {
            // Put the name where the reader's message has only the number.
            let prefix = format!("tensor #{}: ", t.index);
            let rest = msg.strip_prefix(&prefix).unwrap_or(&msg);
            format!("tensor `{}` (#{}): {rest}", t.name, t.index)
        }
        None => msg,
    }
}

/// Parse and verify `bytes` (which must start 16-byte aligned, as a mapped file does).
pub fn inspect_bytes(bytes: &[u8]) -> Report {
    let mut report = Report {
        file_len: bytes.len() as u64,
        version: None,
        config: None,
        tensors: Vec::new(),
        errors: Vec::new(),
    };
    let img = match Model::parse(bytes) {
        Ok(img) => img,
        Err(e) => {
            report
                .errors
                .push(format!("invalid image: {}", describe(&e, None)));
            return report;
        }
    };
    report.version = Some((VERSION_MAJOR, img.header().version_minor));
    report.config = Some(img.config().clone());
    for t in img.iter() {
        let check = t.verify();
        if let Err(e) = &check {
            report.errors.push(describe(e, Some(&img)));
        }
        report.tensors.push(TensorRow {
            name: t.name.to_string(),
            dtype: t.dtype,
            layout: t.layout,
            shape: t.dims().to_vec(),
            bytes: t.data.len() as u64,
            offset: t.offset,
            crc_ok: check.is_ok(),
        });
    }
    if let Err(e) = img.verify_padding() {
        report.errors.push(describe(&e, Some(&img)));
    }
    report
}

/// Human-readable byte count.
fn size(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = UNITS[0];
    for u in &UNITS[1..] {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.2} {unit}")
}

fn opt(v: Option<u32>) -> String {
    v.map_or_else(|| "none".to_string(), |x| x.to_string())
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// The config, every field, one section per part.
pub fn render_config(c: &ModelConfig) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "model      {:?} ({:?})", c.name.as_str(), c.family);
    let r = &c.recipe;
    let _ = writeln!(
        s,
        "recipe     weights {}, kept {}, source {:?}",
        r.weights.name(),
        r.kept.name(),
        r.source.as_str()
    );
    match &c.vision {
        None => {
            let _ = writeln!(s, "vision     none");
        }
        Some(v) => {
            let _ = writeln!(
                s,
                "vision     image_size {}, in_channels {}, head_dim {}, out_dim {}, se_dim {}, \
                 norm_eps {:e}",
                v.image_size, v.in_channels, v.head_dim, v.out_dim, v.se_dim, v.norm_eps
            );
            let _ = writeln!(
                s,
                "           kernels: mixer {}, ffn {}, down {}, pos {}; stride {}, \
                 {} tokens at {}px",
                v.mixer_kernel,
                v.ffn_kernel,
                v.down_kernel,
                v.pos_kernel,
                v.stride(),
                v.tokens(v.image_size),
                v.image_size
            );
            for (i, st) in v.stages.iter().enumerate() {
                let _ = writeln!(
                    s,
                    "           stage {i}: depth {}, dim {}, ffn_dim {}, mixer {:?}, pos_emb {}",
                    st.depth,
                    st.dim,
                    st.ffn_dim,
                    st.mixer,
                    yes(st.pos_emb)
                );
            }
        }
    }
    match &c.projector {
        None => {
            let _ = writeln!(s, "projector  none");
        }
        Some(p) => {
            let _ = writeln!(
                s,
                "projector  mlp2x_gelu {} -> {} -> {}",
                p.in_dim, p.hidden_dim, p.out_dim
            );
        }
    }
    match &c.decoder {
        None => {
            let _ = writeln!(s, "decoder    none");
        }
        Some(d) => {
            let _ = writeln!(
                s,
                "decoder    {:?}: hidden {}, layers {}, heads {}, kv_heads {}, head_dim {}, \
                 intermediate {}, vocab {}",
                d.arch,
                d.hidden,
                d.layers,
                d.heads,
                d.kv_heads,
                d.head_dim,
                d.intermediate,
                d.vocab
            );
            let _ = writeln!(
                s,
                "           rope_theta {}, norm_eps {:e}, max_positions {}, tied_embeddings {}, \
                 qkv_bias {}",
                d.rope_theta,
                d.norm_eps,
                d.max_positions,
                yes(d.tied_embeddings),
                yes(d.qkv_bias)
            );
            let _ = writeln!(
                s,
                "           image_token_id {}, bos {}, eos {:?}",
                opt(d.image_token_id),
                opt(d.bos_token_id),
                d.eos_token_ids.as_slice()
            );
        }
    }
    match &c.tokenizer {
        None => {
            let _ = writeln!(s, "tokenizer  none");
        }
        Some(t) => {
            let _ = writeln!(
                s,
                "tokenizer  {:?}, pretokenizer {:?}, vocab_size {}, merges {}",
                t.model, t.pretokenizer, t.vocab_size, t.merges
            );
            let _ = writeln!(
                s,
                "           bos {}, eos {}, pad {}, add_bos {}",
                opt(t.bos),
                opt(t.eos),
                opt(t.pad),
                yes(t.add_bos)
            );
            let chat = match &t.chat {
                ChatTemplate::None => "none".to_string(),
                ChatTemplate::ImStart { default_system } => {
                    format!("im_start, default system {:?}", default_system.as_str())
                }
            };
            let _ = writeln!(s, "           chat {chat}");
        }
    }
    s
}

/// The whole human-readable report.
pub fn render_text(r: &Report, path: &Path) -> String {
    let mut s = String::new();
    let version = r
        .version
        .map_or_else(|| "?".to_string(), |(a, b)| format!("{a}.{b}"));
    let _ = writeln!(
        s,
        "image      {} ({}, {} bytes, format {version})",
        path.display(),
        size(r.file_len),
        r.file_len
    );
    if let Some(c) = &r.config {
        s.push_str(&render_config(c));
    }
    if r.config.is_some() {
        let name_w = r
            .tensors
            .iter()
            .map(|t| t.name.len())
            .max()
            .unwrap_or(4)
            .max(4);
        let shapes: Vec<String> = r.tensors.iter().map(|t| format!("{:?}", t.shape)).collect();
        let shape_w = shapes.iter().map(String::len).max().unwrap_or(5).max(5);
        let _ = writeln!(s, "\ntensors ({})", r.tensors.len());
        let _ = writeln!(
            s,
            "  {:>5}  {:<name_w$}  {:<10}  {:<shape_w$}  {:>12}  {:>12}  crc",
            "#", "name", "dtype", "shape", "bytes", "offset"
        );
        for (i, (t, shape)) in r.tensors.iter().zip(&shapes).enumerate() {
            let _ = writeln!(
                s,
                "  {i:>5}  {:<name_w$}  {:<10}  {shape:<shape_w$}  {:>12}  {:>12}  {}",
                t.name,
                t.layout.storage_name(t.dtype),
                t.bytes,
                t.offset,
                if t.crc_ok { "ok" } else { "BAD" }
            );
        }
        let total = r.total_bytes();
        let _ = writeln!(
            s,
            "\ntotal      {} tensors, {} of payload ({total} bytes) in a {} file",
            r.tensors.len(),
            size(total),
            size(r.file_len)
        );
        for (d, bytes, n) in r.bytes_by_dtype() {
            let share = if total == 0 {
                0.0
            } else {
                bytes as f64 * 100.0 / total as f64
            };
            let _ = writeln!(
                s,
                "  {:<6} {n:>5} tensor{}  {:>12}  {share:5.1}%",
                d.name(),
                if n == 1 { " " } else { "s" },
                size(bytes)
            );
        }
    }
    if r.verified() {
        let _ = writeln!(s, "\nverified   all checksums and padding ok");
    } else {
        let _ = writeln!(s, "\nFAILED     {} problem(s):", r.errors.len());
        for e in &r.errors {
            let _ = writeln!(s, "  {e}");
        }
    }
    s
}

/// The JSON report.
pub fn to_json(r: &Report, path: &Path) -> Value {
    // Through text rather than `to_value`: the text form prints each f32 in its shortest
    // f32 spelling (1e-6), where `to_value` would widen it to f64 (9.99999997e-7).
    let config = r
        .config
        .as_ref()
        .and_then(|c| serde_json::to_string(c).ok())
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or(Value::Null);
    let tensors: Vec<Value> = r
        .tensors
        .iter()
        .map(|t| {
            json!({
                "name": t.name,
                "dtype": t.dtype.name(),
                "layout": t.layout.name(),
                "shape": t.shape,
                "bytes": t.bytes,
                "offset": t.offset,
                "crc_ok": t.crc_ok,
            })
        })
        .collect();
    let by_dtype: BTreeMap<&str, u64> = r
        .bytes_by_dtype()
        .into_iter()
        .map(|(d, b, _)| (d.name(), b))
        .collect();
    json!({
        "path": path.display().to_string(),
        "file_len": r.file_len,
        "version": r.version.map(|(a, b)| format!("{a}.{b}")),
        "config": config,
        "tensors": tensors,
        "bytes_by_dtype": by_dtype,
        "total_bytes": r.total_bytes(),
        "verified": r.verified(),
        "error": r.errors.first(),
        "errors": r.errors,
    })
}

/// `glimpse inspect`.
pub fn run(a: &InspectArgs) -> anyhow::Result<ExitCode> {
    let report = match MappedImage::open(&a.image) {
        Ok(m) => inspect_bytes(m.bytes()),
        Err(e) if a.json => Report {
            file_len: 0,
            version: None,
            config: None,
            tensors: Vec::new(),
            errors: vec![e.to_string()],
        },
        Err(e) => return Err(e.into()),
    };
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&to_json(&report, &a.image))?
        );
    } else {
        print!("{}", render_text(&report, &a.image));
    }
    if report.verified() {
        Ok(ExitCode::SUCCESS)
    } else {
        if !a.json {
            eprintln!(
                "error: {}: {}",
                a.image.display(),
                report.errors.first().map_or("not verified", String::as_str)
            );
        }
        Ok(ExitCode::from(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use glimpse_quant::schema::{
        DecoderArch, DecoderConfig, ModelFamily, ProjectorConfig, QuantRecipe, TokenMixer,
        VisionConfig, VisionStage,
    };
    use glimpse_quant::writer::ImageBuilder;

    fn config() -> ModelConfig {
        let mut stages = heapless::Vec::new();
        for (i, mixer) in [TokenMixer::RepMixer, TokenMixer::Attention]
            .into_iter()
            .enumerate()
        {
            let dim = 32 << i;
            stages
                .push(VisionStage {
                    depth: 1,
                    dim,
                    ffn_dim: 3 * dim,
                    mixer,
                    pos_emb: i == 1,
                })
                .unwrap();
        }
        ModelConfig {
            name: "inspect-test".try_into().unwrap(),
            family: ModelFamily::FastVlm,
            vision: Some(VisionConfig {
                image_size: 64,
                in_channels: 3,
                stages,
                head_dim: 32,
                mixer_kernel: 3,
                ffn_kernel: 7,
                down_kernel: 7,
                pos_kernel: 7,
                out_dim: 128,
                se_dim: 8,
                norm_eps: 1e-5,
            }),
            projector: Some(ProjectorConfig {
                in_dim: 128,
                hidden_dim: 64,
                out_dim: 64,
            }),
            decoder: Some(DecoderConfig {
                arch: DecoderArch::Qwen2,
                hidden: 64,
                layers: 1,
                heads: 2,
                kv_heads: 1,
                head_dim: 32,
                intermediate: 128,
                vocab: 16,
                rope_theta: 1e6,
                norm_eps: 1e-6,
                max_positions: 256,
                tied_embeddings: true,
                qkv_bias: true,
                image_token_id: Some(15),
                bos_token_id: None,
                eos_token_ids: heapless::Vec::from_slice(&[14]).unwrap(),
            }),
            tokenizer: None,
            recipe: QuantRecipe {
                weights: DType::Q8_0,
                kept: DType::F32,
                source: "unit".try_into().unwrap(),
            },
        }
    }

    fn write(dir: &Path, corrupt_tensor: Option<&str>) -> std::path::PathBuf {
        let mut b = ImageBuilder::new(config());
        b.add("b.norm", DType::F32, &[4], vec![0x11; 16]).unwrap();
        b.add("a.proj", DType::Q8_0, &[2, 64], vec![0x22; 2 * 2 * 34])
            .unwrap();
        b.add("c.bytes", DType::U8, &[10], vec![0x33; 10]).unwrap();
        let mut bytes = b.to_bytes().unwrap();
        if let Some(name) = corrupt_tensor {
            // Find the payload through a copy-free parse of an aligned copy.
            let m = dir.join("probe.glim");
            std::fs::write(&m, &bytes).unwrap();
            let mapped = MappedImage::open(&m).unwrap();
            let at = mapped.image().unwrap().find(name).unwrap().offset as usize;
            drop(mapped);
            bytes[at] ^= 0x40;
        }
        let p = dir.join("t.glim");
        std::fs::write(&p, &bytes).unwrap();
        p
    }

    #[test]
    fn report_of_a_good_image() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), None);
        let m = MappedImage::open(&p).unwrap();
        let r = inspect_bytes(m.bytes());
        assert!(r.verified(), "{:?}", r.errors);
        assert_eq!(r.config.as_ref(), Some(&config()));
        let names: Vec<&str> = r.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["a.proj", "b.norm", "c.bytes"]);
        assert_eq!(r.total_bytes(), 136 + 16 + 10);
        let by: Vec<(DType, u64, usize)> = r.bytes_by_dtype();
        assert_eq!(
            by,
            [
                (DType::F32, 16, 1),
                (DType::Q8_0, 136, 1),
                (DType::U8, 10, 1)
            ]
        );

        let text = render_text(&r, &p);
        for needle in [
            "inspect-test",
            "stage 1: depth 1, dim 64, ffn_dim 192, mixer Attention, pos_emb yes",
            "mlp2x_gelu 128 -> 64 -> 64",
            "Qwen2",
            "image_token_id 15",
            "tokenizer  none",
            "a.proj",
            "[2, 64]",
            "verified",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }

        let j = to_json(&r, &p);
        assert_eq!(j["verified"], true);
        assert!(j["error"].is_null());
        assert_eq!(j["total_bytes"], 162);
        assert_eq!(j["bytes_by_dtype"]["q8_0"], 136);
        assert_eq!(j["tensors"][0]["name"], "a.proj");
        assert_eq!(j["tensors"][0]["shape"], json!([2, 64]));
        assert_eq!(j["tensors"][0]["crc_ok"], true);
        assert_eq!(j["tensors"][0]["offset"].as_u64().unwrap() % 64, 0);
        assert_eq!(j["config"]["name"], "inspect-test");
        assert_eq!(j["config"]["vision"]["stages"][1]["dim"], 64);
        assert_eq!(j["config"]["decoder"]["eos_token_ids"], json!([14]));
        // f32 fields keep their f32 spelling.
        assert_eq!(j["config"]["decoder"]["norm_eps"].to_string(), "1e-6");

        let args = InspectArgs {
            image: p,
            json: true,
        };
        assert_eq!(run(&args).unwrap(), ExitCode::SUCCESS);
    }

    #[test]
    fn report_names_the_damaged_tensor() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), Some("b.norm"));
        let m = MappedImage::open(&p).unwrap();
        let r = inspect_bytes(m.bytes());
        assert!(!r.verified());
        assert_eq!(r.errors.len(), 1, "{:?}", r.errors);
        assert!(r.errors[0].contains("`b.norm`"), "{}", r.errors[0]);
        let bad: Vec<&str> = r
            .tensors
            .iter()
            .filter(|t| !t.crc_ok)
            .map(|t| t.name.as_str())
            .collect();
        assert_eq!(bad, ["b.norm"]);
        let j = to_json(&r, &p);
        assert_eq!(j["verified"], false);
        assert!(j["error"].as_str().unwrap().contains("b.norm"));
        assert!(render_text(&r, &p).contains("BAD"));
        let args = InspectArgs {
            image: p,
            json: true,
        };
        assert_eq!(run(&args).unwrap(), ExitCode::from(1));
    }

    #[test]
    fn unparseable_and_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("junk.glim");
        std::fs::write(&p, vec![7u8; 300]).unwrap();
        let m = MappedImage::open(&p).unwrap();
        let r = inspect_bytes(m.bytes());
        assert!(!r.verified());
        assert!(r.config.is_none() && r.tensors.is_empty());
        assert!(r.errors[0].contains("magic"), "{}", r.errors[0]);
        let j = to_json(&r, &p);
        assert!(j["config"].is_null());
        assert_eq!(j["verified"], false);

        let missing = InspectArgs {
            image: dir.path().join("nope.glim"),
            json: false,
        };
        assert!(run(&missing).is_err());
        let missing_json = InspectArgs {
            image: dir.path().join("nope.glim"),
            json: true,
        };
        assert_eq!(run(&missing_json).unwrap(), ExitCode::from(1));
    }
}
