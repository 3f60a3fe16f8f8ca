"""Thread counts from the CPUs a process may use (affinity, cgroup quota), the sweep's share per run, and the
OpenMP wait policy set before torch loads."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from fisher_decorator import threads
from fisher_decorator.sweep.executors import PoolExecutor


def _cgroup(tmp_path, v2=None, v1=None):
    if v2 is not None:
        (tmp_path / "cpu.max").write_text(v2)
    if v1 is not None:
        (tmp_path / "cpu").mkdir()
        (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text(v1[0])
        (tmp_path / "cpu" / "cpu.cfs_period_us").write_text(v1[1])
    return tmp_path


@pytest.mark.parametrize(
    "v2, v1, quota",
    [
        ("max 100000\n", None, None),  # v2, no limit
        ("150000 100000\n", None, 1.5),  # v2: 1.5 CPUs
        ("100000 100000\n", None, 1.0),
        (None, ("-1\n", "100000\n"), None),  # v1, no limit
        (None, ("300000\n", "100000\n"), 3.0),  # v1: 3 CPUs
        ("garbage", None, None),  # unreadable: no quota
        (None, None, None),  # no cgroup files at all
    ],
)
def test_usable_cpus_is_affinity_capped_by_the_quota(tmp_path, monkeypatch, v2, v1, quota):
    monkeypatch.setattr(threads, "affinity_cpus", lambda: 8)
    root = _cgroup(tmp_path, v2, v1)
    assert threads._cgroup_quota_cpus(root) == quota
    want = 8 if quota is None else min(8, -(-quota // 1))
    assert threads.usable_cpus(root) == want
    monkeypatch.setattr(threads, "affinity_cpus", lambda: 1)
    assert threads.usable_cpus(root) == 1  # the affinity mask caps a larger quota


def test_affinity_is_this_process_mask():
    if hasattr(os, "sched_getaffinity"):
        assert threads.affinity_cpus() == len(os.sched_getaffinity(0))
    assert 1 <= threads.usable_cpus() <= (os.cpu_count() or 1)


@pytest.mark.parametrize("runs, cpus, want", [(1, 2, 2), (2, 2, 1), (3, 2, 1), (2, 8, 4), (3, 8, 2)])
def test_threads_per_run_never_oversubscribes(runs, cpus, want):
    n = threads.threads_per_run(runs, cpus)
    assert n == want and (n * runs <= cpus or n == 1)


def test_threads_per_run_rejects_no_runs():
    with pytest.raises(ValueError, match="parallel_runs"):
        threads.threads_per_run(0, 4)


def test_pool_runs_share_the_usable_cpus(monkeypatch):
    monkeypatch.setattr(threads, "usable_cpus", lambda: 4)
    assert PoolExecutor(slots=2).threads_for(cpus_per_run=4) == 2  # --workers 2 --cpus-per-run 4 on 4 CPUs
    assert PoolExecutor(slots=4).threads_for(cpus_per_run=1) == 1
    assert PoolExecutor(slots=1).threads_for(cpus_per_run=2) == 2
    assert PoolExecutor(slots=8).threads_for(cpus_per_run=2) == 1


def test_configure_threads_order(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.setattr(threads, "usable_cpus", lambda: 1)
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        assert threads.configure_threads(0) == 1 and torch.get_num_threads() == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "2")  # a sweep's share for this run wins over the machine's
        assert threads.configure_threads(0) == 2 and torch.get_num_threads() == 2
        assert threads.configure_threads(1) == 1  # an explicit count wins over both
        monkeypatch.setenv("OMP_NUM_THREADS", "junk")
        assert threads.configure_threads(0) == 1
        with pytest.raises(ValueError, match="threads must be"):
            threads.configure_threads(-1)
    finally:
        torch.set_num_threads(before)


def test_prefer_passive_wait_keeps_a_user_choice():
    env = {}
    assert threads.prefer_passive_wait(env) and env == {"OMP_WAIT_POLICY": "PASSIVE"}
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    assert not threads.prefer_passive_wait(env) and env["OMP_WAIT_POLICY"] == "ACTIVE"


def _spincount(code: str, **env) -> str:
    """libgomp's effective spin count in a fresh interpreter (OMP_DISPLAY_ENV prints it when it loads)."""
    full = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    full.update(OMP_DISPLAY_ENV="VERBOSE", **env)
    out = subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True, check=True)
    lines = [ln for ln in out.stderr.splitlines() if "GOMP_SPINCOUNT" in ln]
    if not lines:
        pytest.skip("this torch's OpenMP runtime is not libgomp (no GOMP_SPINCOUNT in OMP_DISPLAY_ENV)")
    return lines[0].split("=")[1].strip().strip("'")


def test_import_makes_waiting_threads_sleep():
    """``import fisher_decorator`` before torch: libgomp's waiting threads do not spin (spin count 0); a user's
    own OMP_WAIT_POLICY is kept; torch imported first keeps libgomp's default spinning."""
    assert _spincount("import fisher_decorator, torch") == "0"
    assert _spincount("import fisher_decorator, torch", OMP_WAIT_POLICY="ACTIVE") != "0"
    assert _spincount("import torch") != "0"
