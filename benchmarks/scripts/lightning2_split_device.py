"""One device call for the sequence-split Lightning-2 (round three): how many segments.

Run on the GPU machine from the repository root (benchmarks/scripts/device_setup.sh first):

    python benchmarks/scripts/lightning2_split_device.py --out $OUT --deadline 300

For each shape (bf16, decay, D = E = 128) and each split (the default plan, the whole
sequence, and 2..32 segments forced through ``_config={"segment": ...}``): forward and
backward of ``lightning_attn2`` timed by the harness's own call (``prepare_call``: inputs
made first, the backward alone from a kept graph) under ``triton.testing.do_bench`` (L2
flushed, median and p20/p80); M tokens/s, and per head and token the share of the
batch 4 / heads 32 whole-sequence rate. Then the memory above the inputs of the default
plan. A table (markdown) and the rows (JSON) are rewritten after each shape, so a run
cut off by ``--deadline`` still reports.

``--state-tiles``: instead of segment counts, the default split with the state-only scans
(each segment's own state, forward and backward) on other tiles (``state_`` keys of
``_config``), at the small shapes; each variant's output and gradients are first compared
with the default tiles' on the same inputs (``agree``: max relative difference).

``--fused``: whether the fused dk/dv scan (one program a head holding dS whole) gains from
two programs per SM, the premise of round four's next idea: the three-scan backward beside
the fused one on 1 and 2 pipeline stages (two programs fit an SM's shared memory only on
one), at batch 4 and 8 with heads 32 (128 and 256 programs), checked with ``agree`` first.
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path

import torch
import triton.testing
from attnbench.kernels import lightning2

from attnbench import prepare_call, registry
from attnbench.case import Case

SHAPES = [(4, 32, 32768), (1, 8, 32768), (1, 8, 131072), (1, 16, 32768), (2, 8, 32768),
          (2, 16, 16384), (4, 32, 4096)]
COUNTS = ["default", 1, 2, 4, 8, 16, 32]
D = E = 128


def seg_of(n: int, count) -> int | None:
    """Tokens per segment for ``count`` segments (a multiple of the 64-token block)."""
    if count == "default":
        return None
    per = -(-n // count)
    return min(n, -(-per // 64) * 64)


# the state-only scans' tiles (the output scans keep BLOCK_N 64, BLOCK_E 64, 4 warps, 4 stages)
STATE_TILES = {
    "default": None,
    "E128-w4": {"state_BLOCK_E": 128},
    "E128-w8": {"state_BLOCK_E": 128, "state_num_warps": 8},
    "N128-s3": {"state_BLOCK_N": 128, "state_num_stages": 3},
    "E128-N128-w8-s2": {"state_BLOCK_E": 128, "state_BLOCK_N": 128, "state_num_warps": 8,
                        "state_num_stages": 2},
}
STATE_SHAPES = [(1, 8, 32768), (1, 8, 131072), (1, 16, 32768), (2, 8, 32768)]
FUSED = {
    "default": None,
    "fused-s2": {"fused": True},
    "fused-s1": {"fused": True, "dkdv_num_stages": 1},
    "fused-s1-w8": {"fused": True, "dkdv_num_stages": 1, "dkdv_num_warps": 8},
}
FUSED_SHAPES = [(4, 32, 32768), (8, 32, 32768)]  # at 128k, agree() outgrew 80 GB (run 8)


def variants(n: int, which: str) -> list[tuple[str, dict | None]]:
    """(name, ``_config``) of each variant timed at length ``n``: ``which`` is "segments",
    "state-tiles" or "fused"."""
    if which == "state-tiles":
        return list(STATE_TILES.items())
    if which == "fused":
        return list(FUSED.items())
    segs = [(str(c), seg_of(n, c)) for c in COUNTS]
    return [(name, None if seg is None else {"segment": seg}) for name, seg in segs]


def agree(b, h, n, cfg) -> float:
    """Max relative difference of o, dq, dk, dv between ``cfg`` and the default tiles."""
    torch.manual_seed(0)
    q, k, v, do = (torch.randn(b, h, n, D, device="cuda", dtype=torch.bfloat16)
                   for _ in range(4))
    decay = lightning2.default_decay(h, "cuda")
    outs = []
    for c in (None, cfg):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        o = lightning2.lightning_attn2(*leaves, decay, _config=c)
        o.backward(do)
        outs.append([o.float()] + [t.grad.float() for t in leaves])
    return max(((x - y).norm() / y.norm()).item() for x, y in zip(*outs, strict=True))


def time_call(b, h, n, mode, cfg):
    case = Case(mechanism="lightning2", mode=mode, batch=b, heads=h, seq_len=n, head_dim=D,
                value_dim=E, dtype="bf16", decay=True)
    fn = functools.partial(lightning2.lightning_attn2, _config=cfg)
    call = prepare_call(registry.get("lightning2"), case, "cuda", fn=fn)
    call.call()  # first call: compilation kept out of the timing
    torch.cuda.synchronize()
    p20, p50, p80 = triton.testing.do_bench(call.call, warmup=25, rep=200,
                                            quantiles=[0.2, 0.5, 0.8])
    del call
    return p50, p20, p80


def extra_memory(b, h, n, seg):
    """MiB above the inputs: forward (o and what it keeps), backward (above the graph)."""
    cfg = None if seg is None else {"segment": seg}
    q, k, v = (torch.randn(b, h, n, D, device="cuda", dtype=torch.bfloat16,
                           requires_grad=True) for _ in range(3))
    decay = lightning2.default_decay(h, "cuda")
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    o = lightning2.lightning_attn2(q, k, v, decay, _config=cfg)
    torch.cuda.synchronize()
    fwd = torch.cuda.max_memory_allocated() - base
    kept = torch.cuda.memory_allocated() - base  # o and the saved starts
    do = torch.randn_like(o)
    torch.cuda.synchronize()
    base2 = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    o.backward(do)
    torch.cuda.synchronize()
    bwd = torch.cuda.max_memory_allocated() - base2
    mib = 2**20
    out = o.numel() * 2
    return dict(fwd_extra_mib=fwd / mib, fwd_kept_beyond_o_mib=(kept - out) / mib,
                bwd_extra_mib=bwd / mib, grads_mib=3 * out / mib)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--deadline", type=float, default=300)
    ap.add_argument("--state-tiles", action="store_true")
    ap.add_argument("--fused", action="store_true")
    args = ap.parse_args()
    which = "fused" if args.fused else "state-tiles" if args.state_tiles else "segments"
    shapes = {"segments": SHAPES, "state-tiles": STATE_SHAPES, "fused": FUSED_SHAPES}[which]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    rows: list[dict] = []
    sms = lightning2.sm_count(torch.device("cuda", 0))
    print(f"{torch.cuda.get_device_name()} ({sms} SMs), torch {torch.__version__}, "
          f"triton {triton.__version__}", flush=True)
    for b, h, n in shapes:
        for name, cfg in variants(n, which):
            if time.time() - t0 > args.deadline:
                break
            plan = (cfg or {}).get("segment") or lightning2.segment_length(
                b, h, n, D, E, torch.bfloat16, sms)
            row = dict(batch=b, heads=h, seq_len=n, split=name, segment=plan,
                       segments=-(-n // plan))
            try:
                if which != "segments" and cfg:
                    row["max_rel_diff"] = agree(b, h, n, cfg)
                for mode in ("fwd", "bwd") if which != "fused" else ("bwd",):
                    ms, p20, p80 = time_call(b, h, n, mode, cfg)
                    row[f"{mode}_ms"], row[f"{mode}_p20"], row[f"{mode}_p80"] = ms, p20, p80
                    row[f"{mode}_mtok"] = b * n / ms / 1e3
                if name == "default":
                    row.update(extra_memory(b, h, n, None))
            except Exception as e:  # noqa: BLE001 - a failed variant is a row, the sweep goes on
                row["error"] = f"{type(e).__name__}: {e}"[:300]
            torch.cuda.empty_cache()
            rows.append(row)
            print(json.dumps(row), flush=True)
        write(out, rows, sms)


def write(out: Path, rows: list[dict], sms: int):
    (out / "split.json").write_text(json.dumps(rows, indent=1))
    # per head-token rate = tokens/s x heads (tokens = batch x length)
    ref = {m: next((r[f"{m}_mtok"] * 32 for r in rows
                    if (r["batch"], r["heads"], r["seq_len"]) == (4, 32, 32768)
                    and r["split"] in ("1", "default") and f"{m}_mtok" in r), None)
           for m in ("fwd", "bwd")}
    lines = [f"{sms} SMs. M tokens/s; share = per head-token rate / batch 4, heads 32, 32k "
             "whole-sequence rate", "",
             "| B | H | N | split | segments x tokens | fwd | fwd share | bwd | bwd share "
             "| fwd extra MiB | bwd extra MiB | vs default tiles |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = [r["batch"], r["heads"], r["seq_len"], r["split"],
                 f"{r['segments']} x {r['segment']}"]
        for m in ("fwd", "bwd"):
            if f"{m}_mtok" in r:
                share = (r[f"{m}_mtok"] * r["heads"] / ref[m]
                         if ref[m] else float("nan"))
                cells += [f"{r[f'{m}_mtok']:.1f}", f"{share:.0%}"]
            else:
                cells += [r.get("error", "-"), ""]
        cells += [f"{r['fwd_extra_mib']:.1f}" if "fwd_extra_mib" in r else "",
                  f"{r['bwd_extra_mib']:.1f}" if "bwd_extra_mib" in r else "",
                  f"{r['max_rel_diff']:.1e}" if "max_rel_diff" in r else ""]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    (out / "split.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
