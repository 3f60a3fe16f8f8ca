"""Shared pieces of the sweep tests: a tiny toy-bandit sweep on the command line, waiting on files, and the
reference (uninterrupted) run a resumed one must match."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from fisher_decorator.checkpoint import load_checkpoint
from tests.train_helpers import assert_states_equal

ROOT = Path(__file__).resolve().parent.parent
STEPS = 1000
TINY_SETS = [
    "actor_hidden_dims=16,16",
    "value_hidden_dims=16,16",
    "flow_steps=3",
    "num_fisher_samples=2",
    "batch_size=16",
    "eval_episodes=32",
    "tensorboard=false",
]


def sweep_cmd(out: Path, *extra: str, seeds: str = "0-1", agents: str = "fidec", tasks: str = "toy-bandit"):
    cmd = [sys.executable, "-m", "fisher_decorator", "sweep", "--out", str(out), "--agents", agents]
    cmd += ["--tasks", tasks, "--seeds", seeds, "--budget", "small", "--steps", str(STEPS)]
    for item in TINY_SETS:
        cmd += ["--set", item]
    return cmd + ["--no-progress", "--no-report", *extra]


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


# Waits end on the event (the condition, or the process exiting), never on a speed budget: a slow or loaded
# machine only takes longer. HANG_GUARD only stops a genuinely hung test from holding CI for 90 minutes.
HANG_GUARD = 1800.0


def wait_for(predicate, what: str, timeout: float = HANG_GUARD, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the sweep exited ({proc.returncode}) before {what}")
        time.sleep(0.01)
    raise AssertionError(f"no progress in {timeout:.0f} s waiting for {what}: hung")


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())["runs"]


def checkpoint_step(run_dir: Path) -> int:
    try:
        return int(load_checkpoint(run_dir / "checkpoint.pt")["step"])
    except (FileNotFoundError, RuntimeError):
        return 0


def reference_run(out: Path, run_id: str, tmp: Path) -> Path:
    """The run ``run_id`` of the sweep in ``out`` trained straight through, in this process, from the configs
    the sweep gave it (its sweep-run.json)."""
    from fisher_decorator.agents import agent_class
    from fisher_decorator.config import TrainConfig, apply_overrides
    from fisher_decorator.trainer import Trainer

    payload = json.loads((out / manifest(out)[run_id]["run_dir"] / "sweep-run.json").read_text())
    train = apply_overrides(TrainConfig(), payload["train"])
    agent = apply_overrides(agent_class(train.agent).config_class(), payload["agent"])
    threads = torch.get_num_threads()
    try:
        Trainer(train, agent, tmp / "reference").run()
    finally:
        torch.set_num_threads(threads)
    return tmp / "reference"


def assert_same_final_parameters(a: Path, b: Path) -> None:
    ca, cb = load_checkpoint(a / "checkpoint.pt"), load_checkpoint(b / "checkpoint.pt")
    assert ca["step"] == cb["step"] == STEPS
    for part in ("model", "noise_generator"):
        assert_states_equal(ca["agent"][part], cb["agent"][part], part)
    assert_states_equal(ca["agent"]["optimizer"]["state"], cb["agent"]["optimizer"]["state"], "optimizer")
    assert torch.equal(ca["sampler"], cb["sampler"])
