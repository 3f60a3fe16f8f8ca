"""The Ray backend on a local Ray instance (skipped where Ray is not installed): a run's process killed
mid-way is restarted by the same sweep from its checkpoint and ends with the parameters of an uninterrupted
run; the manifest records both attempts."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

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

pytest.importorskip("ray")
RUN0 = "toy-bandit/fidec/seed0"


def test_ray_sweep_restarts_a_killed_run_from_its_checkpoint(tmp_path):
    out = tmp_path / "sweep"
    proc = subprocess.Popen(
        sweep_cmd(out, "--backend", "ray", "--retries", "1"),
        cwd=ROOT,
        env={**env(), "RAY_DISABLE_USAGE_STATS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )

    def running_past_checkpoint():
        try:
            entry = manifest(out)[RUN0]
        except (FileNotFoundError, ValueError, KeyError):
            return None
        step = checkpoint_step(out / entry["run_dir"])
        return entry["pid"] if entry["state"] == "running" and 0 < step < STEPS else None

    pid = wait_for(running_past_checkpoint, "a checkpoint of seed 0 under Ray", proc=proc)
    os.kill(pid, signal.SIGKILL)
    log = proc.communicate(timeout=HANG_GUARD)[0]
    assert proc.returncode == 0, log[-4000:]
    assert "Ray (local Ray instance" in log
    entry = manifest(out)[RUN0]
    assert entry["state"] == "done" and entry["attempts"] == 2, entry
    assert entry["resumed_from"] > 0
    assert any("killed by SIGKILL" in h.get("note", "") for h in entry["history"]), entry["history"]
    assert manifest(out)["toy-bandit/fidec/seed1"]["state"] == "done"
    assert_same_final_parameters(out / entry["run_dir"], reference_run(out, RUN0, tmp_path))


def test_ctrl_c_stops_ray_runs_after_a_checkpoint(tmp_path):
    """ray.cancel reaches each run's task, which stops its process with SIGTERM: the run saves after its current
    update, the manifest says where, and no run process outlives the sweep."""
    out = tmp_path / "sweep"
    proc = subprocess.Popen(
        sweep_cmd(
            out, "--backend", "ray", "--set", "save_interval=100000"
        ),  # no periodic checkpoint to fall back on
        cwd=ROOT,
        env={**env(), "RAY_DISABLE_USAGE_STATS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )

    def both_running():
        try:
            runs = manifest(out)
        except (FileNotFoundError, ValueError):
            return None
        pids = [e["pid"] for e in runs.values() if e["state"] == "running"]
        return pids if len(pids) == 2 else None

    pids = wait_for(both_running, "both runs to start under Ray", proc=proc)
    proc.send_signal(signal.SIGINT)
    log = proc.communicate(timeout=HANG_GUARD)[0]
    assert proc.returncode == 130, log[-4000:]
    for entry in manifest(out).values():
        assert entry["state"] == "pending" and entry["note"].startswith("interrupted at step"), entry
        assert entry["step"] == checkpoint_step(out / entry["run_dir"]) > 0
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_unreachable_cluster_is_an_error_at_once(tmp_path, capsys):
    from fisher_decorator.cli import main

    code = main(["sweep", "--out", str(tmp_path / "s"), "--agents", "fidec", "--tasks", "toy-bandit", "--seeds", "0"]
                + ["--address", "127.0.0.1:1"])  # fmt: skip
    assert code == 2
    assert "cannot reach the Ray cluster at '127.0.0.1:1'" in capsys.readouterr().err
