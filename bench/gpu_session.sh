#!/usr/bin/env bash
# Runbook for a session lent the GPU (device tool): each stage fits one 10-minute device call
# and writes its logs under $OUT (which the tool brings back). The GPU machine has no network,
# so recgen is laid out on PYTHONPATH by copying (recgen/ plus kernels/ as recgen/kernels).
#   bash bench/gpu_session.sh check      # device, versions, `recgen check` (all dtypes)
#   bash bench/gpu_session.sh tests      # the gpu-marked tests (recurrent, conv, blocks)
#   bash bench/gpu_session.sh integration  # torch.compile/opcheck, CUDA graphs, AMP, DDP, 2**31 offsets
#   bash bench/gpu_session.sh bench      # recgen bench --quick: JSON, markdown, PNG
#   bash bench/gpu_session.sh memory     # peak memory of forward+backward against cuDNN
#   bash bench/gpu_session.sh persistent # the persistent kernels: their gpu tests, then bench with them on
#   bash bench/gpu_session.sh latency    # time per step: persistent (grid barrier) vs single-program vs cuDNN
#   bash bench/gpu_session.sh resources  # registers/spills/shared memory of the persistent kernels (this Triton)
# FlashRNN (the bench's `flashrnn` provider) travels as wheels: here, once, `echo /.whl/ >>
# .git/info/exclude; pip download --no-deps -d .whl flashrnn einops ninja` (ninja with the
# manylinux/cp312 options of the device README), then name `.whl` in the run's carry.
set -uo pipefail
stage=${1:?usage: gpu_session.sh check|tests|integration|bench|memory|persistent|latency|resources}
repo=$(cd "$(dirname "$0")/.." && pwd)
out=${OUT:-$repo/bench/results/gpu-session}
mkdir -p "$out" /tmp/recgen-site
rm -rf /tmp/recgen-site/recgen
cp -r "$repo/recgen" /tmp/recgen-site/recgen
cp -r "$repo/kernels" /tmp/recgen-site/recgen/kernels
if compgen -G "$repo/.whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/recgen-site \
    "$repo"/.whl/*.whl
fi
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
  integration) timeout 560 python3 -m pytest -q -p no:cacheprovider "$repo/tests/test_library.py" \
           "$repo/tests/test_library_residual.py" "$repo/tests/test_gpu_runtime.py" "$repo/tests/test_autocast.py" \
           "$repo/tests/test_autocast_residual.py" "$repo/tests/test_serialization.py" 2>&1 \
           | tail -n 80 | tee "$out/pytest-integration.txt" ;;
  persistent) timeout 240 python3 -m pytest -q -p no:cacheprovider "$repo/tests/test_persistent.py" 2>&1 \
           | tail -n 40 | tee "$out/pytest-persistent.txt"
         RECGEN_PERSISTENT=1 timeout 300 python3 -c "import recgen.cli as c; raise SystemExit(c.main(['bench', \
           '--quick', '--family', 'recurrent', '--out', '$out/persistent']))" 2>&1 | tee "$out/bench-persistent.txt" ;;
  latency) timeout 560 python3 "$repo/bench/step_latency.py" --out "$out" 2>&1 | tee "$out/step-latency.txt" ;;
  resources) timeout 560 python3 "$repo/bench/kernel_resources.py" --dtype bf16 --dtype tf32 --out "$out" 2>&1 \
           | grep -v -i warn \
           | tee "$out/kernel-resources.txt" ;;
  memory) timeout 560 python3 "$repo/bench/memory_usage.py" --out "$out" 2>&1 | tee "$out/memory.txt" ;;
  bench) timeout 560 python3 -c "import recgen.cli as c; raise SystemExit(c.main(['bench', '--quick', '--out', '$out']))" \
           2>&1 | tee "$out/bench.txt" ;;
  *) echo "unknown stage $stage" >&2; exit 2 ;;
esac
