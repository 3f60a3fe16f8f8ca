"""One run of a sweep, in a process of its own: ``python -m fisher_decorator.sweep.worker RUN_DIR TOKEN``.

Each run gets a fresh interpreter (no state leaks between runs, a crash or a kill takes only this run down,
several CUDA runs can share a GPU). The driver writes the run's configs to ``RUN_DIR/sweep-run.json`` with a
token naming this attempt; the worker

- takes the run directory's lock (a process left over from an earlier attempt must finish first),
- writes ``sweep-worker.json`` (token, host, pid): the driver learns from it that the run started and where,
- continues from ``checkpoint.pt`` if there is one, starts afresh otherwise (clearing the files of an attempt
  that died before its first checkpoint), and does nothing if ``summary.json`` says the run is finished,
- on SIGTERM/SIGINT (Ctrl-C in the driver, pre-emption, or the driver dying: PR_SET_PDEATHSIG) saves a
  checkpoint after the current update and exits, so nothing is lost,
- writes ``sweep-result.json``: ``done`` with the summary, ``failed`` with the error and traceback, or
  ``interrupted`` with the step. A process that dies without one (SIGKILL, OOM) is reported by the driver.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

RUN_FILE = "sweep-run.json"
STARTED_FILE = "sweep-worker.json"
RESULT_FILE = "sweep-result.json"
LOG_FILE = "sweep-worker.log"
RUN_LOCK = ".sweep-run.lock"
LOCK_WAIT_S = 120.0
# What the trainer writes; cleared when an attempt died before its first checkpoint (nothing to resume).
TRAINER_OUTPUTS = ("config.json", "train.csv", "eval.csv", "summary.json", "tensorboard", "videos", "replay")


class _Stop(Exception):
    """Raised from the trainer's callback after a checkpoint, when a stop signal arrived."""


_stop_requested = False


def _on_signal(signum, frame) -> None:
    global _stop_requested
    if _stop_requested:  # a second signal: stop now, from the last checkpoint
        raise KeyboardInterrupt
    _stop_requested = True


def _die_with_parent(parent_pid: int | None) -> None:
    """Get SIGTERM when the launching process dies, so no orphan keeps writing a run another attempt resumes."""
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    if parent_pid and os.getppid() != parent_pid:  # the parent died before prctl took effect
        raise SystemExit(f"sweep worker: parent {parent_pid} is gone; not starting")


class _RunLock:
    """Exclusive lock on a run directory; waits up to ``wait_s`` for an earlier attempt's process to exit."""

    def __init__(self, run_dir: Path, wait_s: float):
        self.path = run_dir / RUN_LOCK
        self.wait_s = wait_s

    def __enter__(self) -> _RunLock:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.wait_s
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    holder = os.pread(self.fd, 200, 0).decode(errors="replace").strip() or "another process"
                    os.close(self.fd)
                    raise RuntimeError(
                        f"run directory {self.path.parent} is in use by {holder} (still running after "
                        f"{self.wait_s:.0f} s); stop that process, then start the sweep again"
                    ) from None
                time.sleep(0.5)
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
        return self

    def __exit__(self, *exc) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def _write_json(path: Path, data: Any) -> None:
    from fisher_decorator.checkpoint import write_json

    write_json(path, data)


