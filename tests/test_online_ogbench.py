"""Online fine-tuning on an OGBench task (a tiny dataset made by ``fidec data generate``): the stored
transitions are the exploration env's own, and a resumed run restarts the episode that was in progress
from a reset (the documented difference from an uninterrupted run)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fisher_decorator.agents import derive_seed
from fisher_decorator.cli import main
from fisher_decorator.logger import read_csv

pytest.importorskip("ogbench")
pytestmark = [
    pytest.mark.filterwarnings("ignore:.*precision lowered by casting:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*DISPLAY environment variable"),
]
TASK = "cube-single-play-singletask-task2-v0"
SMALL = [
    *("--set", "actor_hidden_dims=32,32", "--set", "value_hidden_dims=32,32", "--set", "batch_size=16"),
    *("--set", "num_fisher_samples=2", "--set", "eval_at_start=false", "--set", "tensorboard=false"),
]


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("ogbench-data")
    code = main(
        ["data", "generate", "cube-single-play-v0", "--episodes", "2", "--val-episodes", "1"]
        + ["--max-episode-steps", "101", "--workers", "1", "--dataset-dir", str(d), "--quiet"]
    )
    assert code in (0, None)
    return d


def _stored(run: Path) -> dict[str, np.ndarray]:
    index = json.loads((run / "replay" / "index.json").read_text())
    parts = [np.load(run / "replay" / c["file"]) for c in index["chunks"]]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0].files}


def _reset_obs(episode: int, seed: int = 0) -> np.ndarray:
    from fisher_decorator.envs import make_env

    env = make_env(TASK)
    obs, _ = env.reset(seed=derive_seed(seed, f"online-env/{episode}") % (2**31 - 1))
    return env, np.asarray(obs, np.float32)


def _train(out: Path, dataset_dir: Path, *extra: str) -> int:
    args = ["train", "--agent", "fidec", "--task", TASK, "--dataset-dir", str(dataset_dir), "--out", str(out)]
    args += ["--eval-episodes", "1", "--log-interval", "3", "--no-progress", *SMALL]
    return main([*args, *extra])


def test_online_run_on_ogbench_stores_the_envs_transitions(tmp_path, dataset_dir):
    out = tmp_path / "run"
    assert _train(out, dataset_dir, "--steps", "2", "--eval-interval", "0", "--online-steps", "6") == 0
    summary = json.loads((out / "summary.json").read_text())["online"]
    assert (summary["env_steps"], summary["episodes"], summary["reward_shift"]) == (6, 0, 0.0)
    assert read_csv(out / "train.csv")[-1]["step"] == 8
    z = _stored(out)
    env, first = _reset_obs(0)
    assert np.array_equal(z["observations"][0], first)
    for t in range(6):  # the same actions in a fresh env from the same reset: the same transitions
        obs, reward, terminated, truncated, _ = env.step(z["actions"][t].copy())
        assert np.array_equal(z["next_observations"][t], np.asarray(obs, np.float32))
        assert z["rewards"][t] == np.float32(reward) and not (terminated or truncated)
    assert np.array_equal(z["observations"][1:], z["next_observations"][:-1])
    assert (z["terminals"] == 0).all() and (z["masks"] == 1).all()
    # fine-tuning that run's checkpoint again, from the CLI, with balanced sampling
    tuned = tmp_path / "tuned"
    args = ["finetune", "--run", str(out), "--out", str(tuned), "--online-steps", "3", "--balanced-sampling"]
    assert main([*args, "--no-progress", "--eval-interval", "0"]) == 0
    assert json.loads((tuned / "config.json").read_text())["restored_from"]["step"] == 8
    assert len(_stored(tuned)["actions"]) == 3


def test_a_resumed_online_run_restarts_the_cut_episode_from_a_reset(tmp_path, dataset_dir, monkeypatch):
    from fisher_decorator.trainer import Trainer

    monkeypatch.setenv("FIDEC_DEBUG", "1")  # the crash reaches the test instead of becoming an exit status
    out = tmp_path / "run"
    real = Trainer.end_step

    class Crash(RuntimeError):
        pass

    def crash(self, step, row, dt):
        real(self, step, row, dt)
        if step == 6:  # online step 4: one past the checkpoint at online step 3, mid-episode
            raise Crash

    args = ["--steps", "2", "--eval-interval", "0", "--save-interval", "3", "--online-steps", "6"]
    monkeypatch.setattr(Trainer, "end_step", crash)
    with pytest.raises(Crash):
        _train(out, dataset_dir, *args)
    monkeypatch.setattr(Trainer, "end_step", real)
    assert _train(out, dataset_dir, "--resume") == 0
    z = _stored(out)
    assert len(z["actions"]) == 6  # 3 before the checkpoint at online step 3, then 3 after the resume
    _, first = _reset_obs(0)
    _, second = _reset_obs(1)
    assert np.array_equal(z["observations"][0], first)
    assert np.array_equal(z["observations"][3], second)  # a new episode (index 1), not the cut one continued
    assert not np.array_equal(z["observations"][3], z["next_observations"][2])
    assert z["terminals"][2] == 0  # the cut episode's last stored transition is not marked done
    summary = json.loads((out / "summary.json").read_text())["online"]
    assert summary["env_steps"] == 6 and summary["episodes"] == 0
