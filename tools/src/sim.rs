//! `glimpse sim`: run a weights image on a simulated bare-metal board. Builds the board's
//! firmware (`ports/<port>`, its own cargo workspace and target dir), writes the request
//! blob, starts QEMU with the firmware, the request and the weights placed in guest memory,
//! streams the UART, and returns the firmware's semihosting exit code. With `--expect` the
//! output is checked against a golden file (`--bless` or `GLIMPSE_BLESS=1` rewrites it).
//!
//! The firmware side of the protocol (request layout, memory windows, output lines) is
//! `glimpse-bare`; this module only drives it.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::ValueEnum;
use glimpse_bare::console::{INSTRUCTIONS_PREFIX, TOKENS_PREFIX, VOLATILE_PREFIXES};
use glimpse_bare::memory::{self, MemoryMap};
use glimpse_bare::request::Request;
use glimpse_core::preprocess::Frame;
use glimpse_core::sampler::SamplerConfig;
use glimpse_hal::PixelFormat;

/// A simulated board.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, ValueEnum)]
pub enum Port {
    /// QEMU `-M virt`, aarch64 (Cortex-A class), ports/qemu-virt.
    QemuVirt,
    /// QEMU `-M mps3-an547`, Cortex-M55 with Helium, ports/mps3-an547.
    Mps3An547,
}

impl Port {
    /// Every port.
    pub const ALL: [Port; 2] = [Port::QemuVirt, Port::Mps3An547];

    /// Directory name under `ports/` (and `--port` value).
    pub fn name(self) -> &'static str {
        self.memory().port
    }

    /// Where the emulator places the request and the weights.
    pub fn memory(self) -> &'static MemoryMap {
        match self {
            Port::QemuVirt => &memory::QEMU_VIRT,
            Port::Mps3An547 => &memory::MPS3_AN547,
        }
    }

    /// The firmware's Rust target.
    pub fn target(self) -> &'static str {
        match self {
            Port::QemuVirt => "aarch64-unknown-none",
            Port::Mps3An547 => "thumbv8m.main-none-eabihf",
        }
    }

    /// The QEMU binary.
    pub fn qemu(self) -> &'static str {
        match self {
            Port::QemuVirt => "qemu-system-aarch64",
            Port::Mps3An547 => "qemu-system-arm",
        }
    }

    /// Board arguments: machine, CPU, RAM, console on stdio, semihosting for the exit
    /// code, and `-icount shift=0` so virtual time and the PMU count guest instructions
    /// exactly (one per nanosecond), making the counts the firmware prints reproducible.
    fn qemu_args(self) -> Vec<String> {
        let board: &[&str] = match self {
            // `-cpu max` has FEAT_PMUv3p5 (64-bit instruction counter).
            Port::QemuVirt => &["-M", "virt", "-cpu", "max", "-m", "2G"],
            Port::Mps3An547 => &["-M", "mps3-an547"],
        };
        let common = [
            "-nodefaults",
            "-display",
            "none",
            "-serial",
            "stdio",
            "-semihosting-config",
            "enable=on,target=native",
            "-icount",
            "shift=0",
        ];
        board
            .iter()
            .chain(common.iter())
            .map(|s| s.to_string())
            .collect()
    }
}

