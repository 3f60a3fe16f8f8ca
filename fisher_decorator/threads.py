"""How many CPU threads a process should use, and how its OpenMP threads wait.

The thread count comes from the CPUs this process may run on: its affinity mask (taskset, a scheduler's
cpuset) and its cgroup CPU quota (a container's ``--cpus``, Kubernetes limits), whichever is smaller; parallel
runs on one machine split them (:func:`threads_per_run`), so a sweep never starts more busy threads than CPUs.

Why it matters: torch's CPU kernels run in OpenMP parallel regions that end in a barrier, about a thousand per
update. With more busy threads than free cores, a thread preempted by another process holds up every barrier
for a scheduler time slice, and the threads waiting at the barrier spin on the cores the preempted one needs:
the FiDec update measured 5-9x slower with one other busy process on 2 cores. :func:`prefer_passive_wait`
makes waiting threads sleep instead of spinning (``OMP_WAIT_POLICY=PASSIVE``); libgomp reads it once, when
torch is first imported, so it is set by ``import fisher_decorator`` and in the environment of child runs.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

WAIT_POLICY_ENV = "OMP_WAIT_POLICY"


def _cgroup_quota_cpus(root: Path) -> float | None:
    """The CPU quota in CPUs (cgroup v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us``), None when unlimited/unknown."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None


def affinity_cpus() -> int:
    """CPUs in this process's affinity mask (all online CPUs where the OS has no affinity call)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def usable_cpus(cgroup_root: str | Path = "/sys/fs/cgroup") -> int:
    """CPUs this process may keep busy: min(affinity mask, cgroup quota rounded up), at least 1.

    A fractional quota (1.5 CPUs) rounds up: the second thread still gets half a core of work done.
    """
    n = affinity_cpus()
    quota = _cgroup_quota_cpus(Path(cgroup_root))
    if quota is not None:
        n = min(n, max(1, math.ceil(quota)))
    return max(1, n)


def threads_per_run(parallel_runs: int, cpus: int | None = None) -> int:
    """Threads for each of ``parallel_runs`` runs sharing ``cpus`` (default: :func:`usable_cpus`), never
    more threads in all than CPUs (at least one per run: more runs than CPUs is the caller's choice)."""
    if parallel_runs < 1:
        raise ValueError(f"parallel_runs must be >= 1, got {parallel_runs}")
    cpus = usable_cpus() if cpus is None else cpus
    return max(1, cpus // parallel_runs)


def _env_threads() -> int | None:
    """``OMP_NUM_THREADS`` when it is a positive integer (a sweep's per-run share, or the user's choice)."""
    try:
        n = int(os.environ.get("OMP_NUM_THREADS", ""))
    except ValueError:
        return None
    return n if n > 0 else None


def configure_threads(threads: int = 0) -> int:
    """``torch.set_num_threads``: ``threads``, else ``OMP_NUM_THREADS``, else :func:`usable_cpus`; returns it.

    torch's own default is the machine's core count, which ignores a cgroup quota (a 2-CPU container on a
    64-core host would run 64 threads on 2 CPUs' worth of time)."""
    import torch

    n = int(threads) if threads else (_env_threads() or usable_cpus())
    if n < 1:
        raise ValueError(f"threads must be >= 1 (or 0: the usable CPUs), got {threads}")
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def prefer_passive_wait(environ: dict | None = None) -> bool:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` unless the user chose a policy; True when it was set here.

    For this process it only takes effect when torch has not been imported yet (libgomp reads the variable
    when it loads); ``environ`` (e.g. a child's environment) gets it either way.
    """
    env = os.environ if environ is None else environ
    if WAIT_POLICY_ENV in env:
        return False
    env[WAIT_POLICY_ENV] = "PASSIVE"
    return True
