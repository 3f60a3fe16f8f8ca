"""Checkpoints and resume: a run killed after a checkpoint and resumed ends with the same
parameters, optimizer state, RNG streams and logs as an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fisher_decorator.checkpoint import atomic_write, load_checkpoint, save_checkpoint
from fisher_decorator.logger import read_csv
from fisher_decorator.trainer import CHECKPOINT
from tests.sweep_helpers import HANG_GUARD
from tests.train_helpers import assert_states_equal, full_state, run_tiny

ROOT = Path(__file__).resolve().parent.parent


class Crash(RuntimeError):
    pass


def _strip_time(rows):
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


@pytest.mark.parametrize("agent", ["fidec", "deflow", "fql"])
def test_resume_after_a_crash_is_identical_to_a_straight_run(tmp_path, agent):
    N = 10
    straight, _ = run_tiny(tmp_path / "straight", agent, steps=2 * N, save_interval=N)

    def crash(step, trainer):
        if step == N + 6:  # after the checkpoint at N, with 6 steps (and a log row, at N + 5) past it
            raise Crash

    with pytest.raises(Crash):
        run_tiny(tmp_path / "crashed", agent, steps=2 * N, save_interval=N, callback=crash)
    assert load_checkpoint(tmp_path / "crashed" / CHECKPOINT)["step"] == N
    assert read_csv(tmp_path / "crashed" / "train.csv")[-1]["step"] == N + 5  # logs ran past the checkpoint
    resumed, summary = run_tiny(tmp_path / "crashed", agent, steps=2 * N, save_interval=N, resume=True)
    assert summary["steps"] == 2 * N
    assert_states_equal(full_state(straight), full_state(resumed))
    for name in ("train.csv", "eval.csv"):
        a, b = read_csv(tmp_path / "straight" / name), read_csv(tmp_path / "crashed" / name)
        assert [r["step"] for r in a] == [r["step"] for r in b], name
        assert _strip_time(a) == _strip_time(b), name
    if agent == "fidec":  # TensorBoard: the events past the checkpoint were purged on resume
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        acc = EventAccumulator(str(tmp_path / "crashed" / "tensorboard"))
        acc.Reload()
        assert [e.step for e in acc.Scalars("critic/critic_loss")] == [5, 10, 15, 20]


def test_resume_can_extend_a_finished_run(tmp_path):
    straight, _ = run_tiny(tmp_path / "a", "deflow", steps=20, save_interval=10)
    run_tiny(tmp_path / "b", "deflow", steps=10, save_interval=10)
    extended, _ = run_tiny(tmp_path / "b", "deflow", steps=20, save_interval=10, resume=True)
    assert_states_equal(full_state(straight), full_state(extended))


def test_resume_refuses_a_changed_config_and_fresh_runs_refuse_a_used_dir(tmp_path):
    from fisher_decorator.config import ConfigError

    run_tiny(tmp_path / "r", "fidec", steps=10, save_interval=10)
    with pytest.raises(FileExistsError, match="--resume"):
        run_tiny(tmp_path / "r", "fidec", steps=10)
    with pytest.raises(ConfigError, match="batch_size"):
        run_tiny(tmp_path / "r", "fidec", steps=20, batch_size=8, resume=True)
    with pytest.raises(FileNotFoundError, match="no checkpoint.pt"):
        run_tiny(tmp_path / "nothing", "fidec", resume=True)


def test_checkpoint_writes_are_atomic(tmp_path):
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"step": 1, "w": torch.ones(3)})
    with pytest.raises(Crash):
        with atomic_write(path) as f:
            f.write(b"half a checkpoint")
            raise Crash
    assert load_checkpoint(path)["step"] == 1  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]  # no temporary left behind
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "bad.pt")


def _cli(out, steps, *extra):
    return [
        sys.executable,
        "-m",
        "fisher_decorator",
        "train",
        "--agent",
        "fidec",
        "--task",
        "toy-bandit",
        "--out",
        str(out),
        "--steps",
        str(steps),
        "--save-interval",
        "10",
        "--log-interval",
        "10",
        "--eval-interval",
        "0",
        "--threads",
        "1",
        "--no-progress",
        "--no-plot",
        "--set",
        "actor_hidden_dims=16,16",
        "--set",
        "value_hidden_dims=16,16",
        "--set",
        "batch_size=16",
        "--set",
        "num_fisher_samples=2",
        "--set",
        "tensorboard=false",
        *extra,
    ]


def test_sigkill_then_resume_matches_a_straight_run(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    steps = 200
    straight = subprocess.run(
        _cli(tmp_path / "straight", steps), cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert straight.returncode == 0, straight.stderr[-2000:]
    proc = subprocess.Popen(
        _cli(tmp_path / "killed", steps),
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ckpt = tmp_path / "killed" / CHECKPOINT
    deadline = time.time() + HANG_GUARD  # the event is the checkpoint (or the run's exit), not a time budget
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = load_checkpoint(ckpt)["step"]
    assert 0 < killed_at < steps
    resumed = subprocess.run(
        _cli(tmp_path / "killed", steps, "--resume"), cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = load_checkpoint(tmp_path / "straight" / CHECKPOINT)
    b = load_checkpoint(ckpt)
    assert a["step"] == b["step"] == steps
    for part in ("model", "noise_generator"):
        assert_states_equal(a["agent"][part], b["agent"][part], part)
    assert_states_equal(a["agent"]["optimizer"]["state"], b["agent"]["optimizer"]["state"], "optimizer")
    assert torch.equal(a["sampler"], b["sampler"])


def test_a_resumed_run_keeps_the_gemm_path_it_started_with(tmp_path, monkeypatch):
    """gemm_path=auto: a resumed process takes the choice recorded in config.json, not a new probe's (which may
    differ on a loaded machine and would change the last bits of every update)."""
    import json

    from fisher_decorator import gemm_path

    def choose(path: str) -> None:
        choice = {dt: dict.fromkeys(gemm_path.OPS, path) for dt in gemm_path.DTYPES}
        monkeypatch.setenv(gemm_path.CHOICE_ENV, json.dumps(choice))
        gemm_path._state.update(setting=None, choice=None)  # a fresh process

    saved = dict(gemm_path._state)
    try:
        choose("mkl")
        run_tiny(tmp_path / "r", "fql", steps=4, save_interval=4, eval_interval=0, tensorboard=False)
        choose("onednn" if gemm_path.onednn_available() else "mkl")
        trainer, _ = run_tiny(
            tmp_path / "r", "fql", resume=True, steps=6, save_interval=2, eval_interval=0, tensorboard=False
        )
        assert gemm_path.path_for(torch.float32) == "mkl"
        recorded = json.loads((tmp_path / "r" / "config.json").read_text())["environment"]["gemm_path"]
        assert recorded["choice"]["float32"]["linear"] == "mkl"
    finally:
        gemm_path._state.update(saved)
