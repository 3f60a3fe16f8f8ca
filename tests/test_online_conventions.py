"""The online loop's transition conventions (the authors' main.py), checked on a scripted environment:
terminals = done, masks = 1 - terminated (a time-out keeps the bootstrap), the reward shift, the reset
seeds of the exploration episodes and the exploration metrics of a finished episode."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fisher_decorator.agents import derive_seed
from fisher_decorator.envs.toy_bandit import ToyBanditTask
from fisher_decorator.logger import read_csv
from fisher_decorator.online import OnlineConfig, reward_shift_for
from fisher_decorator.trainer import Trainer
from tests.train_helpers import tiny_configs

# (length, how it ends) of the scripted episodes, repeated
EPISODES = [(3, "truncated"), (2, "terminated")]


class ScriptedEnv:
    def __init__(self, log: list):
        self.log, self.episode, self.t = log, -1, 0

    def reset(self, *, seed=None):
        self.log.append(seed)
        self.episode, self.t = self.episode + 1, 0
        return np.array([100.0 * self.episode], np.float32), {}

    def step(self, action):
        self.t += 1
        length, end = EPISODES[self.episode % len(EPISODES)]
        last = self.t == length
        terminated, truncated = last and end == "terminated", last and end == "truncated"
        info = {"success": float(terminated), "qpos": np.zeros(3), "nested": {"x": 7}}
        obs = np.array([100.0 * self.episode + self.t], np.float32)
        return obs, 10.0 * self.episode + self.t, terminated, truncated, info


def test_transitions_follow_the_authors_conventions(tmp_path, monkeypatch):
    resets: list = []
    monkeypatch.setattr(ToyBanditTask, "make_env", lambda self: ScriptedEnv(resets), raising=False)
    train_cfg, agent_cfg, record = tiny_configs(
        "fql", steps=2, log_interval=1, eval_interval=0, save_interval=7
    )
    online = OnlineConfig(online_steps=7, reward_shift=-1.0, buffer_size=100, balanced_sampling=True)
    Trainer(train_cfg, agent_cfg, tmp_path, record=record, online=online).run()
    index = json.loads((tmp_path / "replay" / "index.json").read_text())
    (chunk,) = index["chunks"]
    z = np.load(tmp_path / "replay" / chunk["file"])
    # episodes: 3 steps cut by a time-out, 2 steps terminated, then 2 of the next 3-step episode
    assert z["observations"][:, 0].tolist() == [0, 1, 2, 100, 101, 200, 201]
    assert z["next_observations"][:, 0].tolist() == [1, 2, 3, 101, 102, 201, 202]
    assert z["terminals"].tolist() == [0, 0, 1, 0, 1, 0, 0]
    assert z["masks"].tolist() == [1, 1, 1, 1, 0, 1, 1]
    assert z["rewards"].tolist() == [0, 1, 2, 10, 11, 20, 21]  # 10 * episode + t, shifted by -1
    assert resets == [derive_seed(train_cfg.seed, f"online-env/{k}") % (2**31 - 1) for k in range(3)]
    rows = {int(r["step"]): r for r in read_csv(tmp_path / "train.csv")}
    assert "exploration/success" not in rows[4]  # no episode has finished after 2 online steps
    assert rows[5]["exploration/success"] == 0.0 and rows[5]["exploration/episode.length"] == 3.0
    last = rows[9]  # the metrics of the last finished episode (the second), kept while the third runs
    assert last["exploration/success"] == 1.0 and last["exploration/episode.return"] == 11 + 12
    assert last["exploration/episode.final_reward"] == 12 and last["exploration/nested.x"] == 7
    assert last["exploration/total.timesteps"] == 5 and "exploration/qpos" not in last
    summary = json.loads((tmp_path / "summary.json").read_text())["online"]
    assert (summary["env_steps"], summary["episodes"], summary["reward_shift"]) == (7, 2, -1.0)


@pytest.mark.parametrize(
    ("task", "shift"),
    [
        ("antmaze-umaze-v2", -1.0),
        ("antmaze-umaze-diverse-v2", -1.0),
        ("antmaze-medium-play-v2", -1.0),
        ("antmaze-large-diverse-v2", -1.0),
        ("antmaze-large-navigate-singletask-task1-v0", 0.0),  # OGBench's antmaze: no shift
        ("pen-cloned-v1", 0.0),
        ("cube-double-play-singletask-task2-v0", 0.0),
    ],
)
def test_reward_shift_rule_is_the_authors(task, shift):
    assert reward_shift_for(task) == shift
