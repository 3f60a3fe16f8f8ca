"""Faults found by killing the command line: resume continues the run as it was configured, a run
directory without a checkpoint does not block, stale checkpoint temporaries are removed, and
``fidec data generate``'s workers die with it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fisher_decorator.checkpoint import load_checkpoint
from fisher_decorator.cli import main
from fisher_decorator.logger import read_csv

ROOT = Path(__file__).resolve().parent.parent
TINY_SETS = [
    *("--set", "actor_hidden_dims=16,16", "--set", "value_hidden_dims=16,16"),
    *("--set", "batch_size=16", "--set", "num_fisher_samples=2", "--set", "tensorboard=false"),
]


def _train(out: Path, *extra: str) -> int:
    return main(["train", "--agent", "fidec", "--out", str(out), "--no-progress", "--no-plot", *extra])


def _config(out: Path) -> dict:
    return json.loads((out / "config.json").read_text())


def test_resume_keeps_the_runs_config_and_prints_explicit_changes(tmp_path, capsys):
    out = tmp_path / "r"
    start = ["--seed", "1", "--steps", "20", "--log-interval", "5", "--eval-interval", "10"]
    assert _train(out, *start, "--save-interval", "10", "--eval-episodes", "4", *TINY_SETS) == 0
    first = _config(out)["train"]
    capsys.readouterr()

    # As the README shows it: only --out and --resume. Nothing comes from the preset (2000 steps there).
    assert _train(out, "--resume") == 0
    err = capsys.readouterr().err
    assert f"resuming {out} with its config.json\n" in err
    assert _config(out)["train"] == first
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 20

    # --seed 1 again is no change; --steps 30 is, and it is printed.
    assert _train(out, "--resume", "--seed", "1", "--steps", "30") == 0
    err = capsys.readouterr().err
    assert f"resuming {out} with its config.json; changed: steps 20 -> 30\n" in err
    assert _config(out)["train"] == {**first, "steps": 30}
    assert [r["step"] for r in read_csv(out / "train.csv")] == [5, 10, 15, 20, 25, 30]
    assert [r["step"] for r in read_csv(out / "eval.csv")] == [10, 20, 30]

    # A change that would alter the run's random streams is refused, in one line.
    assert _train(out, "--resume", "--seed", "2", "--steps", "40") == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "cannot resume with changed ['seed']" in err.splitlines()[-1]
    assert _train(out, "--resume", "--agent", "deflow") == 2
    assert "--agent deflow: the run in" in capsys.readouterr().err


def test_resume_a_multiseed_run_keeps_its_config(tmp_path, capsys):
    out = tmp_path / "ms"
    args = ["--seeds", "0,1", "--steps", "10", "--log-interval", "5", "--eval-interval", "0"]
    assert _train(out, *args, "--save-interval", "5", *TINY_SETS) == 0
    first = _config(out / "seed1")["train"]
    capsys.readouterr()
    assert _train(out, "--resume", "--steps", "15") == 0
    assert "changed: steps 10 -> 15" in capsys.readouterr().err
    assert _config(out / "seed1")["train"] == {**first, "steps": 15}
    assert load_checkpoint(out / "seed0" / "checkpoint.pt")["step"] == 15


@pytest.mark.parametrize("resume", [True, False])
def test_a_run_dir_without_a_checkpoint_starts_again(tmp_path, capsys, resume):
    out = tmp_path / "r"
    args = ["--steps", "10", "--log-interval", "5", "--eval-interval", "0", "--save-interval", "10"]
    assert _train(out, *args, *TINY_SETS) == 0
    (out / "checkpoint.pt").unlink()  # as if killed (or out of disk) before the first save
    (out / "summary.json").unlink()
    capsys.readouterr()
    again = ["--resume"] if resume else [*args, *TINY_SETS]
    assert _train(out, *again) == 0
    err = capsys.readouterr().err
    assert f"{out}: stopped before its first checkpoint; starting it again from step 0" in err
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 10
    assert [r["step"] for r in read_csv(out / "train.csv")] == [5, 10]
    assert "resumed_at" not in _config(out)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_checkpoint_temporaries_are_removed_at_the_next_start(tmp_path, capsys):
    out = tmp_path / "r"
    args = ["--steps", "10", "--log-interval", "5", "--eval-interval", "0", "--save-interval", "10"]
    assert _train(out, *args, *TINY_SETS) == 0
    dead = out / f".checkpoint.pt.tmp{_dead_pid()}"
    dead.write_bytes(b"x" * 1000)  # what a SIGKILL during a checkpoint write leaves
    with subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    ) as live:
        alive = out / f".checkpoint.pt.tmp{live.pid}"  # a write still in progress in another process
        alive.write_bytes(b"y")
        other = out / ".notes.tmp"
        other.write_bytes(b"z")
        capsys.readouterr()
        assert _train(out, "--resume", "--steps", "15") == 0
        assert f"removed {dead}, left by a process killed while writing" in capsys.readouterr().err
        assert not dead.exists() and alive.exists() and other.exists()
        live.stdin.close()


_HANG_IN_SECOND_CHECKPOINT = """
import os, sys, threading
from fisher_decorator import checkpoint
real, calls = os.fsync, [0]
def fsync(fd):  # the second checkpoint write never finishes: the process is killed inside it
    if os.readlink(f"/proc/self/fd/{fd}").endswith(f".checkpoint.pt.tmp{os.getpid()}"):
        calls[0] += 1
        if calls[0] == 2:
            threading.Event().wait()
    return real(fd)
