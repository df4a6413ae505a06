#!/usr/bin/env bash
# One device call: versions, the GPU tests (kernels at real shapes vs the reference, a measured run's
# result against its schema), and the executor benchmark (bench/matrix.py: `streamlab compare` on the
# GPU). Everything lands under $OUT, in at most 8 files (what the device tool brings back):
#   versions.txt  gpu_tests.log  bench.log  matrix.json  matrix.md  runs.tgz (per-run results, traces, plots)
#   bash bench/gpu_check.sh [tests|bench|all] [extra args for bench/matrix.py, e.g. --batches 4,1,16,64]
set -uo pipefail
OUT=${OUT:-/tmp/streamlab-out}
mkdir -p "$OUT"
what=${1:-all}; shift || true
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} COLUMNS=${COLUMNS:-160}
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
  python3 bench/matrix.py --out "$OUT/matrix" "$@" 2>&1 | tee "$OUT/bench.log" | tail -60
  bench=${PIPESTATUS[0]}
  (( status == 0 )) && status=$bench
  for f in json md; do [[ -f $OUT/matrix/report.$f ]] && cp "$OUT/matrix/report.$f" "$OUT/matrix.$f"; done
fi
if [[ -d $OUT/matrix ]]; then tar czf "$OUT/runs.tgz" -C "$OUT" matrix && rm -rf "$OUT/matrix"; fi
exit $status
