#!/usr/bin/env bash
# The one prepared GPU benchmark: loop iterations/s for fp32 / tf32 / bf16 / fp16 in NCHW and
# NHWC against the official-style reference step, 1 / 2 / 4 trials packed on one GPU, and the
# batched MTE against the one-image-at-a-time form; one table at the end (about 5 minutes on one
# GPU at the paper's sizes, WRN-40-2 -> WRN-16-1, batch 128).
# Without CUDA (or with --cpu) it runs the same parts at tiny sizes on the CPU in well under a
# minute; the test suite runs it that way, so the script cannot rot between runs on a GPU.
# Usage: bash benchmarks/gpu.sh [--cpu] [--parts loop,pack,mte] [--pack-precision bf16] [--json F]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec "${PYTHON:-python}" "$here/gpu_bench.py" "$@"
