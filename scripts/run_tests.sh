#!/usr/bin/env bash
# The test suite (make test) on every ComfyUI the bootstrap set up: 0.3.75 always, and 0.33.0
# whenever ../shared/comfyui/ holds its source. Extra arguments go to pytest. Fails if any run fails.
set -uo pipefail
cd "$(dirname "$0")/.."
CACHE=${ELITE_CACHE:-$PWD/.cache}
SHARED=${ELITE_SHARED:-$PWD/../shared}
status=0

run_suite() {  # run_suite VERSION VENV COMFY_DIR INDEPENDENT [pytest args...]
  local version=$1 venv=$2 comfy=$3 independent=$4
  shift 4
  echo "=== tests on ComfyUI $version ($comfy) ==="
  if ! ELITE_COMFYUI_DIR=$comfy ELITE_COMFYUI_INDEPENDENT=$independent "$venv/bin/python" -m pytest -q --durations=12 "$@"; then
    echo "=== FAILED on ComfyUI $version ==="
    status=1
  fi
}

run_suite 0.3.75 "$CACHE/venv" "$CACHE/comfyui" run "$@"
if [ -f "$SHARED/comfyui/comfyui-0.33.0.tar.xz" ]; then
  # the tests marked comfyui_independent (trainers, no ComfyUI code) already ran above
  run_suite 0.33.0 "$CACHE/venv-0.33.0" "$CACHE/comfyui-0.33.0" skip "$@"
else
  echo "=== no $SHARED/comfyui: ComfyUI 0.33.0 not tested ==="
fi
exit $status
