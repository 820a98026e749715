#!/usr/bin/env bash
# The toy study's speed target: the whole of `zskt study run studies/toy2d.yaml` (teacher training,
# Ray start-up, search, final seeded re-runs) in under 60 s on 2 CPU cores, from an empty
# $ZSKT_HOME (a temporary one, removed afterwards). Prints the study's summary lines and the wall
# time; exits 1 when the target is missed. Run it on an otherwise idle machine.
# Usage: bash benchmarks/toy2d_study.sh [TARGET_SECONDS]
set -euo pipefail
target=${1:-60}
home="$(mktemp -d)"
trap 'rm -rf "$home"' EXIT
export ZSKT_HOME="$home" RAY_AUTH_MODE="${RAY_AUTH_MODE:-disabled}" RAY_USAGE_STATS_ENABLED=0
export MPLBACKEND=Agg
start=$(date +%s.%N)
zskt study run studies/toy2d.yaml > "$home/study.log" 2>&1 || { tail -20 "$home/study.log"; exit 2; }
end=$(date +%s.%N)
grep -E "^(teacher .*: test|search: |final re-runs: |study |best configuration )" "$home/study.log"
python3 - "$start" "$end" "$target" <<'PY'
import sys

start, end, target = (float(v) for v in sys.argv[1:])
wall = end - start
print(f"zskt study run studies/toy2d.yaml: {wall:.1f} s wall (target {target:g} s)")
sys.exit(0 if wall <= target else 1)
PY
