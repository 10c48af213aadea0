#!/usr/bin/env bash
# vLLM's Rust router (PyPI vllm-router) in its own virtual environment (bench/.venv-vllm-router), for
# the side-by-side run of bench/routing.py (--vllm-router). Never installed into the project's .venv.
# Idempotent: does nothing when the environment is already there.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
VERSION=0.1.17
VENV=.venv-vllm-router

if [ -x "$VENV/bin/vllm-router" ]; then
  echo "==> $VENV already has vllm-router: $("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("vllm-router"))')"
  exit 0
fi
echo "==> creating bench/$VENV with $($PYTHON --version)"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
echo "==> installing vllm-router==$VERSION"
"$VENV/bin/python" -m pip install --progress-bar off "vllm-router==$VERSION"
echo "==> checking the install"
"$VENV/bin/vllm-router" --help >/dev/null
echo "==> ready: bench/$VENV/bin/vllm-router (vllm-router $VERSION)"
