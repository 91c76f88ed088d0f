#!/usr/bin/env bash
# Issue 16 on one lent GPU: lightning2-sp at world size 1 (torchrun, one rank: the same code
# path, timed by do_bench as lightning2 is) against plain lightning2 at the paper shape
# (target: at most 3% slower), then the bf16 sequence-parallel tests on 2 ranks sharing the
# GPU (gloo: NCCL refuses two ranks on one device).
set -u
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
source benchmarks/scripts/device_setup.sh
mkdir -p "$OUT/runs"
timeout 200 python3 -m pytest -q -m gpu tests/test_sequence_parallel.py > "$OUT/sp-tests.log" 2>&1
echo "sp gpu tests: exit $?"; tail -5 "$OUT/sp-tests.log"
timeout -s INT 360 python3 -m torch.distributed.run --standalone --nproc-per-node 1 \
  -m attnbench run --preset paper --seq-lens 1k..128k --mechanisms lightning2,lightning2-sp \
  --no-plot --out "$OUT/runs/sp-world1" > "$OUT/sp-world1.log" 2>&1
echo "world size 1: exit $?"; tail -30 "$OUT/sp-world1.log"
python3 - "$OUT/runs/sp-world1" <<'PY'
import sys, pandas as pd
df = pd.read_parquet(f"{sys.argv[1]}/records.parquet")
ok = df[df.status == "ok"].pivot_table(index=["mode", "seq_len"], columns="mechanism",
                                       values="time_ms")
ok["overhead_%"] = 100 * (ok["lightning2-sp"] / ok["lightning2"] - 1)
print(ok.round(3).to_string())
print("worst overhead %.1f%% (target <= 3%%)" % ok["overhead_%"].max())
PY
tar czf "$OUT/runs.tgz" -C "$OUT/runs" . && rm -rf "$OUT/runs"
