#!/usr/bin/env bash
# The one GPU check, for whoever is lent a GPU: install what the device image lacks, run the CUDA tests and the
# GPU measurements, and leave everything under $OUT.
#
#   WHEELS=.whl OUT=/tmp/gpu bench/gpu_check.sh          on the GPU machine
#   bench/gpu_check.sh --dry                             end to end on the CPU, tiny sizes (tests/test_gpu_check.py)
#
# WHEELS: a folder of wheels (README, development section: how to prepare it); the project's dependencies and
#   pytest are pip-installed from it with --no-index (those the image already satisfies are left as they are).
# OUT: where the results go [a new temporary folder]: device.txt, pip.txt, cuda_tests.txt (pytest -m cuda),
#   gpu_measure.json / .md (extraction frames/s against the bare model, training steps/s), status.txt.
# PYTHON: the interpreter [python3].
set -uo pipefail

dry=""
case "${1:-}" in
  --dry) dry="--dry" ;;
  "") ;;
  *) echo "usage: [WHEELS=dir] [OUT=dir] [PYTHON=python3] $0 [--dry]" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.." || exit 1
python=${PYTHON:-python3}
out=${OUT:-$(mktemp -d -t gpu-check-XXXXXX)}
mkdir -p "$out" || exit 1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
failed=()

if [[ -n "${WHEELS:-}" ]]; then
  mapfile -t deps < <("$python" -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project'];
print('\n'.join(p['dependencies'] + [d for d in p['optional-dependencies']['dev'] if d.startswith('pytest')]))")
  "$python" -m pip install --no-index --find-links "$WHEELS" "${deps[@]}" >"$out/pip.txt" 2>&1 \
    || { echo "pip install from $WHEELS failed: see $out/pip.txt" >&2; exit 1; }
fi

"$python" - >"$out/device.txt" 2>&1 <<'PY'
import os, platform, torch
print(platform.node(), platform.python_version(), "torch", torch.__version__, "CUDA", torch.version.cuda)
print("CUDA_VISIBLE_DEVICES", os.environ.get("CUDA_VISIBLE_DEVICES"))
for i in range(torch.cuda.device_count()):
    print(i, torch.cuda.get_device_name(i))
PY

echo "gpu_check: CUDA tests ..." >&2
"$python" -m pytest -m cuda -q -p no:cacheprovider tests/test_cuda.py >"$out/cuda_tests.txt" 2>&1 || failed+=("cuda tests")
echo "gpu_check: measurements ..." >&2
"$python" -m bench.gpu_measure --out "$out" $dry >"$out/gpu_measure.log" 2>&1 || failed+=("measurements")

if ((${#failed[@]})); then
  echo "failed: ${failed[*]}" >"$out/status.txt"
else
  echo "ok" >"$out/status.txt"
fi
echo "gpu_check: $(cat "$out/status.txt"); results in $out" >&2
[[ ${#failed[@]} -eq 0 ]]
