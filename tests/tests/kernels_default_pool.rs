//! Installing a thread pool as the core's default executor (what `glimpse bench
//! --threads` does) changes no result of the kernels run through `with_default_ctx`:
//! linear, grouped and dense convs, vision attention and GELU give the same bits before
//! and after. Its own test binary, because the default executor is process-wide.

use glimpse_core::kernels::conv::{
    ConvParams, Dense, Grouped, InputRows, dense_conv_planar, grouped_conv,
};
use glimpse_core::kernels::linear::{Weights, linear, linear_scratch_bytes, row_bytes};
use glimpse_core::kernels::{Vector, with_default_ctx};
use glimpse_quant::DType;
use glimpse_quant::blocks::quantize_row;

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

fn run_all() -> Vec<u32> {
    let mut out = Vec::new();
    // Linear, Q8_0 and f16, GEMV and GEMM.
    for dtype in [DType::Q8_0, DType::F16] {
        let (rows, cols) = (300, 256);
        let w = values(rows * cols, 1);
        let rb = row_bytes(dtype, cols).unwrap();
        let mut data = vec![0u8; rows * rb];
        for (s, d) in w.chunks_exact(cols).zip(data.chunks_exact_mut(rb)) {
            quantize_row(dtype, s, d).unwrap();
        }
        let wm = Weights::new(dtype, rows, cols, &data).unwrap();
        for n in [1, 50] {
            let x = values(n * cols, 2);
            let mut y = vec![0f32; n * rows];
            let mut s = vec![0u8; linear_scratch_bytes(&wm, n)];
            with_default_ctx(|c| linear(c, &wm, None, &x, n, &mut y, &mut s)).unwrap();
            out.extend(y.iter().map(|v| v.to_bits()));
        }
    }
    let g = Grouped {
        height: 30,
        width: 20,
        channels: 64,
        mult: 1,
        kernel: 7,
        stride: 1,
    };
    let x = values(30 * 20 * 64, 3);
    let w = values(49 * 64, 4);
    let b = values(64, 5);
    let mut y = vec![0f32; 30 * 20 * 64];
    let mut s = vec![0f32; g.scratch_floats()];
    let params = ConvParams {
        weight: Vector::from_f32(&w),
        bias: Vector::from_f32(&b),
    };
    let input = InputRows::whole(&x);
    with_default_ctx(|c| grouped_conv(c, &g, params, input, 0..30, &mut y, &mut s)).unwrap();
    out.extend(y.iter().map(|v| v.to_bits()));
    let d = Dense {
        height: 32,
        width: 32,
        in_channels: 3,
        out_channels: 48,
        kernel: 3,
        stride: 2,
    };
    let x = values(3 * 32 * 32, 6);
    let w = values(48 * 27, 7);
    let b = values(48, 8);
    let mut y = vec![0f32; 16 * 16 * 48];
    let mut s = vec![0f32; d.scratch_floats()];
    let params = ConvParams {
        weight: Vector::from_f32(&w),
        bias: Vector::from_f32(&b),
    };
    with_default_ctx(|c| dense_conv_planar(c, &d, params, &x, 0..16, &mut y, &mut s)).unwrap();
    out.extend(y.iter().map(|v| v.to_bits()));
    // Attention split by (head, query block): FastViTHD's head width and another, token
    // counts with a partial query block, scratch for three tasks (and for one: the pool
    // must then leave it on one task).
    for (tokens, heads, head_dim, copies) in [(300, 4, 32, 3), (130, 3, 16, 3), (200, 2, 32, 1)] {
        use glimpse_core::kernels::attention::{PackedQkv, self_attention};
        let l = PackedQkv {
            tokens,
            heads,
            head_dim,
        };
        let qkv = values(tokens * 3 * l.dim(), 10);
        let mut y = vec![0f32; tokens * l.dim()];
        let mut s = vec![0f32; copies * l.scratch_floats()];
        with_default_ctx(|c| self_attention(c, &l, &qkv, 0.125, &mut y, &mut s)).unwrap();
        out.extend(y.iter().map(|v| v.to_bits()));
    }
    // GELU over a buffer long enough to be split (a ConvFFN hidden tile's size).
    let mut h = values(384 * 4096 + 13, 9);
    with_default_ctx(|c| glimpse_core::kernels::math::gelu_inplace(c, &mut h));
    out.extend(h.iter().map(|v| v.to_bits()));
    out
}

#[test]
fn a_default_pool_changes_no_bit() {
    glimpse_host::cpu::install(None);
    let before = run_all();
    assert_eq!(glimpse_host::install_default_pool(3).unwrap(), 3);
    let after = run_all();
    assert_eq!(before, after);
}