checkpoint.os.fsync = fsync
from fisher_decorator.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/fd")
def test_sigkill_inside_a_checkpoint_write_then_resume(tmp_path, capsys):
    out = tmp_path / "r"
    args = ["train", "--agent", "fidec", "--out", str(out), "--steps", "20", "--save-interval", "10"]
    args += ["--log-interval", "5", "--eval-interval", "0", "--no-progress", "--no-plot", "--threads", "1"]
    proc = subprocess.Popen(
        [sys.executable, "-c", _HANG_IN_SECOND_CHECKPOINT, *args, *TINY_SETS],
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    tmp = out / f".checkpoint.pt.tmp{proc.pid}"
    try:
        while not (tmp.exists() and tmp.stat().st_size > 0):  # the event: the second write is under way
            assert proc.poll() is None, "training ended before its second checkpoint"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert tmp.exists() and load_checkpoint(out / "checkpoint.pt")["step"] == 10
    capsys.readouterr()
    assert _train(out, "--resume") == 0
    assert f"removed {tmp}, left by a process killed while writing" in capsys.readouterr().err
    assert not tmp.exists() and load_checkpoint(out / "checkpoint.pt")["step"] == 20
    assert [p.name for p in out.iterdir() if ".tmp" in p.name] == []


def _children(pid: int) -> set[int]:
    """Every process below ``pid`` (from /proc)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigkill_of_data_generate_takes_its_workers_and_resource_tracker(tmp_path):
    pytest.importorskip("ogbench")
    cmd = [sys.executable, "-m", "fisher_decorator", "data", "generate", "pointmaze-medium-navigate-v0"]
    # More episodes than could finish while the test watches: workers that outlive the parent stay visible.
    cmd += ["--episodes", "100000", "--workers", "2", "--shard-episodes", "1", "--quiet"]
    cmd += ["--dataset-dir", str(tmp_path)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    shards = tmp_path / ".fidec-shards"
    children: set[int] = set()
    try:
        # Wait for the event: the workers have finished shards (so they run their tasks), then kill the parent.
        while not any(shards.glob("*/shard-*.json")):
            assert proc.poll() is None, "generate ended before any shard was written"
            time.sleep(0.05)
        children = _children(proc.pid)
        assert len(children) >= 3  # two workers and multiprocessing's resource tracker
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # The kernel signals them at the parent's exit; the bound only ends a failing test.
        deadline = time.monotonic() + 120
        while any(_alive(p) for p in children) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [p for p in children if _alive(p)], "processes outlived `fidec data generate`"
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in children:  # a failing run's orphans, by their pids
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
