"""Where runs execute: a local process pool, or Ray (a local Ray instance, or a cluster at ``--address``).

Both start one worker process per run (:mod:`fisher_decorator.sweep.worker`) and report the same events, so
the driver's manifest, retry and resume logic does not depend on the backend:

- ``Event("started", token, host, pid)`` when a run's process has taken its run directory,
- ``Event("finished", token, outcome=...)`` with the worker's outcome (done / failed / interrupted) or, for a
  process that died without one, ``status="died"`` and how it ended (a signal, an exit code, a lost Ray worker).

On a Ray cluster every node must see the sweep directory (and the dataset directory) at the same path, e.g. on
NFS: the workers read their configs from it and write their runs into it.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fisher_decorator.sweep import worker
from fisher_decorator.sweep.grid import SweepError
from fisher_decorator.threads import threads_per_run, usable_cpus

STOP_GRACE_S = 30.0


@dataclass
class Work:
    """One attempt of one run: its directory (absolute), the attempt's token, extra environment."""

    run_id: str
    run_dir: Path
    token: str
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class Event:
    kind: str  # "started" or "finished"
    token: str
    host: str | None = None
    pid: int | None = None
    outcome: dict[str, Any] | None = None


def import_ray():
    try:
        import ray
    except ImportError:
        raise SweepError(
            "the Ray backend (--address, --backend ray) needs Ray, which is not installed here: "
            "pip install '.[sweep]' (from a checkout; or pip install 'fisher-decorator[sweep]'). Without Ray, "
            "local sweeps run on a process pool (--backend pool)"
        ) from None
    return ray


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast on a cluster address nothing listens at: ``ray.init`` would retry for minutes."""
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():  # "auto", or a form Ray resolves itself
        return
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise SweepError(
            f"cannot reach the Ray cluster at {address!r} ({exc}); is its head node up and the port open?"
        ) from None


def cpu_count() -> int:
    """CPUs this process may use: its affinity mask and cgroup CPU quota (fisher_decorator.threads)."""
    return usable_cpus()


# ------------------------------------------------------------------------------------------------ local pool


class PoolExecutor:
    """Up to ``slots`` runs at a time on this machine, each in its own process.

    gpu_slots: per visible GPU, how many runs it holds at once (``floor(1 / --gpus-per-run)``); a run is pinned
    to its GPU with ``CUDA_VISIBLE_DEVICES``. None: CPU runs.
    """

    name = "pool"

    def __init__(self, slots: int, gpu_slots: list[int] | None = None):
        self.capacity = max(1, int(slots))
        self.gpu_free = list(gpu_slots) if gpu_slots else None
        if self.gpu_free is not None:
            self.capacity = min(self.capacity, sum(self.gpu_free))
        self.procs: dict[str, tuple[Any, Work, int | None]] = {}
        self._events: list[Event] = []

    def threads_for(self, cpus_per_run: int) -> int:
        """torch threads of each run: ``cpus_per_run``, but never more in all than this machine's usable CPUs
        (``--workers`` x ``--cpus-per-run`` beyond them would oversubscribe the cores: OpenMP barriers then wait
        on preempted threads, several times slower than fewer threads)."""
        return min(cpus_per_run, threads_per_run(self.capacity))

    def describe(self) -> str:
        gpus = "" if self.gpu_free is None else f" over {len(self.gpu_free)} GPU(s)"
        return f"local process pool, {self.capacity} run(s) at a time{gpus}"

    def submit(self, work: Work) -> None:
        env = dict(work.env)
        gpu = None
        if self.gpu_free is not None:
            gpu = max(range(len(self.gpu_free)), key=lambda i: self.gpu_free[i])
            self.gpu_free[gpu] -= 1
            env["CUDA_VISIBLE_DEVICES"] = str(gpu)
        proc = worker.launch(work.run_dir, work.token, env)
        self.procs[work.token] = (proc, work, gpu)
        self._events.append(Event("started", work.token, socket.gethostname(), proc.pid))

    def _reap(self) -> list[Event]:
        events = []
        for token, (proc, work, gpu) in list(self.procs.items()):
            rc = proc.poll()
            if rc is None:
                continue
            del self.procs[token]
            if gpu is not None:
                self.gpu_free[gpu] += 1
            events.append(Event("finished", token, outcome=worker.outcome(work.run_dir, token, rc, proc.pid)))
        return events

    def poll(self, timeout: float) -> list[Event]:
        deadline = time.monotonic() + timeout
        while True:
            events, self._events = self._events + self._reap(), []
            if events or time.monotonic() >= deadline:
                return events
            time.sleep(0.05)

    def shutdown(self, cancel: bool) -> list[Event]:
        """With ``cancel``: stop every running run (each checkpoints first); their final events."""
        if cancel:
            for proc, _, _ in self.procs.values():
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + STOP_GRACE_S
            for proc, _, _ in self.procs.values():
                try:
                    proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        return self._reap()


# ------------------------------------------------------------------------------------------------ Ray


def _ray_task(run_dir: str, token: str, env: dict[str, str]) -> dict[str, Any]:
    """The Ray task of one run: start its worker process on this node and wait for it."""
    path = Path(run_dir)
    if not (path / worker.RUN_FILE).exists():
        return {
            "token": token,
            "status": "failed",
            "host": socket.gethostname(),
            "error": f"run directory {run_dir} is not visible on node {socket.gethostname()}: on a Ray cluster "
            "the sweep directory must be on a file system every node mounts at the same path",
        }
    proc = worker.launch(path, token, env)
    while True:
        try:  # short waits: ray.cancel's KeyboardInterrupt reaches only a thread that runs Python code
            rc = proc.wait(timeout=0.5)
            break
        except subprocess.TimeoutExpired:
            continue
        except KeyboardInterrupt:  # ray.cancel: let the run checkpoint and stop
            rc = worker.stop(proc, STOP_GRACE_S)
            break
    return worker.outcome(path, token, rc, proc.pid)


class RayExecutor:
    """One Ray task per run with ``num_cpus=cpus_per_run, num_gpus=gpus_per_run``; Ray queues what does not fit
    (a fraction of a GPU packs several runs on one GPU). Retries are the driver's, as with the pool."""

    name = "ray"
    capacity = None

    def __init__(self, address: str | None, cpus_per_run: int, gpus_per_run: float, log=print):
        ray = import_ray()
        self.ray = ray
        self._owns = not ray.is_initialized()
        if self._owns:
            if address:
                check_reachable(address)
            try:
                ray.init(
                    address=address, include_dashboard=False, log_to_driver=False, logging_level="WARNING"
                )
            except Exception as exc:  # noqa: BLE001 - unreachable cluster, version mismatch, bad address
                where = f"the Ray cluster at {address!r}" if address else "a local Ray instance"
                raise SweepError(f"cannot start or reach {where}: {type(exc).__name__}: {exc}") from exc
        res = ray.cluster_resources()
        self.resources = {k: res.get(k, 0) for k in ("CPU", "GPU")}
        node_cpus = [n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")]
        node_gpus = [n["Resources"].get("GPU", 0) for n in ray.nodes() if n.get("Alive")]
        if node_cpus and max(node_cpus) < cpus_per_run:
            log(
                f"warning: no Ray node has {cpus_per_run} CPUs (largest: {max(node_cpus):g}); runs wait for one"
            )
        if gpus_per_run > 0 and (not node_gpus or max(node_gpus) < gpus_per_run):
            raise SweepError(
                f"--gpus-per-run {gpus_per_run:g}: the Ray cluster has no node with that much GPU "
                f"(GPUs per node: {node_gpus or 'none'})"
            )
        self.address = address
        self._task = ray.remote(_ray_task).options(
            num_cpus=cpus_per_run, num_gpus=gpus_per_run, max_retries=0, name="fidec-run"
        )
        self.refs: dict[Any, Work] = {}
        self.unstarted: dict[str, Work] = {}

    def threads_for(self, cpus_per_run: int) -> int:
        """Ray reserves ``cpus_per_run`` CPUs for each run: that many threads never oversubscribe a node."""
        return cpus_per_run

    def describe(self) -> str:
        where = f"cluster at {self.address}" if self.address else "local Ray instance"
        return f"Ray ({where}: {self.resources['CPU']:g} CPUs, {self.resources['GPU']:g} GPUs)"

    def submit(self, work: Work) -> None:
        ref = self._task.remote(str(work.run_dir), work.token, work.env)
        self.refs[ref] = work
        self.unstarted[work.token] = work

    def _started(self) -> list[Event]:
        events = []
        for token, work in list(self.unstarted.items()):
            try:
                info = json.loads((work.run_dir / worker.STARTED_FILE).read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if info.get("token") == token:
                del self.unstarted[token]
                events.append(Event("started", token, info.get("host"), info.get("pid")))
        return events

    def _collect(self, ready) -> list[Event]:
        events = []
        for ref in ready:
            work = self.refs.pop(ref)
            self.unstarted.pop(work.token, None)
            try:
                result = self.ray.get(ref)
            except Exception as exc:  # noqa: BLE001 - a lost worker or node, a cancelled task
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                result = {
                    "token": work.token,
                    "status": "died",
                    "error": f"Ray task lost: {type(exc).__name__}: {first}",
                }
            events.append(Event("finished", work.token, outcome=result))
        return events

    def poll(self, timeout: float) -> list[Event]:
        events = self._started()
        if self.refs:
            ready, _ = self.ray.wait(list(self.refs), num_returns=len(self.refs), timeout=timeout)
            events += self._started() + self._collect(ready)
        else:
            time.sleep(timeout)
        return events

    def shutdown(self, cancel: bool) -> list[Event]:
        events = []
        if cancel and self.refs:
            for ref in self.refs:
                self.ray.cancel(ref)  # KeyboardInterrupt in the task: its run checkpoints and stops
            ready, _ = self.ray.wait(list(self.refs), num_returns=len(self.refs), timeout=STOP_GRACE_S + 10)
            events = self._collect(ready)
        if self._owns:
            self.ray.shutdown()
        return events


def make_executor(
    backend: str,
    *,
    address: str | None,
    cpus_per_run: int,
    gpus_per_run: float,
    workers: int | None,
    log=print,
):
    """The executor for ``--backend`` (auto: Ray if it is installed, else the process pool)."""
    if address and backend == "pool":
        raise SweepError("--address names a Ray cluster; it cannot be used with --backend pool")
    if backend == "auto":
        try:
            import ray  # noqa: F401
        except ImportError:
            if address:
                import_ray()  # the clear error
            backend = "pool"
        else:
            backend = "ray"
    if backend == "ray":
        return RayExecutor(address, cpus_per_run, gpus_per_run, log=log)
    if backend != "pool":
        raise SweepError(f"unknown backend {backend!r}; valid backends: auto, pool, ray")
    gpu_slots = None
    if gpus_per_run > 0:
        import torch

        n = torch.cuda.device_count()
        if n == 0:
            raise SweepError(
                "--gpus-per-run: no CUDA GPU is visible to this process (torch.cuda.device_count() = 0)"
            )
        gpu_slots = [int(1 / gpus_per_run + 1e-9)] * n
    slots = workers if workers is not None else max(1, cpu_count() // cpus_per_run)
    return PoolExecutor(slots, gpu_slots)
