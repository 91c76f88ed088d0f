"""One device call for kernels/lightning2.py (round two): check, time, host cost, memory.

Run on the GPU machine from the repository root (benchmarks/scripts/device_setup.sh first):

    PYTHONUNBUFFERED=1 python benchmarks/scripts/lightning2_device.py --out $OUT --deadline 240

Sections, most important first; each is skipped once ``--deadline`` seconds have passed,
and the JSON summary is rewritten after each, so a cut-off run still reports:
1. bf16 checks of every backward variant against a float64 blocked oracle (N = 1000, and
   N = 64k with an initial state for the default);
2. paper shape (B=4, H=32, D=E=128, bf16, decay): forward and backward of each variant,
   median (p20, p80) of triton.testing.do_bench;
3. host cost of issuing one call (N calls without synchronising / N) at B=2, H=16, N=1k,
   with each saving turned off in turn;
4. other shapes at 4k; memory above the inputs at 64k; 256k forward and backward.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch
import triton

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tests"))
from attnbench.kernels import common, default_decay, lightning2  # noqa: E402
from attnbench.kernels.lightning2 import lightning_attn2  # noqa: E402
from kernel_testing import chunked_reference  # noqa: E402

B, H, D, E = 4, 32, 128, 128
T0 = time.time()
LOG: list[str] = []


def say(line: str):
    line = f"[{time.time() - T0:5.0f}s] {line}"
    print(line, flush=True)
    LOG.append(line)


def rel(a, b):
    return ((a.double() - b).norm() / b.norm()).item()


BWD_VARIANTS = {  # name -> _config of lightning_attn2
    "three-scans": None,  # the default: dq, dk, dv scans (BLOCK_N 64, BLOCK_E 64, 4 warps)
    "fused-w4s2": {"fused": True},  # dq scan, then dk and dv sharing dS (one program a head)
    "fused-w8s2": {"fused": True, "dkdv_num_warps": 8},
}


def check(n, dtype, cfg, with_state, b=1, h=2, d=D, e=E, tf32=False):
    """Max relative error of o, final state, dq, dk, dv, dh0 against float64."""
    torch.manual_seed(n)
    q, k, v, do = (torch.randn(b, h, n, x, device="cuda").to(dtype) for x in (d, d, e, e))
    h0, dht = (torch.randn(b, h, d, e, device="cuda") for _ in range(2))
    s = default_decay(h, "cuda")
    xs = [t.clone().requires_grad_() for t in (q, k, v, h0)]
    o, ht = lightning_attn2(*xs[:3], s, xs[3] if with_state else None, True, tf32=tf32,
                           _config=cfg)
    ((o.float() * do.float()).sum() + (ht * dht).sum()).backward()
    x64 = [t.double().requires_grad_() for t in (q, k, v, h0)]
    ro, rht = chunked_reference(*x64[:3], s.double(), x64[3] if with_state else None)
    ((ro * do.double()).sum() + (rht * dht.double()).sum()).backward()
    errs = {"o": rel(o, ro), "ht": rel(ht, rht)}
    for name, a, r in zip(("dq", "dk", "dv", "dh0"), xs, x64, strict=True):
        if a.grad is not None and (name != "dh0" or with_state):
            errs[name] = rel(a.grad, r.grad)
    return errs


def inputs(n, dtype=torch.bfloat16, d=D, e=E, b=B, h=H, grad=True):
    torch.manual_seed(0)
    q, k, v = (torch.randn(b, h, n, x, device="cuda", dtype=dtype).requires_grad_(grad)
               for x in (d, d, e))
    return q, k, v, default_decay(h, "cuda")


def timed(fn, grads=None):
    fn()
    torch.cuda.synchronize()
    p20, p50, p80 = triton.testing.do_bench(fn, warmup=25, rep=100, grad_to_none=grads,
                                            quantiles=[0.2, 0.5, 0.8])
    return p50, p20, p80


def bench(n, mode, cfg=None, dtype=torch.bfloat16, d=D, e=E, tf32=False):
    q, k, v, s = inputs(n, dtype, d, e)
    if mode == "fwd":
        with torch.no_grad():
            r = timed(lambda: lightning_attn2(q, k, v, s, tf32=tf32, _config=cfg))
        o = do = None
    else:
        o = lightning_attn2(q, k, v, s, tf32=tf32, _config=cfg)
        do = torch.randn_like(o)

        def fn():
            q.grad = k.grad = v.grad = None  # do_bench's warm-up would accumulate grads
            o.backward(do, retain_graph=True)

        r = timed(fn, [q, k, v])
    q = k = v = o = do = None  # free before the next shape
    torch.cuda.empty_cache()
    return dict(n=n, mode=mode, ms=r[0], p20=r[1], p80=r[2], mtok=B * n / r[0] / 1e3)


def host_us(fn, calls=100):
    best = math.inf
    for _ in range(3):
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - t) / calls)
        torch.cuda.synchronize()
    return best * 1e6


class _Never(dict):
    def get(self, key, default=None):  # every call validates and plans in full
        return default


def host_costs():
    """Host µs to issue one call at B=2, H=16, N=1k, bf16, decay; savings turned off."""
    out = {}
    q, k, v, s = inputs(1024, b=2, h=16, grad=False)
    qg, kg, vg, _ = inputs(1024, b=2, h=16, grad=True)
    o = lightning_attn2(qg, kg, vg, s)
    do = torch.randn_like(o)

    def bwd():
        qg.grad = kg.grad = vg.grad = None
        o.backward(do, retain_graph=True)

    def fwd_grad():
        return lightning_attn2(qg, kg, vg, s)

    fwd = lambda: lightning_attn2(q, k, v, s)  # noqa: E731
    plain = {"fwd (no grad)": fwd, "fwd (autograd)": fwd_grad, "bwd": bwd}
    for name, fn in plain.items():
        out[f"{name}: all savings"] = host_us(fn)
    # Savings off, one at a time.
    calls = lightning2._CALLS
    lightning2._CALLS = _Never()
    for name, fn in plain.items():
        out[f"{name}: validation and plan every call"] = host_us(fn)
    lightning2._CALLS = calls
    for launcher in (lightning2._SCAN, lightning2._DKDV):
        launcher.disabled = "off for the comparison"
    for name, fn in plain.items():
        out[f"{name}: Triton's own launcher"] = host_us(fn)
    for launcher in (lightning2._SCAN, lightning2._DKDV):
        launcher.disabled = None
    out["input key alone"] = host_us(lambda: common.input_key(q, k, v, s))
    out["validation in full alone"] = host_us(
        lambda: common.check_inputs(q, k, v, s, on_cpu=False))
    out["triton.next_power_of_2 alone"] = host_us(lambda: triton.next_power_of_2(100))
    out["torch.empty_like alone"] = host_us(lambda: torch.empty_like(q))
    with torch.no_grad():
        out["fwd gpu ms"] = timed(fwd)[0]
    out["bwd gpu ms"] = timed(bwd, [qg, kg, vg])[0]
    out["launcher disabled (reason)"] = [lightning2._SCAN.disabled, lightning2._DKDV.disabled]
    out["launcher fast/slow calls"] = [lightning2._SCAN.fast, lightning2._SCAN.slow]
    out["launch hooks active"] = common.hooks_active()
    return out


def memory(n):
    q, k, v, s = inputs(n)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    o = lightning_attn2(q, k, v, s)
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--deadline", type=float, default=240.0)
    ap.add_argument("--variants", default=",".join(BWD_VARIANTS))
    args = ap.parse_args()
    p = torch.cuda.get_device_properties(0)
    summary = {"device": p.name, "torch": torch.__version__, "triton": triton.__version__,
               "checks": {}, "paper": [], "host_us": {}, "other": [], "memory": {}, "log": LOG}

    def save():
        with open(os.path.join(args.out, "lightning2_device.json"), "w") as f:
            json.dump(summary, f, indent=1)

    def late():
        return time.time() - T0 > args.deadline

    say(f"{p.name}, {p.multi_processor_count} SMs, torch {torch.__version__}, "
        f"triton {triton.__version__}")
    variants = args.variants.split(",")
    for name in variants:
        try:
            errs = check(1000, torch.bfloat16, BWD_VARIANTS[name], with_state=True)
            summary["checks"][f"{name} bf16 N=1000 state"] = errs
            say(f"check {name}: " + " ".join(f"{k} {v:.2e}" for k, v in errs.items()))
        except Exception as exc:  # noqa: BLE001 - report the variant and go on
            summary["checks"][f"{name}"] = f"{type(exc).__name__}: {str(exc)[:300]}"
            say(f"check {name}: {type(exc).__name__}: {str(exc)[:300]}")
    save()

    # Paper shape: forward at every length, backward variants at 4k and 32k, default wide.
    for n in (4096, 32768, 131072):
        r = bench(n, "fwd")
        summary["paper"].append({"variant": "default", **r})
        say(f"fwd default N={n}: {r['ms']:.3f} ms ({r['p20']:.3f}-{r['p80']:.3f}) "
            f"{r['mtok']:.1f} M tok/s")
    for name in variants:
        if not isinstance(summary["checks"].get(f"{name} bf16 N=1000 state"), dict):
            continue
        for n in (4096, 32768):
            try:
                r = bench(n, "bwd", BWD_VARIANTS[name])
            except Exception as exc:  # noqa: BLE001
                say(f"bwd {name} N={n}: {type(exc).__name__}: {str(exc)[:200]}")
                continue
            summary["paper"].append({"variant": name, **r})
            say(f"bwd {name} N={n}: {r['ms']:.3f} ms ({r['p20']:.3f}-{r['p80']:.3f}) "
                f"{r['mtok']:.1f} M tok/s")
    save()

    if not late():
        summary["host_us"] = host_costs()
        for k_, v_ in summary["host_us"].items():
            say(f"host {k_}: {v_}")
        save()

    if not late():
        errs = check(65536, torch.bfloat16, None, with_state=True)
        summary["checks"]["default bf16 N=64k state"] = errs
        say("check default N=64k: " + " ".join(f"{k} {v:.2e}" for k, v in errs.items()))
        errs = check(4096, torch.float32, None, with_state=True, tf32=True)
        summary["checks"]["default fp32 tf32 N=4k state"] = errs
        say("check tf32 N=4k: " + " ".join(f"{k} {v:.2e}" for k, v in errs.items()))
        save()

    for n in (8192, 16384, 65536, 131072):
        if late():
            break
        r = bench(n, "bwd")
        summary["paper"].append({"variant": "default", **r})
        say(f"bwd default N={n}: {r['ms']:.3f} ms {r['mtok']:.1f} M tok/s")
    save()

    for dtype, d, e, tf32 in [(torch.bfloat16, 64, 64, False), (torch.float16, 128, 128, False),
                              (torch.bfloat16, 256, 256, False), (torch.float32, 128, 128, True),
                              (torch.bfloat16, 96, 192, False)]:
        if late():
            break
        try:
            f = bench(4096, "fwd", None, dtype, d, e, tf32)
            g = bench(4096, "bwd", None, dtype, d, e, tf32)
        except Exception as exc:  # noqa: BLE001
            say(f"other {dtype} {d} {e}: {type(exc).__name__}: {str(exc)[:200]}")
            continue
        name = f"{str(dtype)[6:]}{'-tf32' if tf32 else ''} D={d} E={e}"
        summary["other"].append({"shape": name, "fwd": f, "bwd": g})
        say(f"other {name} N=4k: fwd {f['mtok']:.1f} bwd {g['mtok']:.1f} M tok/s")
    save()

    if not late():
        fwd_mib, bwd_mib = memory(65536)
        summary["memory"]["64k"] = dict(fwd_mib=fwd_mib, bwd_mib=bwd_mib)
        say(f"memory 64k above inputs: fwd {fwd_mib:.0f} MiB (o 2048), bwd {bwd_mib:.0f} "
            "(dq+dk+dv 6144)")
    for mode in ("fwd", "bwd"):
        if late():
            break
        torch.cuda.reset_peak_memory_stats()
        r = bench(262144, mode)
        r["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        summary["paper"].append({"variant": "default", **r})
        say(f"{mode} default N=256k: {r['ms']:.3f} ms {r['mtok']:.1f} M tok/s, peak "
            f"{r['peak_gib']:.1f} GiB")
    save()
    say("done")


if __name__ == "__main__":
    main()
