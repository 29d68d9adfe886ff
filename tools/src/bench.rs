//! `glimpse bench`: throughput of a weights image, llama-bench style: prompt processing
//! (pp) and text generation (tg) in tokens per second and time to first token for a
//! decoder, encoder latency at several resolutions for a vision encoder, with the
//! memory read bandwidth the decode rate is measured against, peak RSS and arena sizes.
//! `--kernels` adds the Q8_0 kernels on their own (every kernel family the CPU allows).
//!
//! Threads: `--threads N` installs a host thread pool as the core's default executor, so
//! every linear layer (decoder, encoder, projector) splits its output rows across N
//! threads. Convolutions and attention do not take an executor yet and stay on one
//! thread.

use std::hint::black_box;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use glimpse_core::Model;
use glimpse_core::arena::Arena;
use glimpse_core::decoder::{Decoder, DecoderState};
use glimpse_core::kernels::Ctx;
use glimpse_core::kernels::cpu::Cpu;
use glimpse_core::kernels::linear::{Weights, linear, linear_scratch_bytes};
use glimpse_core::vision::{Tap, VisionEncoder};
use glimpse_hal::Executor;
use glimpse_host::{MappedImage, ThreadPool};
use glimpse_quant::DType;
use serde::Serialize;

/// Arguments of `glimpse bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// The model (.glim: decoder, vision encoder, or both).
    #[arg(value_name = "MODEL")]
    pub image: PathBuf,
    /// How the decoder's activations meet Q8_0 weights.
    #[arg(long, value_enum, default_value = "int8")]
    pub activations: crate::ActArg,
    /// Threads for the linear layers (the caller plus N-1 pool workers).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Prompt tokens for the pp test (0 skips it).
    #[arg(long, default_value_t = 128)]
    pub pp: usize,
    /// Generated tokens for the tg test (0 skips it).
    #[arg(long, default_value_t = 64)]
    pub tg: usize,
    /// Encoder resolutions (`0`, like `--no-encoder`, skips the encoder).
    #[arg(long, value_delimiter = ',', default_value = "256,512,768,1024")]
    pub resolutions: Vec<u32>,
    /// Timed repetitions of each test (after one warm-up).
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// CPU features the kernels may use: `native` (default), `scalar`, or a list such as
    /// `avx2,f16c` (narrowed to what the CPU has).
    #[arg(long, default_value = "native")]
    pub cpu: String,
    /// Also time the Q8_0 kernels alone, for every kernel family the CPU allows.
    #[arg(long)]
    pub kernels: bool,
    /// Skip the decoder tests.
    #[arg(long)]
    pub no_decoder: bool,
    /// Skip the encoder tests.
    #[arg(long)]
    pub no_encoder: bool,
    /// Copy the image into anonymous memory instead of mapping the file (the kernel can
    /// back it with huge pages, which a page-cache mapping does not get).
    #[arg(long)]
    pub copy: bool,
    /// Time a Q8_0 matrix-vector product on given data, one thread (for comparing with
    /// another library on the same bytes): a file of `GQ8DOT\0\0`, u32 rows, u32 cols,
    /// u32 repetitions (little-endian), the Q8_0 rows, then `cols` f32 activations. The
    /// report's `dot` holds the times and the outputs.
    #[arg(long, value_name = "FILE")]
    pub dot_file: Option<PathBuf>,
    /// What kept state saves (VLM images): per resolution, stream frames with the prompt
    /// prefix kept vs prefilled, and a follow-up turn vs asking it from scratch.
    #[arg(long)]
    pub session: bool,
}

/// The `--dot-file` result.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DotBench {
    /// Weight rows.
    pub rows: usize,
    /// Columns (the reduction length).
    pub cols: usize,
    /// Kernel family used.
    pub kernel: String,
    /// Fastest repetition, seconds (activation quantization included).
    pub best_s: f64,
    /// Median repetition, seconds.
    pub median_s: f64,
    /// The outputs.
    pub y: Vec<f32>,
}

