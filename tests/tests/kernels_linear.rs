//! The SIMD and threaded linear kernels against the scalar reference: every kernel family
//! the CPU allows (AVX2, AVX-512 VNNI, ... chosen by narrowing the installed features),
//! every weight format, awkward shapes (rows not a multiple of the tiles, activation rows
//! not a multiple of the packed groups), adversarial codes, and 1, 2, 3 and 7 threads.
//! The contract is bit-identical output, so every comparison is on the bits.

use glimpse_core::kernels::cpu::{Cpu, F32Kernel, Q8Kernel};
use glimpse_core::kernels::linear::{Weights, linear, linear_scratch_bytes, row_bytes};
use glimpse_core::kernels::{Ctx, Vector, with_default_ctx};
use glimpse_hal::{Executor, Sequential};
use glimpse_host::ThreadPool;
use glimpse_quant::DType;
use glimpse_quant::blocks::quantize_row;

/// Deterministic values (xorshift), roughly normal, times `scale`.
fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            let mut u = 0f32;
            for _ in 0..4 {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                u += (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
            }
            u * 1.7 * scale
        })
        .collect()
}

fn encode(dtype: DType, w: &[f32], rows: usize, cols: usize) -> Vec<u8> {
    let rb = row_bytes(dtype, cols).unwrap();
    let mut out = vec![0u8; rows * rb];
    for (src, dst) in w.chunks_exact(cols).zip(out.chunks_exact_mut(rb)) {
        quantize_row(dtype, src, dst).unwrap();
    }
    out
}

/// The CPU feature sets to compare: everything active, and each narrower family the
/// active set contains (so every kernel this machine can run is exercised).
fn cpu_variants() -> Vec<Cpu> {
    let active = glimpse_host::cpu::install(None);
    let mut v = vec![active];
    let narrower = [
        active.without(Cpu::AVX512VNNI),
        active.without(Cpu::AVX512VNNI.union(Cpu::AVXVNNI)),
        active.without(Cpu::AVX512F),
        Cpu::AVX2.union(Cpu::F16C).union(Cpu::FMA).usable(),
    ];
    for c in narrower {
        if !v
            .iter()
            .any(|x| x.q8_kernel() == c.q8_kernel() && x.f32_kernel() == c.f32_kernel())
        {
            v.push(c);
        }
    }
    v
}

/// One thread pool per count.
fn pools(threads: &[usize]) -> Vec<ThreadPool> {
    threads
        .iter()
        .map(|&t| ThreadPool::new(t).unwrap())
        .collect()
}

fn run_on(
    cpu: Cpu,
    exec: &mut dyn Executor,
    w: &Weights,
    bias: Option<&Vector>,
    x: &[f32],
    n: usize,
) -> Vec<f32> {
    let mut y = vec![f32::NAN; n * w.rows];
    let mut scratch = vec![0u8; linear_scratch_bytes(w, n)];
    linear(
        &mut Ctx::new(exec).with_cpu(cpu),
        w,
        bias,
        x,
        n,
        &mut y,
        &mut scratch,
    )
    .unwrap();
    y
}

fn assert_bits(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (k, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.to_bits(), w.to_bits(), "{what}: element {k}: {g} vs {w}");
    }
}

const FORMATS: [DType; 7] = [
    DType::Q8_0,
    DType::F32,
    DType::F16,
    DType::BF16,
    DType::E4M3,
    DType::E5M2,
    DType::MxFp8,
];

