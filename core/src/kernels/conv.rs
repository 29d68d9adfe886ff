//! Convolutions over NHWC activations, vectorised over channels: the depthwise and
//! channel-multiplier ("1 input to `mult` outputs per group") convs behind RepMixer,
//! RepCPE, ConvFFN, the PatchEmbed large kernel, `conv_exp` and stem.1, and the one full
//! conv (stem.0), which reads the planar `3 x R x R` input image.
//!
//! Kernels are stored channels-innermost (`[kh, kw, C_out]` for grouped convs, OHWI for
//! the full conv, see `tools/src/convert/model.rs`), so every tap is a contiguous run of
//! channels and the inner loops are plain slice loops over channels. Padding is zero and
//! symmetric (`kernel / 2`), as in every FastViTHD conv.
//!
//! Both kernels compute a range of output rows from a window of input rows, so a caller
//! can tile a layer over rows (to bound a buffer, or to split work between threads)
//! without copying halos around.

use core::ops::Range;

use crate::error::Error;
use crate::kernels::cpu::F32Kernel;
use crate::kernels::par::{SharedMut, piece, task_count};
use crate::kernels::{Ctx, Vector};

/// Output channels a grouped conv handles per pass: its kernel taps for these channels
/// (up to `7 x 7 x 64` f32, 12.5 KiB) stay in L1 while it sweeps the rows.
pub const CHANNEL_CHUNK: usize = 64;

fn check_len(what: &'static str, expected: usize, got: usize) -> Result<(), Error> {
    if expected == got {
        Ok(())
    } else {
        Err(Error::Length {
            what,
            expected,
            got,
        })
    }
}

/// Output length of a conv along one axis with `kernel / 2` zero padding.
fn out_len(len: usize, kernel: usize, stride: usize) -> usize {
    let padded = len + 2 * (kernel / 2);
    if padded < kernel || stride == 0 {
        0
    } else {
        (padded - kernel) / stride + 1
    }
}

/// Taps `0..kernel` that land inside `0..len` for an output whose first tap sits at
/// `origin` (which is negative in the top/left padding).
fn valid_taps(origin: isize, kernel: usize, len: usize) -> Range<usize> {
    let lo = (-origin).clamp(0, kernel as isize) as usize;
    let hi = (len as isize - origin).clamp(0, kernel as isize) as usize;
    lo..hi.max(lo)
}

/// Rows of the input that output rows `rows` read, clipped to the image.
fn input_rows(rows: &Range<usize>, kernel: usize, stride: usize, height: usize) -> Range<usize> {
    if rows.is_empty() {
        return 0..0;
    }
    let pad = kernel / 2;
    let lo = (rows.start * stride).saturating_sub(pad);
    let hi = ((rows.end - 1) * stride + kernel)
        .saturating_sub(pad)
        .min(height);
    lo..hi.max(lo)
}

/// Geometry of a grouped conv with one input channel per group: output channel `o` reads
/// input channel `o / mult` (`mult = 1` is a depthwise conv; FastViTHD's PatchEmbed and
/// `conv_exp` use `mult = 2`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grouped {
    /// Input height.
    pub height: usize,
    /// Input width.
    pub width: usize,
    /// Input channels.
    pub channels: usize,
    /// Output channels per input channel.
    pub mult: usize,
    /// Square kernel size (odd).
    pub kernel: usize,
    /// Stride in both directions.
    pub stride: usize,
}

impl Grouped {
    /// Output channels.
    pub fn out_channels(&self) -> usize {
        self.channels * self.mult
    }

    /// Output height.
    pub fn out_height(&self) -> usize {
        out_len(self.height, self.kernel, self.stride)
    }

    /// Output width.
    pub fn out_width(&self) -> usize {
        out_len(self.width, self.kernel, self.stride)
    }

    /// Input channels handled per pass (whole groups, about [`CHANNEL_CHUNK`] outputs).
    fn in_chunk(&self) -> usize {
        (CHANNEL_CHUNK / self.mult.max(1)).max(1)
    }

    /// f32s of scratch [`grouped_conv`] needs.
    pub fn scratch_floats(&self) -> usize {
        let co = self.in_chunk() * self.mult;
        (self.kernel * self.kernel + 1) * co
    }

    /// Rows of the input that output rows `rows` read (clipped to the image).
    pub fn input_rows(&self, rows: Range<usize>) -> Range<usize> {
        input_rows(&rows, self.kernel, self.stride, self.height)
    }

    fn validate(&self) -> Result<(), Error> {
        if self.kernel.is_multiple_of(2)
            || self.stride == 0
            || self.mult == 0
            || self.channels == 0
            || self.out_height() == 0
            || self.out_width() == 0
        {
            return Err(Error::Config {
                what: "grouped conv geometry (even kernel, zero stride/size or empty output)",
            });
        }
        Ok(())
    }
}

/// `acc[j] += x[j / mult] * w[j]` for one tap, over one chunk of channels.
#[inline(always)]
fn mac_grouped(acc: &mut [f32], x: &[f32], w: &[f32], mult: usize) {
    match mult {
        1 => {
            for ((a, &x), &w) in acc.iter_mut().zip(x).zip(w) {
                *a += x * w;
            }
        }
        2 => {
            let (acc2, _) = acc.as_chunks_mut::<2>();
            let (w2, _) = w.as_chunks::<2>();
            for ((a, &x), w) in acc2.iter_mut().zip(x).zip(w2) {
                a[0] += x * w[0];
                a[1] += x * w[1];
            }
        }
        m => {
            for ((a, &x), w) in acc.chunks_mut(m).zip(x).zip(w.chunks(m)) {
                for (a, &w) in a.iter_mut().zip(w) {
                    *a += x * w;
                }
            }
        }
    }
}

