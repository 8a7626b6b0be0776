#!/usr/bin/python3
"""PyTorch baseline for the training benchmarks: trains a config with the reference model code
(moe_ref.py: HF-style modules, per-expert SwiGLU over index_select'ed token groups, index_add
combine, plain matmul + masked-softmax attention since PyTorch 1.13 has no
scaled_dot_product_attention) and torch.optim.AdamW, and prints one JSON line

    {"tokens_per_s": ..., "step_ms_median": ..., "peak_rss_mb": ...}

measured over the steps after the warmup: step_ms_median is the median wall time of one full
step (zero grads, forward, backward, AdamW, balancing-bias update), tokens_per_s = B*T divided by
that median, peak_rss_mb the process's peak resident set size. Details go to stderr.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE /usr/bin/python3 tests/reference/bench_torch.py \
        --config CONFIG.json --batch 8 --seq 512 --steps 5 --warmup 1 --threads 2 [--tokens FILE]

--config is a config.json path or the JSON text itself (missing keys take config.h defaults).
--tokens is a safetensors file holding "tokens" (any shape, read as one stream) or any other
file read as bytes (byte tokenizer); without it every step draws random tokens.
Unset OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE for this command alone (DESIGN.md section 8).

Debian's PyTorch does its float32 GEMMs through whatever libblas.so.3 the system selects. With
only the reference (netlib) BLAS installed that is ~2.5 GFLOP/s and the baseline is meaningless;
the script warns on stderr. Install libopenblas0-openmp (it shares PyTorch's OpenMP threads; the
-pthread build competes with them on 2 cores), or point --blas-dir at a directory holding an
OpenBLAS libblas.so.3, e.g. /usr/lib/x86_64-linux-gnu/openblas-openmp; the script then re-runs
itself with that directory first on LD_LIBRARY_PATH.

By default glibc malloc is told to keep freed memory (M_MMAP_MAX = 0, no trimming), the effect a
PyTorch CPU user gets from jemalloc/tcmalloc: otherwise every 64 MB attention buffer is a fresh
mmap whose page faults cost seconds of system time per step. --no-malloc-tune turns this off.
"""

import argparse
import ctypes
import json
import os
import resource
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import moe_ref  # noqa: E402


def load_stream(path):
    if path.endswith(".safetensors"):
        tensors, _ = moe_ref.read_safetensors(path)
        if "tokens" not in tensors:
            raise SystemExit(f"[bench_torch] {path}: no tensor 'tokens'")
        return tensors["tokens"].reshape(-1).long()
    with open(path, "rb") as f:
        return torch.frombuffer(bytearray(f.read()), dtype=torch.uint8).long()


def tune_malloc():
    """Keep freed memory in the heap: no mmap for big blocks, no trimming (glibc mallopt)."""
    libc = ctypes.CDLL("libc.so.6")
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


def loaded_blas():
    """Paths of the BLAS libraries mapped into this process (after torch is imported)."""
    found = set()
    with open("/proc/self/maps") as f:
        for line in f:
            path = line.split()[-1] if len(line.split()) >= 6 else ""
            if "blas" in os.path.basename(path):
                found.add(os.path.realpath(path))
    return sorted(found)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="config.json path or JSON text")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--steps", type=int, default=5, help="measured steps (after warmup)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", help="token file (see above); default random tokens")
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--blas-dir", help="directory with the libblas.so.3 to use (re-execs)")
    ap.add_argument("--no-malloc-tune", action="store_true",
                    help="leave glibc malloc at its defaults")
    args = ap.parse_args()

    if args.blas_dir:
        paths = os.environ.get("LD_LIBRARY_PATH", "")
        if paths.split(":")[0] != args.blas_dir:
            env = dict(os.environ, LD_LIBRARY_PATH=args.blas_dir + (":" + paths if paths else ""))
            os.execve(sys.executable, [sys.executable] + sys.argv, env)
    malloc_tuned = False if args.no_malloc_tune else tune_malloc()
    torch.set_num_threads(args.threads)
    blas = loaded_blas()
    if not any("openblas" in p or "mkl" in p or "blis" in p for p in blas):
        print(f"[bench_torch] WARNING: PyTorch is using the reference BLAS {blas}: float32 "
              f"GEMM runs at a few GFLOP/s and this is no fair baseline. Install "
              f"libopenblas0-openmp or pass --blas-dir.", file=sys.stderr)
    torch.manual_seed(args.seed)
    text = args.config
    if not text.lstrip().startswith("{"):
        with open(text) as f:
            text = f.read()
    cfg = moe_ref.make_config(json.loads(text), origin=args.config)
    B, T, V = args.batch, args.seq, cfg["vocab_size"]

    model = moe_ref.build_model(cfg, moe_ref.init_state(cfg, args.seed),
                                getattr(torch, args.dtype))
    opt = moe_ref.make_optimizer(model, args.lr, 0.9, 0.95, 1e-8, 0.1)
    stream = load_stream(args.tokens) if args.tokens else None
    if stream is not None:
        if stream.numel() < B * (T + 1):
            raise SystemExit(f"[bench_torch] {args.tokens}: {stream.numel()} tokens, need "
                             f"{B * (T + 1)} for one batch")
        if int(stream.max()) >= V or int(stream.min()) < 0:
            raise SystemExit(f"[bench_torch] {args.tokens}: tokens out of [0, {V})")

    def batch(step):
        if stream is None:
            return torch.randint(0, V, (B, T + 1))
        n = B * (T + 1)
        start = (step * n) % (stream.numel() - n + 1)
        return stream[start:start + n].reshape(B, T + 1)

    times, losses = [], []
    for step in range(args.warmup + args.steps):
        tokens = batch(step)
        t0 = time.perf_counter()
        out = moe_ref.forward_backward(model, tokens)
        opt.step()
        moe_ref.update_balance_bias(model, out["moe"])
        loss = float(out["loss"])
        dt = time.perf_counter() - t0
        losses.append(loss)
        if step >= args.warmup:
            times.append(dt)
        print(f"[bench_torch] step {step}{' (warmup)' if step < args.warmup else ''}: "
              f"{dt * 1e3:.0f} ms loss {loss:.4f}", file=sys.stderr)

    med = statistics.median(times)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"[bench_torch] torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"{n_params / 1e6:.1f}M parameters, B={B} T={T}, {args.steps} measured steps, "
          f"BLAS {blas}, malloc tuned {malloc_tuned}, "
          f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')} "
          f"OPENBLAS_L2_SIZE={os.environ.get('OPENBLAS_L2_SIZE', '(unset)')}", file=sys.stderr)
    print(json.dumps({
        "tokens_per_s": round(B * T / med, 2),
        "step_ms_median": round(med * 1e3, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
