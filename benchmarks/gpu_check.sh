#!/usr/bin/env bash
# The GPU check, for a machine with one CUDA GPU, in under 6 minutes: a fresh install, the CUDA tests
# (pytest -m gpu), env throughput on cuda at 4096 and 65,536 copies against Gymnasium's vector env, and a PPO
# CartPole-v1 training on cuda; every output goes to OUT (default: gpu_check_out/).
#
#     bash benchmarks/gpu_check.sh [OUT]
#
# pip takes PyPI's torch==2.13.0 wheel, the CUDA build on Linux; install another CUDA build first if the driver
# needs it (see README). The script stops at the first failing part and says which.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-gpu_check_out}")
mkdir -p "$out"
start=$SECONDS
part() { echo "== $1 ($((SECONDS - start)) s)" | tee -a "$out/summary.txt"; }

part "install"
python3 -m venv .venv-gpu
. .venv-gpu/bin/activate
python -m pip install -q --upgrade pip
pip install -q torch==2.13.0 -e ".[dev]" > "$out/install.txt" 2>&1
python - <<'PY' | tee "$out/device.txt"
import torch
assert torch.cuda.is_available(), "no CUDA device: this check needs one GPU"
print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0))
PY
(nvidia-smi || true) > "$out/nvidia-smi.txt" 2>&1

part "pytest -m gpu"
python -m pytest -m gpu -q -p no:cacheprovider 2>&1 | tee "$out/pytest_gpu.txt" | tail -3

part "env throughput on cuda (4096 and 65536 copies)"
python benchmarks/bench_envs.py --device cuda --sizes 4096 65536 --envs CartPole-v1 Pendulum-v1 --seconds 2 \
    --no-compile 2>&1 | tee "$out/envs_cuda.txt" | tail -12
cp benchmarks/results/envs_throughput_cuda.json "$out/"  # the results page's table: commit it from here

part "PPO CartPole-v1 on cuda"
rlopt train ppo CartPole-v1 --device cuda --log-dir "$out/runs" 2>&1 | tee "$out/train_cuda.txt" | tail -4

part "done"
