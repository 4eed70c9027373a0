#!/usr/bin/env bash
# The prepared GPU check (docs/gpu-check.md): carried wheels installed, then scripts/gpu_check.py (pytest -m gpu, the
# study's modes on a few documents each, their rooflines, the report), all packed into at most 8 files in OUT.
#
#   scripts/gpu_check.sh OUT                      the transformers tier, about 9 minutes on an H200
#   scripts/gpu_check.sh OUT --vllm --no-tests    the vLLM tier, once its wheels were carried (docs/gpu-check.md)
#   MODEL=tiny scripts/gpu_check.sh OUT --cpu     the same steps on a CPU in about a minute (tests/test_gpu_check.py)
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
tier=() cpu=0
for arg in "$@"; do
  [[ $arg == --vllm ]] && tier=(--vllm)
  [[ $arg == --cpu ]] && cpu=1
done
# Wheels carried in .whl/ (and the vLLM tier's, reassembled) go to /tmp/site; a failed install is in the log, and the
# cells that need them are then `unavailable` rows. On a CPU the environment's own packages stand.
if ((!cpu)) && { compgen -G ".whl/*.whl" >/dev/null || [[ -d .whl-vllm ]]; }; then
  if site=$(scripts/gpu_wheels.sh install "${tier[@]}"); then export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}; fi
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
exec "$PYTHON" scripts/gpu_check.py "$@"
