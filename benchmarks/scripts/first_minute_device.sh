#!/usr/bin/env bash
# On a fresh GPU machine: the first minute of a newcomer (issue 21, "The first minute on a
# GPU"). Installs the project as device_setup.sh does, then times plain `attnbench run` (the
# quick preset: lightning2, lightning1, flash2, sdpa-cudnn, linear-cumsum) wall-clock, start
# to its last line, with an empty Triton cache and no cached device peaks, as on a machine
# that never ran it. The target is 60 s. What comes back in $OUT:
#   first_minute.txt  the wall time, exit code, GPU, and the run's closing lines
#   quick.log         everything the run printed, each line stamped with seconds since start
#   run.tgz           the run directory (meta.json, records, tables, plots): commit it under
#                     results/ with the wall time in its closing note
# FULL=1 also times `attnbench run --preset full` (the peers and slow references) afterwards,
# on the now warm cache, for the note; PROFILE=1 runs the quick preset once more under cProfile
# with another empty Triton cache (where a fresh machine's seconds go: profile.txt, by
# cumulative time); LIMIT_S (default 300) stops a run that hangs (SIGINT:
# its records are kept).
set -u
SECONDS=0
source benchmarks/scripts/device_setup.sh
echo "install: ${SECONDS} s" > "$OUT/first_minute.txt"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader \
  >> "$OUT/first_minute.txt"
LIMIT_S=${LIMIT_S:-300}
# A fresh machine: no Triton kernels compiled, no autotuning results, no measured peaks.
export TRITON_CACHE_DIR=$(mktemp -d)
export XDG_CACHE_HOME=$(mktemp -d)
RUN_DIR=$(mktemp -d)/quick

stamp() {  # each line of stdin prefixed with the seconds since $1 (nanoseconds)
  while IFS= read -r line; do
    now=$(date +%s%N)
    printf '%7.2f %s\n' "$(( (now - $1) / 10000000 ))e-2" "$line"
  done
}

start=$(date +%s%N)
timeout -s INT "$LIMIT_S" python3 -m attnbench run --out "$RUN_DIR" 2>&1 | stamp "$start" \
  > "$OUT/quick.log"
code=${PIPESTATUS[0]}
end=$(date +%s%N)
wall=$(( (end - start) / 1000000 ))
{
  echo "plain attnbench run: exit $code, wall $((wall / 1000)).$(printf '%03d' $((wall % 1000))) s"
  echo "target: 60 s on a fresh machine"
  grep -E "cases \(|finished in|not in the quick preset|plots:" "$OUT/quick.log"
} >> "$OUT/first_minute.txt"
tar czf "$OUT/run.tgz" -C "$(dirname "$RUN_DIR")" quick

if [ "${PROFILE:-0}" = 1 ]; then
  export TRITON_CACHE_DIR=$(mktemp -d)
  start=$(date +%s%N)
  timeout -s INT "$LIMIT_S" python3 -m cProfile -o "$OUT/quick.prof" -m attnbench run --no-plot \
    --out "$(dirname "$RUN_DIR")/profiled" > "$OUT/profiled.log" 2>&1
  echo "under cProfile, empty Triton cache again: exit $?, $(( ($(date +%s%N) - start) / 1000000 )) ms" \
    >> "$OUT/first_minute.txt"
  python3 -c "import pstats, sys; pstats.Stats(sys.argv[1], stream=sys.stdout).sort_stats('cumulative').print_stats(70)" \
    "$OUT/quick.prof" > "$OUT/profile.txt" 2>&1
fi

if [ "${FULL:-0}" = 1 ]; then
  start=$(date +%s%N)
  timeout -s INT "$LIMIT_S" python3 -m attnbench run --preset full --no-plot \
    --out "$(dirname "$RUN_DIR")/full" > "$OUT/full.log" 2>&1
  code=$?
  echo "attnbench run --preset full (warm cache): exit $code, $(( ($(date +%s%N) - start) / 1000000000 )) s" \
    >> "$OUT/first_minute.txt"
fi
cat "$OUT/first_minute.txt"
