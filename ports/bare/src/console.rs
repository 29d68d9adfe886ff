//! The firmware's console protocol: a [`TokenSink`] over any `core::fmt::Write` (a UART),
//! and [`serve`], the whole life of a simulated board after boot — read the request, run
//! it, print the text, the ids and the statistics, and choose the exit code.
//!
//! Output, one item per line (the text may span lines):
//!
//! ```text
//! request: 24 prompt bytes, max 8 tokens, greedy
//! text: <the generated text, streamed as it is sampled>
//! prompt: 31 tokens; generated 8 (token budget)
//! tokens: 504,3458,...
//! model: SmolLM2-135M-Instruct
//! stats: arena 2345678 of 503316480 bytes (planned for context 2048, KV f16), weights 144609408 bytes at 0x60000000
//! instructions: 123456789 (verify 1, vision 0, prefill 2, decode 3) [source]
//! ```
//!
//! With a camera frame the prompt line also counts the image tokens spliced in
//! (`prompt: 20 tokens + 64 image tokens; ...`). A frame stream prints, per frame, its
//! caption and ids (or that it was skipped) and its count, then a summary:
//!
//! ```text
//! request: 19 prompt bytes, max 32 tokens, greedy, stream of 5 frames (min change 0.002, prefix kept)
//! frame 0: a large red circle below two small orange triangles
//! tokens: 68,273,...
//! count: 41234567 (prefilled 40 positions, reused 0)
//! frame 1: skipped (change 0.0000)
//! ...
//! stream: 5 frames, 3 captioned, 2 skipped
//! model: tiny-fastvlm
//! stats: arena ...
//! instructions: 123456789 (verify 1, first frame 2, later frames 3, mean 1.5) [source]
//! ```
//!
//! Lines starting with one of [`VOLATILE_PREFIXES`] change with the code rather than with
//! the request (instruction counts, arena sizes); golden files leave them out.

use core::fmt::{self, Write};

use glimpse_hal::{ErrorKind, ErrorType, TokenSink};

use crate::error::Error;
use crate::memory::MemoryMap;
use crate::request::Request;
use crate::run::{
    Counter, FrameObserver, FrameOutcome, Report, StreamReport, run_request, run_stream,
};

/// Exit codes a firmware reports through semihosting.
pub mod exit {
    /// The request ran.
    pub const SUCCESS: i32 = 0;
    /// The request could not be run (bad request, bad image, arena too small, ...).
    pub const FAILURE: i32 = 1;
    /// A Rust panic.
    pub const PANIC: i32 = 101;
    /// A CPU exception (data abort, hard fault, ...).
    pub const FAULT: i32 = 102;
}

/// Prefixes of output lines that golden files do not pin.
pub const VOLATILE_PREFIXES: [&str; 3] = ["stats:", "instructions:", "count:"];

/// Prefix of the line listing the generated ids.
pub const TOKENS_PREFIX: &str = "tokens:";

/// Prefix of the line with the instruction count.
pub const INSTRUCTIONS_PREFIX: &str = "instructions:";

/// The console refused a write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct WriteError;

impl glimpse_hal::Error for WriteError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Io
    }
}

/// Streams token text to a `fmt::Write`, after a prefix written with the first token (so
/// a run that fails before generating leaves no dangling prefix).
#[derive(Debug)]
pub struct ConsoleSink<W> {
    out: W,
    prefix: &'static str,
    started: bool,
}

impl<W: Write> ConsoleSink<W> {
    /// Write to `out`, starting with `prefix`.
    pub fn new(out: W, prefix: &'static str) -> Self {
        Self {
            out,
            prefix,
            started: false,
        }
    }

    /// Write the prefix now if no token has yet.
    pub fn start(&mut self) -> Result<(), WriteError> {
        if !self.started {
            self.started = true;
            self.out.write_str(self.prefix).map_err(|_| WriteError)?;
        }
        Ok(())
    }

    /// The writer back.
    pub fn into_inner(self) -> W {
        self.out
    }
}

impl<W> ErrorType for ConsoleSink<W> {
    type Error = WriteError;
}

impl<W: Write> TokenSink for ConsoleSink<W> {
    fn token(&mut self, _id: u32, bytes: &[u8]) -> Result<(), WriteError> {
        self.start()?;
        write_text(&mut self.out, bytes)
    }
}