def _clear_partial(run_dir: Path) -> None:
    for name in TRAINER_OUTPUTS:
        p = run_dir / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def execute(run_dir: Path, token: str) -> dict[str, Any]:
    """Run (or resume, or recognise as finished) the run in ``run_dir``; the outcome as a JSON-able dict."""
    host, pid = socket.gethostname(), os.getpid()
    base = {"token": token, "host": host, "pid": pid}
    try:
        payload = json.loads((run_dir / RUN_FILE).read_text())
        if payload["token"] != token:
            return {**base, "status": "failed", "error": "superseded: the run was submitted again meanwhile"}
        with _RunLock(run_dir, LOCK_WAIT_S):
            _write_json(run_dir / STARTED_FILE, {**base, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
            return {**base, **_train(run_dir, payload)}
    except Exception as exc:  # noqa: BLE001 - the error goes to the manifest; the sweep goes on
        return {
            **base,
            "status": "failed",
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc()[-6000:],
        }


def _train(run_dir: Path, payload: dict[str, Any]) -> dict[str, Any]:
    from fisher_decorator.agents import agent_class
    from fisher_decorator.checkpoint import load_checkpoint
    from fisher_decorator.config import TrainConfig, apply_overrides
    from fisher_decorator.trainer import CHECKPOINT, CONFIG, SUMMARY, Trainer

    train_cfg = apply_overrides(TrainConfig(), payload["train"], what="train config")
    agent_cfg = apply_overrides(
        agent_class(train_cfg.agent).config_class(), payload["agent"], what="agent config"
    )
    online = init_from = None
    if payload.get("online") is not None:  # an offline-to-online task's fine-tuning run
        from fisher_decorator.online import make_online_config

        online, init_from = make_online_config(payload["online"]), payload["init_from"]
    total = train_cfg.steps + (online.online_steps if online is not None else 0)
    ckpt, summary_path = run_dir / CHECKPOINT, run_dir / SUMMARY
    if ckpt.is_file() and summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        if summary.get("steps") == total:
            return {"status": "done", "summary": summary, "resumed_from": total, "seconds": 0.0}
    resume = ckpt.is_file()
    start_step = int(load_checkpoint(ckpt)["step"]) if resume else 0
    if not resume and (run_dir / CONFIG).exists():
        _clear_partial(run_dir)

    def stop_check(step: int, trainer: Trainer) -> None:
        if _stop_requested:
            trainer.save()
            raise _Stop

    t0 = time.perf_counter()
    trainer = Trainer(
        train_cfg,
        agent_cfg,
        run_dir,
        resume=resume,
        record=payload["record"],
        callback=stop_check,
        online=online,
        init_from=init_from,
    )
    try:
        summary = trainer.run()
    except _Stop:
        return {"status": "interrupted", "step": trainer.step, "resumed_from": start_step}
    return {
        "status": "done",
        "summary": summary,
        "resumed_from": start_step,
        "seconds": time.perf_counter() - t0,
    }


# ------------------------------------------------------------------------------------------------ launching


def launch(run_dir: Path, token: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start the worker for ``run_dir`` in its own session (a terminal's Ctrl-C reaches only the driver,
    which stops the workers with SIGTERM so that each saves first); output goes to ``sweep-worker.log``."""
    with open(run_dir / LOG_FILE, "ab") as log:
        log.write(f"\n==== attempt {token} on {socket.gethostname()} at {time.ctime()}\n".encode())
        log.flush()
        return subprocess.Popen(
            [sys.executable, "-m", __name__, str(run_dir), token, "--parent-pid", str(os.getpid())],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            start_new_session=True,
        )


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with code {returncode}"


def outcome(run_dir: Path, token: str, returncode: int, pid: int | None) -> dict[str, Any]:
    """What the attempt ``token`` reported, or, if it reported nothing, how its process ended."""
    try:
        result = json.loads((run_dir / RESULT_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        result = None
    if result is not None and result.get("token") == token:
        return result
    return {
        "token": token,
        "host": socket.gethostname(),
        "pid": pid,
        "status": "died",
        "error": f"run process {describe_exit(returncode)} (pid {pid} on {socket.gethostname()}); "
        f"its output is in {run_dir / LOG_FILE}",
    }


def stop(proc: subprocess.Popen, grace_s: float) -> int:
    """SIGTERM (the worker checkpoints after the current update), then SIGKILL after ``grace_s``."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("token")
    parser.add_argument("--parent-pid", type=int, default=None)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    _die_with_parent(args.parent_pid)
    run_dir = Path(args.run_dir)
    try:
        result = execute(run_dir, args.token)
    except KeyboardInterrupt:  # a second stop signal: the last checkpoint stands
        result = {"token": args.token, "status": "interrupted", "step": None, "pid": os.getpid()}
    _write_json(run_dir / RESULT_FILE, result)
    print(f"sweep worker: {result['status']}" + (f": {result['error']}" if result.get("error") else ""))
    return 0 if result["status"] == "done" else 1


if __name__ == "__main__":
    sys.exit(main())