#[test]
fn every_kernel_is_bit_identical_to_the_reference() {
    let cpus = cpu_variants();
    for c in &cpus {
        println!(
            "kernels: {c:?} -> q8 {}, f32 {}",
            c.q8_kernel().name(),
            c.f32_kernel().name()
        );
    }
    // rows: under a GEMV tile, not a multiple of 8 or 4; n: 1 (GEMV), under / at /
    // past the 8- and 16-row packed groups, several groups plus a tail.
    let shapes = [(5, 64), (8, 32), (27, 96), (64, 160), (19, 256)];
    let ns = [1usize, 2, 7, 8, 9, 16, 17, 33, 40];
    for dtype in FORMATS {
        for &(rows, cols) in &shapes {
            let w = values(rows * cols, rows as u64 * 31 + cols as u64, 0.05);
            let data = encode(dtype, &w, rows, cols);
            let wm = Weights::new(dtype, rows, cols, &data).unwrap();
            for &n in &ns {
                let x = values(n * cols, 1000 + n as u64, 1.0);
                let want = run_on(Cpu::SCALAR, &mut Sequential, &wm, None, &x, n);
                for &c in &cpus {
                    let got = run_on(c, &mut Sequential, &wm, None, &x, n);
                    assert_bits(&got, &want, &format!("{dtype:?} {rows}x{cols} n={n} {c:?}"));
                }
            }
        }
    }
}

#[test]
fn element_formats_with_column_tails() {
    // cols not a multiple of 16: the SIMD tiles leave a sequential tail.
    let cpus = cpu_variants();
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        for cols in [1usize, 15, 17, 40, 100] {
            let rows = 9;
            let w = values(rows * cols, cols as u64, 0.1);
            let data = encode(dtype, &w, rows, cols);
            let wm = Weights::new(dtype, rows, cols, &data).unwrap();
            for n in [1usize, 3] {
                let x = values(n * cols, 7, 1.0);
                let want = run_on(Cpu::SCALAR, &mut Sequential, &wm, None, &x, n);
                for &c in &cpus {
                    let got = run_on(c, &mut Sequential, &wm, None, &x, n);
                    assert_bits(&got, &want, &format!("{dtype:?} cols={cols} n={n} {c:?}"));
                }
            }
        }
    }
}

#[test]
fn adversarial_q8_codes_stay_exact() {
    // Weight codes of -128 (never written by our quantizer, but legal bytes in an
    // image) against activations of ±127 maximise every partial sum the sign trick and
    // vpmaddubsw form: 2·128·127 must not saturate an i16. Zero blocks and a huge scale
    // (f16 65504) exercise the float side.
    let (rows, cols) = (24, 128);
    let nb = cols / 32;
    let mut data = vec![0u8; rows * nb * 34];
    for (r, row) in data.chunks_exact_mut(nb * 34).enumerate() {
        for (b, blk) in row.chunks_exact_mut(34).enumerate() {
            let d = match (r + b) % 4 {
                0 => half::f16::from_f32(65504.0),
                1 => half::f16::from_f32(1e-7),
                _ => half::f16::from_f32(0.01 * (r + 1) as f32),
            };
            blk[..2].copy_from_slice(&d.to_le_bytes());
            for (k, q) in blk[2..].iter_mut().enumerate() {
                *q = match (r + k) % 3 {
                    0 => 0x80,
                    1 => 0x7f,
                    _ => (k as u8).wrapping_mul(37),
                };
            }
        }
    }
    let wm = Weights::new(DType::Q8_0, rows, cols, &data).unwrap();
    for n in [1usize, 16, 35] {
        let mut x = values(n * cols, 3, 1.0);
        for (k, v) in x.iter_mut().enumerate() {
            match k % 5 {
                // Blocks whose amax sits at both signs quantize to ±127.
                0 => *v = 100.0,
                1 => *v = -100.0,
                _ => {}
            }
        }
        // One all-zero activation block (scale 0).
        x[..32].fill(0.0);
        let want = run_on(Cpu::SCALAR, &mut Sequential, &wm, None, &x, n);
        for c in cpu_variants() {
            let got = run_on(c, &mut Sequential, &wm, None, &x, n);
            assert_bits(&got, &want, &format!("adversarial n={n} {c:?}"));
        }
    }
}