/// Run `--dot-file`.
fn bench_dot(path: &std::path::Path) -> Result<DotBench> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let word = |at: usize| -> Result<usize> {
        let b = bytes
            .get(at..at + 4)
            .context("dot file: truncated header")?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    if bytes.get(..8) != Some(b"GQ8DOT\0\0".as_slice()) {
        bail!("{}: not a GQ8DOT file", path.display());
    }
    let (rows, cols, reps) = (word(8)?, word(12)?, word(16)?.max(1));
    if cols % 32 != 0 {
        bail!("dot file: cols {cols} is not a multiple of 32");
    }
    let wlen = rows * cols / 32 * 34;
    let w = bytes
        .get(20..20 + wlen)
        .context("dot file: truncated weights")?;
    let xb = bytes
        .get(20 + wlen..20 + wlen + 4 * cols)
        .context("dot file: truncated activations")?;
    let x: Vec<f32> = xb
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let wm = Weights::new(DType::Q8_0, rows, cols, w)?;
    let mut y = vec![0f32; rows];
    let mut scratch = vec![0u8; linear_scratch_bytes(&wm, 1)];
    let mut seq = glimpse_hal::Sequential;
    let mut ctx = Ctx::new(&mut seq);
    let mut times = Vec::with_capacity(reps);
    for _ in 0..=reps {
        let t0 = Instant::now();
        linear(&mut ctx, &wm, None, &x, 1, &mut y, &mut scratch)?;
        times.push(t0.elapsed().as_secs_f64());
    }
    times.remove(0);
    times.sort_by(f64::total_cmp);
    Ok(DotBench {
        rows,
        cols,
        kernel: ctx.usable().q8_kernel().name().to_string(),
        best_s: times.first().copied().unwrap_or(0.0),
        median_s: times.get(times.len() / 2).copied().unwrap_or(0.0),
        y,
    })
}

/// 64-byte aligned storage for a copied image.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// `bytes` copied into 64-byte aligned anonymous memory.
fn aligned_copy(bytes: &[u8]) -> (Vec<Line>, usize) {
    let mut v = vec![Line([0; 64]); bytes.len().div_ceil(64)];
    for (d, s) in v.iter_mut().zip(bytes.chunks(64)) {
        d.0[..s.len()].copy_from_slice(s);
    }
    (v, bytes.len())
}

fn line_bytes(v: &[Line], len: usize) -> &[u8] {
    // SAFETY: `Line` is 64 plain bytes with no padding, so a slice of them is a valid
    // byte slice of 64 times the length; `len` is at most that.
    let all = unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), v.len() * 64) };
    &all[..len.min(all.len())]
}

/// Mean and sample standard deviation of repeated measurements.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Stat {
    /// Mean.
    pub mean: f64,
    /// Sample standard deviation (0 for one sample).
    pub std: f64,
}

impl Stat {
    fn of(v: &[f64]) -> Stat {
        if v.is_empty() {
            return Stat::default();
        }
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let var = if v.len() > 1 {
            v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
        } else {
            0.0
        };
        Stat {
            mean,
            std: var.sqrt(),
        }
    }
}

/// Decoder results.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DecoderBench {
    /// Prompt tokens of the pp test.
    pub pp: usize,
    /// Prefill throughput, tokens/s.
    pub pp_tok_s: Stat,
    /// Generated tokens of the tg test.
    pub tg: usize,
    /// Decode throughput from an empty context, tokens/s.
    pub tg_tok_s: Stat,
    /// Prefill of the pp prompt plus choosing the first token, ms.
    pub ttft_ms: Stat,
    /// Prefill chunk (positions per forward pass).
    pub chunk: usize,
    /// Weight bytes one decode step reads (every layer matrix and the logits matrix).
    pub weight_bytes_per_token: usize,
    /// `weight_bytes_per_token × tg tok/s`, GB/s.
    pub tg_weight_read_gbs: f64,
    /// That over the measured memory read bandwidth.
    pub tg_bandwidth_fraction: f64,
    /// Arena bytes of the state (KV cache for pp + tg positions, activations).
    pub arena_bytes: usize,
}

