//! `glimpse plan`: the arena one run of a weights image needs, buffer by buffer and phase
//! by phase, and the total as a Rust constant, a C `#define` or a linker symbol, so
//! firmware whose arena is too small fails to build instead of failing at run time.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::ValueEnum;
use glimpse_core::Model;
use glimpse_core::arena::ALIGN;
use glimpse_core::decoder::{DEFAULT_CHUNK, KvFormat};
use glimpse_core::planner::{
    ArenaPlan, DEFAULT_CONTEXT, DEFAULT_MAX_FRAME_SIDE, DEFAULT_MAX_PROMPT_BYTES, Phase,
    PlanOptions,
};

/// KV cache format on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum KvArg {
    /// Half precision: half the memory, 2^-11 relative rounding per cached value.
    F16,
    /// Single precision: exact.
    F32,
}

impl From<KvArg> for KvFormat {
    fn from(k: KvArg) -> Self {
        match k {
            KvArg::F16 => KvFormat::F16,
            KvArg::F32 => KvFormat::F32,
        }
    }
}

/// What `--emit` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Emit {
    /// The whole plan as one JSON object.
    Json,
    /// `pub const GLIMPSE_ARENA_BYTES: usize = N;` (and an aligned arena type).
    Rust,
    /// `#define GLIMPSE_ARENA_BYTES N`.
    C,
    /// `GLIMPSE_ARENA_BYTES = N;` for a linker script.
    Ld,
}

/// Arguments of `glimpse plan`.
#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    /// The model (.glim).
    #[arg(value_name = "MODEL")]
    pub image: PathBuf,
    /// Input resolution (a multiple of the encoder stride; default: the model's).
    #[arg(long, value_name = "R")]
    pub image_size: Option<usize>,
    /// Context positions: prompt, image tokens and generated tokens together
    /// (default: 2048, or the model's maximum if smaller).
    #[arg(long, value_name = "N")]
    pub context: Option<usize>,
    /// KV cache format.
    #[arg(long, value_enum, default_value = "f16")]
    pub kv: KvArg,
    /// Prefill chunk (positions per matrix-matrix pass).
    #[arg(long, default_value_t = DEFAULT_CHUNK)]
    pub chunk: usize,
    /// Longest camera-frame side preprocessing must take.
    #[arg(long, default_value_t = DEFAULT_MAX_FRAME_SIDE, value_name = "PIXELS")]
    pub max_frame: usize,
    /// Longest user prompt in bytes.
    #[arg(long, default_value_t = DEFAULT_MAX_PROMPT_BYTES, value_name = "BYTES")]
    pub max_prompt: usize,
    /// Plan for sampling with a temperature (a candidate list per vocabulary entry);
    /// greedy decoding needs none.
    #[arg(long)]
    pub sample: bool,
    /// Plan a text-only run of a VLM (no vision buffers).
    #[arg(long)]
    pub text_only: bool,
    /// Plan for frame streams: the KV cache keeps its bytes through the vision phases,
    /// so each frame reuses the cached prompt prefix (what `glimpse stream` plans).
    #[arg(long)]
    pub stream: bool,
    /// Write this instead of the table.
    #[arg(long, value_enum)]
    pub emit: Option<Emit>,
    /// Write to this file instead of stdout.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// The context a run plans for by default: [`DEFAULT_CONTEXT`], at most the model's.
pub fn default_context(image: &Model<'_>) -> usize {
    image
        .config()
        .decoder
        .as_ref()
        .map_or(DEFAULT_CONTEXT, |d| {
            DEFAULT_CONTEXT.min(d.max_positions.max(1) as usize)
        })
}

/// The plan options of `a` for `image`.
pub fn options(a: &PlanArgs, image: &Model<'_>) -> PlanOptions {
    PlanOptions {
        resolution: a.image_size,
        max_context: a.context.unwrap_or_else(|| default_context(image)),
        kv: a.kv.into(),
        chunk: a.chunk,
        max_frame_side: a.max_frame,
        max_prompt_bytes: a.max_prompt,
        sampling: a.sample,
        vision: !a.text_only,
        kv_across_pictures: a.stream,
    }
}

fn mib(b: usize) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

