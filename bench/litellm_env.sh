#!/usr/bin/env bash
# LiteLLM's proxy in its own virtual environment (bench/.venv-litellm), for the side-by-side run of
# bench/gateway_mock.py. Never installed into the project's .venv: its pins would fight m2a's.
# Idempotent: does nothing when the environment is already there.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
VERSION=1.108.0
VENV=.venv-litellm

if [ -x "$VENV/bin/litellm" ]; then
  echo "==> $VENV already has LiteLLM: $("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("litellm"))')"
  exit 0
fi
echo "==> creating bench/$VENV with $($PYTHON --version)"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
echo "==> installing litellm[proxy]==$VERSION (a few minutes)"
"$VENV/bin/python" -m pip install --progress-bar on "litellm[proxy]==$VERSION"
echo "==> checking the install"
LITELLM_LOCAL_MODEL_COST_MAP=True "$VENV/bin/litellm" --help >/dev/null
echo "==> ready: bench/$VENV/bin/litellm (LiteLLM $VERSION)"
