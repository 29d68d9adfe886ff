//! `glimpse logits`: teacher-forced decoder logits for a token sequence, written as a
//! `.npy` array `[positions, vocab]` (or `[1, vocab]` with `--last`), for comparison with a
//! reference implementation. With `--pixels` or `--image` the picture goes through the
//! whole pipeline and its embeddings take the places of the config's image-token id (one
//! id per image token, as transformers' processor writes them, or a single id expanded),
//! so a reference without a tokenizer can be checked end to end.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, anyhow, ensure};
use glimpse_core::Model;
use glimpse_core::arena::Arena;
use glimpse_core::decoder::{Decoder, DecoderState, Input, Logits};
use glimpse_core::kernels::linear::Q8Activations;
use glimpse_core::planner::{ArenaPlan, PlanOptions};
use glimpse_core::session::{ImageInput, LogitsOut, Session, SessionOptions};
use glimpse_core::vision::VisionEncoder;

use crate::encode::load_pixels;
use crate::npy;
use crate::plan::KvArg;
use crate::run::{HostClock, Picture, arena_for, load_picture};

/// Arguments of `glimpse logits`.
#[derive(Debug, clap::Args)]
pub struct LogitsArgs {
    /// The model (.glim).
    #[arg(value_name = "MODEL")]
    pub image: PathBuf,
    /// Token ids, comma-separated, with the image-token id, or -200 as `run --json`
    /// prints it, where the picture goes.
    #[arg(long, value_delimiter = ',', required = true, allow_negative_numbers = true,
          value_parser = clap::value_parser!(i64).range(-200..=u32::MAX as i64))]
    pub tokens: Vec<i64>,
    /// Output .npy path.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Only the last position's logits (one prefill), as `[1, vocab]`.
    #[arg(long)]
    pub last: bool,
    /// Prefill chunk: positions run together as one matrix-matrix pass.
    #[arg(long, default_value_t = glimpse_core::decoder::DEFAULT_CHUNK)]
    pub chunk: usize,
    /// Preprocessed pixels, a float32 .npy of shape 3 x R x R.
    #[arg(long, value_name = "X.npy", conflicts_with = "picture")]
    pub pixels: Option<PathBuf>,
    /// A PNG or JPEG picture, preprocessed on the way (pad to square, bicubic, /255).
    #[arg(long = "image", value_name = "FILE")]
    pub picture: Option<PathBuf>,
    /// Resolution for --image (default: the model's).
    #[arg(long, value_name = "R")]
    pub image_size: Option<usize>,
    /// KV cache format (f32 reproduces a float32 reference most closely).
    #[arg(long, value_enum, default_value = "f32")]
    pub kv: KvArg,
    /// How the decoder's activations meet Q8_0 weights (text-only runs).
    #[arg(long, value_enum, default_value = "int8")]
    pub activations: crate::ActArg,
}

/// Logits of `tokens` through the image's decoder, every position (`n × vocab`) or the
/// last one only. The arena is one `Vec<u8>` of exactly
/// [`DecoderState::arena_bytes`] for this context and chunk.
pub fn compute(image: &Model, tokens: &[u32], last: bool, chunk: usize) -> Result<Vec<f32>> {
    compute_with(image, tokens, last, chunk, Q8Activations::Int8)
}

/// [`compute`] with activations meeting Q8_0 weights as `act` says.
pub fn compute_with(
    image: &Model,
    tokens: &[u32],
    last: bool,
    chunk: usize,
    act: Q8Activations,
) -> Result<Vec<f32>> {
    ensure!(!tokens.is_empty(), "no tokens");
    let dec = Decoder::new(image)?.with_q8_activations(act);
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

/// A picture for [`compute_with_image`].
#[derive(Clone, Copy, Debug)]
pub enum PictureInput<'p> {
    /// Preprocessed planar pixels at `resolution`.
    Pixels {
        /// `3 x resolution x resolution` values.
        values: &'p [f32],
        /// Side.
        resolution: usize,
    },
    /// A decoded picture, preprocessed by the core at `resolution` (None: the model's).
    Picture {
        /// The picture.
        picture: &'p Picture,
        /// Side to resize to.
        resolution: Option<usize>,
    },
}