/// Encoder results at one resolution.
#[derive(Clone, Debug, Default, Serialize)]
pub struct EncoderBench {
    /// Input resolution.
    pub resolution: usize,
    /// Output tokens.
    pub tokens: usize,
    /// Wall time of one encode, ms.
    pub ms: Stat,
    /// Mean time from the start to each tap (stem, stages, head), ms.
    pub taps_ms: Vec<(String, f64)>,
    /// Arena bytes the plan asks for.
    pub arena_bytes: usize,
}

/// One kernel timing.
#[derive(Clone, Debug, Default, Serialize)]
pub struct KernelBench {
    /// Kernel family.
    pub kernel: String,
    /// `rows x cols`, activation rows.
    pub shape: (usize, usize, usize),
    /// Giga multiply-adds per second.
    pub gmac_s: f64,
    /// Weight bytes streamed per second, GB/s.
    pub weight_gbs: f64,
}

/// Everything `glimpse bench` measured.
#[derive(Clone, Debug, Default, Serialize)]
pub struct BenchReport {
    /// The image.
    pub image: String,
    /// Model name from the config.
    pub model: String,
    /// Threads used by the linear layers.
    pub threads: usize,
    /// CPU features the kernels used.
    pub cpu: String,
    /// Q8_0 kernel family.
    pub q8_kernel: String,
    /// f32-arithmetic kernel family.
    pub f32_kernel: String,
    /// 1-, 5- and 15-minute load averages at the start (the machine may be shared).
    pub load_avg: Vec<f64>,
    /// Memory read bandwidth with `threads` threads, GB/s.
    pub mem_read_gbs: f64,
    /// Decoder results, if the image has a decoder.
    pub decoder: Option<DecoderBench>,
    /// Encoder results, if the image has a vision encoder.
    pub encoder: Vec<EncoderBench>,
    /// Kernel timings (`--kernels`).
    pub kernels: Vec<KernelBench>,
    /// The `--dot-file` result.
    pub dot: Option<DotBench>,
    /// Kept-state figures per resolution (`--session`).
    pub session: Vec<crate::session_bench::SessionBench>,
    /// Peak resident set size of the process, bytes.
    pub peak_rss_bytes: u64,
}