/// A conv's kernel and bias, in a kept format (f32, f16 or bf16).
#[derive(Clone, Copy, Debug)]
pub struct ConvParams<'a> {
    /// The kernel (`[kernel, kernel, out_channels]` for a grouped conv, OHWI for a dense
    /// one).
    pub weight: Vector<'a>,
    /// One value per output channel.
    pub bias: Vector<'a>,
}

/// A window of whole NHWC input rows: `data` holds rows `first_row ..` of the image.
#[derive(Clone, Copy, Debug)]
pub struct InputRows<'a> {
    /// The rows, each `width x channels` values.
    pub data: &'a [f32],
    /// The image row `data` starts at.
    pub first_row: usize,
}

impl<'a> InputRows<'a> {
    /// The whole image.
    pub fn whole(data: &'a [f32]) -> Self {
        InputRows { data, first_row: 0 }
    }
}

/// Output rows `rows` of a grouped conv (see [`Grouped`]), plus bias, split across `ctx`'s
/// tasks with the kernels `ctx.cpu` allows (every choice gives the same bits).
///
/// - `input` must contain every row `g.input_rows(rows)` names.
/// - `out` receives `rows.len() x out_width x out_channels`, NHWC.
/// - `scratch` holds at least `g.scratch_floats()` f32s (decoded taps of one chunk).
///   Each task needs its own decoded taps unless the kernel and bias are f32 (then they
///   are read in place): with f16/bf16 parameters, `scratch` must hold `tasks ×
///   g.scratch_floats()` f32s for `tasks` tasks to run at once, and fewer tasks run if it
///   holds less.
pub fn grouped_conv(
    ctx: &mut Ctx<'_>,
    g: &Grouped,
    params: ConvParams<'_>,
    input: InputRows<'_>,
    rows: Range<usize>,
    out: &mut [f32],
    scratch: &mut [f32],
) -> Result<(), Error> {
    let (cpu, exec) = (ctx.cpu, &mut *ctx.exec);
    let ConvParams { weight, bias } = params;
    let InputRows {
        data: input,
        first_row: in_row0,
    } = input;
    g.validate()?;
    let (k, co) = (g.kernel, g.out_channels());
    let (ow, oh) = (g.out_width(), g.out_height());
    let row_len = g.width * g.channels;
    if rows.end > oh {
        return Err(Error::Length {
            what: "grouped conv output rows",
            expected: oh,
            got: rows.end,
        });
    }
    check_len("grouped conv weight", k * k * co, weight.len())?;
    check_len("grouped conv bias", co, bias.len())?;
    check_len("grouped conv output", rows.len() * ow * co, out.len())?;
    if !input.len().is_multiple_of(row_len) {
        return Err(Error::Length {
            what: "grouped conv input (whole rows)",
            expected: input.len() / row_len * row_len,
            got: input.len(),
        });
    }
    let window = in_row0..in_row0 + input.len() / row_len;
    let need = g.input_rows(rows.clone());
    if !need.is_empty() && (need.start < window.start || need.end > window.end) {
        return Err(Error::Length {
            what: "grouped conv input window (rows)",
            expected: need.end,
            got: window.end,
        });
    }
    let per_task = g.scratch_floats();
    if scratch.len() < per_task {
        return Err(Error::Length {
            what: "grouped conv scratch",
            expected: per_task,
            got: scratch.len(),
        });
    }
    let f32_params = (weight.as_f32(), bias.as_f32());
    let in_place = matches!(f32_params, (Some(_), Some(_)));
    let work = rows.len() * ow * co * k * k;
    let mut tasks = task_count(exec, rows.len(), work);
    if !in_place {
        tasks = tasks.min(scratch.len() / per_task.max(1)).max(1);
    }
    let job = GroupedJob {
        g: *g,
        input,
        window_start: window.start,
        weight,
        bias,
        f32_params,
        kind: cpu.usable().f32_kernel(),
    };
    let per_row = ow * co;
    if tasks <= 1 {
        return job.rows(rows, out, scratch);
    }
    let out = SharedMut::new(out);
    let scr = SharedMut::new(scratch);
    let failed = core::sync::atomic::AtomicBool::new(false);
    exec.run(tasks, &|t| {
        let r = piece(rows.len(), tasks, 1, t);
        if r.is_empty() {
            return;
        }
        // SAFETY: pieces of the output rows are disjoint, and task t alone uses scratch
        // slice t (tasks <= scratch.len() / per_task unless the parameters are read in
        // place, when the scratch is not touched).
        let (o, sc) = unsafe {
            (
                out.slice(r.start * per_row..r.end * per_row),
                if in_place {
                    Some(&mut [][..])
                } else {
                    scr.slice(t * per_task..(t + 1) * per_task)
                },
            )
        };
        let ok = match (o, sc) {
            (Some(o), Some(sc)) => job
                .rows(rows.start + r.start..rows.start + r.end, o, sc)
                .is_ok(),
            _ => false,
        };
        if !ok {
            failed.store(true, core::sync::atomic::Ordering::Relaxed);
        }
    });
    if failed.load(core::sync::atomic::Ordering::Relaxed) {
        // Every length was checked above, so this does not happen; report it anyway.
        return Err(Error::Length {
            what: "grouped conv task",
            expected: 0,
            got: 1,
        });
    }
    Ok(())
}