/// A token's text: the runner hands over whole characters; anything else is shown as
/// U+FFFD, not dropped.
fn write_text<W: Write>(out: &mut W, bytes: &[u8]) -> Result<(), WriteError> {
    let r = match core::str::from_utf8(bytes) {
        Ok(s) => out.write_str(s),
        Err(_) => out.write_char(char::REPLACEMENT_CHARACTER),
    };
    r.map_err(|_| WriteError)
}

fn print_report<W: Write>(
    out: &mut W,
    map: &MemoryMap,
    r: &Report<'_>,
    counter_source: &str,
) -> fmt::Result {
    write!(out, "prompt: {} tokens", r.prompt_tokens)?;
    if r.image_tokens > 0 {
        write!(out, " + {} image tokens", r.image_tokens)?;
    }
    writeln!(
        out,
        "; generated {} ({})",
        r.tokens.len(),
        if r.stopped {
            "stop token"
        } else {
            "token budget"
        }
    )?;
    out.write_str(TOKENS_PREFIX)?;
    for (i, id) in r.tokens.iter().enumerate() {
        write!(out, "{}{id}", if i == 0 { " " } else { "," })?;
    }
    writeln!(out)?;
    writeln!(out, "model: {}", r.model)?;
    writeln!(
        out,
        "stats: arena {} of {} bytes (planned for context {}, KV {}), weights {} bytes at {:#x}",
        r.arena_peak,
        r.arena_capacity,
        r.context,
        r.kv.name(),
        r.weights_bytes,
        map.weights.addr
    )?;
    let c = &r.counts;
    writeln!(
        out,
        "{INSTRUCTIONS_PREFIX} {} (verify {}, vision {}, prefill {}, decode {}) [{counter_source}]",
        c.total(),
        c.verify,
        c.vision,
        c.prefill,
        c.decode
    )
}

/// A stream's console: each captioned frame's text after `frame N: `, then its ids and
/// count; a skipped frame on one line.
struct StreamConsole<'w, W> {
    out: &'w mut W,
    next: usize,
    started: bool,
}

impl<W: Write> ErrorType for StreamConsole<'_, W> {
    type Error = WriteError;
}

impl<W: Write> StreamConsole<'_, W> {
    fn start(&mut self) -> Result<(), WriteError> {
        if !self.started {
            self.started = true;
            write!(self.out, "frame {}: ", self.next).map_err(|_| WriteError)?;
        }
        Ok(())
    }
}

impl<W: Write> TokenSink for StreamConsole<'_, W> {
    fn token(&mut self, _id: u32, bytes: &[u8]) -> Result<(), WriteError> {
        self.start()?;
        write_text(self.out, bytes)
    }
}

impl<W: Write> FrameObserver for StreamConsole<'_, W> {
    fn frame(&mut self, o: &FrameOutcome<'_>) -> Result<(), Error> {
        let io = |_| Error::Sink(ErrorKind::Io);
        if o.skipped {
            writeln!(
                self.out,
                "frame {}: skipped (change {:.4})",
                o.index, o.change
            )
            .map_err(io)?;
        } else {
            self.start().map_err(|_| Error::Sink(ErrorKind::Io))?;
            writeln!(self.out).map_err(io)?;
            self.out.write_str(TOKENS_PREFIX).map_err(io)?;
            for (i, id) in o.tokens.iter().enumerate() {
                write!(self.out, "{}{id}", if i == 0 { " " } else { "," }).map_err(io)?;
            }
            writeln!(self.out).map_err(io)?;
            writeln!(
                self.out,
                "count: {} (prefilled {} positions, reused {})",
                o.count, o.prefilled, o.reused
            )
            .map_err(io)?;
        }
        self.next = o.index + 1;
        self.started = false;
        Ok(())
    }
}

fn print_stream_report<W: Write>(
    out: &mut W,
    map: &MemoryMap,
    r: &StreamReport,
    counter_source: &str,
) -> fmt::Result {
    writeln!(
        out,
        "stream: {} frames, {} captioned, {} skipped",
        r.frames, r.captioned, r.skipped
    )?;
    writeln!(out, "model: {}", r.model)?;
    writeln!(
        out,
        "stats: arena {} of {} bytes (session plan and one capture buffer), weights at {:#x}",
        r.arena_peak, r.arena_capacity, map.weights.addr
    )?;
    let later = r.captioned.saturating_sub(1) as u64;
    writeln!(
        out,
        "{INSTRUCTIONS_PREFIX} {} (verify {}, first frame {}, later frames {}, mean {}) [{counter_source}]",
        r.verify
            .saturating_add(r.first_frame)
            .saturating_add(r.later_frames),
        r.verify,
        r.first_frame,
        r.later_frames,
        r.later_frames.checked_div(later).unwrap_or(0)
    )
}

