"""The sweep driver: resolve every run, prepare the datasets, schedule the runs, keep the manifest.

``run_sweep(sweep_dir, definition, resources)`` is idempotent: started again on the same directory it skips
finished runs, resumes interrupted or killed ones from their checkpoints, and retries failed ones. Within one
invocation a run whose process dies (SIGKILL, OOM, a lost Ray node) is restarted from its checkpoint up to
``retries`` times; a run that raises an error is not (the same error would come back), and no failure stops
the other runs.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fisher_decorator.checkpoint import write_json
from fisher_decorator.sweep.executors import Work, cpu_count, make_executor
from fisher_decorator.sweep.grid import ResolvedRun, SweepDefinition, SweepError, resolve_run
from fisher_decorator.sweep.manifest import Manifest, SweepLock, now
from fisher_decorator.sweep.worker import RUN_FILE
from fisher_decorator.threads import WAIT_POLICY_ENV

SWEEP_FILE = "sweep.json"
SUMMARY_FILE = "summary.json"


@dataclass(frozen=True)
class Resources:
    """How runs are scheduled (not stored with the sweep: a sweep may continue elsewhere)."""

    backend: str = "auto"
    address: str | None = None
    cpus_per_run: int = 1
    gpus_per_run: float = 0.0
    workers: int | None = None
    retries: int = 1

    def check(self) -> None:
        if self.cpus_per_run < 1:
            raise SweepError(f"--cpus-per-run must be >= 1 (torch threads of a run), got {self.cpus_per_run}")
        if not 0 <= self.gpus_per_run <= 1:
            raise SweepError(
                f"--gpus-per-run must be in [0, 1] (a run uses one device; 0.25 packs four runs on a GPU), "
                f"got {self.gpus_per_run:g}"
            )
        if self.workers is not None and self.workers < 1:
            raise SweepError(f"--workers must be >= 1, got {self.workers}")
        if self.retries < 0:
            raise SweepError(f"--retries must be >= 0, got {self.retries}")


def load_definition(sweep_dir: str | Path) -> SweepDefinition | None:
    path = Path(sweep_dir) / SWEEP_FILE
    if not path.is_file():
        return None
    return SweepDefinition.from_dict(json.loads(path.read_text())["definition"])


def dataset_dir_for(definition: SweepDefinition, sweep_dir: Path) -> Path:
    """``--dataset-dir``, else the budget's: ``<sweep>/datasets`` or the datasets' default directory."""
    if definition.dataset_dir:
        return Path(definition.dataset_dir).expanduser().resolve()
    if definition.budget_obj.dataset_dir == "sweep":
        return sweep_dir / "datasets"
    from fisher_decorator.datasets import default_dataset_dir

    return default_dataset_dir().resolve()


def _checkpoint_step(run_dir: Path) -> int | None:
    from fisher_decorator.checkpoint import load_checkpoint
    from fisher_decorator.trainer import CHECKPOINT

    try:
        return int(load_checkpoint(run_dir / CHECKPOINT)["step"])
    except (FileNotFoundError, RuntimeError, KeyError):
        return None


def _reconcile(manifest: Manifest, resolved: dict[str, ResolvedRun], sweep_dir: Path) -> None:
    """States left by an earlier invocation -> what this one does with each run."""
    for rid, entry in manifest.runs.items():
        if rid not in resolved:
            continue
        state = entry["state"]
        if state == "running":  # only one driver holds the directory: this entry is stale
            manifest.set_state(
                rid,
                "pending",
                note="was running when the previous sweep stopped; resumes from its checkpoint",
            )
        elif state == "failed":
            manifest.set_state(
                rid, "pending", note=f"retried (sweep started again); previous error: {entry['error']}"
            )
        elif state == "done":
            steps = resolved[rid].total_steps
            path = sweep_dir / entry["run_dir"] / "summary.json"
            done_steps = json.loads(path.read_text()).get("steps") if path.is_file() else None
            if done_steps != steps:
                manifest.set_state(
                    rid, "pending", note=f"finished at step {done_steps}; continues to {steps}"
                )


class _Driver:
    """The scheduling loop of one invocation."""

    def __init__(self, manifest, resolved, executor, resources, sweep_dir, progress, log):
        self.manifest = manifest
        self.resolved = resolved
        self.executor = executor
        self.resources = resources
        self.sweep_dir = sweep_dir
        self.log = log
        self.inflight: dict[str, str] = {}
        self.attempts: collections.Counter[str] = collections.Counter()
        self.queue: collections.deque[str] = collections.deque()
        from tqdm import tqdm

        counts = manifest.counts()
        self.bar = tqdm(
            total=len(resolved),
            initial=counts["done"],
            unit="run",
            desc=f"sweep {sweep_dir.name}",
            disable=not progress,
            dynamic_ncols=True,
            smoothing=0.1,
        )
        self._write = self.bar.write if progress else log
        self._last_postfix: dict[str, int] = {}

    def _submit(self, rid: str) -> None:
        run = self.resolved[rid]
        run_dir = self.sweep_dir / run.spec.rel_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        token = uuid.uuid4().hex[:12]
        payload = {
            "token": token,
            "run_id": rid,
            "train": run.train,
            "agent": run.agent,
            "record": run.record,
            "online": run.online,
            "init_from": str(self.sweep_dir / run.init_from) if run.init_from else None,
        }
        write_json(run_dir / RUN_FILE, payload)
        threads = str(self.executor.threads_for(self.resources.cpus_per_run))
        env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        # waiting OpenMP threads sleep (fisher_decorator.threads), unless the user's environment chose otherwise
        env[WAIT_POLICY_ENV] = os.environ.get(WAIT_POLICY_ENV, "PASSIVE")
        self.executor.submit(Work(rid, run_dir, token, env))
        self.inflight[token] = rid
        self.attempts[rid] += 1

    def _postfix(self) -> None:
        counts = self.manifest.counts()
        postfix = {"running": counts["running"], "failed": counts["failed"]}
        if postfix != self._last_postfix:
            self.bar.set_postfix(postfix)
            self._last_postfix = postfix

    def _mark_running(self, rid: str, host: str | None, pid: int | None) -> None:
        if self.manifest[rid]["state"] == "pending":
            self.manifest.set_state(rid, "running", host=host, pid=pid)

    def _finish(self, rid: str, out: dict[str, Any]) -> None:
        self._mark_running(rid, out.get("host"), out.get("pid"))
        status = out.get("status")
        run_dir = self.sweep_dir / self.manifest[rid]["run_dir"]
        if status == "done":
            s = out["summary"]
            if s.get("online"):  # a fine-tuning run: its score after fine-tuning, and the one before
                s = {
                    **s,
                    "score": s["online"]["score_after"],
                    "score_steps": [s["steps"]],
                    "missing_score_steps": [],
                }
            self.manifest.set_state(
                rid,
                "done",
                score=s.get("score"),
                score_steps=s.get("score_steps"),
                missing_score_steps=s.get("missing_score_steps"),
                step=s.get("steps"),
                updates_per_sec=s.get("updates_per_sec"),
                seconds=out.get("seconds"),
                resumed_from=out.get("resumed_from") or None,
            )
            score = "n/a" if s.get("score") is None else f"{100 * s['score']:.1f}%"
            self._write(f"done    {rid}: score {score}")
            self.bar.update(1)
        elif status == "failed":
            self.manifest.set_state(rid, "failed", error=out.get("error"), traceback=out.get("traceback"))
            self._write(f"FAILED  {rid}: {out.get('error')}")
            self.bar.update(1)
        elif status == "interrupted":
            step = out.get("step") or _checkpoint_step(run_dir)
            self.manifest.set_state(
                rid, "pending", step=step, note=f"interrupted at step {step}; resumes from that checkpoint"
            )
        else:  # died
            step = _checkpoint_step(run_dir)
            where = f"last checkpoint at step {step}" if step is not None else "no checkpoint yet"
            if self.attempts[rid] <= self.resources.retries:
                self.manifest.set_state(
                    rid,
                    "pending",
                    step=step,
                    note=f"{out.get('error')}; retry {self.attempts[rid]} of {self.resources.retries} ({where})",
                )
                self._write(f"retry   {rid}: {out.get('error')} ({where})")
                self.queue.appendleft(rid)
            else:
                self.manifest.set_state(
                    rid,
                    "failed",
                    step=step,
                    error=f"{out.get('error')}; {where}: starting the sweep again resumes it",
                )
                self._write(f"FAILED  {rid}: {out.get('error')} ({where})")
                self.bar.update(1)

    def _handle(self, events) -> None:
        for ev in events:
            rid = self.inflight.get(ev.token)
            if rid is None:
                continue
            if ev.kind == "started":
                self._mark_running(rid, ev.host, ev.pid)
            else:
                del self.inflight[ev.token]
                self._finish(rid, ev.outcome or {})
        self._postfix()

    def _dependency(self, rid: str) -> tuple[str, str | None]:
        """("ready", None), ("wait", dep) while a dependency is queued or running, ("failed", dep) when one
        failed or will not run in this invocation."""
        waiting = set(self.queue) | set(self.inflight.values())
        for dep in self.resolved[rid].spec.depends_on:
            state = self.manifest.runs.get(dep, {}).get("state")
            if state == "done":
                continue
            return ("wait", dep) if state != "failed" and dep in waiting else ("failed", dep)
        return "ready", None

    def _submit_ready(self) -> None:
        """Submit queued runs whose dependencies are done, in queue order, up to the executor's capacity."""
        cap = self.executor.capacity
        for rid in list(self.queue):
            if cap is not None and len(self.inflight) >= cap:
                return
            status, dep = self._dependency(rid)
            if status == "wait":
                continue
            self.queue.remove(rid)
            if status == "ready":
                self._submit(rid)
                continue
            state = self.manifest.runs.get(dep, {}).get("state")
            self.manifest.set_state(
                rid,
                "failed",
                error=f"{dep} ({state}) must be done first; starting the sweep again retries both",
            )
            self._write(f"FAILED  {rid}: {dep} is {state}")
            self.bar.update(1)

    def run(self, todo: list[str]) -> None:
        self.queue.extend(todo)
        try:
            while self.queue or self.inflight:
                self._submit_ready()
                self._handle(self.executor.poll(0.5))
        except KeyboardInterrupt:
            self._write("stopping: the running runs checkpoint and stop (Ctrl-C again does not wait)")
            try:
                self._handle(self.executor.shutdown(cancel=True))
            finally:
                for rid in self.inflight.values():
                    if self.manifest[rid]["state"] == "running":
                        step = _checkpoint_step(self.sweep_dir / self.manifest[rid]["run_dir"])
                        self.manifest.set_state(
                            rid, "pending", step=step, note=f"interrupted; resumes from step {step}"
                        )
                self.bar.close()
            raise
        self.executor.shutdown(cancel=False)
        self.bar.close()