fn load_avg() -> Vec<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| {
            s.split_whitespace()
                .take(3)
                .filter_map(|v| v.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Peak resident set size (VmHWM) of this process, from /proc (0 where unavailable).
pub fn peak_rss_bytes() -> u64 {
    let Ok(s) = std::fs::read_to_string("/proc/self/status") else {
        return 0;
    };
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Memory read bandwidth in GB/s: the best of several passes summing a buffer far larger
/// than the last-level cache, split across `threads` threads.
pub fn memory_read_gbs(threads: usize) -> f64 {
    const BYTES: usize = 512 << 20;
    let buf: Vec<u64> = (0..BYTES / 8).map(|i| i as u64).collect();
    let threads = threads.max(1);
    let part = buf.len().div_ceil(threads);
    let mut best = 0f64;
    for _ in 0..5 {
        let t0 = Instant::now();
        std::thread::scope(|s| {
            for chunk in buf.chunks(part) {
                s.spawn(move || black_box(sum_lanes(chunk)));
            }
        });
        let gbs = BYTES as f64 / t0.elapsed().as_secs_f64() / 1e9;
        best = best.max(gbs);
    }
    best
}

/// A sum with 8 independent lanes so the loop is bound by loads, not by an add chain.
fn sum_lanes(v: &[u64]) -> u64 {
    let (c, t) = v.as_chunks::<8>();
    let mut acc = [0u64; 8];
    for x in c {
        for k in 0..8 {
            acc[k] = acc[k].wrapping_add(x[k]);
        }
    }
    acc.iter().chain(t).fold(0, |a, &b| a.wrapping_add(b))
}

/// Deterministic token ids in `0..vocab` (a fixed LCG), like llama-bench's random prompt.
fn token_ids(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut s = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((s >> 33) % vocab.max(1) as u64) as u32
        })
        .collect()
}

fn argmax(v: &[f32]) -> u32 {
    let mut best = (0usize, f32::NEG_INFINITY);
    for (i, &x) in v.iter().enumerate() {
        if x > best.1 {
            best = (i, x);
        }
    }
    best.0 as u32
}

fn bench_decoder(image: &Model<'_>, a: &BenchArgs, mem_gbs: f64) -> Result<DecoderBench> {
    let dec = Decoder::new(image)?.with_q8_activations(a.activations.into());
    let cfg = dec.config();
    let shape = dec.shape();
    let vocab = shape.vocab;
    let max_ctx = (a.pp.max(1) + a.tg + 1).min(cfg.max_positions.max(1) as usize);
    // One forward pass for the whole prompt, as llama-bench's default batch does.
    let chunk = a.pp.clamp(1, 512).min(max_ctx);
    let bytes = DecoderState::arena_bytes(cfg, max_ctx, chunk)?;
    let mut buf = vec![0u8; bytes];
    let mut arena = Arena::new(&mut buf);
    let mut st = DecoderState::with_chunk(&mut arena, &dec, max_ctx, chunk)?;

    let mut weight_bytes = dec.lm_head().data.len();
    for l in 0..shape.layers {
        let layer = dec.layer(l)?;
        for w in [layer.q, layer.k, layer.v, layer.o] {
            weight_bytes += w.data.len();
        }
        for w in [layer.mlp.gate, layer.mlp.up, layer.mlp.down] {
            weight_bytes += w.data.len();
        }
    }

    let reps = a.reps.max(1);
    let prompt = token_ids(a.pp, vocab, 1);
    let mut pp = Vec::new();
    let mut ttft = Vec::new();
    if a.pp > 0 {
        for rep in 0..=reps {
            st.reset();
            let t0 = Instant::now();
            let logits = st.prefill(&prompt)?;
            let t_prefill = t0.elapsed().as_secs_f64();
            black_box(argmax(logits));
            let t_first = t0.elapsed().as_secs_f64();
            if rep > 0 {
                pp.push(a.pp as f64 / t_prefill);
                ttft.push(t_first * 1e3);
            }
        }
    }
    let mut tg = Vec::new();
    if a.tg > 0 {
        let ids = token_ids(a.tg, vocab, 2);
        for rep in 0..=reps {
            st.reset();
            let t0 = Instant::now();
            for &id in &ids {
                black_box(st.decode_one(id)?);
            }
            if rep > 0 {
                tg.push(a.tg as f64 / t0.elapsed().as_secs_f64());
            }
        }
    }
    let tg_s = Stat::of(&tg);
    let read = weight_bytes as f64 * tg_s.mean / 1e9;
    Ok(DecoderBench {
        pp: a.pp,
        pp_tok_s: Stat::of(&pp),
        tg: a.tg,
        tg_tok_s: tg_s,
        ttft_ms: Stat::of(&ttft),
        chunk,
        weight_bytes_per_token: weight_bytes,
        tg_weight_read_gbs: read,
        tg_bandwidth_fraction: if mem_gbs > 0.0 { read / mem_gbs } else { 0.0 },
        arena_bytes: bytes,
    })
}

/// A smooth deterministic test picture in [0, 1] (the encoder's cost does not depend on
/// the values).
fn pixels(channels: usize, res: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(channels * res * res);
    for c in 0..channels {
        for y in 0..res {
            for x in 0..res {
                let t = (x * 7 + y * 13 + c * 29) % 256;
                v.push(t as f32 / 255.0);
            }
        }
    }
    v
}

fn bench_encoder(image: &Model<'_>, a: &BenchArgs) -> Result<Vec<EncoderBench>> {
    let enc = VisionEncoder::new(image)?;
    let channels = enc.config().in_channels as usize;
    let mut out = Vec::new();
    let mut resolutions: Vec<usize> = a.resolutions.iter().map(|&r| r as usize).collect();
    resolutions.retain(|&r| r > 0);
    let Some(&smallest) = resolutions.iter().min() else {
        return Ok(out);
    };
    // Touch every weight once (page faults on the mapped image) before timing anything.
    {
        let plan = enc.plan(smallest)?;
        let mut buf = vec![0u8; plan.arena_bytes()];
        let mut arena = Arena::new(&mut buf);
        let mut feats = vec![0f32; plan.tokens * plan.out_dim];
        enc.encode(
            &pixels(channels, smallest),
            smallest,
            &mut arena,
            &mut feats,
        )?;
    }
    for res in resolutions {
        if res % enc.stride() != 0 {
            bail!(
                "resolution {res} is not a multiple of the encoder stride {}",
                enc.stride()
            );
        }
        let plan = enc.plan(res)?;
        let px = pixels(channels, res);
        let mut buf = vec![0u8; plan.arena_bytes()];
        let mut feats = vec![0f32; plan.tokens * plan.out_dim];
        let mut times = Vec::new();
        let mut taps: Vec<(String, f64)> = Vec::new();
        // Small resolutions get a warm-up (caches, pool); large ones are long enough.
        let warm = usize::from(res <= 512);
        for rep in 0..warm + a.reps.max(1) {
            let mut arena = Arena::new(&mut buf);
            let t0 = Instant::now();
            let mut seen: Vec<(String, f64)> = Vec::new();
            enc.encode_observed(&px, res, &mut arena, &mut feats, &mut |tap, _, _| {
                let name = match tap {
                    Tap::Stem => "stem".to_string(),
                    Tap::Stage(i) => format!("stage{i}"),
                    Tap::Head => "head".to_string(),
                };
                seen.push((name, t0.elapsed().as_secs_f64() * 1e3));
            })?;
            let ms = t0.elapsed().as_secs_f64() * 1e3;
            if rep >= warm {
                times.push(ms);
                if taps.is_empty() {
                    taps = seen;
                } else {
                    for (t, s) in taps.iter_mut().zip(seen) {
                        t.1 += s.1;
                    }
                }
            }
        }
        let k = times.len().max(1) as f64;
        for t in &mut taps {
            t.1 /= k;
        }
        out.push(EncoderBench {
            resolution: res,
            tokens: plan.tokens,
            ms: Stat::of(&times),
            taps_ms: taps,
            arena_bytes: plan.arena_bytes(),
        });
    }
    Ok(out)
}

/// Q8_0 GEMV and GEMM on synthetic weights, for each kernel family the CPU allows.
fn bench_kernels(exec: &mut dyn Executor) -> Result<Vec<KernelBench>> {
    let active = Cpu::active();
    let mut cpus = vec![Cpu::SCALAR];
    for c in [
        Cpu::AVX2.union(Cpu::F16C).union(Cpu::FMA),
        Cpu::AVX2.union(Cpu::F16C).union(Cpu::AVXVNNI),
        active,
    ] {
        let c = c.usable();
        if !cpus.iter().any(|x| x.q8_kernel() == c.q8_kernel()) {
            cpus.push(c);
        }
    }
    // A decoder MLP matrix (SmolLM2 up_proj, Qwen2-0.5B down_proj) and a vision GEMM.
    let shapes = [
        (1536, 576, 1),
        (896, 4864, 1),
        (8192, 8192, 1),
        (65536, 576, 1),
        (16, 131072, 1),
        (1536, 576, 128),
        (768, 3072, 256),
    ];
    let mut out = Vec::new();
    for (rows, cols, n) in shapes {
        let rb = cols / 32 * 34;
        let mut data = vec![0u8; rows * rb];
        for (i, b) in data.iter_mut().enumerate() {
            // Scales stay small and finite; codes cover the range.
            *b = if i % 34 == 1 {
                0x1c
            } else {
                (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3]
            };
        }
        let w = Weights::new(DType::Q8_0, rows, cols, &data)?;
        let x: Vec<f32> = (0..n * cols)
            .map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0)
            .collect();
        let mut y = vec![0f32; n * rows];
        let mut scratch = vec![0u8; linear_scratch_bytes(&w, n)];
        for &c in &cpus {
            let macs = (rows * cols * n) as f64;
            let iters = ((2e9 / macs) as usize).clamp(1, 2000);
            let mut ctx = Ctx::new(&mut *exec).with_cpu(c);
            linear(&mut ctx, &w, None, &x, n, &mut y, &mut scratch)?;
            let t0 = Instant::now();
            for _ in 0..iters {
                linear(&mut ctx, &w, None, &x, n, &mut y, &mut scratch)?;
            }
            let s = t0.elapsed().as_secs_f64() / iters as f64;
            out.push(KernelBench {
                kernel: c.q8_kernel().name().to_string(),
                shape: (rows, cols, n),
                gmac_s: macs / s / 1e9,
                weight_gbs: data.len() as f64 / s / 1e9,
            });
        }
    }
    Ok(out)
}

