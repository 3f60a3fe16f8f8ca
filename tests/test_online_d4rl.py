"""Online fine-tuning on the D4RL tasks (small synthetic D4RL files, as tests/test_d4rl_tasks.py makes them): the
exploration env is D4RL's, AntMaze rewards are shifted by -1 as in the authors' main.py (the offline data is
shifted by the loader), Adroit episodes log D4RL's normalised return."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fisher_decorator.cli import main
from fisher_decorator.datasets.registry import D4RL_DATASETS

TINY = ["--set", "actor_hidden_dims=16,16", "--set", "value_hidden_dims=16,16", "--set", "flow_steps=3"]
TINY += ["--set", "batch_size=8", "--set", "tensorboard=false", "--no-progress", "--no-plot"]


def _online(tmp_path, task: str, agent: str, online_steps: int) -> tuple[dict, dict]:
    out = tmp_path / "run"
    argv = ["train", "--agent", agent, "--task", task, "--dataset-dir", str(tmp_path), "--out", str(out)]
    argv += [
        "--steps",
        "2",
        "--online-steps",
        str(online_steps),
        "--eval-interval",
        "0",
        "--log-interval",
        "1",
    ]
    assert main([*argv, "--buffer-size", "1000", *TINY]) == 0
    index = json.loads((out / "replay" / "index.json").read_text())
    parts = [np.load(out / "replay" / c["file"]) for c in index["chunks"]]
    stored = {k: np.concatenate([p[k] for p in parts]) for k in parts[0].files}
    return stored, json.loads((out / "summary.json").read_text())["online"]


def test_antmaze_online_rewards_are_shifted_like_the_data(tmp_path):
    pytest.importorskip("mujoco")
    from fisher_decorator.envs import make_d4rl_env
    from tests.test_d4rl_tasks import _antmaze_file

    task = "antmaze-large-diverse-v2"
    _antmaze_file(tmp_path / D4RL_DATASETS[task].official_file)
    stored, online = _online(tmp_path, task, "fidec", 4)
    assert online["reward_shift"] == -1.0 and online["env_steps"] == 4
    env = make_d4rl_env(task)
    from fisher_decorator.agents import derive_seed

    env.reset(seed=derive_seed(0, "online-env/0") % (2**31 - 1))
    for t in range(4):  # D4RL's env, replayed: reward 0 away from the goal, stored as -1
        obs, reward, terminated, truncated, _ = env.step(stored["actions"][t].copy())
        assert np.array_equal(stored["next_observations"][t], np.asarray(obs, np.float32))
        assert stored["rewards"][t] == np.float32(reward - 1.0) and not (terminated or truncated)
    assert (stored["masks"] == 1).all() and (stored["terminals"] == 0).all()


def test_adroit_episode_logs_d4rls_normalised_return(tmp_path):
    pytest.importorskip("gymnasium_robotics")
    from fisher_decorator.envs.d4rl_tasks import normalized_score
    from fisher_decorator.logger import read_csv
    from tests.test_d4rl_envs import _adroit_file

    _adroit_file(tmp_path / "pen-cloned-v1.hdf5", "pen", steps=30)
    stored, online = _online(tmp_path, "pen-cloned-v1", "fql", 100)  # D4RL ends a pen episode at 100 steps
    assert online["reward_shift"] == 0.0 and online["episodes"] >= 1
    rows = read_csv(tmp_path / "run" / "train.csv")
    row = next(r for r in rows if "exploration/episode.return" in r)
    expected = 100 * normalized_score("pen-cloned-v1", row["exploration/episode.return"])
    assert row["exploration/episode.normalized_return"] == pytest.approx(expected, rel=1e-12)
