//! `glimpse`: the host tool. Converts checkpoints to weights images and inspects them.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use glimpse_tools::{ConvertArgs, InspectArgs, convert, inspect};

#[derive(Debug, Parser)]
#[command(
    name = "glimpse",
    version,
    about = "On-device FastVLM runtime: host tool"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Convert an HF checkpoint (directory or .safetensors) or a GGUF file to a .glim image.
    Convert(ConvertArgs),
    /// Show an image's config and tensor table and verify its checksums.
    Inspect(InspectArgs),
    /// Run the vision encoder (and projector) on a picture or preprocessed pixels.
    Encode(glimpse_tools::EncodeArgs),
    /// Teacher-forced decoder logits of a token sequence, written as .npy.
    Logits(glimpse_tools::logits::LogitsArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Convert(a) => convert::run(&a),
        Command::Inspect(a) => inspect::run(&a),
        Command::Encode(a) => glimpse_tools::encode::run(&a),
        Command::Logits(a) => glimpse_tools::logits::run(&a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
