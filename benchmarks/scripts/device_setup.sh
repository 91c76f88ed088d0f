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
