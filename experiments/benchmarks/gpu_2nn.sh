#!/usr/bin/env bash
# The 2NN FedAvg workload (fedavg_2nn.py) on one GPU: C in {1,000, 10,000, 100,000}, with and
# without user-level DP, the PyTorch loop on the same GPU at C = 1,000, and a sweep of the
# vmap width (chunk size) at C = 10,000 for the planner's trade-off table.
# Usage: bash experiments/benchmarks/gpu_2nn.sh [OUT_DIR]   (writes OUT_DIR/gpu_2nn.jsonl)
set -u
cd "$(dirname "$0")/../.."
out="${1:-${OUT:-.}}"
mkdir -p "$out"
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
bench=experiments/benchmarks/fedavg_2nn.py
py="${PYTHON:-python3}"
run() { echo "# $*"; "$py" "$bench" --json "$@" | tail -n 1 | tee -a "$out/gpu_2nn.jsonl"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
run --cohort 1000 --rounds 5 --torch-device cuda
run --cohort 1000 --rounds 5 --dp --torch-device cuda
run --cohort 10000 --rounds 5 --no-torch
run --cohort 10000 --rounds 5 --dp --no-torch
run --cohort 100000 --rounds 3 --no-torch
run --cohort 100000 --rounds 3 --dp --no-torch
for k in 64 256 1024 4096; do run --cohort 10000 --rounds 3 --no-torch --chunk-size "$k"; done
