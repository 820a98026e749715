#!/usr/bin/env bash
# The core engine's acceptance figures on digits, end to end through the CLI:
#   teacher (WRN-16-2) -> zero-shot student (WRN-16-1) and KD+AT student (M=5), MTE of both.
# Usage: bash benchmarks/digits_core.sh [OUT_DIR] [ITERATIONS]
# Each step prints one JSON line; wall times come from `time`. Uses $ZSKT_HOME (default ~/.zskt).
set -euo pipefail
out=${1:-runs/digits-core}
iters=${2:-300}
teacher="$(python -c 'from zskt_ray.teacher import default_teacher_path as p; print(p("digits", "wrn-16-2"))')"
mkdir -p "$out"
echo "== teacher"; time zskt teacher train --dataset digits --arch wrn-16-2
echo "== zero-shot student ($iters iterations, paper defaults otherwise)"
time zskt distill --dataset digits --teacher-arch wrn-16-2 --student-arch wrn-16-1 \
    --iterations "$iters" --eval-every 50 --out "$out/zskt" --no-progress
echo "== KD+AT student, M=5 images per class"
time zskt kdat --dataset digits --teacher-arch wrn-16-2 --student-arch wrn-16-1 --m-per-class 5 \
    --out "$out/kdat5"
for s in zskt kdat5; do
    echo "== MTE of $s against the teacher (test split, K=100, xi=1)"
    time zskt mte --student "$out/$s/student.pt" --teacher "$teacher" --k 100 --xi 1 --n-test 1000 \
        --out "$out/$s/mte.json"
done