/// Arguments of `glimpse sim`.
#[derive(Debug, clap::Args)]
pub struct SimArgs {
    /// The board to simulate.
    #[arg(long, value_enum)]
    pub port: Port,
    /// The model (.glim).
    #[arg(value_name = "MODEL")]
    pub image: PathBuf,
    /// The user's message (chat-templated unless --raw).
    #[arg(long, default_value = "Hello!")]
    pub prompt: String,
    /// System prompt (default: the chat template's; "" leaves the system turn out).
    #[arg(long)]
    pub system: Option<String>,
    /// Use the prompt as-is, without the chat template.
    #[arg(long)]
    pub raw: bool,
    /// A PNG or JPEG picture, sent as an RGB888 frame (VLM images).
    #[arg(long = "image", value_name = "FILE", conflicts_with_all = ["frames", "video"])]
    pub picture: Option<PathBuf>,
    /// A frame stream from a directory of pictures (name order), placed in guest memory
    /// as a frame ring the firmware captions frame by frame (all of one size).
    #[arg(long, value_name = "DIR", conflicts_with = "video")]
    pub frames: Option<PathBuf>,
    /// A frame stream from an animated GIF or APNG.
    #[arg(long, value_name = "FILE")]
    pub video: Option<PathBuf>,
    /// Streams: skip frames that changed less than this since the last captioned one.
    #[arg(long, default_value_t = crate::stream::DEFAULT_MIN_CHANGE, value_name = "X")]
    pub min_change: f32,
    /// Streams: prefill the whole prompt for every frame (to compare counts).
    #[arg(long)]
    pub no_prefix_reuse: bool,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 16)]
    pub max_tokens: u32,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temp: f32,
    /// Sample among the k most likely tokens only; 0 is no limit.
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Sample within the smallest set of tokens whose probability reaches p.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// RNG seed for sampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Kill QEMU after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// Golden file: the output, less its volatile lines, must equal it.
    #[arg(long, value_name = "FILE")]
    pub expect: Option<PathBuf>,
    /// Rewrite the --expect file from this run instead of checking it (also GLIMPSE_BLESS=1).
    #[arg(long, requires = "expect")]
    pub bless: bool,
    /// Use this firmware ELF instead of building ports/PORT.
    #[arg(long, value_name = "ELF")]
    pub firmware: Option<PathBuf>,
}

/// One simulation, as the library runs it.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// The board.
    pub port: Port,
    /// The weights image file.
    pub image: PathBuf,
    /// The request's prompt.
    pub prompt: String,
    /// System prompt (`None`: the template's default).
    pub system: Option<String>,
    /// No chat template.
    pub raw: bool,
    /// RGB888 frame: width, height, pixels.
    pub frame: Option<(usize, usize, Vec<u8>)>,
    /// A frame stream instead of one frame.
    pub frames: Option<SimStream>,
    /// Most tokens to generate.
    pub max_tokens: u32,
    /// Sampling.
    pub sampler: SamplerConfig,
    /// Wall-clock limit for QEMU.
    pub timeout: Duration,
    /// Firmware ELF to use instead of building one.
    pub firmware: Option<PathBuf>,
    /// Copy QEMU's output to stdout as it arrives.
    pub stream: bool,
}

impl SimOptions {
    /// A greedy text request with default settings.
    pub fn new(port: Port, image: impl Into<PathBuf>, prompt: impl Into<String>) -> Self {
        SimOptions {
            port,
            image: image.into(),
            prompt: prompt.into(),
            system: None,
            raw: false,
            frame: None,
            frames: None,
            max_tokens: 16,
            sampler: SamplerConfig::default(),
            timeout: Duration::from_secs(600),
            firmware: None,
            stream: false,
        }
    }
}

/// What a simulation printed and returned.
#[derive(Clone, Debug)]
pub struct SimOutcome {
    /// The firmware's exit code (from semihosting).
    pub exit_code: i32,
    /// Everything the UART printed.
    pub output: String,
    /// Wall time of the QEMU run.
    pub wall: Duration,
    /// The firmware ELF that ran.
    pub firmware: PathBuf,
}

impl SimOutcome {
    /// The generated ids (the firmware's `tokens:` line), if it printed them.
    pub fn tokens(&self) -> Option<Vec<u32>> {
        parse_tokens(&self.output)
    }

    /// A stream's per-frame lines: `None` for a skipped frame, else the caption's ids.
    pub fn frame_tokens(&self) -> Vec<Option<Vec<u32>>> {
        let mut out = Vec::new();
        let mut lines = self.output.lines().peekable();
        while let Some(line) = lines.next() {
            if !line.starts_with("frame ") || !line.contains(": ") {
                continue;
            }
            if line.contains(": skipped (change ") {
                out.push(None);
                continue;
            }
            // The caption may span lines; its ids follow on the first `tokens:` line.
            for l in lines.by_ref() {
                if l.starts_with(TOKENS_PREFIX) {
                    out.push(parse_tokens(l));
                    break;
                }
            }
        }
        out
    }

