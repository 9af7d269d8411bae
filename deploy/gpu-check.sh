#!/usr/bin/env bash
# The one command that proves a GPU host (DESIGN.md §13). From a fresh clone on Linux with one
# or more NVIDIA GPUs and the CUDA toolkit it: installs the dependencies, configures with CUDA,
# builds only what the checks need (in parallel), runs every GPU test (`ctest -L gpu`: the op
# suite and the whole-model suite on cuda_fp32 and cuda_bf16 against the CPU backend), then
# the layer benches on the GPU in fp32 and bf16 (the small layer and a GPU-sized one:
# d_model 2048, 16,384 tokens, the widths ×8), each printed next to the cuBLAS GEMM ceiling
# measured in the same run: `fraction_of_ceiling` for the whole layer (goal in bf16 on the
# GPU-sized layer: ≥ 0.45) and `experts_fraction_of_ceiling` for the grouped experts alone
# (goal ≥ 0.60). With two or more GPUs it also runs the 2-rank equivalence test over NCCL
# (two ranks on two GPUs train like one). Budget: 10 minutes on one modern GPU.
#
#   MOHGE_CUDA_ARCHITECTURES  GPU architectures to build for (default "80;90")
#   MOHGE_BUILD_JOBS          parallel build jobs (default: all cores)
#   MOHGE_SKIP_INSTALL=1      skip deploy/install-deps.sh (packages already there, or no network)
set -euo pipefail
cd "$(dirname "$0")/.."
archs="${MOHGE_CUDA_ARCHITECTURES:-80;90}"
jobs="${MOHGE_BUILD_JOBS:-$(nproc)}"
start=$(date +%s)
step() { echo "[gpu-check $(( $(date +%s) - start ))s] $*"; }

if command -v nvidia-smi > /dev/null; then
  nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader
else
  echo "gpu-check: nvidia-smi not found; the CUDA runtime decides below whether a GPU is visible"
fi
command -v nvcc > /dev/null || export PATH="/usr/local/cuda/bin:$PATH"
command -v nvcc > /dev/null || { echo "gpu-check: nvcc not found (install the CUDA toolkit)"; exit 2; }
grep -o -m1 'avx512_bf16\|amx_bf16' /proc/cpuinfo | head -1 | sed 's/^/cpu: /' || true

if [[ "${MOHGE_SKIP_INSTALL:-0}" != 1 ]]; then
  step "installing dependencies"
  deploy/install-deps.sh
fi
step "configuring (CUDA architectures $archs)"
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DMOHGE_WITH_CUDA=ON \
      -DMOHGE_CUDA_ARCHITECTURES="$archs" > build-gpu.log 2>&1 || { tail -20 build-gpu.log; exit 1; }
step "building test_gpu, test_distributed, mohge and mohge-worker with $jobs jobs"
cmake --build build-gpu -j "$jobs" --target test_gpu test_distributed mohge mohge-worker \
  >> build-gpu.log 2>&1 \
  || { tail -40 build-gpu.log; exit 1; }

status=0
step "GPU tests (ctest -L gpu)"
ctest --test-dir build-gpu -L gpu --output-on-failure || status=1

gpus=$(nvidia-smi --query-gpu=index --format=csv,noheader 2> /dev/null | wc -l || echo 0)
if (( gpus >= 2 )); then
  step "2 ranks on 2 GPUs over NCCL against one GPU"
  build-gpu/tests/test_distributed --gtest_filter='Distributed.TwoGpuRanksOverNcclTrainLikeOneGpu' \
    || status=1
else
  step "one GPU: the 2-rank NCCL test needs two (skipped)"
fi

for precision in fp32 bf16; do
  step "bench layer, small layer, $precision"
  build-gpu/bin/mohge bench layer --config tests/bench/layer-mohge.json --device cuda \
    --precision "$precision" || status=1
  step "bench layer, GPU-sized layer (16,384 tokens), $precision"
  build-gpu/bin/mohge bench layer --config tests/bench/layer-mohge-gpu.json --tokens 16384 \
    --device cuda --precision "$precision" || status=1
done
step "done (status $status)"
exit "$status"
