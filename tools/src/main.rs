//! `glimpse`: the host tool. Converts checkpoints to models (.glim), inspects, plans, runs,
//! streams, chats, benchmarks, simulates and flashes them.

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
    /// Caption the bundled tiny FastVLM's sample pictures (converting it first if needed).
    Demo(glimpse_tools::demo::DemoArgs),
    /// Convert an HF checkpoint (directory or .safetensors) or a GGUF file to a model (.glim).
    Convert(ConvertArgs),
    /// Show a model's config and tensor table and verify its checksums.
    Inspect(InspectArgs),
    /// Run the vision encoder (and projector) on a picture or preprocessed pixels.
    Encode(glimpse_tools::EncodeArgs),
    /// Teacher-forced decoder logits of a token sequence, written as .npy.
    Logits(glimpse_tools::logits::LogitsArgs),
    /// Generate text from a prompt (chat-templated), streaming it, then print TTFT and tok/s.
    Run(glimpse_tools::RunArgs),
    /// Encode text with a model's tokenizer and print the ids.
    Tokenize(glimpse_tools::TokenizeArgs),
    /// A multi-turn chat in the terminal (or one turn per stdin line), the KV cache kept.
    Chat(glimpse_tools::chat::ChatArgs),
    /// Live captioning: caption a frame sequence (directory, GIF/APNG, raw RGB24 on stdin)
    /// with the prompt prefix kept and unchanged frames skipped.
    Stream(glimpse_tools::stream::StreamArgs),
    /// Run a model on a simulated bare-metal board in QEMU (qemu-virt, mps3-an547).
    Sim(glimpse_tools::sim::SimArgs),
    /// The arena a run needs, per buffer and per phase; emit it for firmware builds.
    Plan(glimpse_tools::plan::PlanArgs),
    /// Throughput: pp/tg tokens per second, TTFT, encoder latency per resolution.
    Bench(glimpse_tools::bench::BenchArgs),
    /// Write a firmware ELF and a model to a chip's flash with probe-rs (`flash` feature).
    Flash(glimpse_tools::flash::FlashArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    glimpse_host::cpu::install_from_env().map_or_else(|e| eprintln!("warning: {e}"), drop);
    let result = match cli.command {
        Command::Demo(a) => glimpse_tools::demo::run(&a),
        Command::Convert(a) => convert::run(&a),
        Command::Inspect(a) => inspect::run(&a),
        Command::Encode(a) => glimpse_tools::encode::run(&a),
        Command::Logits(a) => glimpse_tools::logits::run(&a),
        Command::Run(a) => glimpse_tools::run::run(&a),
        Command::Tokenize(a) => glimpse_tools::tokenize::run(&a),
        Command::Chat(a) => glimpse_tools::chat::run(&a),
        Command::Stream(a) => glimpse_tools::stream::run(&a),
        Command::Sim(a) => glimpse_tools::sim::run(&a),
        Command::Plan(a) => glimpse_tools::plan::run(&a),
        Command::Bench(a) => glimpse_tools::bench::run(&a),
        Command::Flash(a) => glimpse_tools::flash::run(&a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
