"""Issue 12's measurement of the CPU gate: how far identical runs drift apart between
processes, and whether ``attnbench compare`` passes identical pairs and catches a planted
slowdown.

    python benchmarks/scripts/cpu_drift.py --pairs 10 --out /tmp/drift
    python benchmarks/scripts/cpu_drift.py --pairs 10 --plant linear-masked:0.3 --out /tmp/planted

Each pair is a base and a new ``attnbench run`` (the cpu preset over ``--mechanisms``), one
after the other, each its own process; ``--plant`` sets ATTNBENCH_PLANT_SLOWDOWN for the new
runs only. Prints per pair the spread of new/base median-time ratios and the verdicts of
compare as it is (CPU times reported, not gated) and with ``cpu_times=True`` (the time rule
applied to CPU times), then a summary, and writes summary.json under ``--out``. Identical
pairs also show what the best of k runs per side would do (the runs taken alternately as
base and new). ``--rescore`` scores the runs under ``--out`` again without running any.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from attnbench import compare, records

ATTNBENCH = str(Path(sys.executable).with_name("attnbench"))


def run(out: Path, mechanisms: str, plant: str | None) -> float:
    env = dict(os.environ)
    env.pop("ATTNBENCH_PLANT_SLOWDOWN", None)
    if plant:
        env["ATTNBENCH_PLANT_SLOWDOWN"] = plant
    start = time.perf_counter()
    subprocess.run([ATTNBENCH, "run", "--device", "cpu", "--preset", "cpu", "--mechanisms",
                    mechanisms, "--out", str(out), "--no-plot"], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def times(run_dir: Path) -> pd.Series:
    """Median time per case of one run, NaN where the case did not run."""
    df = records.load(run_dir).set_index(["mechanism", "mode", "seq_len"])
    return df["time_ms"].where(df["status"] == "ok")


def best_of_k(runs: list[Path]) -> None:
    """Best of k runs per side, sides alternating (base = runs 1, 3, 5 ..., new = 2, 4, ...):
    how far apart identical sets stay when each case keeps its least disturbed run."""
    table = pd.concat([times(r) for r in runs], axis=1, ignore_index=True)
    for k in range(1, len(runs) // 2 + 1):
        ratios = []
        for g in range(len(runs) // (2 * k)):
            cols = list(range(2 * k * g, 2 * k * (g + 1)))
            ratios.append(table[cols[1::2]].min(axis=1) / table[cols[0::2]].min(axis=1))
        r = pd.concat(ratios).dropna()
        print(f"best of {k}: new/base {r.min():.2f}x..{r.max():.2f}x over {len(ratios)} set "
              f"pair(s); {(abs(np.log(r)) > np.log(1.3)).mean():.0%} of cases differ by > 30%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--mechanisms", default="linear-masked,sdpa-math,linear-cumsum")
    parser.add_argument("--plant", default=None, help="e.g. linear-masked:0.3 (new runs only)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--rescore", action="store_true",
                        help="score the pairs already under --out; run nothing")
    args = parser.parse_args()
    if args.rescore:
        args.pairs = len(list(args.out.glob("pair*")))
    planted = args.plant.rpartition(":")[0] if args.plant else None
    rows = []
    for i in range(1, args.pairs + 1):
        pair = args.out / f"pair{i:02d}"
        base, new, seconds = pair / "base", pair / "new", 0.0
        if not args.rescore:
            seconds = run(base, args.mechanisms, None) + run(new, args.mechanisms, args.plant)
        ratios = (times(new) / times(base)).to_numpy()
        ratios = ratios[np.isfinite(ratios)]
        row = dict(pair=i, seconds=round(seconds, 1), ratio_min=float(ratios.min()),
                   ratio_max=float(ratios.max()),
                   abs_log_ratio_p50=float(np.median(np.abs(np.log(ratios)))))
        text = []
        for rule, cpu_times in (("default", False), ("cpu_times", True)):
            result = compare.compare_dirs(base, new, cpu_times=cpu_times)
            failing = sorted({c.case.mechanism for c in result.cases if c.failed})
            row[rule] = dict(failed=result.failed, counts=result.counts(),
                             failing_mechanisms=failing,
                             caught=planted in failing if planted else None)
            text.append(f"{rule}: {'FAILS' if result.failed else 'passes'} {result.counts()}")
        rows.append(row)
        print(f"pair {i:2d} ({seconds:4.0f} s): new/base time {row['ratio_min']:.2f}x.."
              f"{row['ratio_max']:.2f}x (median |change| "
              f"{math.expm1(row['abs_log_ratio_p50']):.0%}); " + "; ".join(text), flush=True)
    summary = dict(pairs=args.pairs, mechanisms=args.mechanisms,
                   plant=args.plant, ratio_min=min(r["ratio_min"] for r in rows),
                   ratio_max=max(r["ratio_max"] for r in rows), rows=rows)
    for rule in ("default", "cpu_times"):
        summary[rule] = dict(failed=sum(r[rule]["failed"] for r in rows),
                             caught=sum(bool(r[rule]["caught"]) for r in rows))
        print(f"{rule}: {summary[rule]['failed']} of {args.pairs} compares failed"
              + (f", the planted slowdown caught in {summary[rule]['caught']}" if planted else ""))
    print(f"new/base time ratios over all pairs: {summary['ratio_min']:.2f}x.."
          f"{summary['ratio_max']:.2f}x")
    if not planted:
        best_of_k([args.out / f"pair{i:02d}" / side for i in range(1, args.pairs + 1)
                   for side in ("base", "new")])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
