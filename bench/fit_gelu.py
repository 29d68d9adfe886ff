"""Fit the polynomial coefficients of glimpse's branch-free exact-erf GELU
(`gelu` in core/src/kernels/math.rs) and check an f32 simulation of it against mpmath.

    1 + erf(z) = 1 + z * P(z^2)                         for -0.5 <= z < 1
    erfc(z)    = exp(-z^2) * Q(1 / (1 + z))             for 0.5 <= z <= 6

with z = x / sqrt(2); 1 + erf(z) = erfc(-z) for z < -0.5 and 2 - erfc(z) for z >= 1.
exp(-x^2/2) is split as exp(-xh^2/2) * exp(-d) with xh = x cut to 12 significant bits (so
xh^2 is exact in f32) and d = (x - xh)(x + xh)/2 small, which keeps the rounding of x^2
out of the exponent.

Least squares on Chebyshev nodes in float64 with relative weights (close to minimax for
these smooth functions). Deterministic: no randomness, no data files.
Run: python bench/fit_gelu.py   (numpy, mpmath)
"""
import math

import mpmath
import numpy as np

mpmath.mp.dps = 40
F = np.float32


def cheb_nodes(a, b, n):
    k = np.arange(n)
    return 0.5 * (a + b) + 0.5 * (b - a) * np.cos((2 * k + 1) * np.pi / (2 * n))


def fit(xs, ys, deg):
    V = np.vander(xs, deg + 1, increasing=True)
    w = 1.0 / np.abs(ys)
    c, *_ = np.linalg.lstsq(V * w[:, None], ys * w, rcond=None)
    return c.astype(F)


def horner(c, x):
    acc = np.full_like(x, c[-1])
    for k in range(len(c) - 2, -1, -1):
        acc = (acc * x + c[k]).astype(F)
    return acc


LOG2E, LN2_HI, LN2_LO, MAGIC = F(1.4426950408889634), F(0.693145751953125), F(1.428606765330187e-06), F(12582912.0)
EXP_TAYLOR = np.array([1, 1, 1 / 2, 1 / 6, 1 / 24, 1 / 120, 1 / 720, 1 / 5040], dtype=F)
EXPM_D = np.array([1, -1, 1 / 2, -1 / 6, 1 / 24], dtype=F)
FRAC_1_SQRT_2 = F(0.7071067811865476)


def exp_le0(a):
    t = (a * LOG2E + MAGIC).astype(F)
    n = (t - MAGIC).astype(F)
    r = ((a - n * LN2_HI).astype(F) - (n * LN2_LO).astype(F)).astype(F)
    scale = ((127 + (t.view(np.int32) - 0x4B400000)).astype(np.uint32) << 23).view(F)
    return (horner(EXP_TAYLOR, r) * scale).astype(F)


def gelu32(x, P, Q):
    """The Rust `gelu`, operation for operation, in float32."""
    x = x.astype(F)
    z = (x * FRAC_1_SQRT_2).astype(F)
    a = (F(1) + (z * horner(P, (z * z).astype(F))).astype(F)).astype(F)
    ax = np.clip(np.abs(x), F(0.5 * math.sqrt(2)), F(6 * math.sqrt(2))).astype(F)
    xh = (ax.view(np.uint32) & np.uint32(0xFFFFF000)).view(F)
    d = (((ax - xh) * (ax + xh)).astype(F) * F(0.5)).astype(F)
    e = (exp_le0((-((xh * xh).astype(F) * F(0.5))).astype(F)) * horner(EXPM_D, d)).astype(F)
    t = (F(1) / (F(1) + (ax * FRAC_1_SQRT_2).astype(F))).astype(F)
    erfc = (e * horner(Q, t)).astype(F)
    erfc = np.where(np.abs(x) > F(6 * math.sqrt(2)), F(0), erfc)
    b = np.where(z < 0, erfc, (F(2) - erfc).astype(F))
    one_plus = np.where((z >= F(-0.5)) & (z < F(1)), a, b)
    return ((F(0.5) * x).astype(F) * one_plus).astype(F)


def gelu_ref(x):
    v = mpmath.mpf(float(x))
    return float(0.5 * v * (1 + mpmath.erf(v / mpmath.sqrt(2))))


def main():
    s = cheb_nodes(0.0, 1.0, 400)
    P = fit(s, np.array([float(mpmath.erf(mpmath.sqrt(v)) / mpmath.sqrt(v)) for v in s]), 5)
    t = cheb_nodes(1 / 7, 2 / 3, 600)
    z = 1 / t - 1
    Q = fit(t, np.array([float(mpmath.erfc(v) * mpmath.exp(v * v)) for v in z]), 9)
    print("const ERF_P: [f32; %d] = [%s];" % (len(P), ", ".join(str(v) for v in P)))
    print("const ERFC_Q: [f32; %d] = [%s];" % (len(Q), ", ".join(str(v) for v in Q)))

    xs = (np.arange(-200000, 200001, 3, dtype=np.float64) * 5e-5).astype(F)
    ref = np.array([gelu_ref(v) for v in xs])
    got = gelu32(xs, P, Q).astype(np.float64)
    spacing = np.spacing(np.abs(ref).astype(F)).astype(np.float64)
    err_floor = np.abs(got - ref) / np.maximum(spacing, 1e-7)
    print(f"[-10, 10]: worst {err_floor.max():.2f} ulp (1e-7 absolute floor), at x = {xs[err_floor.argmax()]}")
    m = np.abs(xs) < 8.4
    err = np.abs(got - ref)[m] / spacing[m]
    print(f"|x| < 8.4: worst {err.max():.2f} ulp relative, at x = {xs[m][err.argmax()]}")


if __name__ == "__main__":
    main()
