#!/usr/bin/env bash
# The GPU benchmark of issue 5: Llama-2-7B-shaped random weights, the Wikilingua-length workload, 300 new tokens;
# default at batch 1 and auto, sdpa, compile, 8bit, 4bit and torchao at auto, and vLLM (16-bit, AWQ, GPTQ, FP8)
# where it is installed.
#
#   scripts/gpu_bench.sh [OUT]            OUT defaults to results/gpu-bench-<gpu>
#   LIMIT=20 scripts/gpu_bench.sh         fewer documents per cell (a 10-minute machine lease)
#   CELLS="default-b1 4bit-bauto" ...     only these cells
#   MODEL=tiny LIMIT=3 scripts/gpu_bench.sh   a smoke test of the script itself, also on a CPU
#
# Wheels in .whl/ (scripts/gpu_wheels.sh download) are installed first into /tmp/site, for machines without network.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if compgen -G ".whl/*.whl" >/dev/null; then
  site=$(scripts/gpu_wheels.sh install) && export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
gpu=$("$PYTHON" -c 'import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")')
out=${1:-results/gpu-bench-${gpu// /-}}
experiment=experiments/gpu-bench.yaml
if [[ -n "${LIMIT:-}" || -n "${MODEL:-}" ]]; then
  # A changed copy of the experiment: fewer documents, or another model.
  experiment=$(mktemp --suffix=.yaml)
  "$PYTHON" - "$experiment" <<'PY'
import os, sys, yaml
spec = yaml.safe_load(open("experiments/gpu-bench.yaml"))
if os.environ.get("LIMIT"):
    spec["generation"]["limit"] = int(os.environ["LIMIT"])
if os.environ.get("MODEL"):
    spec["model"] = os.environ["MODEL"]
yaml.safe_dump(spec, open(sys.argv[1], "w"))
PY
fi
only=()
for cell in ${CELLS:-}; do only+=(--only "$cell"); done
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv >&2 || true
"$PYTHON" -m llmopt.sweep "$experiment" --out "$out" "${only[@]}" || true   # failed cells are rows, not a stop
"$PYTHON" -m llmopt.report "$out"
for strategy in default 8bit 4bit; do
  "$PYTHON" -m llmopt.roofline --gpu "$gpu" --model llama-2-7b --strategy "$strategy" --batch-size 1 --prompt-tokens 515 \
    --new-tokens 300 > "$out/roofline-$strategy-b1.json" 2>/dev/null || rm -f "$out/roofline-$strategy-b1.json"
done
echo "results: $out (report.md, summary.csv, roofline-*.json)"