    /// A stream's per-frame counts, in frame order (captioned frames only).
    pub fn frame_counts(&self) -> Vec<(u64, usize)> {
        self.output
            .lines()
            .filter_map(|l| l.strip_prefix("count: "))
            .filter_map(|l| {
                let count = l.split_whitespace().next()?.parse().ok()?;
                let reused = l
                    .rsplit("reused ")
                    .next()?
                    .trim_end_matches(')')
                    .parse()
                    .ok()?;
                Some((count, reused))
            })
            .collect()
    }

    /// The total instruction count the firmware printed.
    pub fn instructions(&self) -> Option<u64> {
        let line = self
            .output
            .lines()
            .find_map(|l| l.strip_prefix(INSTRUCTIONS_PREFIX))?;
        line.split_whitespace().next()?.parse().ok()
    }

    /// The output without its volatile lines: what golden files hold.
    pub fn golden(&self) -> String {
        golden_text(&self.output)
    }
}

/// Ids from a firmware's `tokens:` line.
pub fn parse_tokens(output: &str) -> Option<Vec<u32>> {
    let line = output.lines().find_map(|l| l.strip_prefix(TOKENS_PREFIX))?;
    line.trim()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.trim().parse().ok())
        .collect()
}

/// `output` without the lines golden files leave out (instruction counts, arena sizes:
/// they change with the code, not with the request).
pub fn golden_text(output: &str) -> String {
    let mut s = String::new();
    for line in output.lines() {
        if VOLATILE_PREFIXES.iter().any(|p| line.starts_with(p)) {
            continue;
        }
        s.push_str(line);
        s.push('\n');
    }
    s
}

/// The repository checkout this tool was built from (firmware sources live there);
/// `GLIMPSE_ROOT` overrides.
pub fn repo_root() -> PathBuf {
    if let Some(p) = std::env::var_os("GLIMPSE_ROOT") {
        return PathBuf::from(p);
    }
    let tools = Path::new(env!("CARGO_MANIFEST_DIR"));
    tools.parent().unwrap_or(tools).to_path_buf()
}

/// Target dir for firmware builds: never the outer build's, because a `cargo build`
/// started from inside `cargo test` would wait forever for the lock the outer cargo holds.
/// `GLIMPSE_FIRMWARE_TARGET_DIR` overrides `<repo>/target/firmware`.
pub fn firmware_target_dir() -> PathBuf {
    std::env::var_os("GLIMPSE_FIRMWARE_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target").join("firmware"))
}

/// Build `ports/<port>` in release mode (a no-op when up to date) and return the ELF.
pub fn build_firmware(port: Port) -> Result<PathBuf> {
    let manifest = repo_root()
        .join("ports")
        .join(port.name())
        .join("Cargo.toml");
    if !manifest.is_file() {
        bail!(
            "firmware sources not found at {} (set GLIMPSE_ROOT to the checkout, or pass --firmware)",
            manifest.display()
        );
    }
    let target_dir = firmware_target_dir().join(port.name());
    ensure_target(port.target(), manifest.parent().unwrap_or(Path::new(".")))?;
    let mut cmd = Command::new("cargo");
    // The firmware's .cargo/config.toml sets its target and linker flags; variables an
    // outer cargo (or CI) exports would override them, so none reach the nested build.
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        let outer = k.starts_with("CARGO_") && k != "CARGO_HOME" && k != "CARGO_NET_OFFLINE";
        if outer || k == "RUSTFLAGS" || k == "RUSTDOCFLAGS" || k == "RUSTC_WRAPPER" {
            cmd.env_remove(&k);
        }
    }
    let status = cmd
        .arg("build")
        .arg("--release")
        .arg("--quiet")
        .arg("--manifest-path")
        .arg(&manifest)
        .env("CARGO_TARGET_DIR", &target_dir)
        // Cargo reads .cargo/config.toml from the working directory, not the manifest's.
        .current_dir(manifest.parent().unwrap_or(Path::new(".")))
        .stdin(Stdio::null())
        .status()
        .context("running cargo to build the firmware")?;
    if !status.success() {
        bail!(
            "building the {} firmware failed ({status}); is the {} target installed? \
             (rustup target add {})",
            port.name(),
            port.target(),
            port.target()
        );
    }
    let elf = target_dir
        .join(port.target())
        .join("release")
        .join(format!("glimpse-{}", port.name()));
    if !elf.is_file() {
        bail!("the firmware build produced no {}", elf.display());
    }
    Ok(elf)
}