/// Everything a task of [`grouped_conv`] reads.
struct GroupedJob<'a> {
    g: Grouped,
    input: &'a [f32],
    window_start: usize,
    weight: Vector<'a>,
    bias: Vector<'a>,
    /// The kernel and bias as f32 slices, when they can be read in place.
    f32_params: (Option<&'a [f32]>, Option<&'a [f32]>),
    kind: F32Kernel,
}

impl GroupedJob<'_> {
    /// Output rows `rows` into `out` (exactly those rows), decoding taps into `scratch`
    /// unless the parameters are read in place.
    fn rows(&self, rows: Range<usize>, out: &mut [f32], scratch: &mut [f32]) -> Result<(), Error> {
        #[cfg(target_arch = "x86_64")]
        match self.kind {
            // SAFETY: the kernel kind was chosen from the active CPU features.
            F32Kernel::Avx512 => return unsafe { self.rows_avx512(rows, out, scratch) },
            F32Kernel::Avx2 => return unsafe { self.rows_avx2(rows, out, scratch) },
            _ => {}
        }
        let _ = self.kind;
        self.rows_body(rows, out, scratch)
    }

    /// # Safety
    ///
    /// The CPU implements AVX2.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn rows_avx2(
        &self,
        rows: Range<usize>,
        out: &mut [f32],
        scratch: &mut [f32],
    ) -> Result<(), Error> {
        self.rows_body(rows, out, scratch)
    }

    /// # Safety
    ///
    /// The CPU implements AVX-512F.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,avx512f")]
    unsafe fn rows_avx512(
        &self,
        rows: Range<usize>,
        out: &mut [f32],
        scratch: &mut [f32],
    ) -> Result<(), Error> {
        self.rows_body(rows, out, scratch)
    }

    /// The reference loops (inlined into each instruction-set variant above, where LLVM
    /// vectorises the channel loops at that width; every element sees the same
    /// multiplies and adds in the same order, so all variants agree to the bit).
    #[inline(always)]
    fn rows_body(
        &self,
        rows: Range<usize>,
        out: &mut [f32],
        scratch: &mut [f32],
    ) -> Result<(), Error> {
        let g = &self.g;
        let (k, s, c, m) = (g.kernel, g.stride, g.channels, g.mult);
        let co = g.out_channels();
        let ow = g.out_width();
        let row_len = g.width * c;
        let pad = (k / 2) as isize;
        let ci_chunk = g.in_chunk();
        let mut ci0 = 0;
        while ci0 < c {
            let nci = ci_chunk.min(c - ci0);
            let (co0, nco) = (ci0 * m, nci * m);
            // The chunk's taps: `tap(t)` is the kernel row of tap t for these channels,
            // read in place or decoded into the scratch.
            let (wsrc, wstride, bk): (&[f32], usize, &[f32]) = match self.f32_params {
                (Some(wf), Some(bf)) => (
                    wf.get(co0..).unwrap_or_default(),
                    co,
                    bf.get(co0..co0 + nco).unwrap_or_default(),
                ),
                _ => {
                    let short = Error::Length {
                        what: "grouped conv scratch",
                        expected: g.scratch_floats(),
                        got: scratch.len(),
                    };
                    let (wk, rest) = scratch
                        .split_at_mut_checked(k * k * nco)
                        .ok_or(short.clone())?;
                    let bk = rest.get_mut(..nco).ok_or(short)?;
                    for (tap, dst) in wk.chunks_exact_mut(nco).enumerate() {
                        self.weight.load(tap * co + co0, dst)?;
                    }
                    self.bias.load(co0, bk)?;
                    (&*wk, nco, &*bk)
                }
            };

            // Output columns whose every tap lies inside the row (stride 1): there the
            // depthwise loop runs DW_PIXELS columns at once, each tap's weights loaded
            // once for all of them.
            let interior = if s == 1 && m == 1 && g.width + 1 >= k {
                (k / 2)..(g.width + k / 2 + 1 - k).min(ow)
            } else {
                0..0
            };
            for (oy, out_row) in rows.clone().zip(out.chunks_exact_mut(ow * co)) {
                let iy0 = (oy * s) as isize - pad;
                let kys = valid_taps(iy0, k, g.height);
                let mut ox = 0;
                while ox < ow {
                    if interior.contains(&ox) && ox + DW_PIXELS <= interior.end {
                        let block = DwBlock {
                            ox,
                            co,
                            ci0,
                            nci,
                            bias: bk,
                            taps: wsrc,
                            stride: wstride,
                            iy0,
                            kys: kys.clone(),
                        };
                        self.depthwise_block(&block, out_row);
                        ox += DW_PIXELS;
                        continue;
                    }
                    let Some(out_px) = out_row.get_mut(ox * co..(ox + 1) * co) else {
                        break;
                    };
                    // One column, any position: the loop below is the reference.
                    let (this, next) = (ox, ox + 1);
                    ox = next;
                    let ox = this;
                    let acc = out_px.get_mut(co0..co0 + nco).unwrap_or_default();
                    acc.copy_from_slice(bk);
                    let ix0 = (ox * s) as isize - pad;
                    let kxs = valid_taps(ix0, k, g.width);
                    if m == 1 {
                        // Depthwise: 16 channels at a time held in registers across every
                        // tap (the same additions, in the same tap order, as below).
                        let (acc16, _) = acc.as_chunks_mut::<16>();
                        for (v, a16) in acc16.iter_mut().enumerate() {
                            let mut r = *a16;
                            for ky in kys.clone() {
                                let iy = (iy0 + ky as isize) as usize - self.window_start;
                                for kx in kxs.clone() {
                                    let ix = (ix0 + kx as isize) as usize;
                                    let xo = iy * row_len + ix * c + ci0 + 16 * v;
                                    let t = ky * k + kx;
                                    let wo = t * wstride + 16 * v;
                                    let (Some(x), Some(w)) =
                                        (self.input.get(xo..xo + 16), wsrc.get(wo..wo + 16))
                                    else {
                                        continue;
                                    };
                                    for j in 0..16 {
                                        r[j] += x[j] * w[j];
                                    }
                                }
                            }
                            *a16 = r;
                        }
                        let done = acc16.len() * 16;
                        let acc = acc.get_mut(done..).unwrap_or_default();
                        let win = TapWindow {
                            taps: wsrc,
                            stride: wstride,
                            iy0,
                            kys: kys.clone(),
                            ix0,
                            kxs: kxs.clone(),
                        };
                        self.taps_grouped(acc, ci0 + done, done, &win);
                        continue;
                    }
                    for ky in kys.clone() {
                        let iy = (iy0 + ky as isize) as usize - self.window_start;
                        let Some(in_row) = self.input.get(iy * row_len..(iy + 1) * row_len) else {
                            continue;
                        };
                        for kx in kxs.clone() {
                            let ix = (ix0 + kx as isize) as usize;
                            let x = in_row
                                .get(ix * c + ci0..ix * c + ci0 + nci)
                                .unwrap_or_default();
                            let t = ky * k + kx;
                            let w = wsrc.get(t * wstride..t * wstride + nco).unwrap_or_default();
                            mac_grouped(acc, x, w, m);
                        }
                    }
                }
            }
            ci0 += nci;
        }
        Ok(())
    }
}