fn describe<W: Write>(out: &mut W, req: &Request<'_>) -> fmt::Result {
    write!(
        out,
        "request: {} prompt bytes, max {} tokens, ",
        req.prompt.len(),
        req.max_tokens
    )?;
    let s = &req.sampler;
    if s.is_greedy() {
        out.write_str("greedy")?;
    } else {
        write!(
            out,
            "temperature {} top-k {} top-p {} seed {}",
            s.temperature, s.top_k, s.top_p, s.seed
        )?;
    }
    if req.raw {
        out.write_str(", raw")?;
    }
    if let Some(s) = &req.stream {
        write!(
            out,
            ", stream of {} frames (min change {}, prefix {})",
            s.frames.count,
            s.min_change,
            if s.keep_prefix {
                "kept"
            } else {
                "prefilled per frame"
            }
        )?;
    }
    writeln!(out)
}

/// Tracks whether the last byte written ended a line, so an error can start on a line of
/// its own without leaving blank lines behind.
struct Lines<'w, W> {
    out: &'w mut W,
    at_line_start: bool,
}

impl<W: Write> Write for Lines<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if let Some(last) = s.bytes().last() {
            self.at_line_start = last == b'\n';
        }
        self.out.write_str(s)
    }
}

/// Everything a simulated board does after boot. `request` and `weights` are the board's
/// whole windows ([`MemoryMap`]); the request says how much of the weights window is the
/// image. Returns the exit code ([`exit`]). `counter_source` names what the counter
/// counts, for the statistics line.
pub fn serve<W: Write, C: Counter>(
    map: &MemoryMap,
    request: &[u8],
    weights: &[u8],
    arena: &mut [u8],
    out: &mut W,
    counter: &mut C,
    counter_source: &str,
) -> i32 {
    let mut out = Lines {
        out,
        at_line_start: true,
    };
    match serve_inner(
        map,
        request,
        weights,
        arena,
        &mut out,
        counter,
        counter_source,
    ) {
        Ok(()) => exit::SUCCESS,
        Err(e) => {
            // A UART that fails here has nowhere else to report to; the exit code remains.
            if !out.at_line_start {
                let _ = writeln!(out);
            }
            let _ = writeln!(out, "error: {e}");
            exit::FAILURE
        }
    }
}

fn serve_inner<W: Write, C: Counter>(
    map: &MemoryMap,
    request: &[u8],
    weights: &[u8],
    arena: &mut [u8],
    out: &mut W,
    counter: &mut C,
    counter_source: &str,
) -> Result<(), Error> {
    let io = |_| Error::Sink(ErrorKind::Io);
    let req = Request::decode(request)?;
    describe(out, &req).map_err(io)?;
    let window = weights.len() as u64;
    let image = usize::try_from(req.weights_len)
        .ok()
        .and_then(|n| weights.get(..n))
        .ok_or(Error::WeightsWindow {
            len: req.weights_len,
            window,
        })?;
    if req.stream.is_some() {
        let mut console = StreamConsole {
            out: &mut *out,
            next: 0,
            started: false,
        };
        let report = run_stream(image, &req, arena, &mut console, counter)?;
        return print_stream_report(out, map, &report, counter_source).map_err(io);
    }
    let mut sink = ConsoleSink::new(&mut *out, "text: ");
    let report = run_request(image, &req, arena, &mut sink, counter)?;
    sink.start().map_err(|_| Error::Sink(ErrorKind::Io))?;
    writeln!(out).map_err(io)?;
    print_report(out, map, &report, counter_source).map_err(io)
}

/// Print a panic in the console's error format.
pub fn print_panic<W: Write>(out: &mut W, info: &core::panic::PanicInfo<'_>) {
    let _ = writeln!(out);
    let _ = write!(out, "panic: {}", info.message());
    if let Some(l) = info.location() {
        let _ = write!(out, " at {}:{}", l.file(), l.line());
    }
    let _ = writeln!(out);
}
