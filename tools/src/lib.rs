//! glimpse-tools: the host side of Glimpse as a library (the `glimpse` binary is a thin
//! shell over it, and the workspace tests call it directly).

use std::path::PathBuf;

use clap::ValueEnum;

pub mod bench;
pub mod chat;
pub mod convert;
pub mod demo;
pub mod encode;
pub mod flash;
pub mod inspect;
pub mod logits;
pub mod npy;
pub mod plan;
pub mod run;
pub mod session_bench;
pub mod sim;
pub mod stream;
pub mod tokenize;

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

/// How activations meet Q8_0 weights (`--activations`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum ActArg {
    /// Quantized to Q8_0 blocks, integer dot products (W8A8, as llama.cpp): fastest.
    #[default]
    Int8,
    /// Kept in f32 against widened weights (W8A32): slower, closer to the f32 model.
    F32,
}

impl From<ActArg> for glimpse_core::kernels::linear::Q8Activations {
    fn from(a: ActArg) -> Self {
        match a {
            ActArg::Int8 => Self::Int8,
            ActArg::F32 => Self::F32,
        }
    }
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
    /// Which Q8_0 matrices to store four rows at a time: the kernels' layout (code sums
    /// precomputed, 16-byte-aligned blocks, four rows' blocks side by side). Same numbers,
    /// same outputs to the bit; faster GEMMs, about 6% more bytes per matrix.
    #[arg(long, value_enum, default_value = "all")]
    pub repack: RepackArg,
    /// Print no per-tensor table and no progress bar.
    #[arg(short, long)]
    pub quiet: bool,
}

/// Which Q8_0 matrices `glimpse convert` repacks into groups of four rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RepackArg {
    /// None: every matrix keeps plain GGUF-style rows (the smallest image).
    None,
    /// Only the vision encoder's and the projector's (always run as GEMMs over many
    /// pixels or tokens).
    Vision,
    /// Every Q8_0 matrix with a multiple of 4 rows (the decoder's too).
    All,
}

/// Arguments of `glimpse inspect`.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// The model (.glim).
    #[arg(value_name = "MODEL")]
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
    after_help = "With --image the picture goes through the core's preprocessing, as on a \
device: padded to a square with black, centred, resized with a bicubic filter that matches \
PIL's, and scaled to [0, 1]. --pixels takes an already preprocessed planar 3 x R x R array."
)]
pub struct EncodeArgs {
    /// The model (.glim, with a vision encoder).
    #[arg(value_name = "MODEL")]
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

/// Arguments of `glimpse run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The model (.glim, with a decoder).
    #[arg(value_name = "MODEL")]
    pub image: PathBuf,
    /// The user's message (chat-templated unless --raw).
    #[arg(long, required_unless_present = "tokens", conflicts_with = "tokens")]
    pub prompt: Option<String>,
    /// Prompt token ids, comma-separated, used as given (for images without a tokenizer).
    #[arg(long, value_delimiter = ',')]
    pub tokens: Option<Vec<u32>>,
    /// System prompt (default: the chat template's).
    #[arg(long)]
    pub system: Option<String>,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temp: f32,
    /// Sample among the k most likely tokens only; 0 is no limit.
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Sample within the smallest set of tokens whose probability reaches p.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Repetition penalty (llama.cpp semantics); 1 is none.
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// How many recent tokens the repetition penalty looks at.
    #[arg(long, default_value_t = 64)]
    pub repeat_last_n: usize,
    /// RNG seed for sampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Use the prompt as-is, without the chat template.
    #[arg(long)]
    pub raw: bool,
    /// After the text, print one JSON object (prompt_ids, tokens, text, stats) as the
    /// last line of stdout.
    #[arg(long)]
    pub json: bool,
    /// How the decoder's activations meet Q8_0 weights: int8 (W8A8, as llama.cpp) or
    /// f32 (W8A32: slower, keeps small models' answers closer to their f32 ones).
    #[arg(long, value_enum, default_value = "int8")]
    pub activations: ActArg,
    /// Picture, resolution, context and KV cache format.
    #[command(flatten)]
    pub pipeline: run::PipelineArgs,
}

/// Arguments of `glimpse tokenize`.
#[derive(Debug, clap::Args)]
pub struct TokenizeArgs {
    /// The model (.glim, with a tokenizer).
    #[arg(value_name = "MODEL")]
    pub image: PathBuf,
    /// Text to encode.
    #[arg(long)]
    pub text: String,
    /// Print {"ids": [...]} instead of comma-separated ids.
    #[arg(long)]
    pub json: bool,
    /// Treat control-token spellings such as <|im_start|> as plain text.
    #[arg(long)]
    pub no_special: bool,
    /// Prepend the BOS id when the tokenizer asks for one.
    #[arg(long)]
    pub bos: bool,
}