/// Output columns the depthwise fast path computes at once.
const DW_PIXELS: usize = 4;

/// Where a run of [`DW_PIXELS`] interior output columns of one row reads and writes.
struct DwBlock<'w> {
    /// First output column.
    ox: usize,
    /// Output channels per pixel.
    co: usize,
    /// First channel and channel count of the chunk.
    ci0: usize,
    nci: usize,
    /// The chunk's biases and taps (tap `t`'s weights at `t·stride`).
    bias: &'w [f32],
    taps: &'w [f32],
    stride: usize,
    /// Input row of tap row 0, and the tap rows inside the image.
    iy0: isize,
    kys: Range<usize>,
}

/// The taps one output pixel reads: a chunk's decoded taps (tap `t`'s weights at
/// `t·stride`), the input row and column of tap (0, 0), and the tap rows and columns
/// that land inside the image.
struct TapWindow<'w> {
    taps: &'w [f32],
    stride: usize,
    iy0: isize,
    kys: Range<usize>,
    ix0: isize,
    kxs: Range<usize>,
}

impl GroupedJob<'_> {
    /// Depthwise (stride 1) over [`DW_PIXELS`] adjacent output columns whose taps all lie
    /// inside the input row: 16 channels of every column in registers, each tap's 16
    /// weights loaded once for all columns. Each output sees the bias, then the taps in
    /// the per-pixel loop's order (tap rows, then columns), so the same bits.
    #[inline(always)]
    fn depthwise_block(&self, b: &DwBlock<'_>, out_row: &mut [f32]) {
        let g = &self.g;
        let (k, c) = (g.kernel, g.channels);
        let row_len = g.width * c;
        let pad = k / 2;
        let vecs = b.nci / 16;
        for v in 0..vecs {
            let ch = b.ci0 + 16 * v;
            let Some(bias) = b.bias.get(16 * v..).and_then(|s| s.first_chunk::<16>()) else {
                continue;
            };
            let mut r = [*bias; DW_PIXELS];
            for ky in b.kys.clone() {
                let iy = (b.iy0 + ky as isize) as usize - self.window_start;
                let Some(in_row) = self.input.get(iy * row_len..(iy + 1) * row_len) else {
                    continue;
                };
                for kx in 0..k {
                    let wo = (ky * k + kx) * b.stride + 16 * v;
                    let Some(w) = b.taps.get(wo..).and_then(|s| s.first_chunk::<16>()) else {
                        continue;
                    };
                    for (p, rp) in r.iter_mut().enumerate() {
                        // Column ox + p reads input column ox + p - pad + kx (>= 0 inside
                        // the interior).
                        let xo = (b.ox + p + kx - pad) * c + ch;
                        let Some(x) = in_row.get(xo..).and_then(|s| s.first_chunk::<16>()) else {
                            continue;
                        };
                        for j in 0..16 {
                            rp[j] += x[j] * w[j];
                        }
                    }
                }
            }
            for (p, rp) in r.iter().enumerate() {
                let o = (b.ox + p) * b.co + ch;
                if let Some(dst) = out_row.get_mut(o..o + 16) {
                    dst.copy_from_slice(rp);
                }
            }
        }
        // Channels past the last whole 16: the per-pixel loop's tail.
        let done = vecs * 16;
        if done < b.nci {
            let kxs = 0..k;
            for p in 0..DW_PIXELS {
                let ox = b.ox + p;
                let o = ox * b.co + b.ci0;
                let Some(acc) = out_row.get_mut(o + done..o + b.nci) else {
                    continue;
                };
                acc.copy_from_slice(b.bias.get(done..b.nci).unwrap_or_default());
                let ix0 = ox as isize - pad as isize;
                let win = TapWindow {
                    taps: b.taps,
                    stride: b.stride,
                    iy0: b.iy0,
                    kys: b.kys.clone(),
                    ix0,
                    kxs: kxs.clone(),
                };
                self.taps_grouped(acc, b.ci0 + done, done, &win);
            }
        }
    }

    /// Depthwise taps for the channels past the last whole 16 of a chunk: `acc` holds
    /// channels `c0 ..` (offset `w0` into each tap's weights).
    #[inline(always)]
    fn taps_grouped(&self, acc: &mut [f32], c0: usize, w0: usize, win: &TapWindow<'_>) {
        let TapWindow {
            taps: wsrc,
            stride: wstride,
            iy0,
            ref kys,
            ix0,
            ref kxs,
        } = *win;
        let g = &self.g;
        let (k, c) = (g.kernel, g.channels);
        let row_len = g.width * c;
        let n = acc.len();
        for ky in kys.clone() {
            let iy = (iy0 + ky as isize) as usize - self.window_start;
            for kx in kxs.clone() {
                let ix = (ix0 + kx as isize) as usize;
                let xo = iy * row_len + ix * c + c0;
                let wo = (ky * k + kx) * wstride + w0;
                let (Some(x), Some(w)) = (self.input.get(xo..xo + n), wsrc.get(wo..wo + n)) else {
                    continue;
                };
                mac_grouped(acc, x, w, 1);
            }
        }
    }
}

