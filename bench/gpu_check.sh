#!/usr/bin/env bash
# One device call for the GPU tests and benchmarks. Everything lands under $OUT in at most 8 files,
# none deeper than $OUT/file (what the device tool brings back):
#
#   bash bench/gpu_check.sh [STAGE...] [-- extra args for bench/matrix.py]
#
# Stages run in the order given; `all` (the default) is `calibrate for heldout accuracy`:
#   tests      the GPU tests (kernels at real shapes vs the reference, a tiny calibration end to end) -> gpu_tests.log
#   bench      bench/matrix.py: the shipped layouts x batches (streamlab compare)   -> matrix.json (+ matrix.md in runs.tgz)
#   calibrate  streamlab calibrate --measure --batch $BATCHES --name $NAME            -> $NAME.yaml
#   for        streamlab calibrate --measure --for bench/heldout/*.yaml --profile $PROFILE   -> $NAME-heldout.yaml
#   heldout    streamlab compare $HELDOUT_LAYOUTS --batch $BATCHES                    -> heldout.json (compare report)
#   accuracy   bench/sim_accuracy.py heldout.json: the profile after --for, and before -> sim_accuracy.md
#   search     streamlab search --profile $PROFILE --batch $BATCHES --top $SEARCH_TOP --measure --rounds $SEARCH_ROUNDS
#              (the top K's missing pairs measured, searched again, the top K measured beside serial and the
#              best shipped layout; winners, report and work folder in runs.tgz)  -> search.json (kind search-measure)
#   budgets    streamlab compare a_v4 and a_v4 with idx_wq_b / q_b_proj on half the SMs (bench/budgets/) -> budgets.json
#   whatif     bench/whatif_bench.py --measure ($WHATIF_SCENARIOS at $WHATIF_BATCHES, default $BATCHES): fresh runs,
#              then every node at its time at the other batch, against that batch's run  -> whatif.md, whatif.json
# Always: versions.txt, log.txt (every stage's output and seconds), runs.tgz (the calibration work
# folders with their manifests, every run's result and trace, the compare reports with plots).
#
# Environment: BATCHES (4,64); NAME (the GPU's hardware entry: h200, h100, mi355x); PROFILE (the
# profile `for` and `accuracy` start from; default $OUT/$NAME.yaml, written by `calibrate`: point it
# at a committed one to run them in a later call) and FOR_PROFILE (the one `accuracy` scores after
# --for; default $OUT/$NAME-heldout.yaml, written by `for`); BUDGET_S (575): a stage whose estimate no longer
# fits is skipped and the log says so (the device call ends at 600 s); the held-out compare is cut
# (SIGINT) where it would overrun, keeping the runs it finished; RESUME=1 continues the calibrations
# in $WORK (default /tmp/streamlab-gpu-check) instead of starting afresh. SEARCH_TOP (3) and SEARCH_ROUNDS
# (1): the search stage's --top and --rounds (each round ~17 s per layout and batch).
set -uo pipefail
OUT=${OUT:-/tmp/streamlab-out}
WORK=${WORK:-/tmp/streamlab-gpu-check}
BATCHES=${BATCHES:-4,64}
BUDGET_S=${BUDGET_S:-575}
SEARCH_TOP=${SEARCH_TOP:-3}
SEARCH_ROUNDS=${SEARCH_ROUNDS:-1}
HELDOUT_LAYOUTS=${HELDOUT_LAYOUTS:-"scenarios/serial.yaml scenarios/pr23562.yaml scenarios/pr23562_cuda.yaml \
scenarios/a_v4.yaml scenarios/a_v4_moe_dual.yaml $(ls bench/heldout/*.yaml | tr '\n' ' ')"}
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} COLUMNS=${COLUMNS:-160}
mkdir -p "$OUT"
[[ ${RESUME:-0} == 1 ]] || rm -rf "$WORK"
mkdir -p "$WORK"

stages=() extra=()
while (($#)); do
  case $1 in
    --) shift; extra=("$@"); break ;;
    -*) extra=("$@"); break ;;  # bench/matrix.py's options, as before stages existed
    all) stages+=(calibrate for heldout accuracy); shift ;;
    *) stages+=("$1"); shift ;;
  esac