/// Run `glimpse bench` and return the report (the CLI prints it).
pub fn bench(a: &BenchArgs) -> Result<BenchReport> {
    let req = glimpse_host::cpu::parse_request(&a.cpu).map_err(anyhow::Error::msg)?;
    let cpu = glimpse_host::cpu::install(req);
    let threads = a.threads.max(1);
    if threads > 1 {
        glimpse_host::install_default_pool(threads).context("starting the thread pool")?;
    }
    let load = load_avg();
    let mapped = MappedImage::open(&a.image)?;
    let copied = if a.copy {
        Some(aligned_copy(mapped.bytes()))
    } else {
        None
    };
    let image = match &copied {
        Some((v, len)) => Model::parse(line_bytes(v, *len))?,
        None => mapped.parsed()?,
    };
    let mem = if a.dot_file.is_some() {
        0.0
    } else {
        memory_read_gbs(threads)
    };
    let mut report = BenchReport {
        image: a.image.display().to_string(),
        model: image.config().name.as_str().to_string(),
        threads,
        cpu: format!("{cpu:?}"),
        q8_kernel: cpu.q8_kernel().name().to_string(),
        f32_kernel: cpu.f32_kernel().name().to_string(),
        load_avg: load,
        mem_read_gbs: mem,
        ..BenchReport::default()
    };
    if let Some(p) = &a.dot_file {
        report.dot = Some(bench_dot(p)?);
    }
    if a.kernels {
        let mut pool = ThreadPool::new(threads)?;
        report.kernels = bench_kernels(&mut pool)?;
    }
    if image.config().decoder.is_some() && !a.no_decoder && (a.pp > 0 || a.tg > 0) {
        report.decoder = Some(bench_decoder(&image, a, mem)?);
    }
    if image.config().vision.is_some() && !a.no_encoder {
        report.encoder = bench_encoder(&image, a)?;
    }
    if a.session && image.config().vision.is_some() {
        for &r in a.resolutions.iter().filter(|&&r| r > 0) {
            report
                .session
                .push(crate::session_bench::bench_session(&image, r as usize, 3)?);
        }
    }
    report.peak_rss_bytes = peak_rss_bytes();
    Ok(report)
}

