#!/usr/bin/env bash
# On the lent GPU: the paper preset over every mechanism (or, with RESUME=DIR, the rest of
# an earlier one), interrupted cleanly (SIGINT) at PAPER_S seconds so `attnbench run
# --resume` can finish it later; then the first run a new user makes (plain `attnbench run`,
# timed, stopped at QUICK_S). Run directories come back in $OUT/runs.tgz.
set -u
source benchmarks/scripts/device_setup.sh
PAPER_S=${PAPER_S:-400}
QUICK_S=${QUICK_S:-170}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
mkdir -p "$OUT/runs"
SECONDS=0
if [ -n "${RESUME:-}" ]; then
  cp -r "$RESUME" "$OUT/runs/paper"
  timeout -s INT "$PAPER_S" python3 -m attnbench run --resume "$OUT/runs/paper" --no-plot \
    > "$OUT/paper.log" 2>&1
else
  timeout -s INT "$PAPER_S" python3 -m attnbench run --preset paper --no-plot \
    --out "$OUT/runs/paper" > "$OUT/paper.log" 2>&1
fi
echo "paper: exit $?, ${SECONDS} s wall" | tee -a "$OUT/paper.log"
SECONDS=0
timeout -s INT "$QUICK_S" python3 -m attnbench run --no-plot > "$OUT/quick.log" 2>&1
echo "plain attnbench run: exit $?, ${SECONDS} s wall" | tee -a "$OUT/quick.log"
mv results/*-quick-cuda "$OUT/runs/quick"
tar czf "$OUT/runs.tgz" -C "$OUT/runs" .
rm -rf "$OUT/runs"
