#!/usr/bin/env bash
# On the lent GPU (H100 or H200), the runs of the sequence-split Lightning-2 (round three of
# benchmarks/notes/lightning2.md), by step, each resumable across calls of 10 minutes:
#   tests    the kernel's and lightning2-sp's GPU tests
#   small    batch 1 / heads 8, 1 / 16, 2 / 8 at 16k..256k beside peer-fla-chunk (one run
#            each: FLA autotunes per process, compare only inside a run); SHAPES="1x8"
#            runs only those (default "1x8 1x16 2x8")
#   paper    the paper preset over every mechanism (about 10 minutes on an H100: two calls),
#            limited to what the call has left of CALL_S (default 570 s)
#   paper4k  the paper shape's lightning2 forward and backward at 2k..8k again (one minute)
#   tgs      TNL 0.4B with lightning2 and peer-fla-chunk, checkpointing, 1k..128k at 128k
#            tokens per step (about 7 minutes on an H100: FLA autotunes at every length), in
#            TGS_DIR (default results/<TAG>-tgs-split)
#   profile  attnbench profile --ncu of lightning2 at 32k, paper shape and batch 1 / heads 8
#   statetiles  the split's state-only scans on other tiles, at the small shapes (about 2
#            minutes; $OUT/statetiles/split.md)
#   fused    the fused dk/dv backward on 1 and 2 stages beside the three scans, batch 4 and
#            8 / heads 32, 32k (20 s on an H100; $OUT/fused/split.md)
# Usage: STEPS="tests small" TAG=h200 bash benchmarks/scripts/lightning2_split_device.sh
# Run directories go under results/<TAG>-split-* (carried back in $OUT/runs.tgz; a later
# call resumes them when they are carried again: they live in the working tree).
set -u
source benchmarks/scripts/device_setup.sh
TAG=${TAG:-h100}
STEPS=${STEPS:-"tests small"}
R="python3 -m attnbench"
call_end=$(( $(date +%s) + ${CALL_S:-570} ))  # the paper step fits what the call has left
for step in $STEPS; do
  SECONDS=0
  case $step in
    tests)
      timeout 200 python3 -m pytest -q -m gpu tests/test_lightning2.py tests/test_sequence_parallel.py \
        > "$OUT/tests.log" 2>&1; echo "tests: exit $?"; tail -3 "$OUT/tests.log" ;;
    small)
      for shape in ${SHAPES:-1x8 1x16 2x8}; do
        set -- ${shape/x/ }
        dir=results/$TAG-split-b$1h$2
        if [ -f "$dir/meta.json" ]; then
          timeout -s INT 170 $R run --resume "$dir" --no-plot > "$OUT/small-b$1h$2.log" 2>&1
        else
          timeout -s INT 170 $R run --preset paper --seq-lens 16k..256k --modes fwd,bwd \
            --mechanisms lightning2,peer-fla-chunk --batch "$1" --heads "$2" --no-plot \
            --out "$dir" > "$OUT/small-b$1h$2.log" 2>&1
        fi
        echo "small b$1h$2: exit $?"
      done ;;
    paper)
      dir=results/$TAG-split-paper-all
      left=$(( call_end - $(date +%s) ))
      [ "$left" -gt 540 ] && left=540
      if [ -f "$dir/meta.json" ]; then
        timeout -s INT "$left" $R run --resume "$dir" --time-limit $((left - 40)) > "$OUT/paper.log" 2>&1
      else
        timeout -s INT "$left" $R run --preset paper --seq-lens 1k..256k --out "$dir" \
          --time-limit $((left - 40)) > "$OUT/paper.log" 2>&1
      fi
      echo "paper: exit $?" ;;
    paper4k)
      timeout -s INT 120 $R run --preset paper --seq-lens 2k..8k --modes fwd,bwd \
        --mechanisms lightning2 --no-plot --out "results/$TAG-split-paper-4k" > "$OUT/paper4k.log" 2>&1
      echo "paper4k: exit $?" ;;
    tgs)
      dir=${TGS_DIR:-results/$TAG-tgs-split}
      if [ -f "$dir/meta.json" ]; then
        timeout -s INT ${TGS_LIMIT_S:-540} $R tgs --resume "$dir" > "$OUT/tgs.log" 2>&1
      else
        timeout -s INT ${TGS_LIMIT_S:-540} $R tgs --models tnl --mechanisms lightning2,peer-fla-chunk --size 0.4b \
          --checkpointing --seq-lens 1k..128k --tokens-per-step 128k --out "$dir" > "$OUT/tgs.log" 2>&1
      fi
      echo "tgs: exit $?" ;;
    profile)
      for shape in "4 32" "1 8"; do
        set -- $shape
        timeout -s INT 100 $R profile --preset paper --seq-lens 32k --modes fwd,bwd --mechanisms lightning2 \
          --batch "$1" --heads "$2" --ncu --out "results/$TAG-split-profile-b$1h$2" > "$OUT/profile-b$1h$2.log" 2>&1
        echo "profile b$1h$2: exit $?"
        $R plot --figure roofline "results/$TAG-split-profile-b$1h$2" --format png >> "$OUT/profile-b$1h$2.log" 2>&1
      done ;;
    statetiles)
      timeout -s INT 240 python3 benchmarks/scripts/lightning2_split_device.py --state-tiles \
        --out "$OUT/statetiles" --deadline 200 > "$OUT/statetiles.log" 2>&1
      echo "statetiles: exit $?"; cat "$OUT/statetiles/split.md" ;;
    fused)
      timeout -s INT 150 python3 benchmarks/scripts/lightning2_split_device.py --fused \
        --out "$OUT/fused" --deadline 110 > "$OUT/fused.log" 2>&1
      echo "fused: exit $?"; cat "$OUT/fused/split.md" ;;
  esac
  echo "$step: ${SECONDS}s"
  # after every step: a call stopped by its 10-minute limit keeps what the steps before wrote
  rm -f results/*/run.lock
  tar czf "$OUT/runs.tgz" results/$TAG-*split* ${TGS_DIR:-} 2>/dev/null  # the TGS run too
  save_autotune
done