#[test]
fn every_fp8_code_decodes_like_the_table() {
    // A weight matrix holding each of the 256 codes (NaN codes included) in each
    // position mod 16, times a one-hot activation per column: the output is exactly the
    // decoded weight, so the SIMD f16 trick must agree with the 256-entry table.
    let (rows, cols) = (16, 256);
    for dtype in [DType::E4M3, DType::E5M2, DType::MxFp8] {
        let bsz = dtype.block_bytes();
        let nb = cols / 32;
        let mut data = vec![0u8; rows * nb * bsz];
        for (r, row) in data.chunks_exact_mut(nb * bsz).enumerate() {
            for (b, blk) in row.chunks_exact_mut(bsz).enumerate() {
                let head = bsz - 32;
                if head == 2 {
                    blk[..2].copy_from_slice(&half::f16::from_f32(0.75).to_le_bytes());
                } else {
                    blk[0] = 126; // E8M0 2^-1
                }
                for (k, q) in blk[head..].iter_mut().enumerate() {
                    *q = ((b * 32 + k + r * 16) % 256) as u8;
                }
            }
        }
        let wm = Weights::new(dtype, rows, cols, &data).unwrap();
        let n = 4;
        let mut x = vec![0f32; n * cols];
        for i in 0..n {
            x[i * cols + (i * 67) % cols] = 1.0;
        }
        let want = run_on(Cpu::SCALAR, &mut Sequential, &wm, None, &x, n);
        for c in cpu_variants() {
            let got = run_on(c, &mut Sequential, &wm, None, &x, n);
            for (k, (g, w)) in got.iter().zip(&want).enumerate() {
                // NaN payloads are not part of the contract; NaN-ness is.
                if w.is_nan() {
                    assert!(g.is_nan(), "{dtype:?} {c:?} element {k}");
                } else {
                    assert_eq!(g.to_bits(), w.to_bits(), "{dtype:?} {c:?} element {k}");
                }
            }
        }
    }
}

#[test]
fn threads_do_not_change_a_bit() {
    let mut pools = pools(&[1, 2, 3, 7]);
    let (rows, cols) = (203, 320);
    let bias_v = values(rows, 9, 0.5);
    let bias = Vector::from_f32(&bias_v);
    for dtype in FORMATS {
        let w = values(rows * cols, 17, 0.05);
        let data = encode(dtype, &w, rows, cols);
        let wm = Weights::new(dtype, rows, cols, &data).unwrap();
        // 150 rows are enough work to split the activation quantizer too (in whole
        // packed groups, with a plain tail).
        for n in [1usize, 5, 37, 150] {
            let x = values(n * cols, 23 + n as u64, 1.0);
            // The reference: scalar kernel, one task, through the public entry point.
            let mut want = vec![0f32; n * rows];
            let mut scratch = vec![0u8; linear_scratch_bytes(&wm, n)];
            linear(
                &mut Ctx::new(&mut Sequential).with_cpu(Cpu::SCALAR),
                &wm,
                Some(&bias),
                &x,
                n,
                &mut want,
                &mut scratch,
            )
            .unwrap();
            for pool in pools.iter_mut() {
                for c in [Cpu::SCALAR, Cpu::active()] {
                    let got = run_on(c, pool, &wm, Some(&bias), &x, n);
                    assert_bits(
                        &got,
                        &want,
                        &format!("{dtype:?} n={n} {} threads {c:?}", pool.threads()),
                    );
                }
            }
        }
    }
}

#[test]
fn the_default_entry_point_uses_the_active_kernels() {
    let active = glimpse_host::cpu::install(None);
    let (rows, cols) = (16, 64);
    let w = values(rows * cols, 1, 0.1);
    let data = encode(DType::Q8_0, &w, rows, cols);
    let wm = Weights::new(DType::Q8_0, rows, cols, &data).unwrap();
    let x = values(cols * 20, 2, 1.0);
    let mut y = vec![0f32; 20 * rows];
    let mut s = vec![0u8; linear_scratch_bytes(&wm, 20)];
    with_default_ctx(|c| linear(c, &wm, None, &x, 20, &mut y, &mut s)).unwrap();
    assert_bits(
        &y,
        &run_on(active, &mut Sequential, &wm, None, &x, 20),
        "linear",
    );
    // On an x86_64 host with AVX2 the fast kernels must actually be chosen.
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("f16c") {
        assert_ne!(active.q8_kernel(), Q8Kernel::Scalar);
        assert_ne!(active.f32_kernel(), F32Kernel::Scalar);
    }
}

