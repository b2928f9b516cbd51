#!/usr/bin/env bash
# Runbook for a session lent the GPU (device tool): each stage fits one 10-minute device call
# and writes its logs under $OUT (which the tool brings back). The GPU machine has no network,
# so recgen is laid out on PYTHONPATH by copying (recgen/ plus kernels/ as recgen/kernels).
#   bash bench/gpu_session.sh check      # device, versions, `recgen check` (all dtypes)
#   bash bench/gpu_session.sh tests      # the gpu-marked tests (recurrent, conv, blocks)
#   bash bench/gpu_session.sh bench      # recgen bench --quick: JSON, markdown, PNG
set -uo pipefail
stage=${1:?usage: gpu_session.sh check|tests|bench}
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
case "$stage" in
  check) python3 -c "import recgen.cli as c; raise SystemExit(c.main(['check']))" 2>&1 | tee "$out/check.txt" ;;
  tests) timeout 560 python3 -m pytest "$repo/tests" -q -m gpu -p no:cacheprovider -n 8 2>&1 \
           | tail -n 80 | tee "$out/pytest-gpu.txt" ;;
  bench) timeout 560 python3 -c "import recgen.cli as c; raise SystemExit(c.main(['bench', '--quick', '--out', '$out']))" \
           2>&1 | tee "$out/bench.txt" ;;
  *) echo "unknown stage $stage" >&2; exit 2 ;;
esac
