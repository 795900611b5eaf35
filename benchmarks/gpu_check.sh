#!/usr/bin/env bash
# The GPU check of issue 20 in one command: lungseg's CUDA path (correctness, NCCL DDP, bf16 throughput,
# GPU inference) in <= 8 minutes on one H100/H200, writing benchmarks/results/gpu_check.json and a summary.
# Without a GPU it runs the reduced CPU form (writes logs/gpu_check_cpu.json). Options: benchmarks/gpu_check.py --help.
#   benchmarks/gpu_check.sh                         # on a GPU machine, from anywhere in the repository
#   srun --gpus=1 --cpus-per-task=16 --time=15 benchmarks/gpu_check.sh    # on a SLURM GPU node
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python=${PYTHON:-.venv/bin/python}
[ -x "$python" ] || python=$(command -v python3)
exec "$python" benchmarks/gpu_check.py "$@"
