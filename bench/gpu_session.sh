#!/usr/bin/env bash
# One device-tool run: GPU test suite, `recgen check` and the fwd+bwd benchmark, with every log
# written under $OUT (the device tool brings $OUT back). The GPU machine has no network, so
# recgen is laid out on PYTHONPATH by copying (recgen/ plus kernels/ as recgen/kernels).
#   run: bash bench/gpu_session.sh
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
out=${OUT:-$repo/bench/results/gpu-session}
mkdir -p "$out" /tmp/recgen-site
rm -rf /tmp/recgen-site/recgen
cp -r "$repo/recgen" /tmp/recgen-site/recgen
cp -r "$repo/kernels" /tmp/recgen-site/recgen/kernels
export PYTHONPATH=/tmp/recgen-site PYTHONUNBUFFERED=1
cd /tmp  # not the repo root, so ./recgen (without kernels/) does not shadow the copy
{
  date -u +%F
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
} 2>&1 | tee "$out/device.txt"
python3 -c "import recgen.cli as c; raise SystemExit(c.main(['check']))" 2>&1 | tee "$out/check.txt"
timeout 420 python3 -m pytest "$repo/tests" -q -x -p no:cacheprovider 2>&1 | tail -n 60 | tee "$out/pytest.txt"
for args in "--cell lstm" "--cell gru" "--cell lstm --dtype fp32"; do
  python3 "$repo/bench/lstm_vs_cudnn.py" $args --out "$out/bench.jsonl" 2>&1 | tee -a "$out/bench.txt"
done
