#!/usr/bin/env bash
# On the lent GPU, issue 15's targets. Not yet run: no device time was left for it.
#  profile:  `attnbench profile` of lightning2, peer-fla-chunk and sdpa-flash at 32k, fwd and
#            bwd, paper shape (B 4, H 32, D 128, bf16), with the memory timeline: per case a
#            trace, the per-kernel table and its sum against do_bench's median of the same
#            call (target: within 10%; kernel-sums.log), the profiling time per case (target:
#            under 30 s after compilation), and the roofline of those six cases.
#  ncu:      lightning2 alone under Nsight Compute (--ncu): DRAM and SM throughput,
#            occupancy, registers, local-memory traffic per kernel (the backward's gap to
#            its floor).
#  roofline: the paper shape 4k..64k over the fused kernels: `report --roofline` and
#            `plot --figure roofline` (target: lightning2 fwd at 85% or more of the
#            bandwidth roof, every other mechanism placed).
# STEPS picks steps (default all three, about 9 minutes at most; split them over two calls
# if the device gives 10 minutes a command). Run directories come back in $OUT/runs.tgz;
# commit them under results/.
set -u
source benchmarks/scripts/device_setup.sh
STEPS=${STEPS:-"profile ncu roofline"}
mkdir -p "$OUT/runs"
PAPER=(--preset paper --seq-lens 32k --modes fwd,bwd)

roofline_views() {  # $1: a run directory, $2: a log name
  python3 -m attnbench report --roofline "$1" > "$OUT/$2" 2>&1
  python3 -m attnbench plot --figure roofline "$1" --format png,svg >> "$OUT/$2" 2>&1
}

for step in $STEPS; do
  SECONDS=0
  case $step in
    profile)
      timeout -s INT 240 python3 -m attnbench profile "${PAPER[@]}" \
        --mechanisms lightning2,peer-fla-chunk,sdpa-flash --memory-timeline \
        --out "$OUT/runs/profile-32k" > "$OUT/profile-32k.log" 2>&1
      echo "profile 32k: exit $?, ${SECONDS} s"
      roofline_views "$OUT/runs/profile-32k" profile-32k-roofline.log
      # kernels' sums against the timed call, per case (the 10% target)
      python3 - "$OUT/runs/profile-32k" <<'PY' | tee "$OUT/kernel-sums.log"
import sys
import pandas as pd
from attnbench.case import KEY_COLUMNS
k = pd.read_parquet(f"{sys.argv[1]}/kernels.parquet")
for _, rows in k.groupby(KEY_COLUMNS, sort=False):
    total, timed = rows["device_ms_per_call"].sum(), rows["timed_ms"].iloc[0]
    print(f"{rows['mechanism'].iloc[0]:>16} {rows['mode'].iloc[0]}: kernels {total:.3f} ms, "
          f"do_bench {timed:.3f} ms, ratio {total / timed:.3f}, {len(rows)} kernels, "
          f"profiled in {rows['profile_s'].iloc[0]:.1f} s")
PY
      du -sh "$OUT"/runs/profile-32k/profiles/* | sort -h | tail -3 ;;
    ncu)
      timeout -s INT 120 python3 -m attnbench profile "${PAPER[@]}" --mechanisms lightning2 \
        --ncu --out "$OUT/runs/profile-32k-ncu" > "$OUT/profile-32k-ncu.log" 2>&1
      echo "profile 32k ncu: exit $?, ${SECONDS} s" ;;
    roofline)
      timeout -s INT 200 python3 -m attnbench run --preset paper --seq-lens 4k..64k --no-plot \
        --mechanisms lightning2,lightning1,peer-fla-chunk,peer-lightning-attn,sdpa-flash,sdpa-cudnn \
        --line-seconds 20 --out "$OUT/runs/roofline" > "$OUT/roofline.log" 2>&1
      echo "roofline run: exit $?, ${SECONDS} s"
      roofline_views "$OUT/runs/roofline" roofline-report.log ;;
    *) echo "unknown step $step (profile, ncu, roofline)"; exit 2 ;;
  esac
done
tar czf "$OUT/runs.tgz" -C "$OUT/runs" . && rm -rf "$OUT/runs"