/// Q8_0 weights with f32 activations (W8A32) compute exactly what f32 weights holding
/// the dequantized values `d·q` compute (the reference's f32 path, scalar, one task),
/// for every kernel family and thread count, and differ from W8A8 (so the mode is
/// really switched).
#[test]
fn q8_0_with_f32_activations_equals_f32_on_the_dequantized_weights() {
    use glimpse_core::kernels::linear::Q8Activations;
    let cpus = cpu_variants();
    let mut pools = pools(&[2, 3]);
    for &(rows, cols) in &[(5, 64), (27, 96), (64, 160), (203, 320)] {
        let w = values(rows * cols, rows as u64 * 7 + cols as u64, 0.05);
        let data = encode(DType::Q8_0, &w, rows, cols);
        let q8 = Weights::new(DType::Q8_0, rows, cols, &data)
            .unwrap()
            .with_activations(Q8Activations::F32);
        let mut deq = vec![0f32; rows * cols];
        for (r, out) in deq.chunks_exact_mut(cols).enumerate() {
            q8.dequantize_row(r, out).unwrap();
        }
        let f32_bytes: Vec<u8> = deq.iter().flat_map(|v| v.to_le_bytes()).collect();
        let f = Weights::new(DType::F32, rows, cols, &f32_bytes).unwrap();
        for n in [1usize, 2, 9, 33] {
            let x = values(n * cols, 500 + n as u64, 1.0);
            let want = run_on(Cpu::SCALAR, &mut Sequential, &f, None, &x, n);
            for &c in &cpus {
                let got = run_on(c, &mut Sequential, &q8, None, &x, n);
                assert_bits(&got, &want, &format!("W8A32 {rows}x{cols} n={n} {c:?}"));
            }
            for pool in pools.iter_mut() {
                let got = run_on(Cpu::active(), pool, &q8, None, &x, n);
                let what = format!("W8A32 {rows}x{cols} n={n} {} threads", pool.threads());
                assert_bits(&got, &want, &what);
            }
            let w8a8 = run_on(
                Cpu::active(),
                &mut Sequential,
                &q8.with_activations(Q8Activations::Int8),
                None,
                &x,
                n,
            );
            assert!(
                w8a8.iter().zip(&want).any(|(a, b)| a != b),
                "W8A8 and W8A32 agree to the bit on {rows}x{cols} n={n}"
            );
        }
    }
}

/// `data` (plain Q8_0 rows) rearranged four rows at a time.
fn repacked(data: &[u8], rows: usize, cols: usize) -> Vec<u8> {
    use glimpse_quant::layout::{ROWS4, ROWS4_BLOCK_BYTES};
    let mut out = vec![0u8; rows / ROWS4 * cols / 32 * ROWS4_BLOCK_BYTES];
    glimpse_quant::repack::repack_rows4(rows, cols, data, &mut out).unwrap();
    out
}

