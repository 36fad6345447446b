#!/usr/bin/env bash
# The GPU checks, on a machine with a CUDA GPU, in a few minutes: the tests marked `gpu` (CPU-vs-GPU logits,
# training and exact resume on the GPU, bf16 autocast, sample / eval / bench / lesson cells with --device cuda),
# then the training and decoding benchmarks against transformers on the GPU (GPT-2 124M shape).
#
# It needs a CUDA build of torch in the environment it runs in (the project pins the CPU wheel; on Linux PyPI's
# own torch==2.13.0 wheel is the CUDA build): e.g. `.venv/bin/pip install torch==2.13.0` there first.
# Usage: scripts/gpu-check.sh [OUT_DIR]   (results land in OUT_DIR, default runs/gpu-check)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${1:-runs/gpu-check}
mkdir -p "$OUT"
"$PY" - <<'PYEOF'
import sys, torch
if not torch.cuda.is_available():
    sys.exit(f"gpu-check: no CUDA GPU visible to torch {torch.__version__} (cuda {torch.version.cuda}); "
             "install a CUDA build of torch on a machine with a GPU")
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}")
PYEOF
"$PY" -m pytest -m gpu -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$OUT/tests.txt"
for dtype in float32 bfloat16; do
  "$PY" -m gptlab bench train --device cuda --vs transformers --set "train.dtype=$dtype" --set train.batch_size=16 \
    --steps 20 --json "$OUT/train-$dtype.json" | tee "$OUT/train-$dtype.txt"
done
"$PY" -m gptlab bench decode --device cuda --vs transformers --json "$OUT/decode.json" | tee "$OUT/decode.txt"
echo "gpu-check: done; results in $OUT"
