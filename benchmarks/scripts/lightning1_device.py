"""Check and time Lightning Attention-1 on the GPU in one call (benchmarks/notes/lightning1.md).

    PYTHONUNBUFFERED=1 python benchmarks/scripts/lightning1_device.py [--sweep] [--check]
        [--full-check] [--final] [--out DIR]

--sweep       time every kernel config of a wide list, bypassing the autotuner (paper shape)
--check       bf16 correctness against float64 (odd shape, N=8k long case, decay / no decay)
--full-check  also fp16 and fp32
--final       the public API (autotuned) against SDPA flash: 1k..64k, fwd and bwd, memory
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
import triton
from attnbench.baselines.linear import linear_masked
from attnbench.kernels import default_decay
from attnbench.kernels import lightning1 as L1
from attnbench.kernels.lightning1 import lightning_attn1
from torch.nn.attention import SDPBackend, sdpa_kernel
from triton.testing import do_bench

B, H, D = 4, 32, 128  # the paper preset
DEV = "cuda"
START = time.time()
BUDGET_S = 270  # stop optional sections here, inside the call's 300 s
# Floors under the 2x-of-torch rule (FlashAttention's), as in tests/test_lightning1.py.
FLOOR = {torch.float16: 1e-4, torch.bfloat16: 1e-3, torch.float32: 1e-6}


def time_left():
    return BUDGET_S - (time.time() - START)


def bench(fn, grad_to_none=None):
    return do_bench(fn, warmup=25, rep=100, grad_to_none=grad_to_none, return_mode="median")


def fwd_flops(n, b=B, h=H, d=D):
    return 2 * b * h * n * n * d  # causal: 2 matmuls of (n^2/2) d each, 2 flops per MAC


def rand(*shape, dtype=torch.bfloat16, grad=False):
    return torch.randn(*shape, device=DEV, dtype=dtype).requires_grad_(grad)


def rel_err(out, ref):
    out, ref = out.detach().double(), ref.detach().double()
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()


# ------------------------------------------------------------------------------ correctness
def fwd_bwd(fn, q, k, v, do, decay):
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    o = fn(q, k, v, decay)
    o.backward(do)
    return [o, q.grad, k.grad, v.grad]


def check(cases, rows):
    real_empty_like = torch.empty_like

    def poisoned(*a, **kw):  # unwritten outputs show as NaN
        t = real_empty_like(*a, **kw)
        return t.fill_(float("nan")) if t.is_floating_point() else t

    torch.empty_like = poisoned
    try:
        for b, h, n, d, e, dtype, dec in cases:
            if time_left() < 40:
                print("check: out of time, skipped", (b, h, n, d, e, dtype, dec))
                continue
            torch.manual_seed(n + d + e)
            q, k = rand(b, h, n, d, dtype=dtype), rand(b, h, n, d, dtype=dtype)
            v, do = rand(b, h, n, e, dtype=dtype), rand(b, h, n, e, dtype=dtype)
            decay = default_decay(h, DEV) if dec else None
            ref = fwd_bwd(linear_masked, *(t.double() for t in (q, k, v, do)),
                          decay.double() if dec else None)
            base = fwd_bwd(linear_masked, q, k, v, do, decay)
            ours = fwd_bwd(lightning_attn1, q, k, v, do, decay)
            errs = []
            for name, a, bb, r in zip(("o", "dq", "dk", "dv"), ours, base, ref, strict=True):
                err, berr = rel_err(a, r), rel_err(bb, r)
                ok = bool(torch.isfinite(a).all()) and err <= 2 * berr + FLOOR[dtype]
                errs.append((name, err, berr, ok))
            tag = f"B{b}-H{h}-N{n}-D{d}-E{e}-{str(dtype)[6:]}-{'decay' if dec else 'nodecay'}"
            line = " ".join(f"{nm} {x:.1e}/{y:.1e}{'' if ok else ' FAIL'}" for nm, x, y, ok in errs)
            print(f"check {tag}: (kernel/torch-same-dtype vs fp64) {line}")
            rows.append(dict(kind="check", case=tag, ok=all(t[3] for t in errs),
                             errs={t[0]: (t[1], t[2]) for t in errs}))
            del ref, base, ours
            torch.cuda.empty_cache()
    finally:
        torch.empty_like = real_empty_like


# ------------------------------------------------------------------------------ config sweep
FWD_SWEEP = [(128, 64, 8, 3), (128, 64, 8, 2), (128, 128, 8, 2), (64, 64, 4, 3),
             (128, 64, 8, 4), (128, 32, 4, 3), (128, 64, 4, 3)]
BWD_SWEEP = [(64, 128, 8, 2), (32, 128, 8, 3), (64, 64, 4, 2), (32, 64, 4, 2),
             (64, 128, 8, 3), (32, 128, 8, 2), (64, 64, 4, 3), (32, 128, 4, 3)]


def sweep_length(rows, n):
    q, k, do = rand(B, H, n, D), rand(B, H, n, D), rand(B, H, n, D)
    v = rand(B, H, n, D)
    decay = default_decay(H, DEV)
    meta = L1._meta(q, v, decay)
    o, dk, dv = torch.empty_like(v), torch.empty_like(k), torch.empty_like(v)
    jobs = [("fwd", L1._lightning1_fwd_kernel, c, (triton.cdiv(n, c[0]), B * H), 1.0,
             (q, k, v, o, decay, n)) for c in FWD_SWEEP]
    jobs += [("dkdv", L1._lightning1_bwd_dkdv_kernel, c, (triton.cdiv(n, c[1]), B * H), 2.0,
              (q, k, v, do, dk, dv, decay, n)) for c in BWD_SWEEP]
    for name, kernel, cfg, grid, work, args in jobs:
        if time_left() < 8:
            print(f"sweep {name} N={n} {cfg}: out of time")
            continue
        try:
            ms, ck, first = time_config(kernel, grid, args, meta, cfg)
        except Exception as ex:  # noqa: BLE001  (out of resources: report and go on)
            print(f"sweep {name} N={n} {cfg}: {type(ex).__name__}: {str(ex)[:80]}")
            continue
        tf = work * fwd_flops(n) / ms * 1e-9  # dkdv: 4 matmuls = twice the forward's 2
        regs, spills = getattr(ck, "n_regs", None), getattr(ck, "n_spills", None)
        print(f"sweep {name:4s} N={n:6d} BM={cfg[0]:3d} BN={cfg[1]:3d} w={cfg[2]} s={cfg[3]}: "
              f"{ms:8.3f} ms {tf:5.0f} TF/s regs={regs} spills={spills} first={first:.1f}s")
        rows.append(dict(kind=f"sweep_{name}", n=n, cfg=cfg, ms=ms, tflops=tf, regs=regs,
                         spills=spills))


def time_config(kernel, grid, args, meta, cfg):
    """(median ms, compiled kernel, first-call seconds) for one config, autotuner bypassed."""
    bm, bn, w, s = cfg
    run = lambda: kernel.fn[grid](*args, **meta, BLOCK_M=bm, BLOCK_N=bn, num_warps=w,
                                  num_stages=s)
    t0 = time.time()
    ck = run()
    torch.cuda.synchronize()
    first = time.time() - t0
    return bench(run), ck, first


def sweep(rows, lengths=(32768, 4096)):
    for n in lengths:
        sweep_length(rows, n)
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------ final table
def sdpa(q, k, v, decay=None):
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)


def measure(fn, n, with_decay, bwd):
    """(median ms, peak MiB above what was allocated before) for one fwd or bwd."""
    q, k, v = (rand(B, H, n, D, grad=True) for _ in range(3))
    do = rand(B, H, n, D)
    decay = default_decay(H, DEV) if with_decay else None
    torch.cuda.synchronize()
    if not bwd:
        fn(q, k, v, decay)  # compile / autotune outside the timing and the memory reading
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        with torch.no_grad():
            fn(q, k, v, decay)
        peak = torch.cuda.max_memory_allocated() - base
        with torch.no_grad():
            ms = bench(lambda: fn(q, k, v, decay))
    else:
        o = fn(q, k, v, decay)
        o.backward(do, retain_graph=True)  # compile / autotune
        q.grad = k.grad = v.grad = None
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        o.backward(do, retain_graph=True)
        peak = torch.cuda.max_memory_allocated() - base
        ms = bench(lambda: o.backward(do, retain_graph=True), grad_to_none=[q, k, v])
    return ms, peak / 2**20


def final(rows, lengths):
    table = []
    for n in lengths:
        for name, fn, dec in (("L1 decay", lightning_attn1, True), ("L1 nodecay", lightning_attn1,
                              False), ("SDPA flash", sdpa, False)):
            for bwd in (False, True):
                if dec is False and fn is lightning_attn1 and n not in (4096, 32768):
                    continue
                try:
                    ms, mib = measure(fn, n, dec, bwd)
                except torch.OutOfMemoryError:
                    ms, mib = float("nan"), float("nan")
                torch.cuda.empty_cache()
                mode = "bwd" if bwd else "fwd"
                flops = fwd_flops(n) * (2.5 if bwd else 1.0)  # FA convention for both
                r = dict(kind="final", impl=name, n=n, mode=mode, ms=ms, mib=mib,
                         tflops=flops / ms * 1e-9, mtok=B * n / ms * 1e-3)
                rows.append(r)
                table.append(r)
                print(f"final {name:10s} {mode} N={n:6d}: {ms:9.3f} ms {r['tflops']:5.0f} TF/s "
                      f"{r['mtok']:6.2f} Mtok/s peak+{mib:8.0f} MiB", flush=True)
    print("autotuned:", {k: str(c) for k, c in L1._lightning1_fwd_kernel.cache.items()},
          {k: str(c) for k, c in L1._lightning1_bwd_dkdv_kernel.cache.items()})
    return table


def print_table(table):
    lengths = sorted({r["n"] for r in table})
    print("\nH100, paper shape B=4 H=32 D=E=128 bf16 causal: median ms (do_bench)")
    print(f"{'impl':11s} {'mode':4s} " + " ".join(f"{n // 1024:>7d}k" for n in lengths))
    for impl in dict.fromkeys(r["impl"] for r in table):
        for mode in ("fwd", "bwd"):
            cells = {r["n"]: r for r in table if r["impl"] == impl and r["mode"] == mode}
            line = " ".join(f"{cells[n]['ms']:8.2f}" if n in cells else f"{'-':>8s}"
                            for n in lengths)
            print(f"{impl:11s} {mode:4s} {line}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--full-check", action="store_true")
    ap.add_argument("--final", action="store_true")
    ap.add_argument("--lengths", default="1024,4096,16384,32768,65536")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args()
    print(torch.cuda.get_device_name(), "torch", torch.__version__, "triton", triton.__version__)
    rows, table = [], []
    path = os.path.join(args.out, "lightning1_device.json")

    def save():
        with open(path, "w") as f:
            json.dump(rows, f, default=str)

    bf16 = torch.bfloat16
    # Sections in order of importance: what is timed is checked first, then timed.
    sections = []
    if args.check or args.full_check:
        sections.append(lambda: check([(1, 2, 1000, 128, 128, bf16, False),
                                       (1, 2, 8192, 128, 128, bf16, True)], rows))
    if args.final:
        lengths = [int(x) for x in args.lengths.split(",")]
        sections.append(lambda: print_table(table.extend(final(rows, lengths)) or table))
    if args.full_check:
        sections.append(lambda: check([(2, 3, 77, 48, 96, bf16, True),
                                       (1, 2, 1000, 128, 128, torch.float16, True),
                                       (2, 2, 333, 64, 64, torch.float32, False),
                                       (1, 1, 300, 192, 64, bf16, False)], rows))
    if args.sweep:
        sections.append(lambda: sweep(rows))
    for section in sections:
        try:
            section()
        except Exception as ex:  # noqa: BLE001  (report, keep what the other sections give)
            print(f"SECTION FAILED: {type(ex).__name__}: {str(ex)[:1500]}")
        save()
    if table:
        print_table(table)
    fails = [r["case"] for r in rows if r["kind"] == "check" and not r["ok"]]
    print("CHECK FAILURES:", fails if fails else "none", f"elapsed {time.time() - START:.0f}s")


if __name__ == "__main__":
    main()
