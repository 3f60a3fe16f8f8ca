"""Sweeps end to end on the local process pool (always; Ray has its own file): a run killed mid-way, a Ctrl-C'd
sweep and a killed driver all resume to the same final parameters as an uninterrupted run; finished runs are
not redone; a failing run does not stop the others and its error is in the manifest and the summary."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from fisher_decorator.cli import main
from tests.sweep_helpers import (
    HANG_GUARD,
    ROOT,
    STEPS,
    assert_same_final_parameters,
    checkpoint_step,
    env,
    manifest,
    reference_run,
    sweep_cmd,
    wait_for,
)

RUN0 = "toy-bandit/fidec/seed0"
RUN1 = "toy-bandit/fidec/seed1"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead too
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except OSError:
        return False


def _running_with_checkpoint(out, run_id):
    """The pid of ``run_id``'s process once it is running and past its first checkpoint (and not finished)."""

    def check():
        try:
            entry = manifest(out)[run_id]
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            return None
        step = checkpoint_step(out / entry["run_dir"])
        if entry["state"] == "running" and 0 < step < STEPS:
            return entry["pid"]
        return None

    return check


def test_killed_run_fails_alone_then_resumes_to_the_same_parameters(tmp_path):
    out = tmp_path / "sweep"
    cmd = sweep_cmd(out, "--backend", "pool", "--workers", "2", "--retries", "0")
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    pid = wait_for(_running_with_checkpoint(out, RUN0), "a checkpoint of seed 0", proc=proc)
    os.kill(pid, signal.SIGKILL)
    log = proc.communicate(timeout=HANG_GUARD)[0]
    assert proc.returncode == 1, log[-3000:]
    runs = manifest(out)
    assert runs[RUN0]["state"] == "failed" and "killed by SIGKILL" in runs[RUN0]["error"], runs[RUN0]
    assert "starting the sweep again resumes it" in runs[RUN0]["error"]
    assert runs[RUN1]["state"] == "done"  # the other run went on
    summary = json.loads((out / "summary.json").read_text())
    assert "killed by SIGKILL" in summary["failed"][RUN0]
    killed_at = runs[RUN0]["step"]
    assert 0 < killed_at < STEPS

    again = subprocess.run(
        sweep_cmd(out, "--backend", "pool"), cwd=ROOT, env=env(), capture_output=True, text=True
    )
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    runs = manifest(out)
    assert runs[RUN0]["state"] == "done" and runs[RUN0]["attempts"] == 2
    assert runs[RUN0]["resumed_from"] == killed_at  # from its checkpoint, not from scratch
    assert runs[RUN1]["attempts"] == 1  # finished runs are not redone
    assert_same_final_parameters(out / runs[RUN0]["run_dir"], reference_run(out, RUN0, tmp_path))


