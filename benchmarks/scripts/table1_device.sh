#!/usr/bin/env bash
# On the lent GPU: the paper's Table 1 (issue 23), a run directory per model size, resumable
# across calls of 10 minutes. For each size of SIZES in turn, `attnbench tgs --table1 --size S`
# into results/$TAG-table1-S (resumed where a carried one exists; a finished one runs nothing),
# until LIMIT_S seconds are spent; then each size's TGS figure.
# Usage: TAG=h100 LIMIT_S=540 bash benchmarks/scripts/table1_device.sh   (SIZES="0.4b 1b 3b")
#        (carry .whl and .triton-cache: device_setup.sh). A case is about 7 training steps
#        (measure.planned_calls); at 0.4B a step takes 1.6 s (TNL-LA2) to 5.5 s (LLaMA at 80K)
#        and more at 92K and 128K. Measured on the H100, case time: 0.4B's 50 cells 18 minutes,
#        1B's 50 cells 27 (2.7 s a step for TNL-LA2, 18 s for LLaMA-FA2 at 128K), 3B's 30 cells
#        8: several calls and sessions; each call resumes the last.
# What comes back in $OUT: table1-<size>.log (what each run printed), runs.tgz (the run
# directories: extract at the repository root and commit) and autotune.tgz (FLA's autotune
# choices: extract at the root too, and carry .triton-cache next time).
set -u
source benchmarks/scripts/device_setup.sh
TAG=${TAG:-h100}
deadline=$((SECONDS + ${LIMIT_S:-540}))
dirs=()
for size in ${SIZES:-0.4b 1b 3b}; do
  left=$((deadline - SECONDS))
  [ "$left" -lt 30 ] && break
  dir=results/$TAG-table1-$size
  log="$OUT/table1-$size.log"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$log"
  # --time-limit starts no case predicted to end past it (the timeout is the backstop, for a
  # case with nothing to predict it from and for checks): no case is cut off and measured again
  limit=$((left > 60 ? left - 30 : left / 2))
  if [ -f "$dir/meta.json" ]; then
    timeout -s INT "$left" python3 -m attnbench tgs --resume "$dir" --time-limit "$limit" \
      >> "$log" 2>&1
  else
    timeout -s INT "$left" python3 -m attnbench tgs --table1 --size "$size" --out "$dir" \
      --time-limit "$limit" >> "$log" 2>&1
  fi
  echo "table1 $size: exit $?" | tee -a "$log"
  python3 -m attnbench plot "$dir" --figure tgs --format png >> "$log" 2>&1
  rm -f "$dir/run.lock"
  [ -d "$dir" ] && dirs+=("$dir")
  # after every size: a call cut short keeps the ones before
  [ ${#dirs[@]} -gt 0 ] && tar czf "$OUT/runs.tgz" "${dirs[@]}"
  save_autotune
done
