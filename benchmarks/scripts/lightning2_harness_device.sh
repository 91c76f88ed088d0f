#!/usr/bin/env bash
# On the lent GPU, the final lightning2 through the harness: its GPU tests, the quick shape
# beside lightning1 and cuDNN (the host-bound small shapes), the paper shape to 256k.
set -u
source benchmarks/scripts/device_setup.sh
mkdir -p "$OUT/runs"
timeout 100 python3 -m pytest -q -m gpu tests/test_lightning2.py > "$OUT/gpu-tests.log" 2>&1
echo "gpu tests: exit $?"; tail -3 "$OUT/gpu-tests.log"
timeout -s INT 80 python3 -m attnbench run --preset quick --mechanisms lightning2,lightning1,sdpa-cudnn \
  --no-plot --out "$OUT/runs/quick" > "$OUT/quick.log" 2>&1; echo "quick: exit $?"
timeout -s INT 90 python3 -m attnbench run --preset paper --seq-lens 1k..256k --mechanisms lightning2 \
  --no-plot --out "$OUT/runs/paper" > "$OUT/paper.log" 2>&1; echo "paper: exit $?"
tar czf "$OUT/runs.tgz" -C "$OUT/runs" . && rm -rf "$OUT/runs"