def test_ctrl_c_checkpoints_the_running_runs_and_resumes_them(tmp_path):
    out = tmp_path / "sweep"
    proc = subprocess.Popen(
        sweep_cmd(out, "--backend", "pool", "--workers", "2"),
        cwd=ROOT,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    pid = wait_for(_running_with_checkpoint(out, RUN0), "a checkpoint of seed 0", proc=proc)
    os.kill(proc.pid, signal.SIGINT)  # what Ctrl-C sends the driver (the workers run in their own sessions)
    log = proc.communicate(timeout=HANG_GUARD)[0]
    assert proc.returncode == 130, log[-3000:]
    assert not _alive(pid)
    entry = manifest(out)[RUN0]
    assert entry["state"] == "pending" and entry["note"].startswith("interrupted at step"), entry
    # The worker saved after its current update, not at the last periodic checkpoint.
    assert entry["step"] == checkpoint_step(out / entry["run_dir"])

    again = subprocess.run(
        sweep_cmd(out, "--backend", "pool"), cwd=ROOT, env=env(), capture_output=True, text=True
    )
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    runs = manifest(out)
    assert runs[RUN0]["state"] == "done" and runs[RUN0]["resumed_from"] == entry["step"]
    assert_same_final_parameters(out / runs[RUN0]["run_dir"], reference_run(out, RUN0, tmp_path))


def test_killed_driver_takes_its_runs_down_and_the_next_sweep_resumes_them(tmp_path):
    out = tmp_path / "sweep"
    proc = subprocess.Popen(
        sweep_cmd(out, "--backend", "pool", seeds="0"),
        cwd=ROOT,
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    pid = wait_for(_running_with_checkpoint(out, RUN0), "a checkpoint of seed 0", proc=proc)
    os.kill(proc.pid, signal.SIGKILL)  # pre-emption of the driver: no cleanup at all
    proc.wait()
    wait_for(lambda: not _alive(pid), "the orphaned run to stop (PR_SET_PDEATHSIG)")
    assert manifest(out)[RUN0]["state"] == "running"  # as the dead driver left it
    again = subprocess.run(
        [
            sys.executable,
            "-m",
            "fisher_decorator",
            "sweep",
            "--out",
            str(out),
            "--backend",
            "pool",
            "--no-report",
        ],
        cwd=ROOT,
        env=env(),
        capture_output=True,
        text=True,
    )  # no grid arguments: the stored sweep continues
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    entry = manifest(out)[RUN0]
    assert entry["state"] == "done" and entry["resumed_from"] > 0
    notes = [h.get("note", "") for h in entry["history"]]
    assert any("was running when the previous sweep stopped" in n for n in notes)
    assert_same_final_parameters(out / entry["run_dir"], reference_run(out, RUN0, tmp_path))


def test_a_failing_run_does_not_stop_the_others(tmp_path, capsys):
    """A dataset file that exists but is not a dataset: that run fails with the loader's error, the toy runs
    finish, the error is in the manifest, the summary and the report, and the exit code says so."""
    pytest.importorskip("ogbench")
    data = tmp_path / "data"
    data.mkdir()
    for name in ("cube-single-play-v0.npz", "cube-single-play-v0-val.npz"):
        (data / name).write_bytes(b"not an npz file")
    out = tmp_path / "sweep"
    tasks = "toy-bandit,cube-single-play-singletask-task1-v0"
    code = main(
        sweep_cmd(out, "--backend", "pool", "--dataset-dir", str(data), seeds="0", tasks=tasks)[3:]
        + ["--retries", "0"]
    )
    assert code == 1
    runs = manifest(out)
    bad = runs["cube-single-play-singletask-task1-v0/fidec/seed0"]
    assert runs[RUN0]["state"] == "done"
    assert bad["state"] == "failed" and "cube-single-play-v0.npz" in bad["error"], bad
    assert "Traceback" in bad["traceback"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"] == {"pending": 0, "running": 0, "done": 1, "failed": 1}
    assert summary["failed"] == {"cube-single-play-singletask-task1-v0/fidec/seed0": bad["error"]}
    assert "failed cube-single-play-singletask-task1-v0/fidec/seed0" in capsys.readouterr().out

    from fisher_decorator.sweep.report import write_report

    md = write_report(out, plots=False)["markdown"].read_text()
    assert "## Runs without a score" in md and bad["error"].splitlines()[0][:60] in md


def test_finished_sweep_is_not_redone_and_can_be_extended(tmp_path, capsys):
    out = tmp_path / "sweep"
    args = sweep_cmd(out, "--backend", "pool", seeds="0")[3:]
    assert main(args) == 0
    first = manifest(out)[RUN0]
    mtime = (out / first["run_dir"] / "checkpoint.pt").stat().st_mtime_ns
    assert main(args) == 0
    assert manifest(out)[RUN0]["attempts"] == 1  # nothing was started
    assert (out / first["run_dir"] / "checkpoint.pt").stat().st_mtime_ns == mtime
    assert (
        main(
            ["sweep", "--out", str(out), "--seeds", "1", "--backend", "pool", "--no-progress", "--no-report"]
        )
        == 0
    )
    runs = manifest(out)
    assert set(runs) == {RUN0, RUN1} and runs[RUN0]["attempts"] == 1 and runs[RUN1]["state"] == "done"
    # the added seed ran with the stored settings (budget, steps, --set)
    cfg = json.loads((out / runs[RUN1]["run_dir"] / "config.json").read_text())
    assert cfg["train"]["steps"] == STEPS and cfg["agent"]["actor_hidden_dims"] == [16, 16]
    assert np.isfinite(runs[RUN1]["score"])
    capsys.readouterr()
    assert main(["sweep", "--out", str(out), "--status"]) == 0
    status = capsys.readouterr().out
    assert f"{RUN1:64} done" in status and "0 pending, 0 running, 2 done, 0 failed" in status
    assert main(["sweep", "--out", str(out), "--dry-run"]) == 0
    commands = capsys.readouterr().out.splitlines()
    assert len(commands) == 2 and commands[0].startswith(
        "fidec train --agent fidec --task toy-bandit --seed 0 --out "
    )


def test_errors_name_the_problem(tmp_path, capsys, monkeypatch):
    def err(*args):
        assert main(["sweep", *args]) == 2
        return capsys.readouterr().err

    out = str(tmp_path / "s")
    grid = ("--out", out, "--agents", "fidec", "--tasks", "toy-bandit", "--seeds", "0")
    assert "valid agents: fidec, deflow, fql" in err(
        "--out", out, "--agents", "sac", "--tasks", "toy-bandit", "--seeds", "0"
    )
    assert "cube-single-play" in err("--out", out, "--agents", "fidec", "--tasks", "cube", "--seeds", "0")
    e = err("--out", out, "--agents", "fidec", "--tasks", "toy-bandit", "--seeds", "0", "--budget", "huge")
    assert "valid budgets: paper, small" in e
    assert "--seeds" in err("--out", out, "--agents", "fidec", "--tasks", "toy-bandit")
    assert "use --steps" in err(
        "--out", out, "--agents", "fidec", "--tasks", "toy-bandit", "--seeds", "0", "--set", "steps=5"
    )
    e = err(*grid, "--gpus-per-run", "2")
    assert "--gpus-per-run must be in [0, 1]" in e
    if not torch.cuda.is_available():
        assert "no CUDA GPU is visible" in err(*grid, "--gpus-per-run", "0.5", "--backend", "pool")
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    e = err(
        "--out",
        out,
        "--agents",
        "fidec",
        "--tasks",
        "toy-bandit",
        "--seeds",
        "0",
        "--address",
        "ray://h:10001",
    )
    assert "pip install '.[sweep]'" in e
    e = err("--out", out, "--agents", "fidec", "--tasks", "toy-bandit", "--seeds", "0", "--backend", "ray")
    assert "pip install '.[sweep]'" in e
