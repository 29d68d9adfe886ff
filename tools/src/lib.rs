//! glimpse-tools: the host side of Glimpse as a library (the `glimpse` binary is a thin
//! shell over it, and the workspace tests call it directly).

use std::path::PathBuf;

use clap::ValueEnum;

pub mod convert;
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