/// Logits of `tokens` with a picture spliced at the image-token positions, through the
/// Session API in an arena of exactly the planned size. Returns `(positions, logits)`.
pub fn compute_with_image(
    image: &Model<'_>,
    tokens: &[u32],
    picture: PictureInput<'_>,
    last: bool,
    chunk: usize,
    kv: KvArg,
) -> Result<(usize, Vec<f32>)> {
    ensure!(!tokens.is_empty(), "no tokens");
    let dcfg = image
        .config()
        .decoder
        .as_ref()
        .ok_or_else(|| anyhow!("the image has no decoder"))?;
    let marker = dcfg
        .image_token_id
        .ok_or_else(|| anyhow!("the decoder config has no image token id"))?;
    let resolution = match picture {
        PictureInput::Pixels { resolution, .. } => resolution,
        PictureInput::Picture { resolution, .. } => {
            resolution.unwrap_or(VisionEncoder::new(image)?.image_size())
        }
    };
    let image_tokens = VisionEncoder::new(image)?.tokens(resolution);
    let count = tokens.iter().filter(|&&t| t == marker).count();
    ensure!(
        count == 1 || count == image_tokens,
        "{count} image-token ids ({marker}) in the prompt: give one, or one per image token ({image_tokens})"
    );
    let positions = if count == image_tokens {
        tokens.len()
    } else {
        tokens.len() - 1 + image_tokens
    };
    let max_side = match picture {
        PictureInput::Picture { picture, .. } => picture.width.max(picture.height),
        // No frame to preprocess: the smallest bound keeps the scratch negligible.
        PictureInput::Pixels { .. } => 1,
    };
    let opts = SessionOptions {
        plan: PlanOptions {
            resolution: Some(resolution),
            max_context: positions,
            kv: kv.into(),
            chunk: chunk.max(1),
            max_frame_side: max_side,
            max_prompt_bytes: 1,
            sampling: false,
            vision: true,
            kv_across_pictures: false,
        },
        ..SessionOptions::default()
    };
    let plan = ArenaPlan::new(image, &opts.plan)?;
    let mut arena = arena_for(&plan);
    let mut session = Session::new(image, &mut arena, HostClock::new(), opts)?;
    let input = match picture {
        PictureInput::Pixels { values, .. } => ImageInput::Pixels(values),
        PictureInput::Picture { picture, .. } => ImageInput::Frame(picture.frame()),
    };
    let vocab = dcfg.vocab as usize;
    let mut out = vec![0f32; if last { vocab } else { positions * vocab }];
    let target = if last {
        LogitsOut::Last(&mut out)
    } else {
        LogitsOut::All(&mut out)
    };
    let report = session.logits(tokens, Some(input), target)?;
    ensure!(
        report.prompt_positions == positions,
        "position count mismatch"
    );
    Ok((positions, out))
}

/// `ids` as decoder ids: -200 (the placeholder `run --json` prints) becomes the image's
/// image-token id, which needs a picture.
fn resolve_placeholder(image: &Model, ids: &[i64], picture: bool) -> Result<Vec<u32>> {
    let marker = image
        .config()
        .decoder
        .as_ref()
        .and_then(|d| d.image_token_id);
    ids.iter()
        .map(|&id| match u32::try_from(id) {
            Ok(id) => Ok(id),
            Err(_) => {
                ensure!(
                    picture,
                    "the image placeholder {id} needs --image or --pixels"
                );
                marker.ok_or_else(|| anyhow!("the decoder config has no image token id"))
            }
        })
        .collect()
}

/// Run `glimpse logits`.
pub fn run(a: &LogitsArgs) -> Result<ExitCode> {
    let mapped = glimpse_host::MappedImage::open(&a.image)
        .with_context(|| format!("opening {}", a.image.display()))?;
    let image = mapped.parsed()?;
    let tokens = resolve_placeholder(&image, &a.tokens, a.pixels.is_some() || a.picture.is_some())?;
    let t = Instant::now();
    let (rows, logits) = match (&a.pixels, &a.picture) {
        (None, None) => {
            let l = compute_with(&image, &tokens, a.last, a.chunk, a.activations.into())?;
            (tokens.len(), l)
        }
        (Some(p), _) => {
            let (values, r) = load_pixels(p, 3)?;
            compute_with_image(
                &image,
                &tokens,
                PictureInput::Pixels {
                    values: &values,
                    resolution: r as usize,
                },
                a.last,
                a.chunk,
                a.kv,
            )?
        }
        (None, Some(p)) => {
            let picture = load_picture(p)?;
            compute_with_image(
                &image,
                &tokens,
                PictureInput::Picture {
                    picture: &picture,
                    resolution: a.image_size,
                },
                a.last,
                a.chunk,
                a.kv,
            )?
        }
    };
    let rows = if a.last { 1 } else { rows };
    let vocab = logits.len() / rows.max(1);
    npy::write_f32(&a.output, &[rows, vocab], &logits)?;
    eprintln!(
        "{} tokens -> {} [{rows}, {vocab}] in {:.2} s",
        a.tokens.len(),
        a.output.display(),
        t.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}