/// Geometry of a full (ungrouped) conv over a planar `channels x height x width` input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dense {
    /// Input height.
    pub height: usize,
    /// Input width.
    pub width: usize,
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Square kernel size (odd).
    pub kernel: usize,
    /// Stride in both directions.
    pub stride: usize,
}

impl Dense {
    /// Output height.
    pub fn out_height(&self) -> usize {
        out_len(self.height, self.kernel, self.stride)
    }

    /// Output width.
    pub fn out_width(&self) -> usize {
        out_len(self.width, self.kernel, self.stride)
    }

    /// f32s of scratch [`dense_conv_planar`] needs: the kernel transposed to
    /// `[kh, kw, in, out]` (outputs innermost, so a tap is one vector op), the bias, and
    /// one decoded kernel row for the transposition.
    pub fn scratch_floats(&self) -> usize {
        let taps = self.kernel * self.kernel * self.in_channels;
        (taps + 1) * self.out_channels + taps
    }

    /// Rows of the input that output rows `rows` read (clipped to the image).
    pub fn input_rows(&self, rows: Range<usize>) -> Range<usize> {
        input_rows(&rows, self.kernel, self.stride, self.height)
    }
}

/// Output rows `rows` of a full conv, plus bias, from a planar (CHW) input, as NHWC, with
/// the kernels `ctx.cpu` allows and the output pixels split across `ctx`'s tasks (every
/// choice gives the same bits).
///
/// `input` is the whole `in_channels x height x width` image, the weight is OHWI
/// `[out, kernel, kernel, in]`, `out` receives `rows.len() x out_width x out_channels`,
/// and `scratch` holds `g.scratch_floats()`.
pub fn dense_conv_planar(
    ctx: &mut Ctx<'_>,
    g: &Dense,
    params: ConvParams<'_>,
    input: &[f32],
    rows: Range<usize>,
    out: &mut [f32],
    scratch: &mut [f32],
) -> Result<(), Error> {
    let (cpu, exec) = (ctx.cpu, &mut *ctx.exec);
    let ConvParams { weight, bias } = params;
    let (k, s, ci, co) = (g.kernel, g.stride, g.in_channels, g.out_channels);
    if k.is_multiple_of(2)
        || s == 0
        || ci == 0
        || co == 0
        || g.out_height() == 0
        || g.out_width() == 0
    {
        return Err(Error::Config {
            what: "dense conv geometry (even kernel, zero stride/size or empty output)",
        });
    }
    let (oh, ow) = (g.out_height(), g.out_width());
    let plane = g.height * g.width;
    if rows.end > oh {
        return Err(Error::Length {
            what: "dense conv output rows",
            expected: oh,
            got: rows.end,
        });
    }
    check_len("dense conv input", ci * plane, input.len())?;
    check_len("dense conv weight", co * k * k * ci, weight.len())?;
    check_len("dense conv bias", co, bias.len())?;
    check_len("dense conv output", rows.len() * ow * co, out.len())?;
    if scratch.len() < g.scratch_floats() {
        return Err(Error::Length {
            what: "dense conv scratch",
            expected: g.scratch_floats(),
            got: scratch.len(),
        });
    }
    let taps = k * k * ci;
    let (wt, rest) = scratch.split_at_mut(taps * co);
    let (bt, rest) = rest.split_at_mut(co);
    let row = rest.get_mut(..taps).unwrap_or_default();
    // OHWI -> [tap][out], once per call (the stem calls it once per few rows).
    for o in 0..co {
        weight.load(o * taps, row)?;
        for (dst, &w) in wt.iter_mut().skip(o).step_by(co).zip(row.iter()) {
            *dst = w;
        }
    }
    bias.load(0, bt)?;
    let job = DenseJob {
        g: *g,
        input,
        wt: &*wt,
        bt: &*bt,
        kind: cpu.usable().f32_kernel(),
    };
    // The stem asks for one output row at a time, so split over output pixels.
    let first = rows.start * ow;
    let pixels = rows.len() * ow;
    let tasks = task_count(exec, pixels, pixels * co * taps);
    if tasks <= 1 {
        job.pixels(first..first + pixels, out);
        return Ok(());
    }
    let shared = SharedMut::new(out);
    exec.run(tasks, &|t| {
        let r = piece(pixels, tasks, 1, t);
        // SAFETY: the pieces of the output are disjoint.
        if let Some(o) = unsafe { shared.slice(r.start * co..r.end * co) } {
            job.pixels(first + r.start..first + r.end, o);
        }
    });
    Ok(())
}