/// Digits grouped by thousands.
fn grouped(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// One line describing what the plan is for.
pub fn summary(plan: &ArenaPlan, model: &str) -> String {
    let o = &plan.options;
    let vision = match (plan.vision, o.resolution) {
        (Some(v), Some(r)) => format!("{r}x{r} ({} image tokens)", v.tokens),
        _ => "text only".to_string(),
    };
    format!(
        "{model}: {vision}, context {}, KV {}, prefill chunk {}",
        o.max_context,
        o.kv.name(),
        plan.chunk
    )
}

fn phases_of(plan: &ArenaPlan) -> Vec<Phase> {
    Phase::ALL
        .into_iter()
        .filter(|&p| plan.buffers().any(|(_, b)| b.live_in(p as u8)))
        .collect()
}

fn phase_span(first: u8, last: u8) -> String {
    let name = |i: u8| {
        Phase::ALL
            .get(i as usize)
            .map_or("?", |p| p.name())
            .to_string()
    };
    if first == last {
        name(first)
    } else {
        format!("{}..{}", name(first), name(last))
    }
}

/// The human-readable report: the total, then per phase, then per buffer.
pub fn table(plan: &ArenaPlan, model: &str) -> String {
    let mut s = String::new();
    let total = plan.total();
    let _ = writeln!(s, "{}", summary(plan, model));
    let _ = writeln!(
        s,
        "arena: {} bytes ({:.2} MiB) from a {ALIGN}-byte aligned start (+{} if unaligned)\n",
        grouped(total),
        mib(total),
        ALIGN - 1
    );
    let _ = writeln!(s, "{:<11} {:>14}  buffers", "phase", "live bytes");
    for p in phases_of(plan) {
        let names: Vec<&str> = plan
            .buffers()
            .filter(|(_, b)| b.live_in(p as u8))
            .map(|(buf, _)| buf.name())
            .collect();
        let _ = writeln!(
            s,
            "{:<11} {:>14}  {}",
            p.name(),
            grouped(plan.live_bytes(p)),
            names.join(", ")
        );
    }
    let _ = writeln!(
        s,
        "\n{:<20} {:>14} {:>14}  live",
        "buffer", "offset", "bytes"
    );
    let mut bufs: Vec<_> = plan.buffers().collect();
    bufs.sort_by_key(|(b, p)| (p.offset, *b));
    for (buf, p) in bufs {
        let _ = writeln!(
            s,
            "{:<20} {:>14} {:>14}  {}",
            buf.name(),
            grouped(p.offset),
            grouped(p.request.bytes),
            phase_span(p.request.first, p.request.last)
        );
    }
    s
}

/// The plan as JSON.
pub fn json(plan: &ArenaPlan, model: &str) -> serde_json::Value {
    let o = &plan.options;
    let phases: Vec<_> = phases_of(plan)
        .into_iter()
        .map(|p| {
            serde_json::json!({
                "name": p.name(),
                "live_bytes": plan.live_bytes(p),
                "extent": plan.extent(p),
                "buffers": plan
                    .buffers()
                    .filter(|(_, b)| b.live_in(p as u8))
                    .map(|(buf, _)| buf.name())
                    .collect::<Vec<_>>(),
            })
        })
        .collect();
    let buffers: Vec<_> = plan
        .buffers()
        .map(|(buf, p)| {
            serde_json::json!({
                "name": buf.name(),
                "offset": p.offset,
                "bytes": p.request.bytes,
                "padded": p.size(),
                "first": Phase::ALL.get(p.request.first as usize).map(|x| x.name()),
                "last": Phase::ALL.get(p.request.last as usize).map(|x| x.name()),
            })
        })
        .collect();
    serde_json::json!({
        "model": model,
        "total_bytes": plan.total(),
        "align": ALIGN,
        "resolution": o.resolution,
        "image_tokens": plan.image_tokens,
        "context": o.max_context,
        "kv": o.kv.name(),
        "chunk": plan.chunk,
        "max_frame_side": o.max_frame_side,
        "max_prompt_bytes": o.max_prompt_bytes,
        "sampling": o.sampling,
        "phases": phases,
        "buffers": buffers,
    })
}

/// The `--emit` text for `plan`.
pub fn emit(plan: &ArenaPlan, model: &str, what: Emit) -> String {
    let n = plan.total();
    let about = summary(plan, model);
    match what {
        Emit::Json => format!("{:#}\n", json(plan, model)),
        Emit::Rust => format!(
            "// Generated by `glimpse plan`: the arena glimpse_core::session::Session needs for\n\
             // {about}.\n\
             pub const GLIMPSE_ARENA_BYTES: usize = {n};\n\
             /// The arena must start on this boundary (or be GLIMPSE_ARENA_ALIGN - 1 bytes longer).\n\
             pub const GLIMPSE_ARENA_ALIGN: usize = {ALIGN};\n\
             /// A static of this type is an arena of exactly the planned size and alignment.\n\
             #[repr(C, align({ALIGN}))]\n\
             pub struct GlimpseArena(pub [u8; GLIMPSE_ARENA_BYTES]);\n"
        ),
        Emit::C => format!(
            "/* Generated by `glimpse plan`: the arena glimpse needs for\n   {about}. */\n\
             #define GLIMPSE_ARENA_BYTES {n}\n\
             #define GLIMPSE_ARENA_ALIGN {ALIGN}\n"
        ),
        Emit::Ld => format!(
            "/* Generated by `glimpse plan`: the arena glimpse needs for\n   {about}. */\n\
             GLIMPSE_ARENA_BYTES = {n};\n\
             GLIMPSE_ARENA_ALIGN = {ALIGN};\n"
        ),
    }
}

/// Run `glimpse plan`.
pub fn run(a: &PlanArgs) -> Result<ExitCode> {
    let mapped = glimpse_host::MappedImage::open(&a.image)
        .with_context(|| format!("opening {}", a.image.display()))?;
    let image = mapped.parsed()?;
    let plan = ArenaPlan::new(&image, &options(a, &image))?;
    let model = image.config().name.as_str();
    let text = match a.emit {
        None => table(&plan, model),
        Some(e) => emit(&plan, model, e),
    };
    match &a.output {
        Some(p) => {
            std::fs::write(p, &text).with_context(|| format!("writing {}", p.display()))?;
            eprintln!(
                "{}: GLIMPSE_ARENA_BYTES = {} ({:.2} MiB)",
                p.display(),
                plan.total(),
                mib(plan.total())
            );
        }
        None => print!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1000), "1,000");
        assert_eq!(grouped(42_467_392), "42,467,392");
    }
}
