//! The instruction-set variants and the threaded split of the convolutions against the
//! scalar single-task reference: grouped (depthwise and channel-multiplier) convs with
//! f32 kernels read in place and f16 kernels decoded per task, and the dense planar conv,
//! on 1, 2, 3 and 7 threads. The contract is bit-identical output.

use glimpse_core::kernels::Ctx;
use glimpse_core::kernels::Vector;
use glimpse_core::kernels::conv::{
    ConvParams, Dense, Grouped, InputRows, dense_conv_planar, grouped_conv,
};
use glimpse_core::kernels::cpu::Cpu;
use glimpse_hal::{Executor, Sequential};
use glimpse_host::ThreadPool;
use glimpse_quant::DType;

fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn executors() -> Vec<Box<dyn Executor>> {
    let mut v: Vec<Box<dyn Executor>> = vec![Box::new(Sequential)];
    for t in [1, 2, 3, 7] {
        v.push(Box::new(ThreadPool::new(t).unwrap()));
    }
    v
}

fn cpus() -> Vec<Cpu> {
    let active = glimpse_host::cpu::install(None);
    vec![Cpu::SCALAR, active.without(Cpu::AVX512F), active]
}

#[test]
fn grouped_convs_agree_across_kernels_and_threads() {
    let shapes = [
        // (height, width, channels, mult, kernel, stride)
        (9, 11, 24, 1, 3, 1),
        (12, 10, 80, 1, 7, 1),
        (13, 9, 20, 2, 7, 2),
        (8, 8, 70, 1, 3, 2),
    ];
    let mut execs = executors();
    for (h, w, c, m, k, s) in shapes {
        let g = Grouped {
            height: h,
            width: w,
            channels: c,
            mult: m,
            kernel: k,
            stride: s,
        };
        let co = g.out_channels();
        let (oh, ow) = (g.out_height(), g.out_width());
        let x = values(h * w * c, 1);
        let wt = values(k * k * co, 2);
        let b = values(co, 3);
        let wt16: Vec<u8> = wt
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect();
        let b16: Vec<u8> = b
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect();
        let params = [
            (Vector::from_f32(&wt), Vector::from_f32(&b)),
            (
                Vector::from_bytes(DType::F16, &wt16).unwrap(),
                Vector::from_bytes(DType::F16, &b16).unwrap(),
            ),
        ];
        for (weight, bias) in params {
            let pw = weight;
            let params = ConvParams { weight, bias };
            // Rows 1.. of the output from a window starting at the first input row they
            // need, as the row-tiled callers do.
            let rows = 1..oh;
            let in0 = g.input_rows(rows.clone()).start;
            let input = &x[in0 * w * c..];
            let mut want = vec![0f32; rows.len() * ow * co];
            let mut scratch = vec![0f32; g.scratch_floats()];
            let input = InputRows {
                data: input,
                first_row: in0,
            };
            let mut seq = Sequential;
            let mut reference = Ctx::new(&mut seq).with_cpu(Cpu::SCALAR);
            grouped_conv(
                &mut reference,
                &g,
                params,
                input,
                rows.clone(),
                &mut want,
                &mut scratch,
            )
            .unwrap();
            for cpu in cpus() {
                for e in execs.iter_mut() {
                    // Room for 8 tasks' decoded taps, so f16 kernels split too.
                    let mut scratch = vec![0f32; 8 * g.scratch_floats()];
                    let mut got = vec![f32::NAN; want.len()];
                    let mut ctx = Ctx::new(e.as_mut()).with_cpu(cpu);
                    grouped_conv(
                        &mut ctx,
                        &g,
                        params,
                        input,
                        rows.clone(),
                        &mut got,
                        &mut scratch,
                    )
                    .unwrap();
                    assert_eq!(
                        bits(&got),
                        bits(&want),
                        "{g:?} {:?} {cpu:?} {} tasks",
                        pw.dtype(),
                        e.parallelism()
                    );
                }
            }
        }
    }
}

#[test]
fn dense_conv_agrees_across_kernels_and_threads() {
    let g = Dense {
        height: 17,
        width: 15,
        in_channels: 3,
        out_channels: 40,
        kernel: 3,
        stride: 2,
    };
    let (oh, ow) = (g.out_height(), g.out_width());
    let x = values(3 * 17 * 15, 4);
    let w = values(40 * 9 * 3, 5);
    let b = values(40, 6);
    let params = ConvParams {
        weight: Vector::from_f32(&w),
        bias: Vector::from_f32(&b),
    };
    let mut scratch = vec![0f32; g.scratch_floats()];
    let mut want = vec![0f32; oh * ow * 40];
    let mut seq = Sequential;
    let mut reference = Ctx::new(&mut seq).with_cpu(Cpu::SCALAR);
    dense_conv_planar(
        &mut reference,
        &g,
        params,
        &x,
        0..oh,
        &mut want,
        &mut scratch,
    )
    .unwrap();
    let mut execs = executors();
    for cpu in cpus() {
        for e in execs.iter_mut() {
            // One row at a time, as the stem calls it.
            let mut got = vec![f32::NAN; want.len()];
            let mut ctx = Ctx::new(e.as_mut()).with_cpu(cpu);
            for (r, o) in got.chunks_exact_mut(ow * 40).enumerate() {
                dense_conv_planar(&mut ctx, &g, params, &x, r..r + 1, o, &mut scratch).unwrap();
            }
            assert_eq!(bits(&got), bits(&want), "{cpu:?} {} tasks", e.parallelism());
        }
    }
}
