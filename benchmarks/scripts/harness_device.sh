#!/usr/bin/env bash
# On the lent GPU: the first run a new user makes (plain `attnbench run`, timed), then the
# paper preset over every mechanism, interrupted cleanly (SIGINT) at PAPER_S seconds so that
# `attnbench run --resume` can finish it in a later call. Run directories come back in $OUT.
set -u
source benchmarks/scripts/device_setup.sh
PAPER_S=${PAPER_S:-440}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
mkdir -p "$OUT/runs"
if [ -z "${RESUME:-}" ]; then
  SECONDS=0
  attnbench run --no-plot > "$OUT/quick.log" 2>&1
  echo "plain attnbench run: exit $?, ${SECONDS} s wall" | tee -a "$OUT/quick.log"
  mv results/*-quick-cuda "$OUT/runs/h100-quick"
  SECONDS=0
  timeout -s INT "$PAPER_S" python3 -m attnbench run --preset paper --no-plot \
    --out "$OUT/runs/h100-paper-v2" > "$OUT/paper.log" 2>&1
else
  cp -r "$RESUME" "$OUT/runs/h100-paper-v2"
  SECONDS=0
  timeout -s INT "$PAPER_S" python3 -m attnbench run --resume "$OUT/runs/h100-paper-v2" \
    --no-plot > "$OUT/paper.log" 2>&1
fi
echo "paper: exit $?, ${SECONDS} s wall" | tee -a "$OUT/paper.log"
tail -5 "$OUT/quick.log" 2>/dev/null
tar czf "$OUT/runs.tgz" -C "$OUT/runs" .
rm -rf "$OUT/runs"
