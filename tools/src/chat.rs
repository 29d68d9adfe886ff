//! `glimpse chat`: a multi-turn conversation with one session in the terminal. Each turn
//! prefills only its own ids (the KV cache holds the conversation); `/image F` switches
//! the picture (the next turn starts a new conversation about it, keeping the system
//! prompt's cached positions), `/reset` starts over, `/stats` shows what the context
//! holds. On a terminal, lines are edited and recalled with rustyline (history in
//! `~/.cache/glimpse/chat_history`); from a pipe, every line is one user turn, so a chat
//! can be scripted.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use glimpse_core::Model;
use glimpse_core::planner::ArenaPlan;
use glimpse_core::sampler::SamplerConfig;
use glimpse_core::session::{ImageInput, Prompt, Report, Session, SessionOptions};
use glimpse_hal::{ErrorKind, ErrorType, TokenSink};

use crate::run::{HostClock, Picture, ShapeArgs, ThreadsArg, arena_for, load_picture};

/// Longest user line, in bytes (the prompt buffer is planned for it).
pub const MAX_LINE_BYTES: usize = 4096;

/// Arguments of `glimpse chat`.
#[derive(Debug, Clone, clap::Args)]
pub struct ChatArgs {
    /// The model (.glim).
    #[arg(value_name = "MODEL")]
    pub model: PathBuf,
    /// A PNG or JPEG picture the first turn asks about.
    #[arg(long = "image", value_name = "FILE")]
    pub picture: Option<PathBuf>,
    /// System text (default: the template's).
    #[arg(long)]
    pub system: Option<String>,
    /// Most tokens per answer.
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// Sampling temperature (0: greedy).
    #[arg(long, default_value_t = 0.0)]
    pub temp: f32,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Resolution, context (the positions the conversation may use) and KV format.
    #[command(flatten)]
    pub shape: ShapeArgs,
    /// Threads.
    #[command(flatten)]
    pub threads: ThreadsArg,
}

/// Writes the answer as it streams.
struct Printer<W: Write> {
    out: W,
}

impl<W: Write> ErrorType for Printer<W> {
    type Error = ErrorKind;
}

impl<W: Write> TokenSink for Printer<W> {
    fn token(&mut self, _: u32, bytes: &[u8]) -> Result<(), ErrorKind> {
        self.out.write_all(bytes).map_err(|_| ErrorKind::Io)?;
        self.out.flush().map_err(|_| ErrorKind::Io)
    }
}

const HELP: &str = "commands: /image FILE (ask about a picture: starts a new conversation), \
/reset (start over), /stats (context used), /help, /quit";

/// What one line asks for.
enum Line<'l> {
    Turn(&'l str),
    Model(&'l str),
    Reset,
    Stats,
    Help,
    Quit,
    Unknown(&'l str),
}

fn parse(line: &str) -> Option<Line<'_>> {
    let line = line.trim_end_matches(['\r', '\n']);
    if line.trim().is_empty() {
        return None;
    }
    let Some(cmd) = line.trim().strip_prefix('/') else {
        return Some(Line::Turn(line));
    };
    let (name, rest) = cmd.split_once(' ').unwrap_or((cmd, ""));
    Some(match name {
        "image" => Line::Model(rest.trim()),
        "reset" => Line::Reset,
        "stats" => Line::Stats,
        "help" => Line::Help,
        "quit" | "exit" => Line::Quit,
        _ => Line::Unknown(name),
    })
}

/// The conversation loop's state besides the session.
struct Chat<'s, 'a, 'w> {
    session: Session<'a, 'w, HostClock, &'a mut glimpse_host::ThreadPool>,
    system: Option<&'s str>,
    /// A picture the next turn asks about.
    pending: Option<Picture>,
    last: Option<Report>,
    turns: usize,
    vision: bool,
}