/// Add the rustup target `target` to the toolchain that builds in `dir` when it is
/// missing: rustup installs no target by itself, and a newcomer's first `glimpse sim` (or
/// `./tests/run.sh`) should not fail on that. Without rustup the build says what is wrong.
fn ensure_target(target: &str, dir: &Path) -> Result<()> {
    let listed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output();
    let Ok(listed) = listed else {
        return Ok(()); // no rustup: the toolchain is someone else's to manage
    };
    if !listed.status.success()
        || String::from_utf8_lossy(&listed.stdout)
            .lines()
            .any(|l| l.trim() == target)
    {
        return Ok(());
    }
    eprintln!("glimpse: adding the rustup target {target} for the firmware build");
    let status = Command::new("rustup")
        .args(["target", "add", target])
        .current_dir(dir)
        .stdin(Stdio::null())
        .status()
        .context("running rustup target add")?;
    if !status.success() {
        bail!("`rustup target add {target}` failed ({status})");
    }
    Ok(())
}

/// Whether `program` is on PATH.
fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
}

/// Whether QEMU for `port` is installed.
pub fn qemu_available(port: Port) -> bool {
    on_path(port.qemu())
}

/// RGB888 frames of one size for a stream request.
#[derive(Clone, Debug)]
pub struct SimStream {
    /// Pixels per row.
    pub width: usize,
    /// Rows.
    pub height: usize,
    /// Each frame's `width * height * 3` bytes.
    pub frames: Vec<Vec<u8>>,
    /// The change gate.
    pub min_change: f32,
    /// Keep the prompt prefix from frame to frame.
    pub keep_prefix: bool,
}

impl SimStream {
    /// Frames from pictures, which must all have the first one's size (at least two).
    pub fn new(
        pictures: Vec<glimpse_host::Picture>,
        min_change: f32,
        keep_prefix: bool,
    ) -> Result<Self> {
        let first = pictures.first().context("a stream needs frames")?;
        let (width, height) = (first.width, first.height);
        ensure!(
            pictures.len() >= 2,
            "a stream needs at least two frames (one picture: use --image)"
        );
        for (i, p) in pictures.iter().enumerate() {
            ensure!(
                (p.width, p.height) == (width, height),
                "frame {i} is {}x{}, the stream's frames are {width}x{height}",
                p.width,
                p.height
            );
        }
        Ok(SimStream {
            width,
            height,
            frames: pictures.into_iter().map(|p| p.rgb).collect(),
            min_change,
            keep_prefix,
        })
    }

    /// The frames laid out as the request's frame ring.
    fn ring(&self) -> Vec<u8> {
        let len = self.width * self.height * 3;
        let stride = len.next_multiple_of(glimpse_bare::request::FRAME_ALIGN);
        let mut ring = vec![0u8; stride * (self.frames.len() - 1) + len];
        for (i, f) in self.frames.iter().enumerate() {
            ring[i * stride..i * stride + len].copy_from_slice(f);
        }
        ring
    }
}

fn request_blob(opts: &SimOptions, weights_len: u64) -> Result<Vec<u8>> {
    let ring = opts.frames.as_ref().map(SimStream::ring);
    let stream = match (&opts.frames, &ring) {
        (Some(s), Some(data)) => Some(glimpse_bare::request::Stream {
            frames: glimpse_bare::request::FrameRing {
                width: s.width,
                height: s.height,
                format: PixelFormat::Rgb888,
                count: s.frames.len(),
                data,
            },
            min_change: s.min_change,
            keep_prefix: s.keep_prefix,
        }),
        _ => None,
    };
    let frame = match &stream {
        Some(s) => s.frames.frame(0),
        None => opts.frame.as_ref().map(|(w, h, data)| Frame {
            width: *w,
            height: *h,
            format: PixelFormat::Rgb888,
            data,
        }),
    };
    let req = Request {
        prompt: &opts.prompt,
        system: opts.system.as_deref(),
        raw: opts.raw,
        max_tokens: opts.max_tokens,
        sampler: opts.sampler,
        weights_len,
        frame,
        stream,
    };
    let mut blob = vec![0u8; req.encoded_len()?];
    req.encode(&mut blob)?;
    Ok(blob)
}

