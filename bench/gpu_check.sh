#!/usr/bin/env bash
# One device call: versions, the GPU tests (kernels at real shapes vs the reference), and the
# executor benchmark. Everything lands under $OUT (the device tool brings it back).
#   bash bench/gpu_check.sh [tests|bench|all] [extra args for bench/matrix.py]
set -uo pipefail
OUT=${OUT:-/tmp/streamlab-out}
mkdir -p "$OUT"
what=${1:-all}; shift || true
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
  python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
} 2>&1 | tee "$OUT/versions.txt"
status=0
if [[ $what == tests || $what == all ]]; then
  python3 -m pytest -q -m gpu tests 2>&1 | tee "$OUT/gpu_tests.log" | tail -30
  status=${PIPESTATUS[0]}
fi
if [[ $what == bench || $what == all ]]; then
  python3 bench/matrix.py --out "$OUT" "$@" 2>&1 | tee "$OUT/bench.log" | tail -60
fi
# the device tool brings back at most 8 files: pack the per-run results and traces into one
if [[ -d $OUT/runs ]]; then tar czf "$OUT/runs.tgz" -C "$OUT" runs && rm -rf "$OUT/runs"; fi
exit $status
