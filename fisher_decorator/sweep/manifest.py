"""The sweep's manifest: every run's state, written atomically after every change.

``<sweep>/manifest.json`` holds one entry per run: ``pending`` (not started, or stopped and waiting to resume),
``running`` (a worker process holds it; host and pid recorded), ``done`` (its summary, score and time) or
``failed`` (the error and the tail of the traceback). An offline-to-online task's runs carry their ``stage``, and
the fine-tuning run ``depends_on`` its offline run: the driver starts it only once that one is ``done``. Only the sweep's driver writes it, and only one driver may
hold a sweep directory at a time (:class:`SweepLock`), so the file never sees two writers. It is replaced by
write-to-temp + fsync + rename: a driver killed mid-write leaves the previous complete manifest.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from fisher_decorator.checkpoint import write_json
from fisher_decorator.sweep.grid import RunSpec

MANIFEST = "manifest.json"
LOCK = ".sweep.lock"
FORMAT = 1
STATES = ("pending", "running", "done", "failed")
# A run goes back to pending when it is interrupted, retried after its process died, or restarted (failed runs
# are retried and finished runs extended when the sweep is started again).
TRANSITIONS = {
    "pending": {"running", "failed"},
    "running": {"done", "failed", "pending"},
    "failed": {"pending"},
    "done": {"pending"},
}
HISTORY = 20  # state changes kept per run


class ManifestError(RuntimeError):
    """A manifest that cannot be read, or a state change that the run's state does not allow."""


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class Manifest:
    """The states of a sweep's runs; ``set_state`` changes one run and saves the file."""

    def __init__(self, path: str | os.PathLike, data: dict[str, Any]):
        self.path = Path(path)
        self.data = data

    @classmethod
    def open(cls, sweep_dir: str | os.PathLike) -> Manifest:
        """The manifest of ``sweep_dir`` (an empty one if the sweep is new)."""
        path = Path(sweep_dir) / MANIFEST
        if not path.exists():
            return cls(path, {"format": FORMAT, "created": now(), "updated": now(), "runs": {}})
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ManifestError(f"{path}: unreadable manifest ({exc})") from exc
        if data.get("format") != FORMAT:
            raise ManifestError(
                f"{path}: manifest format {data.get('format')!r}, this version reads {FORMAT}"
            )
        for rid, entry in data.get("runs", {}).items():
            if entry.get("state") not in STATES:
                raise ManifestError(
                    f"{path}: run {rid} has state {entry.get('state')!r}, not one of {STATES}"
                )
        return cls(path, data)

    @property
    def runs(self) -> dict[str, dict[str, Any]]:
        return self.data["runs"]

    def __getitem__(self, run_id: str) -> dict[str, Any]:
        return self.runs[run_id]

    def add(self, specs: list[RunSpec]) -> list[str]:
        """Entries for runs the manifest does not have yet (pending); returns their ids."""
        added = []
        for spec in specs:
            if spec.run_id not in self.runs:
                self.runs[spec.run_id] = {
                    "task": spec.task,
                    "agent": spec.agent,
                    "seed": spec.seed,
                    "run_dir": spec.rel_dir,
                    **({"stage": spec.stage, "depends_on": spec.depends_on} if spec.stage else {}),
                    "state": "pending",
                    "attempts": 0,
                    "error": None,
                    "history": [],
                }
                added.append(spec.run_id)
        if added:
            self.save()
        return added

    def set_state(self, run_id: str, state: str, *, note: str | None = None, **fields: Any) -> None:
        """Move ``run_id`` to ``state`` (checked against :data:`TRANSITIONS`), update ``fields``, save.

        If the save fails the run keeps its old state in memory too, so memory never runs ahead of the file."""
        old_entry = self.runs[run_id]
        old = old_entry["state"]
        if state not in STATES:
            raise ManifestError(f"unknown run state {state!r}; states: {', '.join(STATES)}")
        if state not in TRANSITIONS[old]:
            raise ManifestError(f"run {run_id}: cannot go from {old!r} to {state!r}")
        entry = copy.deepcopy(old_entry)
        entry["state"] = state
        if state == "running":
            entry["attempts"] = int(entry.get("attempts", 0)) + 1
            entry.update(started=now(), finished=None)
        elif state in ("done", "failed"):
            entry["finished"] = now()
        if state != "failed":
            entry.update(error=None, traceback=None)
        entry.update(fields)
        entry["note"] = note
        event = {"time": now(), "state": state}
        if note or fields.get("error"):
            event["note"] = note or fields.get("error")
        entry["history"] = (entry.get("history", []) + [event])[-HISTORY:]
        self.runs[run_id] = entry
        try:
            self.save()
        except BaseException:
            self.runs[run_id] = old_entry
            raise

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(STATES, 0)
        for entry in self.runs.values():
            out[entry["state"]] += 1
        return out

    def save(self) -> None:
        self.data["updated"] = now()
        write_json(self.path, self.data)


class SweepLock:
    """An exclusive lock on a sweep directory, held by its one driver (released by the OS if it dies)."""

    def __init__(self, sweep_dir: str | os.PathLike):
        self.path = Path(sweep_dir) / LOCK
        self._fd: int | None = None

    def __enter__(self) -> SweepLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ManifestError(
                f"another `fidec sweep` is running on {self.path.parent} ({holder}); wait for it or stop it first"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {now()}".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
