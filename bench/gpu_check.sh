#!/usr/bin/env bash
# The GPU checks of docs/PERFORMANCE.md as one command, for a host lent for a few minutes:
#   1. the CUDA tests: graph replays give the eager step's and the dynamic loop's answers
#      (tiny model, float32, grammar-bound and free answers), and the worker's warm-up on the
#      GPU (graphs captured once, a failing fast kernel replaced);
#   2. bench/gpu_pipeline.py on the 4B shape, with the arguments given after OUTDIR.
# Every output lands in OUTDIR: the card, the test log, the bench log and its JSON.
#
# Usage: bench/gpu_check.sh OUTDIR [bench arguments...]
#   PYTHON (default python3) runs both; it must import torch (CUDA build), this repo's
#   dependencies and, for the fast kernels, flash-linear-attention.
set -uo pipefail
out=${1:?usage: bench/gpu_check.sh OUTDIR [bench arguments...]}
shift
python=${PYTHON:-python3}
cd "$(dirname "$0")/.."
mkdir -p "$out"
export PYTHONUNBUFFERED=1
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
# Only the plugins this suite needs: a host's own pytest plugins may not import here.
export PYTEST_DISABLE_PLUGIN_AUTOLOAD=1

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >"$out/card.txt" 2>&1 || true

started=$(date +%s)
timeout 240 "$python" -m pytest -q -p no:cacheprovider -rs \
    tests/pipeline/test_batching.py::test_graph_loop_gives_the_static_answers tests/pipeline/test_warmup.py \
    2>&1 | tee "$out/cuda_test.txt"
tests=${PIPESTATUS[0]}
echo "cuda tests: exit ${tests} after $(($(date +%s) - started)) s" | tee -a "$out/cuda_test.txt"

# The bench's own --time-budget-s guards its stages; this only stops a hung run.
timeout 560 "$python" bench/gpu_pipeline.py --json "$out/gpu_pipeline.json" "$@" 2>&1 | tee "$out/bench.txt"
bench=${PIPESTATUS[0]}
echo "bench: exit ${bench}" | tee -a "$out/bench.txt"
exit $((tests || bench))