#[test]
fn four_row_groups_give_the_plain_rows_bits_on_every_kernel_and_thread_count() {
    use glimpse_core::kernels::linear::Q8Activations;
    use glimpse_quant::layout::TensorLayout;
    let cpus = cpu_variants();
    let mut pools = pools(&[2, 3, 7]);
    // rows: one group, a GEMV group and a half, many groups split unevenly over 3 and 7
    // tasks; n: GEMV, under / at / past the packed activation groups.
    for &(rows, cols) in &[(4, 32), (12, 96), (64, 160), (204, 320)] {
        let w = values(rows * cols, rows as u64 * 13 + cols as u64, 0.05);
        let mut data = encode(DType::Q8_0, &w, rows, cols);
        // A few -128 codes (legal bytes the quantizer never writes): the stored sums
        // and the sign trick must both stay exact with them.
        for k in (40..data.len()).step_by(331) {
            if k % 34 >= 2 {
                data[k] = 0x80;
            }
        }
        let packed = repacked(&data, rows, cols);
        let plain = Weights::new(DType::Q8_0, rows, cols, &data).unwrap();
        let r4 =
            Weights::with_layout(DType::Q8_0, TensorLayout::Q8Rows4, rows, cols, &packed).unwrap();
        assert!(r4.row(0).is_none(), "rows of a group are not contiguous");
        let (mut a, mut b) = (vec![0f32; cols], vec![0f32; cols]);
        for r in 0..rows {
            plain.dequantize_row(r, &mut a).unwrap();
            r4.dequantize_row(r, &mut b).unwrap();
            assert_bits(&b, &a, &format!("dequantize row {r} of {rows}x{cols}"));
        }
        assert!(r4.dequantize_row(rows, &mut b).is_err());
        for n in [1usize, 7, 8, 16, 17, 40, 150] {
            let x = values(n * cols, 77 + n as u64, 1.0);
            for act in [Q8Activations::Int8, Q8Activations::F32] {
                let (p, q) = (plain.with_activations(act), r4.with_activations(act));
                let want = run_on(Cpu::SCALAR, &mut Sequential, &p, None, &x, n);
                for &c in &cpus {
                    let got = run_on(c, &mut Sequential, &q, None, &x, n);
                    let what = format!("rows4 {act:?} {rows}x{cols} n={n} {c:?}");
                    assert_bits(&got, &want, &what);
                }
                for pool in pools.iter_mut() {
                    let got = run_on(Cpu::active(), pool, &q, None, &x, n);
                    let what = format!("rows4 {act:?} {rows}x{cols} n={n} {}t", pool.threads());
                    assert_bits(&got, &want, &what);
                }
            }
        }
    }
    // Shapes the layout cannot hold are refused.
    let data = vec![0u8; 6 * 2 * 36];
    assert!(Weights::with_layout(DType::Q8_0, TensorLayout::Q8Rows4, 6, 64, &data).is_err());
    let data = vec![0u8; 4 * 2 * 36];
    assert!(Weights::with_layout(DType::E4M3, TensorLayout::Q8Rows4, 4, 64, &data).is_err());
    assert!(Weights::with_layout(DType::Q8_0, TensorLayout::Q8Rows4, 4, 64, &data[1..]).is_err());
}

#[test]
fn causal_attention_split_over_threads_changes_no_bit() {
    use glimpse_core::decoder::attention::{Heads, KeysValues, causal};
    let g = Heads {
        heads: 6,
        kv_heads: 2,
        head_dim: 16,
    };
    let mut pools = pools(&[2, 3, 7]);
    // A first chunk and a later one (p0 > 0), several queries per task and fewer.
    for (p0, m) in [(0usize, 37usize), (20, 5), (3, 2)] {
        let ctx = p0 + m;
        let q = values(m * g.q_dim(), 31 + m as u64, 1.0);
        let k = values(ctx * g.kv_dim(), 32, 1.0);
        let v = values(ctx * g.kv_dim(), 33, 1.0);
        let k16: Vec<half::f16> = k.iter().map(|&x| half::f16::from_f32(x)).collect();
        let v16: Vec<half::f16> = v.iter().map(|&x| half::f16::from_f32(x)).collect();
        let mut scores = vec![0f32; ctx];
        let mut want = vec![0f32; m * g.q_dim()];
        let mut want16 = vec![0f32; m * g.q_dim()];
        let (kv, kv16) = (
            KeysValues {
                k: &k[..],
                v: &v[..],
                p0,
            },
            KeysValues {
                k: &k16[..],
                v: &v16[..],
                p0,
            },
        );
        let mut one = Sequential;
        let mut seq = Ctx::new(&mut one);
        causal(&mut seq, g, &q, kv, &mut scores, &mut [], &mut want).unwrap();
        causal(&mut seq, g, &q, kv16, &mut scores, &mut [], &mut want16).unwrap();
        for pool in pools.iter_mut() {
            // Spare bytes for every extra task, misaligned by one byte on purpose.
            let mut spare = vec![0u8; 1 + 4 * ctx * pool.threads()];
            let mut got = vec![f32::NAN; m * g.q_dim()];
            causal(
                &mut Ctx::new(pool),
                g,
                &q,
                kv,
                &mut scores,
                &mut spare[1..],
                &mut got,
            )
            .unwrap();
            assert_bits(
                &got,
                &want,
                &format!("f32 KV p0={p0} m={m} {}t", pool.threads()),
            );
            let mut got = vec![f32::NAN; m * g.q_dim()];
            causal(
                &mut Ctx::new(pool),
                g,
                &q,
                kv16,
                &mut scores,
                &mut spare[1..],
                &mut got,
            )
            .unwrap();
            assert_bits(
                &got,
                &want16,
                &format!("f16 KV p0={p0} m={m} {}t", pool.threads()),
            );
        }
    }
}