fn print_table(r: &BenchReport) {
    println!(
        "model {} | threads {} | kernels q8 {} / f32 {} | {}",
        r.model, r.threads, r.q8_kernel, r.f32_kernel, r.cpu
    );
    println!(
        "load average {:?} | memory read {:.1} GB/s",
        r.load_avg, r.mem_read_gbs
    );
    if let Some(d) = &r.decoder {
        println!("| test     |            t/s |");
        println!("|----------|----------------|");
        if d.pp > 0 {
            let t = format!("pp{}", d.pp);
            println!(
                "| {t:<8} | {:>7.1} ± {:<5.1}|",
                d.pp_tok_s.mean, d.pp_tok_s.std
            );
        }
        if d.tg > 0 {
            let t = format!("tg{}", d.tg);
            println!(
                "| {t:<8} | {:>7.1} ± {:<5.1}|",
                d.tg_tok_s.mean, d.tg_tok_s.std
            );
        }
        println!(
            "TTFT (pp{} + first token) {:.1} ± {:.1} ms; prefill chunk {}; decoder arena {} bytes",
            d.pp, d.ttft_ms.mean, d.ttft_ms.std, d.chunk, d.arena_bytes
        );
        println!(
            "decode reads {:.1} MB of weights per token: {:.1} GB/s, {:.0}% of the measured read bandwidth",
            d.weight_bytes_per_token as f64 / 1e6,
            d.tg_weight_read_gbs,
            d.tg_bandwidth_fraction * 100.0
        );
    }
    if !r.encoder.is_empty() {
        println!("| resolution | tokens |        ms        | arena bytes |");
        println!("|------------|--------|------------------|-------------|");
        for e in &r.encoder {
            println!(
                "| {:>10} | {:>6} | {:>8.1} ± {:<6.1}| {:>11} |",
                e.resolution, e.tokens, e.ms.mean, e.ms.std, e.arena_bytes
            );
        }
        for e in &r.encoder {
            let taps: Vec<String> = e
                .taps_ms
                .iter()
                .map(|(n, t)| format!("{n} {t:.0}"))
                .collect();
            println!("  {} cumulative ms: {}", e.resolution, taps.join(", "));
        }
    }
    if !r.session.is_empty() {
        println!("kept state (TTFT):");
        crate::session_bench::print(&r.session);
    }
    for k in &r.kernels {
        println!(
            "kernel {:<12} {:>5}x{:<5} n={:<4} {:>7.1} GMAC/s {:>6.1} GB/s of weights",
            k.kernel, k.shape.0, k.shape.1, k.shape.2, k.gmac_s, k.weight_gbs
        );
    }
    if let Some(d) = &r.dot {
        println!(
            "dot {}x{} ({}): best {:.3} ms, median {:.3} ms",
            d.rows,
            d.cols,
            d.kernel,
            d.best_s * 1e3,
            d.median_s * 1e3
        );
    }
    println!(
        "peak RSS {:.1} MiB",
        r.peak_rss_bytes as f64 / (1 << 20) as f64
    );
}

/// `glimpse bench`.
pub fn run(a: &BenchArgs) -> Result<ExitCode> {
    let r = bench(a)?;
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        print_table(&r);
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_and_helpers() {
        let s = Stat::of(&[1.0, 2.0, 3.0]);
        assert!((s.mean - 2.0).abs() < 1e-12 && (s.std - 1.0).abs() < 1e-12);
        assert_eq!(Stat::of(&[5.0]).std, 0.0);
        let ids = token_ids(100, 50, 1);
        assert!(ids.iter().all(|&i| i < 50));
        assert_ne!(ids[0], ids[1]);
        assert_eq!(argmax(&[0.0, 3.0, -1.0, 3.0]), 1);
        assert_eq!(sum_lanes(&(0..100u64).collect::<Vec<_>>()), 4950);
        assert!(peak_rss_bytes() > 0 || !std::path::Path::new("/proc/self/status").exists());
    }
}
