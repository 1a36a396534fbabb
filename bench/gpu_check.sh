#!/usr/bin/env bash
# The GPU half of the fusion and overhead measurements (prepared on a CPU machine, not run there).
#
# Needs: an NVIDIA GPU, this checkout with its venv (.venv, with a CUDA build of torch), and Postgres on
# 127.0.0.1:5432 and Redis on 127.0.0.1:6379 as for the tests. Uses the tiny models (made offline) at
# larger sizes, so that the GPU does real work, in fp16 (DIFFQ_DTYPE=auto on CUDA):
#   1. bench/fusion.py: 64 one-image jobs, one at a time and fused (16 images a call), images/s ratio and
#      the largest pixel difference between the two runs' images;
#   2. bench/overhead.py at 1 and 20 steps with fusion off: per-job time outside the diffusers call.
#
#     bash bench/gpu_check.sh [python]      # default: .venv/bin/python
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${1:-.venv/bin/python}"
export DIFFQ_DEVICE=cuda PYTHONPATH="$PWD"

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
"$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"

echo "== fusion: 64 jobs, 30 steps at 256x256, up to 16 images a call"
"$PYTHON" bench/fusion.py --jobs 64 --steps 30 --size 256 --max-images 16
echo "== fusion: 64 jobs, 30 steps at 64x64, up to 8 images a call"
"$PYTHON" bench/fusion.py --jobs 64 --steps 30 --size 64 --max-images 8

for steps in 1 20; do
  echo "== overhead: $steps steps, fusion off"
  DIFFQ_FUSION=false "$PYTHON" bench/overhead.py --jobs 40 --rounds 4 --steps "$steps"
done
