#!/usr/bin/env bash
# One device call on a machine with 2 or 4 GPUs (H200): the all-reduce alone in a graph over
# message sizes (nccl, symm_mem), then serial, pr23562, a_v4 and a_v4_moe_dual at batch 4 and 64,
# context 8192, with a real all-reduce across all the GPUs (nccl and symm_mem), and a summary
# table last. Everything lands under $OUT, packed so that few files come back:
#   versions.txt  status.txt  summary.txt  runs.tgz (result JSONs, traces, logs)
# NVLink multicast stays off (NVLS / symmetric-memory multicast are not to be used on these machines).
#   bash bench/allreduce_check.sh            # BUDGET=520 seconds in all by default
set -uo pipefail
OUT=${OUT:-/tmp/streamlab-out}
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} COLUMNS=${COLUMNS:-170}
BUDGET=${BUDGET:-520}
START=$SECONDS
R="$OUT/runs"
mkdir -p "$R"
WORLD=${WORLD:-$(python3 -c "import torch; print(torch.cuda.device_count())")}
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
  nvidia-smi topo -m
  python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'nccl', torch.cuda.nccl.version(), 'triton', triton.__version__)"
  env | grep -E '^(NCCL_|TORCH_SYMM|NVSHMEM_)' | sort
  echo "world $WORLD"
} > "$OUT/versions.txt" 2>&1
cat "$OUT/versions.txt"
: > "$OUT/status.txt"

# step NAME MAX_SECONDS CMD...: runs CMD under the smaller of MAX_SECONDS and what is left of
# the budget (minus 40 s kept for the summary), logs it, records its exit code
step() {
  local name=$1 max=$2; shift 2
  local left=$(( BUDGET - 40 - (SECONDS - START) ))
  (( left > max )) && left=$max
  if (( left < 30 )); then echo "$name: skipped, time budget spent" | tee -a "$OUT/status.txt"; return; fi
  echo "== $name (limit ${left}s): $*"
  local t0=$SECONDS
  timeout -k 15 "$left" "$@" > "$R/$name.log" 2>&1
  local rc=$?
  tail -n 60 "$R/$name.log"
  echo "$name: exit $rc after $(( SECONDS - t0 ))s$([[ $rc == 124 ]] && echo ' (time limit: results written so far are kept)')" | tee -a "$OUT/status.txt"
}

if (( WORLD < 2 )); then
  echo "needs at least 2 GPUs, found $WORLD" | tee -a "$OUT/status.txt"
else
  step sweep 120 python3 -m streamlab allreduce --world "$WORLD" --impl nccl,symm_mem \
      --out "$R" --rank-timeout 90
  # one launch for every layer run: each scenario under nccl then symm_mem before the next, all
  # at batch 4 first, so a run cut short still has like-for-like pairs
  step layers 600 python3 -m streamlab run scenarios/serial.yaml scenarios/a_v4_moe_dual.yaml \
      scenarios/pr23562.yaml scenarios/a_v4.yaml --world "$WORLD" --batch 4,64 --context 8192 \
      --impl nccl,symm_mem --out "$R" --rank-timeout 150
fi
# leftovers of a run stopped by its time limit (ours only, by pid)
for pid in $(pgrep -f "streamlab.collective.worker" || true); do
  tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$R" && kill -9 "$pid" 2>/dev/null
done

python3 -m streamlab allreduce-summary "$R" > "$OUT/summary.txt" 2>&1
cat "$OUT/status.txt" >> "$OUT/summary.txt"
tar czf "$OUT/runs.tgz" -C "$OUT" runs && rm -rf "$R"
echo
echo "=== summary ($(( SECONDS - START ))s) ==="
cat "$OUT/summary.txt"
