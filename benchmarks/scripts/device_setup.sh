# Source on the lent GPU machine (see ../shared/GPU.md): installs the project without
# dependencies (torch/triton are there), and the peer wheels carried in .whl/ if present.
python3 -m pip install -q --no-deps --no-build-isolation -e . || exit 1
# the console script may land beside another Python: always go through python3
attnbench() { python3 -m attnbench "$@"; }
if ls .whl/*.whl >/dev/null 2>&1; then
  ATTNBENCH_SITE=$(mktemp -d)
  python3 -m pip install -q --no-index --no-deps --target "$ATTNBENCH_SITE" .whl/*.whl
  export PYTHONPATH="$ATTNBENCH_SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
# Each lent machine starts bare, and FLA's autotuner spends minutes of a fresh process
# compiling and timing its configs (a resumed TGS case took 5 min). Triton can keep its
# autotune choices on disk (TRITON_CACHE_AUTOTUNING): the scripts bring the small
# *.autotune.json files back in $OUT/autotune.tgz (save_autotune), and a call that carries
# .triton-cache finds them (extract autotune.tgz at the repository root here, as runs.tgz;
# carry .triton-cache and .whl). A folder per GPU model: an H200 never takes the H100's.
gpu_model=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr -c 'A-Za-z0-9\n' '-')
export TRITON_CACHE_DIR="$PWD/.triton-cache/$gpu_model" TRITON_CACHE_AUTOTUNING=1
save_autotune() {
  find .triton-cache -name '*.autotune.json' | tar czf "$OUT/autotune.tgz" -T - 2>/dev/null
}
