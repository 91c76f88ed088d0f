#!/usr/bin/env bash
# On the lent GPU: the paper's Table 1 for one model size (issue 23), resumable across calls of
# 10 minutes. `attnbench tgs --table1 --size $SIZE` into results/$TAG-table1-$SIZE (a run
# directory per size; a later call carries it back and resumes it), then its TGS figure.
# Usage: SIZE=0.4b TAG=h100 LIMIT_S=540 bash benchmarks/scripts/table1_device.sh
#        (carry .whl and .triton-cache: device_setup.sh). A case is about 8 training steps
#        (measure.planned_calls); at 0.4B a step takes 1.6 s (TNL-LA2) to 5.5 s (LLaMA at 80K)
#        and more at 92K and 128K: expect 20-30 minutes of device time for 0.4B and more than
#        twice that for 1B, so several calls and sessions; each call resumes the last.
# What comes back in $OUT: table1-<size>.log (what the run printed) and run.tgz (the run
# directory: extract it at the repository root and commit it).
set -u
source benchmarks/scripts/device_setup.sh
SIZE=${SIZE:-0.4b}
dir=results/${TAG:-h100}-table1-$SIZE
log="$OUT/table1-$SIZE.log"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$log"
if [ -f "$dir/meta.json" ]; then
  timeout -s INT "${LIMIT_S:-540}" python3 -m attnbench tgs --resume "$dir" >> "$log" 2>&1
else
  timeout -s INT "${LIMIT_S:-540}" python3 -m attnbench tgs --table1 --size "$SIZE" --out "$dir" \
    >> "$log" 2>&1
fi
echo "table1 $SIZE: exit $?" | tee -a "$log"
python3 -m attnbench plot "$dir" --figure tgs --format png >> "$log" 2>&1
rm -f "$dir/run.lock"
tar czf "$OUT/run.tgz" "$dir"
save_autotune
