#!/usr/bin/env bash
# The GPU checks of issue 23, as one prepared command for a lent GPU machine (the device tool):
#     bash ../shared/gpu/prepare-wheels.sh            # once, here
#     run(carry=[".whl"], timeout_s=590, command=
#         "bash .whl/setup.sh && export PYTHONPATH=/tmp/site:$PWD && bash benchmarks/gpu_checks.sh")
# 1. the whole test suite on the GPU (CUDA tests no longer skipped; device=auto picks cuda in the app
#    tests), log in $OUT/cuda_tests.log; 2. benchmarks/gpu_speed.py, table in $OUT/gpu_speed.md.
# Copy both into benchmarks/results/ (cuda_tests.md: command, machine, summary line) and commit.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu_checks}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/machine.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/machine.txt"
xdist=""
python3 -c "import xdist" 2>/dev/null && xdist="-n 8"
# CUDA tests first (short), then the rest of the suite on the GPU machine
timeout 150 python3 -m pytest -q -p no:cacheprovider -o addopts="-ra" $xdist --continue-on-collection-errors \
    tests/test_devices.py tests/test_compile.py tests/test_solvers_machinery.py tests/test_batching.py \
    2>&1 | tee "$OUT/cuda_tests.log" | tail -25
timeout 240 python3 -m pytest -q -p no:cacheprovider -o addopts="-ra" $xdist --continue-on-collection-errors \
    tests/ --deselect tests/test_devices.py --deselect tests/test_compile.py \
    2>&1 | tee "$OUT/suite_on_gpu.log" | tail -8
timeout 240 python3 benchmarks/gpu_speed.py --batches 1,8 --steps 20 --repeats 3 \
    --configs fp32,bf16,cuda-graphs --out "$OUT/gpu_speed.md" 2>&1 | tee "$OUT/gpu_speed.log" | tail -40