done
((${#stages[@]})) || stages=(calibrate for heldout accuracy)

NAME=${NAME:-$(python3 -c "
import torch
from streamlab.models.hardware import HARDWARE
name = torch.cuda.get_device_name(0).upper()
print(next((h for h in sorted(HARDWARE, key=len, reverse=True) if h.upper() in name), 'gpu'))" 2>/dev/null || echo gpu)}
PROFILE=${PROFILE:-$OUT/$NAME.yaml}
FOR_PROFILE=${FOR_PROFILE:-$OUT/$NAME-heldout.yaml}
nb=$(tr ',' '\n' <<<"$BATCHES" | grep -c .)
nl=$(wc -w <<<"$HELDOUT_LAYOUTS")
log() { echo "$*" | tee -a "$OUT/log.txt"; }
start=$SECONDS
status=0

{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>/dev/null \
    || rocm-smi --showproductname --showdriverversion 2>/dev/null
  python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'hip', torch.version.hip, 'triton', triton.__version__)"
  echo "stages: ${stages[*]}; batches $BATCHES; profile name $NAME; budget $BUDGET_S s"
} 2>&1 | tee "$OUT/versions.txt" >>"$OUT/log.txt"

# estimated seconds of a stage (a measured run in a fresh process: ~17 s on H100; the first at a
# batch compiles its kernels)
estimate() {
  case $1 in
    tests) echo 150 ;;  # the tiny calibration end to end: ~80 s of it
    bench) echo $((4 * nb * 17 + 20)) ;;
    calibrate) echo $((30 + nb * (2 * 17 + 15) + 15 + 10 * nb)) ;;
    for) echo $((15 + 15 * nb)) ;;
    heldout) echo $((nl * nb * 17)) ;;
    accuracy) echo 20 ;;
    search) echo $((40 + 2 * (15 + 15 * nb) + SEARCH_ROUNDS * nb * (SEARCH_TOP + 2) * 17 + 20 * nb)) ;;
    budgets) echo $((3 * nb * 17 + 20)) ;;
    whatif) echo $(($(tr ',' '\n' <<<"${WHATIF_SCENARIOS:-a,b,c}" | grep -c .) * 2 * 17 + 20)) ;;
    *) echo 0 ;;
  esac
}

pack() { tar czf "$OUT/runs.tgz.tmp" -C "$WORK" . && mv "$OUT/runs.tgz.tmp" "$OUT/runs.tgz"; }

run_stage() {  # stage name, then the command; its output to log.txt, its exit status kept
  local stage=$1 t0=$SECONDS; shift
  log "=== $stage: $* ($(date -u +%H:%M:%S) UTC, ~$(estimate "$stage") s)"
  "$@" 2>&1 | tee -a "$OUT/log.txt" | tail -40
  local rc=${PIPESTATUS[0]}
  log "=== $stage: exit $rc in $((SECONDS - t0)) s (total $((SECONDS - start)) s)"
  ((rc == 0 || status != 0)) || status=$rc
  pack
  return "$rc"
}

