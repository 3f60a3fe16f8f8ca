"""benchmarks/gpu_check.sh without a GPU: its --dry-run checks every step it would run, its failures name the
step, and the real check refuses a machine without a GPU at once.

Not marked slow although the dry run takes ~40 s on 2 cores: CI must run it, so that a renamed test helper,
benchmark flag or mode breaks CI here rather than the GPU check on the day a GPU is lent.
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
STEPS = ["preflight", "build", "GPU tests", "penalty", "MLP ops", "training", "multi-seed"]


def gpu_check(tmp_path, *args, **env) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_LOGS": str(tmp_path / "logs"), **env}
    return subprocess.run(
        ["bash", str(SCRIPT), *args], cwd=ROOT, env=full_env, capture_output=True, text=True, check=False
    )


def results_state() -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (ROOT / "benchmarks" / "results").glob("*.json")}


def test_dry_run_checks_every_step(tmp_path):
    before = results_state()
    proc = gpu_check(tmp_path, "--dry-run")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    for n, name in enumerate(STEPS, start=1):
        assert f"== [{n}/{len(STEPS)}] {name}\n" in proc.stdout, name
    assert f"steps 1-{len(STEPS)} of {len(STEPS)} passed" in proc.stdout
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == [
        "1-preflight.log", "2-build.log", "3-gpu-tests.log", "4-penalty.log", "5-mlp-ops.log", "6-training.log",
        "7-multiseed.log",
    ]  # fmt: skip
    # What each step checked: the GPU tests collect, the benchmark selections hold cases, every benchmark
    # run's arguments are accepted and its module runs a tiny CPU case.
    assert re.search(r"'tests/test_cuda.py': [1-9]\d*", out)
    assert re.search(r"bench_fisher_penalty.py -k .*: [1-9]\d* cases on a GPU", out)
    assert re.search(r"bench_mlp_ops.py -k .*: [1-9]\d* cases on a GPU", out)
    assert out.count("benchmarks.train_throughput accepts --device cuda") == 2
    assert out.count("benchmarks.multiseed accepts --device cuda") == 2
    assert out.count("rows written to /") == 2  # the tiny CPU runs, into temporary directories
    assert results_state() == before, "the dry run wrote benchmark rows"


def test_a_failing_step_stops_the_check_and_is_named(tmp_path):
    proc = gpu_check(tmp_path, "--dry-run", "--from", "6", GPU_CHECK_TRAIN_MODES="fused,warp-speed")
    assert proc.returncode != 0
    assert "unknown mode(s) ['warp-speed']" in proc.stderr + proc.stdout
    assert "FAILED at step 6/7 (training)" in proc.stderr
    assert "== [5/7] MLP ops: skipped (--from 6)" in proc.stdout
    assert "[7/7]" not in proc.stdout  # stopped at the first failure


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_the_real_check_refuses_a_machine_without_a_gpu(tmp_path):
    proc = gpu_check(tmp_path)
    assert proc.returncode != 0
    assert "FAILED at step 1/7 (preflight)" in proc.stderr
    assert ("is a CPU build" in proc.stdout + proc.stderr) or ("no CUDA device" in proc.stdout + proc.stderr)
    assert not (tmp_path / "logs" / "2-build.log").exists()  # nothing was built
    for bad in (["--from", "9"], ["--gpu"]):
        assert gpu_check(tmp_path, *bad).returncode == 2, bad
