#!/usr/bin/env bash
# The GPU check: on a machine with one CUDA GPU, after the README's install with a CUDA torch,
#   1. preflight   a CUDA build of torch, a visible GPU, nvcc
#   2. build       the CUDA kernels (FIDEC_FORCE_CUDA=1, for this GPU's architecture), then checks they load
#   3. GPU tests   every test marked gpu (pytest -m gpu); a skipped GPU test fails the step
#   4. penalty     benchmarks/bench_fisher_penalty.py on a few shapes (reference, compiled reference, cuda, triton)
#   5. MLP ops     benchmarks/bench_mlp_ops.py: rollouts (fp32, tf32, bf16; cuda, triton) and velocity_jvp
#   6. training    benchmarks/train_throughput.py: every agent in fp32 / tf32 / bf16, FiDec compiled and as
#                  CUDA graphs (reduce-overhead), each run with its eager reference
#   7. multi-seed  benchmarks/multiseed.py: stacked vs sequential seeds, small and paper size
# Rows go to benchmarks/results/<name>-<gpu>.json. Stops at the first failing step, naming it and its log.
# Estimated (not yet measured) under 10 minutes on an H100-class GPU.
#
#   bash benchmarks/gpu_check.sh               # the whole check
#   bash benchmarks/gpu_check.sh --from 3      # steps 3-7 only (a rerun without rebuilding)
#   bash benchmarks/gpu_check.sh --dry-run     # any machine, no GPU: checks that every step it would run
#                                              # exists (tests and benchmark cases collect, benchmark modules
#                                              # take the flags and run a tiny CPU case); builds nothing
#
# Environment: PYTHON (default python), FIDEC_CUDA_ARCHS (default: this GPU's compute capability),
# GPU_CHECK_LOGS (a directory for the step logs; default a new temporary one), GPU_CHECK_PENALTY_SHAPES
# (pytest -k of step 4), GPU_CHECK_TRAIN_AGENTS / GPU_CHECK_TRAIN_MODES (step 6, all agents),
# GPU_CHECK_COMPILED_AGENTS / GPU_CHECK_COMPILED_MODES (step 6, the compiled modes).
set -euo pipefail
cd "$(dirname "$0")/.."

dry_run=0
first=1
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry_run=1 ;;
    --from)
      first=${2:-}
      shift
      if ! [[ "$first" =~ ^[1-7]$ ]]; then
        echo "gpu_check: --from takes a step number 1-7, got '$first'" >&2
        exit 2
      fi
      ;;
    -h | --help)
      awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
      exit 0
      ;;
    *)
      echo "gpu_check: unknown argument '$1' (see --help)" >&2
      exit 2
      ;;
  esac
  shift
done

PYTHON=${PYTHON:-python}
PENALTY_SHAPES=${GPU_CHECK_PENALTY_SHAPES:-"256-8-21 or 4096-8-64"}
# bench_mlp_ops lists the cpu backend among its velocity_jvp cases, and that backend refuses CUDA tensors.
MLP_OPS_SELECT="not cpu"
TRAIN_AGENTS=${GPU_CHECK_TRAIN_AGENTS:-fidec,deflow,fql}
TRAIN_MODES=${GPU_CHECK_TRAIN_MODES:-eager-reference,reference-batched,fused,fused-bf16,fused-tf32}
COMPILED_AGENTS=${GPU_CHECK_COMPILED_AGENTS:-fidec}
COMPILED_MODES=${GPU_CHECK_COMPILED_MODES:-eager-reference,fused,compiled,compiled-cudagraphs}
MULTISEED_RUNS=("--sizes small --num-seeds 1,4,16" "--sizes paper --num-seeds 1,4")
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-${TMPDIR:-/tmp}/fidec-inductor-cache}

logs=${GPU_CHECK_LOGS:-$(mktemp -d "${TMPDIR:-/tmp}/fidec-gpu-check.XXXXXX")}
mkdir -p "$logs"
steps=(preflight build "GPU tests" penalty "MLP ops" training multi-seed)
start=$(date +%s)
timings=()
mode=$([ "$dry_run" = 1 ] && echo "dry run" || echo "GPU check")
echo "gpu_check ($mode): logs in $logs"

# run_step N SLUG COMMAND...: runs COMMAND, its output to the terminal and to $logs/N-SLUG.log; on failure
# names the step and its log and stops the check.
run_step() {
  local n=$1 slug=$2
  shift 2
  local name=${steps[$((n - 1))]} log="$logs/$n-$slug.log" t0 rc
  if [ "$n" -lt "$first" ]; then
    echo "== [$n/${#steps[@]}] $name: skipped (--from $first)"
    return 0
  fi
  echo
  echo "== [$n/${#steps[@]}] $name"
  t0=$(date +%s)
  set +e
  (
    set -e  # within the step too: its first failing command ends it
    "$@"
  ) 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  set -e
  timings+=("$(printf '%-12s %5d s' "$name" $(($(date +%s) - t0)))")
  if [ "$rc" -ne 0 ]; then
    echo >&2
    echo "gpu_check: FAILED at step $n/${#steps[@]} ($name), exit status $rc; its output: $log" >&2
    exit "$rc"
  fi
}