/// Run one simulation: build (unless given) the firmware, start QEMU, wait for it under
/// the timeout. A firmware that fails is an `Ok` outcome with a non-zero exit code; a
/// missing QEMU, a failed build or a timeout is an error.
pub fn simulate(opts: &SimOptions) -> Result<SimOutcome> {
    let port = opts.port;
    let map = port.memory();
    if !qemu_available(port) {
        bail!(
            "{} is not installed: run tests/scripts/install_qemu.sh (as root; Debian \
             bookworm: apt-get install -t bookworm-backports qemu-system-arm)",
            port.qemu()
        );
    }
    let weights_len = std::fs::metadata(&opts.image)
        .with_context(|| format!("reading {}", opts.image.display()))?
        .len();
    if weights_len > map.weights.len {
        bail!(
            "{} is {weights_len} bytes; the {} board's weights window holds {}",
            opts.image.display(),
            port.name(),
            map.weights.len
        );
    }
    let blob = request_blob(opts, weights_len)?;
    if blob.len() as u64 > map.request.len {
        bail!(
            "the request is {} bytes; the {} board's request window holds {}",
            blob.len(),
            port.name(),
            map.request.len
        );
    }
    let firmware = match &opts.firmware {
        Some(f) => f.clone(),
        None => build_firmware(port)?,
    };
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let req_path = dir.path().join("request.bin");
    std::fs::write(&req_path, &blob).context("writing the request blob")?;

    let loader = |file: &Path, addr: u64| {
        format!("loader,file={},addr={addr:#x},force-raw=on", file.display())
    };
    let mut cmd = Command::new(port.qemu());
    cmd.args(port.qemu_args())
        .arg("-kernel")
        .arg(&firmware)
        .arg("-device")
        .arg(loader(&req_path, map.request.addr))
        .arg("-device")
        .arg(loader(&opts.image, map.weights.addr))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", port.qemu()))?;

    // Readers on their own threads: the UART streams while the main thread watches the
    // clock, and a full stderr pipe can never stall QEMU.
    let stdout = child.stdout.take().context("QEMU stdout")?;
    let mut stderr = child.stderr.take().context("QEMU stderr")?;
    let stream = opts.stream;
    let (tx, rx) = mpsc::channel();
    let out_thread = std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut all = Vec::new();
        let mut line = Vec::new();
        while let Ok(n) = reader.read_until(b'\n', &mut line) {
            if n == 0 {
                break;
            }
            if stream {
                let mut o = std::io::stdout().lock();
                let _ = o.write_all(&line);
                let _ = o.flush();
            }
            all.append(&mut line);
        }
        let _ = tx.send(());
        all
    });
    let err_thread = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stderr.read_to_end(&mut s);
        s
    });

    let deadline = start + opts.timeout;
    let status = loop {
        if let Some(status) = child.try_wait().context("waiting for QEMU")? {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        // Wake early when the UART closes (QEMU exiting), else poll the clock.
        let _ = rx.recv_timeout(Duration::from_millis(50));
    };
    let wall = start.elapsed();
    let output = out_thread.join().unwrap_or_default();
    let errors = err_thread.join().unwrap_or_default();
    let output = String::from_utf8_lossy(&output).into_owned();
    let errors = String::from_utf8_lossy(&errors).into_owned();
    let Some(status) = status else {
        bail!(
            "{} did not finish within {} s and was killed; output so far:\n{output}{errors}",
            port.qemu(),
            opts.timeout.as_secs()
        );
    };
    let Some(exit_code) = status.code() else {
        bail!(
            "{} was killed by a signal ({status}):\n{errors}",
            port.qemu()
        );
    };
    // The AN547's built-in Ethernet always warns that it has no network; nothing else
    // QEMU says is noise.
    for line in errors.lines().filter(|l| !l.contains("has no peer")) {
        eprintln!("{line}");
    }
    Ok(SimOutcome {
        exit_code,
        output,
        wall,
        firmware,
    })
}

/// Sizes of an ELF's loadable segments: executable, read-only, writable (file + zeroed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ElfSizes {
    /// Executable segments (code).
    pub code: u64,
    /// Read-only data.
    pub rodata: u64,
    /// Writable data and `.bss` in memory.
    pub data: u64,
}

