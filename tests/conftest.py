"""Shared test setup: a seeded RNG per test, an inductor cache, GPU tests skipped without a GPU."""

from __future__ import annotations

import json
import os
import random
import tempfile

import numpy as np
import pytest
import torch

# First inductor compiles take 10-17 s; a shared cache makes the later ones cheap.
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(tempfile.gettempdir(), "fidec-inductor-cache"))

HAS_GPU = torch.cuda.is_available()

# Triton kernels on CPU need the interpreter from the moment triton is imported: that directory
# runs in a subprocess (tests/test_triton_interpreter.py), never in this process.
collect_ignore = [] if os.environ.get("TRITON_INTERPRET") == "1" else ["interpreted"]


def pytest_sessionstart(session):
    """One GEMM-path choice for the session and its subprocesses; under CI (CI=true) a compiled extension that
    did not build or load is a failure, not ~900 skips."""
    from fisher_decorator import gemm_path

    # A probe on a loaded machine may choose differently in each process: a straight run and its killed-and-
    # resumed twin in two processes would then run different GEMMs and differ in the last bits.
    if not os.environ.get(gemm_path.CHOICE_ENV):
        os.environ[gemm_path.CHOICE_ENV] = json.dumps(gemm_path.measured_choice(use_cache=False)["choice"])
    if os.environ.get("CI", "").lower() not in ("1", "true", "yes"):
        return
    from fisher_decorator.ops import backend_info

    state = backend_info()["cpu"]
    if state != "available":
        raise pytest.UsageError(f"CI: the compiled CPU extension is required but unusable: {state}")


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    # Slow tests (a minute or more on 2 cores) are opt-in: `pytest -m slow` runs them.
    run_slow = "slow" in (config.getoption("markexpr") or "")
    skip_slow = pytest.mark.skip(reason="slow: run with -m slow")
    for item in items:
        if "gpu" in item.keywords and not HAS_GPU:
            item.add_marker(skip_gpu)
        if "slow" in item.keywords and not run_slow:
            item.add_marker(skip_slow)


@pytest.fixture(autouse=True)
def _seed_everything():
    """Every test starts from the same seed, so a failure reproduces."""
    random.seed(0)
    np.random.seed(0)  # noqa: NPY002 - seeds code that still uses the legacy global RNG
    torch.manual_seed(0)
    yield