/// What a task of [`dense_conv_planar`] reads: the input and the transposed kernel.
struct DenseJob<'a> {
    g: Dense,
    input: &'a [f32],
    wt: &'a [f32],
    bt: &'a [f32],
    kind: F32Kernel,
}

impl DenseJob<'_> {
    /// Output pixels `px` (flat indices `oy·out_width + ox`) into `out`.
    fn pixels(&self, px: Range<usize>, out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if matches!(self.kind, F32Kernel::Avx2 | F32Kernel::Avx512) {
            // SAFETY: the kernel kind was chosen from the active CPU features.
            unsafe { self.pixels_avx2(px, out) };
            return;
        }
        let _ = self.kind;
        self.pixels_body(px, out);
    }

    /// # Safety
    ///
    /// The CPU implements AVX2.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn pixels_avx2(&self, px: Range<usize>, out: &mut [f32]) {
        self.pixels_body(px, out);
    }

    /// The reference loops (vectorised over output channels at each variant's width,
    /// the same operations per element).
    #[inline(always)]
    fn pixels_body(&self, px: Range<usize>, out: &mut [f32]) {
        let g = &self.g;
        let (k, s, ci, co) = (g.kernel, g.stride, g.in_channels, g.out_channels);
        let ow = g.out_width();
        let plane = g.height * g.width;
        let pad = (k / 2) as isize;
        for (p, acc) in px.zip(out.chunks_exact_mut(co)) {
            let (oy, ox) = (p / ow.max(1), p % ow.max(1));
            acc.copy_from_slice(self.bt);
            let iy0 = (oy * s) as isize - pad;
            let kys = valid_taps(iy0, k, g.height);
            let ix0 = (ox * s) as isize - pad;
            let kxs = valid_taps(ix0, k, g.width);
            for ky in kys.clone() {
                let iy = (iy0 + ky as isize) as usize;
                for kx in kxs.clone() {
                    let ix = (ix0 + kx as isize) as usize;
                    for i in 0..ci {
                        let x = self
                            .input
                            .get(i * plane + iy * g.width + ix)
                            .copied()
                            .unwrap_or(0.0);
                        let t = (ky * k + kx) * ci + i;
                        let w = self.wt.get(t * co..(t + 1) * co).unwrap_or_default();
                        for (a, &w) in acc.iter_mut().zip(w) {
                            *a += x * w;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::one_task;
    use crate::test_util::values;
    use glimpse_quant::DType;
    use std::vec;
    use std::vec::Vec;

    /// Straight from the definition, in f64: out[o] = b[o] + sum x[o/m] w[o] over taps.
    fn grouped_reference(g: &Grouped, x: &[f32], w: &[f32], b: &[f32]) -> Vec<f32> {
        let (oh, ow, co) = (g.out_height(), g.out_width(), g.out_channels());
        let p = (g.kernel / 2) as isize;
        let mut out = vec![0f32; oh * ow * co];
        for oy in 0..oh {
            for ox in 0..ow {
                for o in 0..co {
                    let mut acc = b[o] as f64;
                    for ky in 0..g.kernel {
                        for kx in 0..g.kernel {
                            let iy = (oy * g.stride + ky) as isize - p;
                            let ix = (ox * g.stride + kx) as isize - p;
                            if iy < 0 || ix < 0 || iy >= g.height as isize || ix >= g.width as isize
                            {
                                continue;
                            }
                            let xi =
                                ((iy as usize * g.width + ix as usize) * g.channels) + o / g.mult;
                            acc += x[xi] as f64 * w[(ky * g.kernel + kx) * co + o] as f64;
                        }
                    }
                    out[(oy * ow + ox) * co + o] = acc as f32;
                }
            }
        }
        out
    }

    /// Every output row of `g` with f32 kernel and bias read in place.
    fn grouped_f32(g: &Grouped, x: &[f32], w: &[f32], b: &[f32]) -> Vec<f32> {
        let mut out = vec![0f32; g.out_height() * g.out_width() * g.out_channels()];
        let mut scratch = vec![0f32; g.scratch_floats()];
        one_task(|c| {
            grouped_conv(
                c,
                g,
                ConvParams {
                    weight: Vector::from_f32(w),
                    bias: Vector::from_f32(b),
                },
                InputRows::whole(x),
                0..g.out_height(),
                &mut out,
                &mut scratch,
            )
        })
        .unwrap();
        out
    }

    fn max_err(a: &[f32], b: &[f32]) -> f32 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn grouped_matches_definition_for_every_shape_in_use() {
        // Channel counts that exercise partial chunks (70 = 64 + 6), multipliers 1, 2, 3,
        // kernels 3 and 7, strides 1 and 2, odd and even sizes.
        for &(h, w, c, m, k, s) in &[
            (9, 7, 70, 1, 3, 1),
            (8, 8, 5, 1, 7, 1),
            (11, 6, 40, 2, 7, 2),
            (6, 6, 33, 2, 3, 1),
            (5, 9, 7, 3, 3, 2),
            (3, 3, 4, 1, 7, 1),
        ] {
            let g = Grouped {
                height: h,
                width: w,
                channels: c,
                mult: m,
                kernel: k,
                stride: s,
            };
            let co = g.out_channels();
            let x = values(h * w * c, 1);
            let wt = values(k * k * co, 2);
            let b = values(co, 3);
            let want = grouped_reference(&g, &x, &wt, &b);
            let got = grouped_f32(&g, &x, &wt, &b);
            // Sums of up to 49 products of values below 1: f32 rounding stays far below 1e-5.
            assert!(
                max_err(&got, &want) < 1e-5,
                "{g:?}: {}",
                max_err(&got, &want)
            );
        }
    }

    #[test]
    fn depthwise_column_blocks_keep_the_per_pixel_order_to_the_bit() {
        // Rows wide enough for several DW_PIXELS blocks plus left-over interior columns
        // and both borders; 70 channels = a 64-channel chunk with a 6-channel tail.
        for &(h, w, c, k) in &[
            (5, 23, 48, 7),
            (4, 13, 70, 3),
            (6, 11, 16, 7),
            (3, 4, 32, 3),
        ] {
            let g = Grouped {
                height: h,
                width: w,
                channels: c,
                mult: 1,
                kernel: k,
                stride: 1,
            };
            let x = values(h * w * c, 4);
            let wt = values(k * k * c, 5);
            let b = values(c, 6);
            // f32, bias first, then the valid taps row by row: the reference loop's order.
            let p = (k / 2) as isize;
            let mut want = vec![0f32; h * w * c];
            for oy in 0..h {
                for ox in 0..w {
                    for o in 0..c {
                        let mut acc = b[o];
                        for ky in 0..k {
                            for kx in 0..k {
                                let (iy, ix) =
                                    (oy as isize + ky as isize - p, ox as isize + kx as isize - p);
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                    continue;
                                }
                                let xi = (iy as usize * w + ix as usize) * c + o;
                                acc += x[xi] * wt[(ky * k + kx) * c + o];
                            }
                        }
                        want[(oy * w + ox) * c + o] = acc;
                    }
                }
            }
            let got = grouped_f32(&g, &x, &wt, &b);
            for (i, (a, e)) in got.iter().zip(&want).enumerate() {
                assert_eq!(a.to_bits(), e.to_bits(), "{g:?} element {i}: {a} vs {e}");
            }
        }
    }

    #[test]
    fn row_tiles_from_input_windows_match_the_whole() {
        let g = Grouped {
            height: 13,
            width: 5,
            channels: 9,
            mult: 2,
            kernel: 7,
            stride: 2,
        };
        let co = g.out_channels();
        let x = values(13 * 5 * 9, 4);
        let wt = values(49 * co, 5);
        let b = values(co, 6);
        let want = grouped_reference(&g, &x, &wt, &b);
        let row = g.out_width() * co;
        let mut scratch = vec![0f32; g.scratch_floats()];
        for oy in 0..g.out_height() {
            let need = g.input_rows(oy..oy + 1);
            let window = &x[need.start * 5 * 9..need.end * 5 * 9];
            let mut got = vec![0f32; row];
            one_task(|c| {
                grouped_conv(
                    c,
                    &g,
                    ConvParams {
                        weight: Vector::from_f32(&wt),
                        bias: Vector::from_f32(&b),
                    },
                    InputRows {
                        data: window,
                        first_row: need.start,
                    },
                    oy..oy + 1,
                    &mut got,
                    &mut scratch,
                )
            })
            .unwrap();
            assert!(max_err(&got, &want[oy * row..(oy + 1) * row]) < 1e-5);
        }
        // A window that misses a needed row is refused, not read out of bounds.
        let mut got = vec![0f32; row];
        let r = one_task(|c| {
            grouped_conv(
                c,
                &g,
                ConvParams {
                    weight: Vector::from_f32(&wt),
                    bias: Vector::from_f32(&b),
                },
                InputRows {
                    data: &x[5 * 9..],
                    first_row: 1,
                },
                2..3,
                &mut got,
                &mut scratch,
            )
        });
        assert!(r.is_ok());
        let r = one_task(|c| {
            grouped_conv(
                c,
                &g,
                ConvParams {
                    weight: Vector::from_f32(&wt),
                    bias: Vector::from_f32(&b),
                },
                InputRows {
                    data: &x[5 * 5 * 9..],
                    first_row: 5,
                },
                2..3,
                &mut got,
                &mut scratch,
            )
        });
        assert!(matches!(r, Err(Error::Length { .. })), "{r:?}");
    }

    #[test]
    fn f16_kernels_decode_to_the_same_result() {
        let g = Grouped {
            height: 6,
            width: 6,
            channels: 12,
            mult: 1,
            kernel: 3,
            stride: 1,
        };
        let x = values(6 * 6 * 12, 7);
        // Values exactly representable in f16, so both paths see the same kernel.
        let wt: Vec<f32> = values(9 * 12, 8)
            .iter()
            .map(|&v| half::f16::from_f32(v).to_f32())
            .collect();
        let b = values(12, 9);
        let wt16: Vec<u8> = wt
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect();
        let mut a = vec![0f32; 6 * 6 * 12];
        let mut bb = a.clone();
        let mut scratch = vec![0f32; g.scratch_floats()];
        one_task(|c| {
            grouped_conv(
                c,
                &g,
                ConvParams {
                    weight: Vector::from_f32(&wt),
                    bias: Vector::from_f32(&b),
                },
                InputRows::whole(&x),
                0..6,
                &mut a,
                &mut scratch,
            )
        })
        .unwrap();
        one_task(|c| {
            grouped_conv(
                c,
                &g,
                ConvParams {
                    weight: Vector::from_bytes(DType::F16, &wt16).unwrap(),
                    bias: Vector::from_f32(&b),
                },
                InputRows::whole(&x),
                0..6,
                &mut bb,
                &mut scratch,
            )
        })
        .unwrap();
        assert_eq!(a, bb);
        assert!(Vector::from_bytes(DType::Q8_0, &[0; 34]).is_err());
    }

    #[test]
    fn wrong_lengths_are_errors() {
        let g = Grouped {
            height: 4,
            width: 4,
            channels: 2,
            mult: 1,
            kernel: 3,
            stride: 1,
        };
        let x = vec![0f32; 32];
        let wt = vec![0f32; 18];
        let b = vec![0f32; 2];
        let mut out = vec![0f32; 32];
        let mut scratch = vec![0f32; g.scratch_floats()];
        let p = Vector::from_f32;
        assert!(
            one_task(|c| grouped_conv(
                c,
                &g,
                ConvParams {
                    weight: p(&wt[..17]),
                    bias: p(&b)
                },
                InputRows::whole(&x),
                0..4,
                &mut out,
                &mut scratch
            ))
            .is_err()
        );
        assert!(
            one_task(|c| grouped_conv(
                c,
                &g,
                ConvParams {
                    weight: p(&wt),
                    bias: p(&b[..1])
                },
                InputRows::whole(&x),
                0..4,
                &mut out,
                &mut scratch
            ))
            .is_err()
        );
        assert!(
            one_task(|c| grouped_conv(
                c,
                &g,
                ConvParams {
                    weight: p(&wt),
                    bias: p(&b)
                },
                InputRows::whole(&x[..31]),
                0..4,
                &mut out,
                &mut scratch
            ))
            .is_err()
        );
        assert!(
            one_task(|c| grouped_conv(
                c,
                &g,
                ConvParams {
                    weight: p(&wt),
                    bias: p(&b)
                },
                InputRows::whole(&x),
                0..5,
                &mut out,
                &mut scratch
            ))
            .is_err()
        );
        assert!(
            one_task(|c| grouped_conv(
                c,
                &g,
                ConvParams {
                    weight: p(&wt),
                    bias: p(&b)
                },
                InputRows::whole(&x),
                0..4,
                &mut out[1..],
                &mut scratch
            ))
            .is_err()
        );
        assert!(
            one_task(|c| grouped_conv(
                c,
                &g,
                ConvParams {
                    weight: p(&wt),
                    bias: p(&b)
                },
                InputRows::whole(&x),
                0..4,
                &mut out,
                &mut scratch[1..]
            ))
            .is_err()
        );
        let even = Grouped { kernel: 2, ..g };
        assert!(
            one_task(|c| grouped_conv(
                c,
                &even,
                ConvParams {
                    weight: p(&wt),
                    bias: p(&b)
                },
                InputRows::whole(&x),
                0..1,
                &mut out,
                &mut scratch
            ))
            .is_err()
        );
    }

    #[test]
    fn dense_planar_matches_definition() {
        for &(h, w, ci, co, k, s) in &[(10, 9, 3, 20, 3, 2), (5, 5, 2, 3, 3, 1), (7, 4, 3, 8, 5, 2)]
        {
            let g = Dense {
                height: h,
                width: w,
                in_channels: ci,
                out_channels: co,
                kernel: k,
                stride: s,
            };
            let x = values(ci * h * w, 10);
            let wt = values(co * k * k * ci, 11);
            let b = values(co, 12);
            let (oh, ow) = (g.out_height(), g.out_width());
            let p = (k / 2) as isize;
            let mut want = vec![0f32; oh * ow * co];
            for oy in 0..oh {
                for ox in 0..ow {
                    for o in 0..co {
                        let mut acc = b[o] as f64;
                        for ky in 0..k {
                            for kx in 0..k {
                                let iy = (oy * s + ky) as isize - p;
                                let ix = (ox * s + kx) as isize - p;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                    continue;
                                }
                                for i in 0..ci {
                                    let xv = x[i * h * w + iy as usize * w + ix as usize];
                                    let wv = wt[((o * k + ky) * k + kx) * ci + i];
                                    acc += xv as f64 * wv as f64;
                                }
                            }
                        }
                        want[(oy * ow + ox) * co + o] = acc as f32;
                    }
                }
            }
            let mut scratch = vec![0f32; g.scratch_floats()];
            // Two row tiles, to check the row offset.
            let split = oh / 2;
            let mut got = vec![0f32; want.len()];
            let (top, bottom) = got.split_at_mut(split * ow * co);
            let (wp, bp) = (Vector::from_f32(&wt), Vector::from_f32(&b));
            one_task(|c| {
                dense_conv_planar(
                    c,
                    &g,
                    ConvParams {
                        weight: wp,
                        bias: bp,
                    },
                    &x,
                    0..split,
                    top,
                    &mut scratch,
                )
            })
            .unwrap();
            one_task(|c| {
                dense_conv_planar(
                    c,
                    &g,
                    ConvParams {
                        weight: wp,
                        bias: bp,
                    },
                    &x,
                    split..oh,
                    bottom,
                    &mut scratch,
                )
            })
            .unwrap();
            assert!(max_err(&got, &want) < 1e-5, "{g:?}");
        }
    }
}
