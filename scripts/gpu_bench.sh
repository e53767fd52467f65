#!/usr/bin/env bash
# Every GPU figure of the README's speed table in one JSON: SD 1.4 architecture with random
# weights, float32 and bf16, offline; under 8 minutes on one GPU (see scripts/gpu_bench.py).
#
#   scripts/gpu_bench.sh                          # writes gpu-bench.json
#   scripts/gpu_bench.sh --output runs/gpu.json   # elsewhere
#   scripts/gpu_bench.sh --smoke                  # tiny pipelines on the CPU (< 2 minutes)
#
# PYTHON selects the interpreter (default: python3).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" "$repo/scripts/gpu_bench.py" "$@"