impl Chat<'_, '_, '_> {
    /// Handle one line; `Ok(false)` ends the chat. Errors are printed, not returned.
    fn line(&mut self, line: &str, info: &mut dyn Write) -> Result<bool> {
        let Some(parsed) = parse(line) else {
            return Ok(true);
        };
        match parsed {
            Line::Quit => return Ok(false),
            Line::Help => writeln!(info, "{HELP}")?,
            Line::Unknown(name) => writeln!(info, "unknown command /{name}; {HELP}")?,
            Line::Reset => {
                self.session.reset();
                self.turns = 0;
                self.last = None;
                writeln!(info, "(conversation reset)")?;
            }
            Line::Stats => {
                let plan = self.session.plan();
                write!(
                    info,
                    "context: {} of {} positions used, {} left; {} turns",
                    self.session.cached_positions(),
                    plan.options.max_context,
                    self.session.remaining_positions(),
                    self.turns
                )?;
                if let Some(r) = &self.last {
                    write!(
                        info,
                        "; last turn: prefilled {}, reused {}, generated {}, TTFT {:.1} ms",
                        r.prompt_positions,
                        r.reused_positions,
                        r.generated,
                        r.timings.ttft_us as f64 / 1e3
                    )?;
                }
                writeln!(info)?;
            }
            Line::Model(path) => {
                if !self.vision {
                    writeln!(info, "error: this model has no vision encoder")?;
                } else if path.is_empty() {
                    writeln!(info, "usage: /image FILE")?;
                } else {
                    match load_picture(Path::new(path)) {
                        Ok(p) => {
                            writeln!(
                                info,
                                "(picture {}x{}; the next turn starts a new conversation about it)",
                                p.width, p.height
                            )?;
                            self.pending = Some(p);
                        }
                        Err(e) => writeln!(info, "error: {e:#}")?,
                    }
                }
            }
            Line::Turn(text) => {
                if text.len() > MAX_LINE_BYTES {
                    writeln!(
                        info,
                        "error: the line has {} bytes; at most {MAX_LINE_BYTES}",
                        text.len()
                    )?;
                    return Ok(true);
                }
                let picture = self.pending.take();
                let frame = picture.as_ref().map(|p| ImageInput::Frame(p.frame()));
                let prompt = Prompt::Chat {
                    system: self.system,
                    user: text,
                };
                let mut printer = Printer {
                    out: std::io::stdout().lock(),
                };
                match self.session.run(prompt, frame, &mut printer) {
                    Ok(r) => {
                        writeln!(printer.out)?;
                        // A picture starts a new conversation.
                        self.turns = if picture.is_some() { 1 } else { self.turns + 1 };
                        self.last = Some(r);
                    }
                    Err(glimpse_core::Error::ContextOverflow { needed, max }) => {
                        // Refused before any work: the conversation is as it was.
                        self.pending = picture;
                        writeln!(
                            info,
                            "error: the turn needs {needed} positions of a {max}-position context; /reset to start over (or start with a larger --context)"
                        )?;
                    }
                    Err(e) => {
                        self.pending = picture;
                        writeln!(info, "error: {e}")?;
                    }
                }
            }
        }
        Ok(true)
    }
}

fn history_file() -> Option<PathBuf> {
    let home = std::env::var_os("HOME")?;
    let dir = PathBuf::from(home).join(".cache").join("glimpse");
    std::fs::create_dir_all(&dir).ok()?;
    Some(dir.join("chat_history"))
}

/// Run `glimpse chat`.
pub fn run(a: &ChatArgs) -> Result<ExitCode> {
    let mapped = glimpse_host::MappedImage::open(&a.model)
        .with_context(|| format!("opening {}", a.model.display()))?;
    let image = Model::parse(mapped.bytes())?;
    let vision = image.config().vision.is_some();
    if a.picture.is_some() && !vision {
        anyhow::bail!(
            "{} has no vision encoder; chat without --image",
            a.model.display()
        );
    }
    let pending = a.picture.as_deref().map(load_picture).transpose()?;
    let prompt_bytes = MAX_LINE_BYTES + a.system.as_deref().map_or(0, str::len);
    // Planned with vision whenever the model has it, so /image works at any time; the
    // KV cache is kept through the vision phases, so a new picture keeps the system
    // prompt's positions.
    let side = vision.then_some(glimpse_core::planner::DEFAULT_MAX_FRAME_SIDE);
    let sampler = SamplerConfig {
        temperature: a.temp,
        seed: a.seed,
        ..SamplerConfig::default()
    };
    let mut opts = SessionOptions::for_model(&image, side, prompt_bytes).with_sampler(sampler);
    a.shape.apply(&mut opts);
    opts.plan.kv_across_pictures = vision;
    opts.max_new_tokens = a.max_tokens;
    let plan = ArenaPlan::new(&image, &opts.plan)?;
    let mut arena = arena_for(&plan);
    let mut pool = a.threads.pool()?;
    let session =
        Session::new(&image, &mut arena, HostClock::new(), opts)?.with_executor(&mut pool);
    let mut chat = Chat {
        session,
        system: a.system.as_deref(),
        pending,
        last: None,
        turns: 0,
        vision,
    };
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        // Scripted: one user turn (or command) per line; notes go to stderr.
        let mut info = std::io::stderr();
        for line in stdin.lock().lines() {
            let line = line.context("reading stdin")?;
            if !chat.line(&line, &mut info)? {
                break;
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!(
        "glimpse chat with {} ({} arena bytes, context {}). {HELP}",
        a.model.display(),
        plan.total(),
        plan.options.max_context
    );
    let mut editor = rustyline::DefaultEditor::new().context("starting the line editor")?;
    let history = history_file();
    if let Some(h) = &history {
        let _ = editor.load_history(h);
    }
    loop {
        match editor.readline(">> ") {
            Ok(line) => {
                if !line.trim().is_empty() {
                    let _ = editor.add_history_entry(line.as_str());
                }
                if !chat.line(&line, &mut std::io::stderr())? {
                    break;
                }
            }
            Err(rustyline::error::ReadlineError::Interrupted) => continue,
            Err(rustyline::error::ReadlineError::Eof) => break,
            Err(e) => return Err(e).context("reading a line"),
        }
    }
    if let Some(h) = &history {
        let _ = editor.save_history(h);
    }
    Ok(ExitCode::SUCCESS)
}