#[test]
fn several_products_in_one_pass_equal_separate_calls() {
    use glimpse_core::kernels::linear::{Product, linear_many};
    use glimpse_quant::layout::TensorLayout;
    let cpus = cpu_variants();
    let mut pools = pools(&[2, 3, 7]);
    let cols = 96;
    // Odd row counts (the next product's rows start past padding), a four-row-group
    // matrix, biases on some.
    let shapes = [(27usize, false), (64, true), (5, false)];
    let datas: Vec<Vec<u8>> = shapes
        .iter()
        .enumerate()
        .map(|(j, &(rows, grouped))| {
            let plain = encode(
                DType::Q8_0,
                &values(rows * cols, 50 + j as u64, 0.05),
                rows,
                cols,
            );
            if grouped {
                repacked(&plain, rows, cols)
            } else {
                plain
            }
        })
        .collect();
    let ws: Vec<Weights> = shapes
        .iter()
        .zip(&datas)
        .map(|(&(rows, grouped), d)| {
            let layout = if grouped {
                TensorLayout::Q8Rows4
            } else {
                TensorLayout::RowMajor
            };
            Weights::with_layout(DType::Q8_0, layout, rows, cols, d).unwrap()
        })
        .collect();
    let bias_v = [values(27, 60, 0.5), values(5, 61, 0.5)];
    let biases = [
        Some(Vector::from_f32(&bias_v[0])),
        None,
        Some(Vector::from_f32(&bias_v[1])),
    ];
    for n in [1usize, 9, 40] {
        let x = values(n * cols, 70 + n as u64, 1.0);
        let want: Vec<Vec<f32>> = ws
            .iter()
            .zip(&biases)
            .map(|(w, b)| {
                let mut y = vec![0f32; n * w.rows];
                let mut s = vec![0u8; linear_scratch_bytes(w, n)];
                linear(
                    &mut Ctx::new(&mut Sequential).with_cpu(Cpu::SCALAR),
                    w,
                    b.as_ref(),
                    &x,
                    n,
                    &mut y,
                    &mut s,
                )
                .unwrap();
                y
            })
            .collect();
        let check = |cpu: Cpu, exec: &mut dyn Executor, what: &str| {
            let mut ys: Vec<Vec<f32>> = ws.iter().map(|w| vec![f32::NAN; n * w.rows]).collect();
            let mut s = vec![0u8; linear_scratch_bytes(&ws[0], n)];
            let mut products: Vec<Product> = ws
                .iter()
                .zip(&biases)
                .zip(ys.iter_mut())
                .map(|((w, b), y)| Product {
                    w,
                    bias: b.as_ref(),
                    y,
                })
                .collect();
            linear_many(
                &mut Ctx::new(exec).with_cpu(cpu),
                &mut products,
                &x,
                n,
                &mut s,
            )
            .unwrap();
            for (j, (got, want)) in ys.iter().zip(&want).enumerate() {
                assert_bits(got, want, &format!("product {j} n={n} {what}"));
            }
        };
        for &c in &cpus {
            check(c, &mut Sequential, &format!("{c:?}"));
        }
        for pool in pools.iter_mut() {
            let t = pool.threads();
            check(Cpu::active(), pool, &format!("{t} threads"));
        }
    }
}
