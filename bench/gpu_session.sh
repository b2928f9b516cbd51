#!/usr/bin/env bash
# The one command for a session lent the GPU (device tool), cold machine included:
#   bash bench/gpu_session.sh
# It finishes within GPU_SESSION_SECONDS (default 530: under 9 minutes) of wall time, running its
# stages in priority order, each with what time is left, and writes each stage's results into
# $OUT as the stage finishes (a killed run still returns what it had):
#   0. prewarm  compile, in parallel on the machine's cores, every kernel stages 2-3 compile (the
#               committed Triton 3.6 capture of the same points, bench/config_resources.py)
#   1. device   date, nvidia-smi, torch / triton / Python versions
#   2. check    `recgen check --mode all` in bf16 and fp32: every recurrence in the rule's mode and
#               forced resident, streamed and persistent (single launch), conv fwd/bwd, blocks
#   3. bench    `recgen bench --quick` against cuDNN: recurrent with the persistent mode off, then
#               on, residual; the dense layer against cuBLAS (torch.nn eager) and
#               torch._addmm_activation; then against torch.compile (whose warm-up compiles every case)
#   4. extra    with what is left: the integration tests (Inductor, CUDA graphs, GradScaler,
#               determinism, the 2**31 offsets with gradients)
# stages.txt lists each stage's exit status and seconds. The estimate behind the budget (kernels
# compiled per stage, their compile time under Triton 3.6) is in docs/gpu-runbook.md.
# The machine has no network: recgen is laid out on PYTHONPATH by copying (recgen/ plus kernels/
# as recgen/kernels). FlashRNN (the bench's `flashrnn` provider) travels as wheels in .whl/ when
# the run's carry names it (see docs/gpu-runbook.md).
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
out=${OUT:-$repo/bench/results/gpu-session}
budget=${GPU_SESSION_SECONDS:-530}
session_table=$repo/bench/results/sm90-configs_2026-12-02/session-triton3.6.0.json
started=$(date +%s)
mkdir -p "$out" /tmp/recgen-site
: > "$out/stages.txt"
left() { echo $(( budget - ($(date +%s) - started) )); }

# stage NAME CAP COMMAND...: run COMMAND with at most CAP seconds (and never past the budget),
# output into $out/NAME.txt; skipped when less than 20 seconds are left.
stage() {
  local name=$1 cap=$2 t0 rc limit
  shift 2
  limit=$(left)
  if [ "$limit" -lt 20 ]; then echo "$name skipped: $limit s left" >> "$out/stages.txt"; return; fi
  [ "$cap" -lt "$limit" ] && limit=$cap
  t0=$(date +%s)
  # Its own process group, killed whole afterwards: a stage cut at its cap leaves no compile
  # workers running into the next one.
  setsid timeout "$limit" "$@" > "$out/$name.txt" 2>&1 &
  local pid=$!
  wait "$pid"
  rc=$?
  kill -9 -- "-$pid" 2> /dev/null
  echo "$name rc=$rc $(( $(date +%s) - t0 )) s (limit $limit s)" >> "$out/stages.txt"
}

rm -rf /tmp/recgen-site/recgen
cp -r "$repo/recgen" /tmp/recgen-site/recgen
cp -r "$repo/kernels" /tmp/recgen-site/recgen/kernels
if compgen -G "$repo/.whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/recgen-site \
    "$repo"/.whl/*.whl
fi
export PYTHONPATH=/tmp/recgen-site PYTHONUNBUFFERED=1 RECGEN_CHECK_BARRIER=1
cd /tmp  # not the repo root, so ./recgen (without kernels/) does not shadow the copy
recgen=(python3 -c "import sys, recgen.cli as c; raise SystemExit(c.main(sys.argv[1:]))")

stage device 30 bash -c 'date -u +%FT%TZ; nvidia-smi; nvidia-smi --query-gpu=name,driver_version,memory.total \
  --format=csv,noheader; python3 -c "import sys, torch, triton; print(\"python\", sys.version.split()[0], \
  \"torch\", torch.__version__, \"triton\", triton.__version__)"'
stage prewarm 150 python3 "$repo/bench/config_resources.py" --prewarm "$session_table" --workers "$(nproc)"
stage check 150 "${recgen[@]}" check --mode all --dtype bf16 --dtype fp32
stage bench-recurrent 90 "${recgen[@]}" bench --quick --family recurrent --provider recgen,cudnn \
  --out "$out/bench-recurrent"
stage bench-recurrent-persistent 90 env RECGEN_PERSISTENT=1 "${recgen[@]}" bench --quick --family recurrent \
  --provider recgen,cudnn --out "$out/bench-recurrent-persistent"
stage bench-residual 60 "${recgen[@]}" bench --quick --family residual --provider recgen,cudnn \
  --out "$out/bench-residual"
stage bench-dense 45 "${recgen[@]}" bench --quick --family dense --provider recgen,cudnn,addmm_activation \
  --out "$out/bench-dense"
# torch.compile last among the benches: Inductor compiles every case (and its backward) in the warm-up.
stage bench-compile 200 "${recgen[@]}" bench --quick --provider recgen,compile --out "$out/bench-compile"
stage extra 600 python3 -m pytest -q -p no:cacheprovider "$repo/tests/test_gpu_runtime.py" \
  "$repo/tests/test_library.py" "$repo/tests/test_autocast.py" "$repo/tests/test_library_residual.py"
echo "total $(( $(date +%s) - started )) s of $budget" >> "$out/stages.txt"
cat "$out/stages.txt"
