//! glimpse-tools: the host side of Glimpse as a library (the `glimpse` binary is a thin
//! shell over it, and the workspace tests call it directly).

use std::path::PathBuf;

use clap::ValueEnum;

pub mod convert;
pub mod encode;
pub mod inspect;
pub mod logits;
pub mod npy;

/// Format of quantized matrices in a converted image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum QuantArg {
    /// int8 blocks of 32 with an f16 scale (GGUF Q8_0).
    #[value(name = "q8_0")]
    Q8_0,
    /// FP8 E4M3 blocks of 32 with an f16 scale.
    E4m3,
    /// FP8 E5M2 blocks of 32 with an f16 scale.
    E5m2,
    /// OCP MXFP8 (E4M3 elements, E8M0 block scale, RCEIL).
    Mxfp8,
    /// Everything in f16.
    F16,
    /// Everything in f32.
    F32,
}

/// Format of tensors that are never quantized (norms, biases, layer scales, depthwise kernels).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum KeepArg {
    /// IEEE binary32.
    F32,
    /// IEEE binary16.
    F16,
}

/// Arguments of `glimpse convert`.
#[derive(Debug, clap::Args)]
pub struct ConvertArgs {
    /// Checkpoint directory (config.json + *.safetensors), a .safetensors file or a .gguf file.
    pub input: PathBuf,
    /// Output image path.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Format of the quantized matrices.
    #[arg(long, value_enum, default_value = "q8_0")]
    pub quant: QuantArg,
    /// Format of tensors kept unquantized.
    #[arg(long, value_enum, default_value = "f32")]
    pub keep: KeepArg,
    /// config.json to use with a single .safetensors file (default: one beside it).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// tokenizer.json to carry into the image (default: one beside the checkpoint).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Print no per-tensor table and no progress bar.
    #[arg(short, long)]
    pub quiet: bool,
}

/// Arguments of `glimpse inspect`.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// The .glim image.
    pub image: PathBuf,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// What `glimpse encode` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum EncodeStage {
    /// FastViTHD features (`tokens x out_dim`, the conv_exp output).
    Encoder,
    /// Features after the mlp2x_gelu projector (`tokens x decoder hidden`).
    Projector,
}

/// Arguments of `glimpse encode`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "With --image the picture is padded to a square (black) and resized \
with a plain bicubic filter when its size differs from the resolution; this does not yet \
reproduce PIL's resampling bit for bit (a later issue), so for exact comparisons pass an \
R x R picture or --pixels."
)]
pub struct EncodeArgs {
    /// The .glim weights image (with a vision encoder).
    #[arg(value_name = "IMG")]
    pub image: PathBuf,
    /// A PNG or JPEG picture to encode.
    #[arg(
        long = "image",
        value_name = "FILE",
        conflicts_with = "pixels",
        required_unless_present = "pixels"
    )]
    pub picture: Option<PathBuf>,
    /// Preprocessed pixels: a float32 .npy of shape 3 x R x R (values as the model sees them).
    #[arg(long, value_name = "X.npy")]
    pub pixels: Option<PathBuf>,
    /// Where to stop.
    #[arg(long, value_enum, default_value = "encoder")]
    pub stage: EncodeStage,
    /// Input resolution (default: the model's; with --pixels, the array's).
    #[arg(long)]
    pub resolution: Option<u32>,
    /// Output .npy (float32, tokens x channels, tokens row-major over the grid).
    #[arg(short, long)]
    pub output: PathBuf,
}
