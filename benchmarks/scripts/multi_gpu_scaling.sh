#!/usr/bin/env bash
# Issue 17 on a lent multi-GPU kind (nvidia-h200-x4, or -x2: the 4-rank stages then stop at
# 2): weak and strong scaling of lightning2-sp against sdpa-ring, the longest sequences, the
# sharded paper sweep, bytes per call. One stage per call (the device tool allows 10 minutes
# a command); every stage writes a run directory under $OUT/runs and resumes if re-run.
#
#   bash benchmarks/scripts/multi_gpu_scaling.sh tests     # sdpa-ring vs SDPA, bf16 on 2 ranks
#   bash benchmarks/scripts/multi_gpu_scaling.sh scaling   # 256k..1M total on 1, 2, 4 GPUs
#   bash benchmarks/scripts/multi_gpu_scaling.sh longest   # to 4M (1M per GPU) on 4 GPUs
#   bash benchmarks/scripts/multi_gpu_scaling.sh sweep1    # paper preset, every mechanism, 1 GPU
#   bash benchmarks/scripts/multi_gpu_scaling.sh sweep4    # the same sharded over 4 GPUs
#
# Shape (issue 17): batch 1, heads 32, head dim 128, bf16, decay (sdpa-ring has none), fwd
# and bwd. In "scaling", --world-sizes 1,2,4 over 256k, 512k, 1M gives both: weak scaling
# (256k per GPU: 256k on 1, 512k on 2, 1M on 4) and strong scaling (1M on 1, 2 and 4).
# Records: tokens_per_s counts the whole sequence (per GPU: / world_size), peak_mem_mib is
# the largest rank's, comm_bytes what one rank sends per call (lightning2-sp: (W-1) x 2 MiB
# states per all-gather at this shape; sdpa-ring: its pieces of k and v around the ring).
set -u
# NVLink multicast stays off on these machines (KINDS.md in the device tool's folder)
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
source benchmarks/scripts/device_setup.sh
NGPU=$(python3 -c "import torch; print(torch.cuda.device_count())")
SIZES=$(python3 -c "print(','.join(str(w) for w in (1, 2, 4) if w <= $NGPU))")
SHAPE=(--batch 1 --heads 32 --head-dim 128 --dtype bf16 --modes fwd,bwd --decay --no-plot)
mkdir -p "$OUT/runs"
echo "GPUs: $NGPU; world sizes $SIZES"; nvidia-smi --query-gpu=name,memory.total --format=csv

run() {  # run <name> <seconds> <ranks> <attnbench run options...>: new, or resumed if begun
  local name=$1 secs=$2 ranks=$3; shift 3
  local dir="$OUT/runs/$name"
  if [ -f "$dir/meta.json" ]; then set -- --resume "$dir" --no-plot; else set -- "$@" --out "$dir"; fi
  local t0=$(date +%s)
  timeout -s INT "$secs" python3 -m attnbench run --gpus "$ranks" "$@" > "$OUT/$name.log" 2>&1
  echo "$name: exit $?, $(( $(date +%s) - t0 )) s"; tail -25 "$OUT/$name.log"
}

case "${1:-scaling}" in
  tests)
    timeout 300 python3 -m pytest -q -m gpu tests/test_sequence_parallel.py > "$OUT/tests.log" 2>&1
    echo "tests: exit $?"; tail -5 "$OUT/tests.log" ;;
  scaling)
    run scaling 560 "$NGPU" --mechanisms lightning2-sp,sdpa-ring --seq-lens 256k,512k,1M \
      --world-sizes "$SIZES" --max-case-seconds 60 "${SHAPE[@]}" ;;
  longest)
    run longest 560 "$NGPU" --mechanisms lightning2-sp,sdpa-ring --seq-lens 1M,2M,4M \
      --world-sizes "$NGPU" --max-case-seconds 120 "${SHAPE[@]}" ;;
  sweep1)
    run sweep1 580 1 --preset paper --no-plot ;;
  sweep4)
    run sweep4 580 "$NGPU" --preset paper --no-plot
    python3 - "$OUT/runs" <<'PY'
import json, sys, pathlib, pandas as pd
runs = pathlib.Path(sys.argv[1])
for name in ("sweep1", "sweep4"):
    df = pd.read_parquet(runs / name / "records.parquet")
    print(name, len(df), "records;", df.groupby("rank").size().to_dict(), "per rank")
PY
    ;;
  *) echo "unknown stage $1"; exit 2 ;;
esac
for d in "$OUT"/runs/*/; do python3 -m attnbench report "$d" --metric tokens > "$OUT/$(basename "$d").report" 2>&1; done
tar czf "$OUT/runs.tgz" -C "$OUT/runs" . && echo "runs: $OUT/runs.tgz"