/// Read the program headers of a little-endian ELF32 or ELF64 file.
pub fn elf_sizes(bytes: &[u8]) -> Option<ElfSizes> {
    let u16_at = |at: usize| Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?));
    let u32_at = |at: usize| Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?));
    let u64_at = |at: usize| Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?));
    if bytes.get(..4)? != b"\x7fELF" || *bytes.get(5)? != 1 {
        return None;
    }
    let is64 = *bytes.get(4)? == 2;
    let (phoff, phentsize, phnum) = if is64 {
        (u64_at(0x20)?, u16_at(0x36)?, u16_at(0x38)?)
    } else {
        (u64::from(u32_at(0x1C)?), u16_at(0x2A)?, u16_at(0x2C)?)
    };
    let mut s = ElfSizes::default();
    for i in 0..usize::from(phnum) {
        let at = usize::try_from(phoff).ok()? + i * usize::from(phentsize);
        let (kind, flags, filesz, memsz) = if is64 {
            (
                u32_at(at)?,
                u32_at(at + 4)?,
                u64_at(at + 32)?,
                u64_at(at + 40)?,
            )
        } else {
            (
                u32_at(at)?,
                u32_at(at + 24)?,
                u64::from(u32_at(at + 16)?),
                u64::from(u32_at(at + 20)?),
            )
        };
        const PT_LOAD: u32 = 1;
        const PF_X: u32 = 1;
        const PF_W: u32 = 2;
        if kind != PT_LOAD {
            continue;
        }
        if flags & PF_X != 0 {
            s.code += filesz;
        } else if flags & PF_W != 0 {
            s.data += memsz;
        } else {
            s.rodata += filesz;
        }
    }
    Some(s)
}

/// Compare `golden` with the file at `path`; a readable message on a difference.
pub fn check_expected(path: &Path, golden: &str) -> Result<()> {
    let want = std::fs::read_to_string(path).with_context(|| {
        format!(
            "reading {} (create it with --bless or GLIMPSE_BLESS=1)",
            path.display()
        )
    })?;
    if want == golden {
        return Ok(());
    }
    let (w, g): (Vec<&str>, Vec<&str>) = (want.lines().collect(), golden.lines().collect());
    let at = w.iter().zip(&g).take_while(|(a, b)| a == b).count();
    bail!(
        "output differs from {} at line {}:\n  expected: {:?}\n  got:      {:?}\n\
         (rerun with --bless or GLIMPSE_BLESS=1 if the change is intended)",
        path.display(),
        at + 1,
        w.get(at).copied().unwrap_or("<end of file>"),
        g.get(at).copied().unwrap_or("<end of output>"),
    )
}

/// Whether `GLIMPSE_BLESS=1` asks for golden files to be rewritten.
pub fn bless_from_env() -> bool {
    std::env::var("GLIMPSE_BLESS").as_deref() == Ok("1")
}

fn load_picture(path: &Path) -> Result<(usize, usize, Vec<u8>)> {
    let pic = glimpse_host::Picture::open(path)?;
    Ok((pic.width, pic.height, pic.rgb))
}

