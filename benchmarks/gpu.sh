#!/usr/bin/env bash
# The GPU recipe (issue 14): the GPU benchmark set on a lent CUDA machine, in three steps.
#
#   bash benchmarks/gpu.sh fetch                     # here (PyPI reachable): wheels the GPU box lacks -> .whl/
#   BENCHMARK_COMMIT=<sha> bash benchmarks/gpu.sh run [OUT]   # there: install them, check the box, run
#   bash benchmarks/gpu.sh merge DIR                 # here: DIR's *_cuda.json -> results/, RESULTS.md rewritten
#
# A lent machine has its own torch, an older transformers, no package index and no git checkout
# (hence BENCHMARK_COMMIT), and sends back only OUT: at most 8 files, which this run fills exactly
# (6 results, RESULTS.md, log). Each section writes its result as soon as it ends, so a run cut
# short by the time limit still returns the sections it finished. The run starts with a preflight
# (seconds) and the engine on CUDA at smoke-test size, so a CUDA-only bug costs a minute, not the call.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=${WHEELS:-.whl}  # where the carried wheels are
export TRANSFORMERS=5.24.0 # within pyproject's range; the GPU image meets its needs (hub, tokenizers)
SECTIONS=prefill,overhead,memory,flops,scaling
LIMIT_S=${LIMIT_S:-480}  # the main set; with the preflight and smoke run, under a lent call's 600 s

case "${1:-}" in
fetch)
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp -d "$WHEELS" "transformers==$TRANSFORMERS"
    grep -qxF "/$WHEELS/" .git/info/exclude 2>/dev/null || echo "/$WHEELS/" >>.git/info/exclude
    ls -l "$WHEELS"
    echo "carry $WHEELS to the GPU machine (device run: carry=[\"$WHEELS\"])"
    ;;
run)
    out=${2:-${OUT:?"give the output folder: bash benchmarks/gpu.sh run OUT"}}
    mkdir -p "$out"
    if compgen -G "$WHEELS/*.whl" >/dev/null; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/site "$WHEELS"/*.whl
        export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    fi
    export PYTHONUNBUFFERED=1
    {
        # fail in seconds, not after building a 7B-shaped model: versions, the GPU, pinned copies
        python3 - <<'EOF'
import os, sys, torch, transformers
print("torch", torch.__version__, "transformers", transformers.__version__, "cuda", torch.cuda.is_available())
series = os.environ["TRANSFORMERS"].rsplit(".", 1)[0]  # pyproject pins this minor series
if transformers.__version__.rsplit(".", 1)[0] != series:
    sys.exit(f"preflight: transformers {transformers.__version__} here, the project needs {series}; run "
             "'bash benchmarks/gpu.sh fetch' on the machine with PyPI and carry .whl")
if not torch.cuda.is_available():
    sys.exit("preflight: no CUDA device visible; run this on the GPU machine (the CPU set: python -m benchmarks.run)")
print(torch.cuda.get_device_name(0))
x = torch.ones(4).pin_memory().to("cuda", non_blocking=True)  # as vla_autoprune.devices.to_device
torch.cuda.synchronize()
if float(x.sum()) != 4.0:
    sys.exit("preflight: a pinned host-to-device copy came back wrong; the engine's copies would too")
import benchmarks.run  # noqa: F401  (the project imports with this transformers)
print("preflight ok")
EOF
        # the engine on CUDA at smoke-test size first (~1 min): a CUDA-only bug shows before the
        # 7B-shaped models are built, leaving device time to fix it and run again
        python3 -m benchmarks.run --quick --device cuda --shapes-only --only prefill,overhead \
            --out /tmp/gpu-smoke --report /tmp/gpu-smoke/RESULTS.md
        timeout "$LIMIT_S" python3 -m benchmarks.run --device cuda --shapes-only --only "$SECTIONS" \
            --out "$out" --report "$out/RESULTS.md"
    } 2>&1 | tee "$out/log"
    ;;
merge)
    src=${2:?"give the folder holding the GPU run's *_cuda.json: bash benchmarks/gpu.sh merge DIR"}
    compgen -G "$src/*_cuda.json" >/dev/null || { echo "no *_cuda.json in $src" >&2; exit 1; }
    cp "$src"/*_cuda.json benchmarks/results/
    python3 -m benchmarks.run --report-only
    ;;
*)
    echo "usage: bash benchmarks/gpu.sh fetch | run [OUT] | merge DIR" >&2
    exit 2
    ;;
esac
