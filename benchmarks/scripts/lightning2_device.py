"""One device call for kernels/lightning2.py: check, then time variants, then memory and 256k.

Run on the GPU machine from the repository root:

    pip install -q --no-deps --no-build-isolation -e . && \
        PYTHONUNBUFFERED=1 python benchmarks/scripts/lightning2_device.py --out $OUT

Steps (each prints as it goes; a compact table comes last):
1. long correctness: bf16 at N=64k (B=1, H=2, D=E=128) and fp16/fp32 at N=4k against a
   float64 chunked reference on the GPU (forward and dq, dk, dv);
2. timings of each config at the paper shape (B=4, H=32, D=E=128, bf16, decay) for the
   forward and the backward pass alone, median of triton.testing.do_bench;
3. peak memory above the inputs at N=64k; forward and backward at N=256k.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import torch
import triton
from attnbench.kernels.lightning2 import (
    Lightning2Function,
    _lightning2_scan_kernel,
    default_decay,
)

B, H, D, E = 4, 32, 128, 128
GIB = 1024**3


def ref_chunked(q, k, v, s, chunk=512):
    """Float64 reference by blocks (O(N) memory), differentiable by autograd."""
    b, h, n, d = q.shape
    if s is None:
        s = torch.zeros(h, dtype=torch.float64, device=q.device)
    lam = torch.exp(-s.double()).view(1, h, 1, 1)
    state = q.new_zeros(b, h, d, v.shape[-1])
    out = []
    for st in range(0, n, chunk):
        qc, kc, vc = q[:, :, st : st + chunk], k[:, :, st : st + chunk], v[:, :, st : st + chunk]
        c = qc.shape[2]
        i = torch.arange(c, device=q.device, dtype=torch.float64)
        dist = i[:, None] - i[None, :]
        m = torch.where(dist >= 0, lam ** dist.clamp(min=0), 0.0)  # [1, H, c, c]
        o = (qc @ kc.transpose(-1, -2) * m) @ vc + (qc * lam ** (i + 1)[:, None]) @ state
        state = lam**c * state + (kc * lam ** (c - 1 - i)[:, None]).transpose(-1, -2) @ vc
        out.append(o)
    return torch.cat(out, dim=2)


def rel(a, b):
    return ((a.double() - b).norm() / b.norm()).item()


def check_long(n, dtype, with_decay, bound, b=1, h=2):
    torch.manual_seed(n)
    q, k, v, do = (torch.randn(b, h, n, d, device="cuda", dtype=dtype) for d in (D, D, E, E))
    s = default_decay(h, "cuda") if with_decay else None
    qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
    o = Lightning2Function.apply(qg, kg, vg, s)
    o.backward(do)
    q64, k64, v64 = (t.double().requires_grad_() for t in (q, k, v))
    r = ref_chunked(q64, k64, v64, s)
    r.backward(do.double())
    errs = [rel(o, r), rel(qg.grad, q64.grad), rel(kg.grad, k64.grad), rel(vg.grad, v64.grad)]
    rounding = rel(r.to(dtype), r)  # the output's own rounding: no kernel can go below it
    ok = all(math.isfinite(e) and e <= bound for e in errs)
    line = (
        f"check N={n} {str(dtype)[6:]} decay={with_decay}: o {errs[0]:.2e} dq {errs[1]:.2e} "
        f"dk {errs[2]:.2e} dv {errs[3]:.2e} (rounding {rounding:.1e}, bound {bound:.0e}) "
        f"{'OK' if ok else 'FAIL'}"
    )
    print(line)
    return line


def inputs(n, dtype=torch.bfloat16, d=D, e=E):
    torch.manual_seed(0)
    q, k, v = (
        torch.randn(B, H, n, x, device="cuda", dtype=dtype).requires_grad_() for x in (d, d, e)
    )
    return q, k, v, default_decay(H, "cuda")


def bench(n, config, mode, dtype=torch.bfloat16, d=D, e=E):
    q, k, v, s = inputs(n, dtype, d, e)
    o = Lightning2Function.apply(q, k, v, s, config)
    if mode == "fwd":
        fn = lambda: Lightning2Function.apply(q, k, v, s, config)
        grads = None
    else:
        do = torch.randn_like(o)

        def fn():
            # do_bench's warm-up does not clear grads: accumulating would need 2x grads.
            q.grad = k.grad = v.grad = None
            o.backward(do, retain_graph=True)

        grads = [q, k, v]
    fn()  # compile outside the timing
    torch.cuda.synchronize()
    ms = triton.testing.do_bench(fn, warmup=25, rep=100, grad_to_none=grads, return_mode="median")
    return ms, B * n / ms / 1e3  # ms, M tokens/s


def memory(n, config=None):
    q, k, v, s = inputs(n)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    o = Lightning2Function.apply(q, k, v, s, config)
    torch.cuda.synchronize()
    fwd = (torch.cuda.max_memory_allocated() - base) / 2**20
    do = torch.randn_like(o)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    o.backward(do, retain_graph=True)
    torch.cuda.synchronize()
    bwd = (torch.cuda.max_memory_allocated() - base) / 2**20
    del q, k, v, o, do
    torch.cuda.empty_cache()
    return fwd, bwd


CONFIGS = {
    "default": None,  # n64v64w4s4 at this shape, dk and dv scans paired in one launch
    "n64v64w4s3": dict(BLOCK_N=64, BLOCK_V=64, num_warps=4, num_stages=3),
    "unpaired": dict(paired=False),  # dq, dk, dv as three launches
}
# Tiles tried at D = E = 256 (BLOCK_N, BLOCK_V, warps, stages); None: the default.
CONFIGS_256 = {
    "default": None,
    "n64v32w4s2": dict(BLOCK_N=64, BLOCK_V=32, num_warps=4, num_stages=2),
    "n64v32w8s3": dict(BLOCK_N=64, BLOCK_V=32, num_warps=8, num_stages=3),
    "n64v64w8s2": dict(BLOCK_N=64, BLOCK_V=64, num_warps=8, num_stages=2),
}


def sweep_256():
    """D = E = 256 at 4k (B=4, H=32, bf16): a quick check against float64, then timings."""
    lines = []
    for name, cfg in CONFIGS_256.items():
        try:
            torch.manual_seed(1)
            q, k, v, do = (torch.randn(1, 2, 1000, 256, device="cuda") for _ in range(4))
            q, k, v, do = (t.to(torch.bfloat16) for t in (q, k, v, do))
            s = default_decay(2, "cuda")
            qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
            o = Lightning2Function.apply(qg, kg, vg, s, cfg)
            o.backward(do)
            q64, k64, v64 = (t.double().requires_grad_() for t in (q, k, v))
            r = ref_chunked(q64, k64, v64, s)
            r.backward(do.double())
            err = max(
                rel(o, r), rel(qg.grad, q64.grad), rel(kg.grad, k64.grad), rel(vg.grad, v64.grad)
            )
            f, ft = bench(4096, cfg, "fwd", torch.bfloat16, 256, 256)
            g, gt = bench(4096, cfg, "bwd", torch.bfloat16, 256, 256)
            torch.cuda.empty_cache()
            line = f"D=E=256 {name:11s} max err {err:.2e}: fwd {f:6.3f} ms {ft:6.2f}, bwd {g:6.3f} ms {gt:6.2f}"  # noqa: E501
        except Exception as e:  # noqa: BLE001
            line = f"D=E=256 {name:11s} {type(e).__name__}: {str(e)[:150]}"
        print(line)
        lines.append(line)
    return lines


def other_shapes():
    """Forward and backward at 4k for other dtypes and head dims (B=4, H=32), default tiles."""
    lines = []
    for dtype, d, e in [
        (torch.float16, 128, 128),
        (torch.bfloat16, 64, 64),
        (torch.bfloat16, 256, 256),
        (torch.bfloat16, 96, 192),
        (torch.float32, 128, 128),
    ]:
        f, ft = bench(4096, None, "fwd", dtype, d, e)
        g, gt = bench(4096, None, "bwd", dtype, d, e)
        torch.cuda.empty_cache()
        name = str(dtype)[6:]
        line = f"{name:8s} D={d:3d} E={e:3d} N=4k: fwd {f:7.3f} ms {ft:6.2f}, bwd {g:7.3f} ms {gt:6.2f}"  # noqa: E501
        print(line)
        lines.append(line)
    return lines


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--lengths", default="4096,32768,131072")
    ap.add_argument("--skip-check", action="store_true")
    ap.add_argument("--skip-256k", action="store_true")
    args = ap.parse_args()
    t0 = time.time()
    p = torch.cuda.get_device_properties(0)
    print(f"{p.name}, {p.multi_processor_count} SMs, torch {torch.__version__}")
    print(f"triton {triton.__version__}")
    summary = {"device": p.name, "checks": [], "timings": [], "memory": {}}

    if not args.skip_check:
        for n, dt, dec, bound in [
            (65536, torch.bfloat16, True, 1e-2),
            (65536, torch.bfloat16, False, 1e-2),
            (4096, torch.float16, True, 2e-3),
            (4096, torch.float32, True, 1e-5),
        ]:
            summary["checks"].append(check_long(n, dt, dec, bound))
        print(f"[{time.time() - t0:.0f}s] checks done")

    lengths = [int(x) for x in args.lengths.split(",")]
    for name in args.configs.split(","):
        cfg = CONFIGS[name]
        for mode in ("fwd", "bwd"):
            for n in lengths:
                try:
                    ms, mtok = bench(n, cfg, mode)
                    torch.cuda.empty_cache()
                except Exception as e:  # noqa: BLE001 - report and go on to the next variant
                    ms, mtok = float("nan"), float("nan")
                    print(f"{name} {mode} N={n}: {type(e).__name__}: {str(e)[:200]}")
                summary["timings"].append(dict(config=name, mode=mode, n=n, ms=ms, mtok=mtok))
                stamp = f"[{time.time() - t0:.0f}s] {name:12s} {mode} N={n:6d}"
                print(f"{stamp}: {ms:8.3f} ms {mtok:7.2f} M tok/s")
    try:
        ncomp = sum(len(c[0]) for c in _lightning2_scan_kernel.device_caches.values())
        print(f"compiled variants of the scan kernel: {ncomp}")
    except Exception:  # noqa: BLE001
        pass

    summary["other"] = other_shapes() + sweep_256()
    fwd_mib, bwd_mib = memory(65536)
    summary["memory"]["64k"] = dict(fwd_mib=fwd_mib, bwd_mib=bwd_mib)
    print(f"memory N=64k above inputs: fwd {fwd_mib:.0f} MiB (o: 2048)")
    print(f"                           bwd {bwd_mib:.0f} MiB (grads: 6144)")

    if not args.skip_256k:
        n = 262144
        for mode in ("fwd", "bwd"):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            try:
                ms, mtok = bench(n, None, mode)
            except Exception as e:  # noqa: BLE001
                ms, mtok = float("nan"), float("nan")
                print(f"256k {mode}: {type(e).__name__}: {str(e)[:200]}")
            summary["timings"].append(dict(config="default", mode=mode, n=n, ms=ms, mtok=mtok))
            peak = torch.cuda.max_memory_allocated() / GIB
            stamp = f"[{time.time() - t0:.0f}s] default {mode} N=256k"
            print(f"{stamp}: {ms:.3f} ms {mtok:.2f} M tok/s, peak {peak:.1f} GiB in all")

    with open(os.path.join(args.out, "lightning2_device.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print("\n==== summary:", p.name, "bf16 B=4 H=32 D=E=128 decay, M tokens/s (ms)")
    for c in summary["checks"]:
        print(c)
    rows = {}
    for t in summary["timings"]:
        rows.setdefault((t["config"], t["mode"]), {})[t["n"]] = (t["mtok"], t["ms"])
    ns = sorted({t["n"] for t in summary["timings"]})
    print(f"{'config':12s} {'mode':4s} " + " ".join(f"{n // 1024:>15d}k" for n in ns))
    for (cfg, mode), r in rows.items():
        cells = " ".join(f"{r[n][0]:7.2f} ({r[n][1]:6.2f})" if n in r else " " * 16 for n in ns)
        print(f"{cfg:12s} {mode:4s} {cells}")
    print(f"memory 64k: {summary['memory']['64k']}")
    for line in summary["other"]:
        print(line)
    print(f"total {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
