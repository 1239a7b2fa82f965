#!/usr/bin/env bash
# The Triton backend's check for a first GPU loan (≤ 8 min on one H100, no network):
# versions, compile report, parity with the PyTorch backend, offsets past 2^31,
# determinism and the gradient filter, timing against the naive path and the peers.
# Writes gpu_check.md and gpu_check.json to --out (default ./gpu_check_out).
#
#   benchmarks/gpu_check.sh                # on the GPU machine
#   benchmarks/gpu_check.sh --dry-run      # every step on the CPU, interpreter, tiny shapes
#
# Uses the machine's python (PYTHON=... to choose) with its torch (≥ 2.4) and Triton 3.x,
# and lmloss from this checkout's src/. Details: benchmarks/gpu_check.py.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-$(command -v python3 || command -v python)}"
export PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}"
exec "$python" "$root/benchmarks/gpu_check.py" "$@"
