#!/usr/bin/env bash
# The GPU checks of issue 23, as one prepared command for a lent GPU machine (the device tool):
#     bash ../shared/gpu/prepare-wheels.sh            # once, here
#     run(carry=[".whl"], timeout_s=590, command=
#         "bash .whl/setup.sh && export PYTHONPATH=/tmp/site:$PWD && bash benchmarks/gpu_checks.sh")
# 1. the CUDA tests, log in $OUT/cuda_tests.log; 2. benchmarks/gpu_speed.py, table in $OUT/gpu_speed.md
# (copy it over benchmarks/results/gpu_speed.md's GPU section); 3. the rest of the suite on the GPU
# machine (device=auto picks cuda in the app tests), $OUT/suite_on_gpu.log.
# Then record cuda_tests.md (command, machine, summary line) and the GPU section of gpu_speed.md, and commit.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu_checks}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/machine.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/machine.txt"
xdist=""
python3 -c "import xdist" 2>/dev/null && xdist="-n 8"
# 1. the CUDA tests (inductor compiles a tiny network per mode: a minute or two)
timeout 200 python3 -m pytest -q -p no:cacheprovider -o addopts="-ra" $xdist --continue-on-collection-errors \
    tests/test_devices.py tests/test_compile.py tests/test_solvers_machinery.py tests/test_batching.py \
    2>&1 | tee "$OUT/cuda_tests.log" | tail -25
# 2. the speed table (fp32, bf16 + channels-last, CUDA graphs; batch 1 and 8; 10 timed steps)
timeout 240 python3 benchmarks/gpu_speed.py --batches 1,8 --steps 10 --repeats 3 \
    --configs fp32,bf16,cuda-graphs --out "$OUT/gpu_speed.md" 2>&1 | tee "$OUT/gpu_speed.log" | grep -v Warn | tail -40
# 3. the rest of the suite on the GPU machine, with what time is left (its log comes back even if cut)
timeout 120 python3 -m pytest -q -p no:cacheprovider -o addopts="-ra" $xdist --continue-on-collection-errors \
    tests/ --ignore=tests/test_devices.py --ignore=tests/test_compile.py \
    2>&1 | tee "$OUT/suite_on_gpu.log" | tail -8
