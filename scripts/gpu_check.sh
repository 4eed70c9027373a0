#!/usr/bin/env bash
# The prepared GPU check (docs/gpu-check.md): carried wheels installed, then scripts/gpu_check.py (the study's modes on
# a few documents each with their rooflines, llmopt's other modes, pytest -m gpu for the time left, the report), all
# packed into at most 8 files in OUT. The budget (540 s) counts from here, so the install is inside it.
#
#   scripts/gpu_check.sh --dry-run               the plan: each step, its share, the total against the budget
#   scripts/gpu_check.sh OUT                      the transformers tier, one device call of 600 s
#   MODEL=tiny scripts/gpu_check.sh OUT --cpu     the same steps on a CPU in about a minute (tests/test_gpu_check.py)
set -uo pipefail
export GPU_CHECK_STARTED=$EPOCHREALTIME
unset GPU_CHECK_INSTALL_S GPU_CHECK_INSTALL_RC GPU_CHECK_INSTALL_LOG  # set below, for this check only
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
tier=() cpu=0 dry=0
for arg in "$@"; do
  [[ $arg == --vllm ]] && tier=(--vllm)
  [[ $arg == --cpu ]] && cpu=1
  [[ $arg == --dry-run ]] && dry=1
done
# Wheels carried in .whl/ (and the vLLM tier's, reassembled) go to /tmp/site; a failed install is in the log, and the
# cells that need them are then `unavailable` rows. On a CPU the environment's own packages stand.
if ((!cpu && !dry)) && { compgen -G ".whl/*.whl" >/dev/null || [[ -d .whl-vllm ]]; }; then
  export GPU_CHECK_INSTALL_LOG=/tmp/gpu-check-install.log
  installing=$EPOCHREALTIME
  site=$(scripts/gpu_wheels.sh install "${tier[@]}" 2>"$GPU_CHECK_INSTALL_LOG")
  export GPU_CHECK_INSTALL_RC=$?
  GPU_CHECK_INSTALL_S=$("$PYTHON" -c "import sys; print(float(sys.argv[1]) - float(sys.argv[2]))" "$EPOCHREALTIME" "$installing")
  export GPU_CHECK_INSTALL_S
  if ((GPU_CHECK_INSTALL_RC == 0)); then export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}; fi
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
exec "$PYTHON" scripts/gpu_check.py "$@"