# ----------------------------------------------------------------------------------------------- the steps
preflight() {
  "$PYTHON" - "$dry_run" <<'PY'
import shutil, sys
import torch
dry = sys.argv[1] == "1"
print(f"torch {torch.__version__}, CUDA build: {torch.version.cuda}, GPU visible: {torch.cuda.is_available()}, "
      f"nvcc: {shutil.which('nvcc')}")
if dry:
    sys.exit(0)
if torch.version.cuda is None:
    sys.exit(f"torch {torch.__version__} is a CPU build: install a CUDA torch first (README, Install)")
if not torch.cuda.is_available():
    sys.exit("no CUDA device is visible (nvidia-smi; CUDA_VISIBLE_DEVICES)")
import os
if shutil.which("nvcc") is None and not any(
    os.path.exists(os.path.join(os.environ.get(v, ""), "bin", "nvcc")) for v in ("CUDA_HOME", "CUDA_PATH")
):
    sys.exit("nvcc not found: install the CUDA toolkit or set CUDA_HOME")
print(f"GPU: {torch.cuda.get_device_name(0)} (compute capability {'.'.join(map(str, torch.cuda.get_device_capability(0)))})")
PY
}

build() {
  if [ "$dry_run" = 1 ]; then
    "$PYTHON" -m pip --version
    grep -q FIDEC_FORCE_CUDA setup.py || {
      echo "setup.py does not read FIDEC_FORCE_CUDA" >&2
      return 1
    }
    "$PYTHON" -c "import fisher_decorator.ops as o; print('installed extension:', o.backend_info())"
    echo "would run: FIDEC_FORCE_CUDA=1 FIDEC_CUDA_ARCHS=<this GPU> $PYTHON -m pip install --no-build-isolation --no-deps -e ."
    return 0
  fi
  local archs=${FIDEC_CUDA_ARCHS:-$("$PYTHON" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability(0))')}
  echo "FIDEC_FORCE_CUDA=1 FIDEC_CUDA_ARCHS=$archs $PYTHON -m pip install --no-build-isolation --no-deps -e ."
  FIDEC_FORCE_CUDA=1 FIDEC_CUDA_ARCHS=$archs "$PYTHON" -m pip install --no-build-isolation --no-deps -e .
  "$PYTHON" - <<'PY'
import sys
import fisher_decorator._C as C
from fisher_decorator.ops import backend_info
info = backend_info()
print(f"extension: with_cuda={C.with_cuda}, archs {C.cuda_archs!r}; backends {info}")
if not C.with_cuda or info["cuda"] != "available":
    sys.exit(f"the CUDA backend is not usable: {info['cuda']}")
PY
}

gpu_tests() {
  if [ "$dry_run" = 1 ]; then
    "$PYTHON" - <<'PY'
import collections, sys
import pytest

class Items:
    def pytest_collection_finish(self, session):
        self.items = list(session.items)

c = Items()
rc = pytest.main(["--collect-only", "-qq", "-m", "gpu", "tests"], plugins=[c])
if rc != 0:
    sys.exit(f"collecting the GPU tests failed (pytest exit {rc})")
files = collections.Counter(item.nodeid.split("::")[0] for item in c.items)
print("GPU tests per file:", dict(files))
if not files.get("tests/test_cuda.py"):
    sys.exit("no GPU test collected from tests/test_cuda.py")
PY
    return
  fi
  local log="$logs/3-gpu-tests.pytest.log"
  set +e
  "$PYTHON" -m pytest -m gpu tests -q -rs 2>&1 | tee "$log"
  local rc=${PIPESTATUS[0]}
  set -e
  [ "$rc" -eq 0 ] || return "$rc"
  if tail -n 3 "$log" | grep -Eq '[0-9]+ skipped'; then
    echo "GPU tests were skipped (reasons above): on a GPU every one must run" >&2
    return 1
  fi
}

# collect_bench FILE SELECT: the benchmark cases that file has on a GPU machine, collected with
# torch.cuda.is_available() answering True (the GPU backends' cases are chosen at import); they must
# include cases of the cuda backend wherever the installed extension has CUDA kernels.
collect_bench() {
  "$PYTHON" - "$1" "$2" <<'PY'
import sys
import torch
torch.cuda.is_available = lambda: True
import pytest
from fisher_decorator.ops import compiled_module

class Items:
    def pytest_collection_finish(self, session):
        self.items = list(session.items)

path, select = sys.argv[1], sys.argv[2]
c = Items()
rc = pytest.main(["--collect-only", "-qq", "-p", "no:cacheprovider", path, "-k", select], plugins=[c])
if rc != 0:
    sys.exit(f"collecting {path} -k {select!r} failed (pytest exit {rc})")
cuda = [i for i in c.items if "cuda" in i.name]
print(f"{path} -k {select!r}: {len(c.items)} cases on a GPU, {len(cuda)} of them with the cuda backend")
if compiled_module().with_cuda and not cuda:
    sys.exit(f"{path} -k {select!r} selects no case of the cuda backend")
PY
}

penalty_bench() {
  if [ "$dry_run" = 1 ]; then
    collect_bench benchmarks/bench_fisher_penalty.py "$PENALTY_SHAPES"
  else
    "$PYTHON" -m pytest benchmarks/bench_fisher_penalty.py -q -k "$PENALTY_SHAPES"
  fi
}

mlp_ops_bench() {
  if [ "$dry_run" = 1 ]; then
    collect_bench benchmarks/bench_mlp_ops.py "$MLP_OPS_SELECT"
  else
    "$PYTHON" -m pytest benchmarks/bench_mlp_ops.py -q -k "$MLP_OPS_SELECT"
  fi
}

# bench_dry MODULE "ARGS" ...: (1) MODULE's main() takes each ARGS, the exact arguments of one of the GPU
# runs (argparse and the module's own checks of modes and sizes; stopped where it would build the first
# case), (2) a tiny CPU run of its main(): eager modes, networks 2 x 32, B = 16, rows to a temporary directory.
bench_dry() {
  "$PYTHON" - "$@" <<'PY'
import dataclasses, importlib, pathlib, shlex, sys, tempfile
import benchmarks.common

module_name, gpu_runs = sys.argv[1], [shlex.split(a) for a in sys.argv[2:]]
sys.argv[0] = module_name  # argparse's program name in its messages
module = importlib.import_module(module_name)

class Parsed(Exception):
    pass

def stop(*args, **kwargs):
    raise Parsed

make_case = module.make_case
module.make_case = stop
for gpu_args in gpu_runs:
    try:
        module.main(gpu_args)
        sys.exit(f"{module_name}: main() returned before building a case")
    except Parsed:
        print(f"{module_name} accepts {' '.join(gpu_args)}")
module.make_case = make_case

tiny = ["--device", "cpu", "--agents", "fql", "--rounds", "1", "--warmup", "1"]
if module_name == "benchmarks.train_throughput":
    module.B = 16
    resolve = module.resolve_configs

    def small(*args, **kwargs):
        train, cfg, record = resolve(*args, **kwargs)
        return train, dataclasses.replace(cfg, actor_hidden_dims=(32, 32), value_hidden_dims=(32, 32)), record

    module.resolve_configs = small
    tiny += ["--modes", "eager-reference,fused"]
else:
    module.SIZES = {name: dict(B=16, hidden=32, K=2) for name in module.SIZES}
    tiny += ["--sizes", "small", "--num-seeds", "1,2"]
with tempfile.TemporaryDirectory() as d:
    benchmarks.common.RESULTS = pathlib.Path(d)
    rc = module.main(tiny)
    if rc != 0 or not list(pathlib.Path(d).glob("*.json")):
        sys.exit(f"{module_name} {' '.join(tiny)}: exit {rc}, rows {list(pathlib.Path(d).iterdir())}")
PY
}

training_bench() {
  local rounds=(--rounds 20 --warmup 5)
  local run1=(--device cuda --agents "$TRAIN_AGENTS" --modes "$TRAIN_MODES" "${rounds[@]}")
  local run2=(--device cuda --agents "$COMPILED_AGENTS" --modes "$COMPILED_MODES" "${rounds[@]}")
  if [ "$dry_run" = 1 ]; then
    bench_dry benchmarks.train_throughput "${run1[*]}" "${run2[*]}"
    return
  fi
  "$PYTHON" -m benchmarks.train_throughput "${run1[@]}"
  "$PYTHON" -m benchmarks.train_throughput "${run2[@]}"
}

multiseed_bench() {
  local run runs=()
  for run in "${MULTISEED_RUNS[@]}"; do
    runs+=("--device cuda --agents fidec $run --rounds 10")
  done
  if [ "$dry_run" = 1 ]; then
    bench_dry benchmarks.multiseed "${runs[@]}"
    return
  fi
  for run in "${runs[@]}"; do
    # shellcheck disable=SC2086  # each run is a word list
    "$PYTHON" -m benchmarks.multiseed $run
  done
}

run_step 1 preflight preflight
run_step 2 build build
run_step 3 gpu-tests gpu_tests
run_step 4 penalty penalty_bench
run_step 5 mlp-ops mlp_ops_bench
run_step 6 training training_bench
run_step 7 multiseed multiseed_bench

total=$(($(date +%s) - start))
echo
echo "gpu_check ($mode): steps $first-${#steps[@]} of ${#steps[@]} passed in $total s"
printf '  %s\n' "${timings[@]}"
if [ "$dry_run" = 0 ]; then
  echo "rows written (benchmarks/results/):"
  find benchmarks/results -name '*.json' -newermt "@$start" -printf '  %p\n'
  echo "tables: python -m benchmarks.report --write; commit the rows and benchmarks/README.md"
  if [ "$total" -gt 600 ]; then
    echo "note: the check took over its 10-minute budget ($total s); trim GPU_CHECK_* (see the header)" >&2
  fi
fi