/// Run `glimpse sim`.
pub fn run(a: &SimArgs) -> Result<ExitCode> {
    let mut opts = SimOptions::new(a.port, &a.image, a.prompt.clone());
    opts.system = a.system.clone();
    opts.raw = a.raw;
    opts.frame = a.picture.as_deref().map(load_picture).transpose()?;
    let pictures = match (&a.frames, &a.video) {
        (Some(dir), _) => {
            Some(glimpse_host::video::directory_frames(dir)?.collect::<Result<Vec<_>, _>>()?)
        }
        (None, Some(file)) => Some(glimpse_host::video::animation_frames(file)?),
        (None, None) => None,
    };
    opts.frames = pictures
        .map(|p| SimStream::new(p, a.min_change, !a.no_prefix_reuse))
        .transpose()?;
    opts.max_tokens = a.max_tokens;
    opts.sampler = SamplerConfig {
        temperature: a.temp,
        top_k: a.top_k,
        top_p: a.top_p,
        seed: a.seed,
        ..SamplerConfig::default()
    };
    opts.timeout = Duration::from_secs(a.timeout);
    opts.firmware = a.firmware.clone();
    opts.stream = true;
    let out = simulate(&opts)?;
    let sizes = std::fs::read(&out.firmware)
        .ok()
        .and_then(|b| elf_sizes(&b));
    eprintln!(
        "sim {}: exit {} after {:.1} s wall; {} instructions; firmware {}",
        a.port.name(),
        out.exit_code,
        out.wall.as_secs_f64(),
        out.instructions()
            .map_or_else(|| "no count of".to_string(), |n| n.to_string()),
        sizes.map_or_else(
            || out.firmware.display().to_string(),
            |s| format!(
                "{} bytes code, {} read-only, {} read-write",
                s.code, s.rodata, s.data
            )
        ),
    );
    if let Some(path) = &a.expect {
        if a.bless || bless_from_env() {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(path, out.golden())?;
            eprintln!("wrote {}", path.display());
        } else {
            check_expected(path, &out.golden())?;
        }
    }
    Ok(ExitCode::from(u8::try_from(out.exit_code).unwrap_or(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUTPUT: &str = "glimpse qemu-virt: aarch64\nrequest: 5 prompt bytes\ntext:  Paris.\n\nprompt: 5 tokens; generated 3 (token budget)\ntokens: 7042,30,198\nstats: arena 1 of 2 bytes\ninstructions: 12345 (verify 1, prefill 2, decode 3) [x]\n";

    fn outcome(output: &str) -> SimOutcome {
        SimOutcome {
            exit_code: 0,
            output: output.to_string(),
            wall: Duration::ZERO,
            firmware: PathBuf::new(),
        }
    }

    #[test]
    fn tokens_instructions_and_golden_lines() {
        let o = outcome(OUTPUT);
        assert_eq!(o.tokens(), Some(vec![7042, 30, 198]));
        assert_eq!(o.instructions(), Some(12345));
        let g = o.golden();
        assert!(!g.contains("stats:") && !g.contains("instructions:"), "{g}");
        // The blank line inside the generated text survives.
        assert!(g.contains("text:  Paris.\n\nprompt: 5 tokens"), "{g}");
        assert_eq!(outcome("tokens:\n").tokens(), Some(vec![]));
        assert_eq!(outcome("no ids here\n").tokens(), None);
        assert_eq!(outcome("tokens: 1,x\n").tokens(), None);
    }

    #[test]
    fn expected_file_mismatch_names_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("case.txt");
        std::fs::write(&path, "a\nb\nc\n").unwrap();
        assert!(check_expected(&path, "a\nb\nc\n").is_ok());
        let e = format!("{:#}", check_expected(&path, "a\nB\nc\n").unwrap_err());
        assert!(
            e.contains("line 2") && e.contains("\"b\"") && e.contains("\"B\""),
            "{e}"
        );
        let e = format!("{:#}", check_expected(&path, "a\nb\n").unwrap_err());
        assert!(e.contains("<end of output>"), "{e}");
    }

    #[test]
    fn elf_program_headers() {
        // A minimal ELF64 with one executable and one writable PT_LOAD.
        let mut b = vec![0u8; 64 + 2 * 56];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2; // 64-bit
        b[5] = 1; // little-endian
        b[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        b[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        b[0x38..0x3A].copy_from_slice(&2u16.to_le_bytes());
        for (i, (flags, filesz, memsz)) in [(5u32, 100u64, 100u64), (6, 8, 24)].iter().enumerate() {
            let at = 64 + i * 56;
            b[at..at + 4].copy_from_slice(&1u32.to_le_bytes());
            b[at + 4..at + 8].copy_from_slice(&flags.to_le_bytes());
            b[at + 32..at + 40].copy_from_slice(&filesz.to_le_bytes());
            b[at + 40..at + 48].copy_from_slice(&memsz.to_le_bytes());
        }
        assert_eq!(
            elf_sizes(&b),
            Some(ElfSizes {
                code: 100,
                rodata: 0,
                data: 24
            })
        );
        assert_eq!(elf_sizes(b"not an elf"), None);
    }

    #[test]
    fn ports_match_the_firmware_memory_maps() {
        for p in Port::ALL {
            assert_eq!(memory::by_name(p.name()), Some(p.memory()));
            let args = p.qemu_args();
            assert!(
                args.windows(2)
                    .any(|w| w[0] == "-icount" && w[1] == "shift=0")
            );
        }
    }
}