def _raise_keyboard_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def run_sweep(
    sweep_dir: str | Path,
    definition: SweepDefinition | None,
    resources: Resources,
    *,
    progress: bool = True,
    log=print,
) -> dict[str, Any]:
    """Run (or continue) the sweep in ``sweep_dir``; returns its summary (also in ``summary.json``)."""
    resources.check()
    if resources.address or resources.backend == "ray":
        from fisher_decorator.sweep.executors import import_ray

        import_ray()  # a missing Ray is an error now, not after the datasets are prepared
    sweep_dir = Path(sweep_dir).expanduser().resolve()
    t0 = time.perf_counter()
    with SweepLock(sweep_dir):
        stored = load_definition(sweep_dir)
        if definition is None and stored is None:
            raise SweepError(f"{sweep_dir} holds no sweep yet: give --agents, --tasks and --seeds")
        if stored is not None and definition is not None:
            definition = stored.extend(definition)
        definition = definition or stored
        sweep_file = sweep_dir / SWEEP_FILE
        created = json.loads(sweep_file.read_text())["created"] if sweep_file.is_file() else now()
        write_json(sweep_file, {"definition": definition.to_dict(), "created": created, "updated": now()})

        specs = definition.runs()
        dataset_dir = dataset_dir_for(definition, sweep_dir)
        resolved = {
            s.run_id: resolve_run(
                definition,
                s,
                sweep_dir=sweep_dir,
                dataset_dir=dataset_dir,
                cpus_per_run=resources.cpus_per_run,
                gpus_per_run=resources.gpus_per_run,
            )
            for s in specs
        }
        manifest = Manifest.open(sweep_dir)
        manifest.add(specs)
        _reconcile(manifest, resolved, sweep_dir)
        todo = [s.run_id for s in specs if manifest[s.run_id]["state"] == "pending"]
        datasets: dict[str, Any] = {}
        backend = None
        if todo:
            from fisher_decorator.sweep.datasets import prepare_datasets
            from fisher_decorator.sweep.grid import task_list_for_datasets

            datasets = prepare_datasets(
                task_list_for_datasets([resolved[r].spec for r in todo]),
                dataset_dir,
                definition.budget_obj.dataset_recipe,
                workers=cpu_count(),
                progress=progress,
                log=log,
            )
            executor = make_executor(
                resources.backend,
                address=resources.address,
                cpus_per_run=resources.cpus_per_run,
                gpus_per_run=resources.gpus_per_run,
                workers=resources.workers,
                log=log,
            )
            backend = executor.describe()
            log(f"sweep {sweep_dir}: {len(todo)} of {len(specs)} run(s) to do, on {backend}")
            previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)  # pre-emption: stop cleanly
            try:
                _Driver(manifest, resolved, executor, resources, sweep_dir, progress, log).run(todo)
            finally:
                signal.signal(signal.SIGTERM, previous)
        else:
            log(f"sweep {sweep_dir}: all {len(specs)} run(s) are done")
        summary = {
            "sweep": str(sweep_dir),
            "budget": definition.budget,
            "runs": len(specs),
            "counts": manifest.counts(),
            "failed": {
                rid: e["error"]
                for rid, e in manifest.runs.items()
                if rid in resolved and e["state"] == "failed"
            },
            "pending": [
                rid for rid, e in manifest.runs.items() if rid in resolved and e["state"] == "pending"
            ],
            "backend": backend,
            "datasets": datasets,
            "wall_s": round(time.perf_counter() - t0, 2),
            "finished": now(),
        }
        write_json(sweep_dir / SUMMARY_FILE, summary)
    return summary
