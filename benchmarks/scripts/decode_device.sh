#!/usr/bin/env bash
# On the lent GPU (H100 or H200), issue 24: decode, one new token per sequence against a
# context, linear attention's state beside softmax's KV cache. Steps (STEPS, default all),
# about 4 minutes of GPU time in all on an H100, each resumable across calls:
#   tests   the decode tests on the GPU (our kernel against the float64 recurrence, every
#           decoder through the harness's check, no cache copied by a step)
#   tune    lightning2's decode step by tile against its state-traffic floor (plain do_bench)
#   sweep   attnbench run --modes decode: lightning2 and FLA's recurrent step (state), flash2
#           (flash-attn's kvcache, or the reason it cannot run) and SDPA's flash, efficient,
#           math and cuDNN backends (last: a hard failure would end the run) over a KV cache; heads 32, D 128, bf16, batch
#           1, 8, 32, 64, 256, context 1k..1M (a softmax case whose cache cannot fit is
#           recorded oom without being tried); then the decode and roofline figures and the
#           roofline table
# Usage: TAG=h100 STEPS="tests tune sweep" bash benchmarks/scripts/decode_device.sh
#        (the steps' limits add up to 13 minutes: a call of 10 runs "tests tune", then "sweep")
#        (carry .whl with fla-core's wheel for FLA: ../shared/GPU.md)
# The run directory is results/<TAG>-decode (in the working tree: a later call with it
# carried resumes it), archived in $OUT/runs.tgz; logs and tables in $OUT.
set -u
source benchmarks/scripts/device_setup.sh
TAG=${TAG:-h100}
STEPS=${STEPS:-"tests tune sweep"}
R="python3 -m attnbench"
DIR=results/$TAG-decode
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
for step in $STEPS; do
  SECONDS=0
  case $step in
    tests)
      timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_lightning2_decode.py \
        tests/test_modes_decode.py tests/test_decode.py > "$OUT/tests.log" 2>&1
      echo "tests: exit $?"; tail -4 "$OUT/tests.log" ;;
    tune)
      timeout 150 python3 benchmarks/scripts/decode_tune_device.py "$OUT/tune.txt" \
        > "$OUT/tune.log" 2>&1
      echo "tune: exit $?"; cat "$OUT/tune.txt" ;;
    sweep)
      if [ -f "$DIR/meta.json" ]; then
        timeout -s INT 400 $R run --resume "$DIR" > "$OUT/sweep.log" 2>&1
      else
        timeout -s INT 400 $R run --modes decode \
          --mechanisms lightning2,peer-fla-chunk,flash2,sdpa-flash,sdpa-efficient,sdpa-math,sdpa-cudnn \
          --batch 1,8,32,64,256 --heads 32 --head-dim 128 --dtype bf16 --seq-lens 1k..1m \
          --max-case-seconds 20 --line-seconds 0 --out "$DIR" > "$OUT/sweep.log" 2>&1
      fi
      echo "sweep: exit $?"; grep -E "finished in|^- " "$OUT/sweep.log"
      $R report "$DIR" --roofline > "$OUT/roofline.txt" 2>&1
      $R plot "$DIR" --figure roofline --format png >> "$OUT/roofline.txt" 2>&1
      grep -E "^• decode lightning2|measured peaks" "$OUT/roofline.txt" ;;
  esac
  echo "$step: ${SECONDS}s"
  # after every step: a call stopped by its 10-minute limit keeps what the steps before wrote
  rm -f results/*/run.lock
  tar czf "$OUT/runs.tgz" "$DIR" 2>/dev/null
  save_autotune
done
