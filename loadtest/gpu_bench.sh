#!/usr/bin/env bash
# The GPU check of issue 15, as one prepared script for a lent GPU machine (a few
# minutes of device time). Run from the repository root, with the project's virtual
# environment carried over and onnxruntime-gpu installed in it (`pip install -e '.[gpu]'`
# before the machine is lent: it has no network), and `make demo`'s data and bundle:
#
#   loadtest/gpu_bench.sh                     # results under $OUT (the device tool's
#                                             # folder) or bench-work/gpu
#
# 1. the GPU and the providers ONNX Runtime sees (exit 3 without a CUDA provider);
# 2. graph throughput on CUDA: encoder users/s at batch 1..4096, CTR pairs/s at
#    1..4096 users x 100 candidates (loadtest.graph_throughput), for the single CTR graph
#    and, with the split CTR graph, its pair graph (a cache hit) and user graph (what a
#    miss adds, users/s); the same on the CPU up to 64 as the in-run reference;
# 3. the end-to-end sweep at 100 candidates with the load generator on the same host:
#    echo, naive-onnx (always on the CPU), and queryrec serve on CUDA (QUERYREC_DEVICE=cuda: model calls in
#    worker threads, CTR batches up to 4096 pairs) with one worker and with its default
#    of one per core.
# Each step's output is written as it finishes, so a run cut by the time limit keeps
# what it reached.
set -euo pipefail

PY=${PY:-.venv/bin/python}
BUNDLE=${BUNDLE:-demo-work/bundle}
DATA=${DATA:-demo-work/data}
RESULTS=${OUT:-bench-work/gpu}
STEP_S=${STEP_S:-8}
mkdir -p "$RESULTS"

for need in "$BUNDLE/manifest.json" "$DATA"; do
  [ -e "$need" ] || { echo "gpu_bench: $need is missing (run make demo first)" >&2; exit 2; }
done

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true; nproc; } \
  > "$RESULTS/machine.txt" 2>&1
"$PY" - <<'PYEOF' | tee "$RESULTS/providers.txt"
import sys
import onnxruntime as ort
providers = ort.get_available_providers()
print("onnxruntime", ort.__version__, providers)
if "CUDAExecutionProvider" not in providers:
    print("gpu_bench: onnxruntime has no CUDA provider here (install the gpu extra)", file=sys.stderr)
    sys.exit(3)
PYEOF

"$PY" -m loadtest.graph_throughput --bundle "$BUNDLE" --device cuda --max-batch 4096 \
  --candidates 100 --seconds 0.5 --out "$RESULTS/throughput_cuda.json"
"$PY" -m loadtest.graph_throughput --bundle "$BUNDLE" --device cpu --max-batch 64 \
  --candidates 100 --seconds 0.5 --out "$RESULTS/throughput_cpu.json"

QUERYREC_DEVICE=cuda "$PY" -m loadtest.bench --bundle "$BUNDLE" --data "$DATA" \
  --servers echo,naive-onnx,service-1-worker,service --candidates 100 \
  --duration "$STEP_S" --warmup 3 --start-rate 200 --bisect 1 --out "$RESULTS/side-by-side"
"$PY" -m loadtest.report "$RESULTS/side-by-side/results.json" --out "$RESULTS/side-by-side"
echo "gpu_bench: done, results in $RESULTS"
