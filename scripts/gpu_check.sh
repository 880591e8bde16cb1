#!/usr/bin/env bash
# scripts/gpu_check.sh [--cpu] OUT_DIR
#
# The prepared device check (docs/gpu.md): on a GPU machine, within ~8 minutes,
#   1. installs hiprm without its torch pin (the machine's own PyTorch + CUDA stay; packages it
#      lacks come from .whl/, made here by `scripts/gpu_check.sh --wheels`),
#   2. runs the `gpu` tests (tests/test_gpu.py): a trie training step in bf16 against rows under
#      each masked SDPA kernel, Scorer rewards against a plain HF forward, the decode loop
#      against `generate`, the fused self-training loss, `rm train` in bf16, an FSDP2 smoke,
#   3. times scoring and training tokens/s against plain transformers rows in the same run
#      (benchmarks/bench_gpu.py, SmolLM2-135M's shape in bf16),
# writing tests.log, junit.xml, bench.json, bench.log and env.txt into OUT_DIR.
#
# --cpu runs the same steps on CPU with this checkout's .venv (tests on HIPRM_CHECK_DEVICE=cpu,
# a 2-layer benchmark); tests/test_gpu_branch.py runs it in every CI run, so it cannot rot.
# --wheels downloads into .whl/ the wheels a GPU machine lacks (Python 3.12, manylinux x86-64).
set -euo pipefail
cd "$(dirname "$0")/.."
usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; }
mode=gpu
case "${1:-}" in
  -h|--help) usage; exit 0 ;;
  --cpu) mode=cpu; shift ;;
  --wheels) mode=wheels; shift ;;
esac

# Versions of this checkout's .venv (CI's), for what the GPU image lacks or has older.
WHEELS=(math-verify==0.9.0 latex2sympy2_extended==1.11.0 antlr4-python3-runtime==4.13.2 orjson==3.13.0
        gguf==0.19.0 transformers==5.25.0 accelerate==1.16.0 huggingface_hub==2.5.0 kernels==0.19.1
        tomlkit==0.15.3 httpx2==2.17.0 httpcore2==2.17.0 truststore==0.10.5)
if [[ $mode == wheels ]]; then
  mkdir -p .whl
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
  for w in "${WHEELS[@]}"; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d .whl "$w"
  done
  ls -la .whl
  exit 0
fi

out=${1:?usage: scripts/gpu_check.sh [--cpu|--wheels] OUT_DIR}
mkdir -p "$out"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
if [[ $mode == gpu ]]; then
  py=python3
  site=/tmp/hiprm-site
  if compgen -G ".whl/*.whl" > /dev/null; then
    $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl
  fi
  export PYTHONPATH="$site:$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}"
  device=cuda; bench=(--device cuda)
else
  py=.venv/bin/python
  [[ -x $py ]] || { echo "gpu_check.sh --cpu: no .venv here; run scripts/install.sh first" >&2; exit 2; }
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
  device=cpu; bench=(--device cpu --layers 2 --solutions 4 --steps 4 --train-steps 2 --train-batch 16 --repeat 1)
fi
export HIPRM_CHECK_DEVICE=$device
{
  date -u +"date %Y-%m-%dT%H:%M:%SZ"
  echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  $py -c "import sys, torch, transformers, accelerate; print('python', sys.version.split()[0]); print('torch', torch.__version__, 'cuda', torch.version.cuda); print('transformers', transformers.__version__, 'accelerate', accelerate.__version__); print('device', torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')"
  command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
} | tee "$out/env.txt"
set +e
$py -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py --junitxml "$out/junit.xml" 2>&1 | tee "$out/tests.log"
tests=${PIPESTATUS[0]}
$py benchmarks/bench_gpu.py "${bench[@]}" --out "$out/bench.json" 2>&1 | tee "$out/bench.log"
bench_rc=${PIPESTATUS[0]}
set -e
echo "gpu_check ($mode): tests exit $tests, benchmark exit $bench_rc; results in $out"
[[ $tests == 0 && $bench_rc == 0 ]]