for stage in "${stages[@]}"; do
  est=$(estimate "$stage")
  if ((SECONDS - start + est > BUDGET_S)) && [[ $stage != heldout ]]; then
    log "=== $stage: SKIPPED, ~$est s left no room in the budget ($((SECONDS - start)) of $BUDGET_S s used);" \
        "run it in a call of its own: bash bench/gpu_check.sh $stage (PROFILE=... for for / accuracy)"
    continue
  fi
  case $stage in
    tests)
      run_stage tests bash -c 'set -o pipefail; python3 -m pytest -q -m gpu tests 2>&1 | tee "$0/gpu_tests.log"' "$OUT" ;;
    bench)
      run_stage bench python3 bench/matrix.py --out "$WORK/matrix" "${extra[@]}"
      [[ -f $WORK/matrix/report.json ]] && cp "$WORK/matrix/report.json" "$OUT/matrix.json" ;;
    calibrate)
      run_stage calibrate python3 -m streamlab calibrate --measure --batch "$BATCHES" --name "$NAME" \
        --out "$OUT/$NAME.yaml" --work "$WORK/$NAME.calibration" $([[ ${RESUME:-0} == 1 ]] && echo --resume) ;;
    for)
      if [[ ! -f $PROFILE ]]; then log "=== for: SKIPPED, no profile $PROFILE (run calibrate first)"; continue; fi
      run_stage for python3 -m streamlab calibrate --measure --for bench/heldout/*.yaml --profile "$PROFILE" \
        --out "$OUT/$NAME-heldout.yaml" --work "$WORK/$NAME-heldout.calibration" $([[ ${RESUME:-0} == 1 ]] && echo --resume) ;;
    heldout)
      left=$((BUDGET_S - (SECONDS - start) - $(estimate accuracy) - 25))
      if ((left < 2 * 17)); then log "=== heldout: SKIPPED, $left s left"; continue; fi
      # cut with SIGINT where it would overrun: the report keeps every finished run ("complete": false)
      # shellcheck disable=SC2086
      run_stage heldout timeout -s INT -k 30 "$left" python3 -m streamlab compare $HELDOUT_LAYOUTS --batch "$BATCHES" \
        --device cuda --keep-going --out "$WORK/heldout/runs" --report "$WORK/heldout"
      [[ -f $WORK/heldout/report.json ]] && cp "$WORK/heldout/report.json" "$OUT/heldout.json" ;;
    accuracy)
      if ! python3 -c "import json, sys; sys.exit(0 if json.load(open('$OUT/heldout.json')).get('complete') else 1)" 2>/dev/null; then
        log "=== accuracy: SKIPPED, no complete $OUT/heldout.json (run heldout first, or again)"; continue
      fi
      if [[ ! -f $PROFILE ]]; then log "=== accuracy: SKIPPED, no profile $PROFILE (run calibrate first)"; continue; fi
      if [[ -f $FOR_PROFILE ]]; then
        run_stage accuracy python3 bench/sim_accuracy.py "$OUT/heldout.json" --profile "$FOR_PROFILE" \
          --before "$PROFILE" --out "$OUT/sim_accuracy.md"
      else
        run_stage accuracy python3 bench/sim_accuracy.py "$OUT/heldout.json" --profile "$PROFILE" --out "$OUT/sim_accuracy.md"
      fi ;;
    search)
      if [[ ! -f $PROFILE ]]; then log "=== search: SKIPPED, no profile $PROFILE (run calibrate first)"; continue; fi
      run_stage search python3 -m streamlab search --profile "$PROFILE" --batch "$BATCHES" --top "$SEARCH_TOP" \
        --measure --rounds "$SEARCH_ROUNDS" --out "$WORK/search" --work "$WORK/search.work" \
        $([[ ${RESUME:-0} == 1 ]] && echo --resume)
      found=$(ls "$WORK"/search/search-measure-*.json 2>/dev/null | head -1)
      [[ -n $found ]] && cp "$found" "$OUT/search.json" ;;
    budgets)
      run_stage budgets timeout -s INT -k 30 $((BUDGET_S - (SECONDS - start))) python3 -m streamlab compare \
        scenarios/a_v4.yaml bench/budgets/a_v4_wq_b_half.yaml bench/budgets/a_v4_q_b_proj_half.yaml --batch "$BATCHES" \
        --device cuda --keep-going --out "$WORK/budgets/runs" --report "$WORK/budgets"
      [[ -f $WORK/budgets/report.json ]] && cp "$WORK/budgets/report.json" "$OUT/budgets.json" ;;
    whatif)
      run_stage whatif python3 bench/whatif_bench.py --measure --batches "${WHATIF_BATCHES:-$BATCHES}" \
        --scenarios "${WHATIF_SCENARIOS:-serial,a_v4,a_v4_moe_dual}" --out "$WORK/whatif"
      for f in whatif.md whatif.json; do [[ -f $WORK/whatif/$f ]] && cp "$WORK/whatif/$f" "$OUT/$f"; done ;;
    *) log "unknown stage $stage: tests bench calibrate for heldout accuracy search budgets whatif all"; status=2 ;;
  esac
done
pack
log "=== done in $((SECONDS - start)) s, exit $status; files: $(ls "$OUT" | tr '\n' ' ')"
exit $status
