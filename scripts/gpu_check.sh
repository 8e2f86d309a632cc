#!/usr/bin/env bash
# The one command to run on the GPU machine: CUDA tests, then the GPU benchmark.
#
# Through the device tool (from the repository root, wheels downloaded into .whl/):
#   run(command="bash scripts/gpu_check.sh", carry=[".whl"], timeout_s=500)
#
# The GPU machine has torch with CUDA but no pyro-ppl (and maybe no pytest): the wheels
# carried in .whl/ (pyro-ppl, pyro-api, opt_einsum, tqdm, pytest, pluggy, iniconfig,
# packaging; all pure Python; a cp312 numpy in .whl/numpy/ as a fallback) are installed
# into /tmp/site without network or deps.
# pyroopt runs from the repository root, no install needed.
# Logs and results go under $OUT (set by the device tool; ./gpu_out otherwise):
#   $OUT/env.txt, $OUT/pytest.log, $OUT/junit.xml, $OUT/bench.log, $OUT/gpu.json
# Fetch the wheels here first (see the brief in benchmarks/README.md, "GPU"):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 -d .whl pyro-ppl==1.9.2 pyro-api==0.1.2 opt-einsum \
#     tqdm pytest pluggy iniconfig packaging   # and, with -d .whl/numpy, numpy
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_out}"
mkdir -p "$OUT"

if ! python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl; then
  # no pip there: pure-Python wheels are zip files that work unpacked
  mkdir -p /tmp/site
  for w in .whl/*.whl; do python3 -m zipfile -e "$w" /tmp/site; done
fi
# numpy (.whl/numpy/, cp312 only): torch does not require it, pyro does. Used only if
# the machine's Python lacks it, so a numpy that torch was built against is never shadowed.
if ! python3 -c 'import numpy' 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --target /tmp/site .whl/numpy/*.whl || echo "numpy: no wheel for this Python" >&2
fi
export PYTHONPATH=/tmp/site:$PWD

{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1
  python3 -c 'import torch, numpy, pyro, pytest; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.is_available(), "numpy", numpy.__version__, "pyro", pyro.__version__, "pytest", pytest.__version__)' 2>&1
} | tee "$OUT/env.txt"

# tests first (well under 3 min), then the benchmark: 170 + 300 s fit a 500 s call
timeout 170 python3 -m pytest -q tests/test_cuda.py -p no:cacheprovider -ra \
  --junitxml="$OUT/junit.xml" >"$OUT/pytest.log" 2>&1
test_rc=$?
tail -40 "$OUT/pytest.log"

timeout 300 python3 -m benchmarks.gpu --out "$OUT/gpu.json" 2>&1 | tee "$OUT/bench.log"
bench_rc=${PIPESTATUS[0]}
cp -f "$OUT/gpu.json" benchmarks/results/gpu.json 2>/dev/null || true

echo "pytest rc=$test_rc benchmark rc=$bench_rc" | tee -a "$OUT/env.txt"
[ "$test_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
