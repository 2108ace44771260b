#!/usr/bin/env bash
# Every GPU check in one prepared run on a GPU machine: kernels
# against float64 references, then every bench with --check (targets of docs/performance.md),
# each against its baseline measured in the same process. Rows go to $OUT (or ./gpu_rows) as JSONL.
# DALI, DeepSpeed and W&B are not in the GPU image: install DALI's wheels first (README, Docker).
set -uo pipefail
out=${OUT:-gpu_rows}; mkdir -p "$out"
export PYTHONUNBUFFERED=1 TRITON_INTERPRET=0
status=0
run() { echo "== $*"; "$@" || status=1; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
run python -m pytest -q -p no:cacheprovider -m gpu tests/kernels
run python -m bench.gradnorm --check --out "$out/gradnorm.jsonl"
run python -m bench.gradnorm --dtype bfloat16 --out "$out/gradnorm.jsonl"
for backbone in resnet50 densenet121 vgg19; do
  run python -m bench.train_step --backbone "$backbone" --batch 128 --size 224 --check --out "$out/train_step.jsonl"
done
run python -m bench.train_step --backbone resnet50 --batch 128 --size 224 --compile --check --out "$out/train_step.jsonl"
run python -m bench.strategies --backbone resnet50 --size 224 --per-class 400 --epochs 10 --workers 8 --check \
  --out "$out/strategies.jsonl"
if python -c "import nvidia.dali" 2>/dev/null; then
  run python -m bench.loader --size 512 --images 4096 --check --out "$out/loader.jsonl"
fi
exit $status
