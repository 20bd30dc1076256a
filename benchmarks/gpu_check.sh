#!/usr/bin/env bash
# One prepared command for a machine with a CUDA GPU (run as `make gpu-check`, or `bash benchmarks/gpu_check.sh`
# from the repository root). Uses the Python it finds (no venv, no install): the package comes from PYTHONPATH,
# and what that machine lacks (torchdata, scipy, ...) is skipped. Prints the CUDA tests' results and the penalty
# benchmark's ratios on the GPU. Under 5 minutes.
set -u
cd "$(dirname "$0")/.."
PY="${PYTHON:-$(command -v python3 || command -v python)}"
export PYTHONPATH="$PWD:$PWD/tests:$PWD/examples${PYTHONPATH:+:$PYTHONPATH}"
"$PY" - <<'PYEOF'
import torch, sys
print("python", sys.version.split()[0], "| torch", torch.__version__, "| cuda", torch.version.cuda,
      "| device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "NONE")
try:
    import lightning
    print("lightning", lightning.__version__)
except ImportError:
    print("lightning: not installed")
PYEOF
status=0
timeout 200 "$PY" -m pytest tests/test_cuda.py -m cuda -p no:cacheprovider -o addopts="" -q -rs || status=$?
timeout 90 "$PY" benchmarks/penalty_overhead.py --quick --device cuda || status=$?
exit $status
