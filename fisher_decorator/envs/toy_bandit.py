"""``toy-bandit``: a one-step offline bandit that shows what the Fisher metric is for.

One state, 2-D actions. The behaviour policy is a Gaussian that is wide along the first action
axis and narrow along the second; the reward ``1 + a_0 + a_1`` pays for moving along both equally.
An isotropic budget (DeFlow's ``mean ||r||^2 / d``) spends it equally along both axes and so leaves
the data along the narrow one; FiDec's Fisher metric makes the narrow direction expensive and the
wide one cheap, so at the same budget it moves further along the wide axis and stays inside the
data along the narrow one.

Every episode is one step (online mode: :class:`ToyBanditEnv`): ``reset() -> obs``, ``step(a)`` ends the episode with reward ``1 + a_0 + a_1`` (the offset keeps
Q away from 0, where ``normalize_q_loss``'s ``1 / mean|Q|`` would blow up).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

OBS_DIM = 1
ACTION_DIM = 2
#: behaviour mean and per-axis std (axis 0 wide, axis 1 narrow)
BEHAVIOUR_MEAN = np.array([-0.2, 0.0])
BEHAVIOUR_STD = np.array([0.3, 0.05])
REWARD_DIRECTION = np.array([1.0, 1.0])
SUPPORT_RADIUS = 3.0  # Mahalanobis radius of "inside the data"
DATASET_SIZE = 20_000
VAL_SIZE = 2_000


def observation(n: int) -> np.ndarray:
    """The single state, [n, 1] (a constant 1, so the networks see a non-zero input)."""
    return np.ones((n, OBS_DIM), dtype=np.float32)


def reward(actions: np.ndarray) -> np.ndarray:
    """``1 + a_0 + a_1`` per action, actions [n, 2] -> [n]."""
    return 1.0 + np.asarray(actions, dtype=np.float64) @ REWARD_DIRECTION


def mahalanobis(actions: np.ndarray) -> np.ndarray:
    z = (np.asarray(actions, dtype=np.float64) - BEHAVIOUR_MEAN) / BEHAVIOUR_STD
    return np.sqrt((z**2).sum(-1))


def behaviour_actions(n: int, rng: np.random.Generator) -> np.ndarray:
    a = BEHAVIOUR_MEAN + BEHAVIOUR_STD * rng.standard_normal((n, ACTION_DIM))
    return np.clip(a, -1.0, 1.0).astype(np.float32)


def make_dataset(n: int, seed: int) -> dict[str, np.ndarray]:
    """n one-step transitions in the OGBench/FQL layout (terminal, mask 0, next obs = obs)."""
    rng = np.random.default_rng(seed)
    actions = behaviour_actions(n, rng)
    obs = observation(n)
    return {
        "observations": obs,
        "actions": actions,
        "rewards": reward(actions).astype(np.float32),
        "terminals": np.ones(n, dtype=np.float32),
        "masks": np.zeros(n, dtype=np.float32),
        "next_observations": obs.copy(),
    }


@dataclass
class ToyData:
    """The toy task's data, with the fields of ``fisher_decorator.datasets.TaskData``."""

    train: dict[str, np.ndarray]
    val: dict[str, np.ndarray] | None
    dataset_name: str = "toy-bandit"
    files: list = field(default_factory=list)
    manifest: dict[str, Any] | None = None


def action_stats(actions: np.ndarray) -> dict[str, float]:
    """Where actions lie relative to the behaviour: shift along each axis (in stds), support, reward."""
    a = np.asarray(actions, dtype=np.float64)
    shift = (a - BEHAVIOUR_MEAN).mean(0)
    behaviour_reward = float(reward(BEHAVIOUR_MEAN[None])[0])
    inside = mahalanobis(a) <= SUPPORT_RADIUS
    r = reward(a)
    return {
        "return": float(r.mean()),
        "success": float((inside & (r > behaviour_reward)).mean()),
        "in_support": float(inside.mean()),
        "shift_wide": float(shift[0]),
        "shift_narrow": float(shift[1]),
        "shift_wide_std": float(shift[0] / BEHAVIOUR_STD[0]),
        "shift_narrow_std": float(shift[1] / BEHAVIOUR_STD[1]),
    }


class ToyBanditEnv:
    """The bandit as a one-step environment (online mode): ``reset`` gives the single state, ``step(a)``
    pays ``1 + a_0 + a_1`` and ends the episode (``terminated``; next state = state, as in the dataset)."""

    def reset(self, *, seed: int | None = None) -> tuple[np.ndarray, dict]:
        return observation(1)[0], {}

    def step(self, action) -> tuple[np.ndarray, float, bool, bool, dict]:
        a = np.clip(np.asarray(action, dtype=np.float64).reshape(1, ACTION_DIM), -1.0, 1.0)
        stats = action_stats(a)
        return observation(1)[0], float(reward(a)[0]), True, False, {"success": stats["success"]}

    def close(self) -> None:
        pass


class ToyBanditTask:
    """The ``toy-bandit`` task: data and a vectorised evaluation (all episodes in one batch)."""

    name = "toy-bandit"
    obs_dim = OBS_DIM
    action_dim = ACTION_DIM

    def __init__(self, seed: int = 0):
        self.seed = seed

    def load_data(self) -> ToyData:
        manifest = {
            "dataset": "toy-bandit",
            "behaviour_mean": BEHAVIOUR_MEAN.tolist(),
            "behaviour_std": BEHAVIOUR_STD.tolist(),
            "reward": "1 + a_0 + a_1",
            "transitions": DATASET_SIZE,
            "val_transitions": VAL_SIZE,
            "seed": 12345,
        }
        # The data are fixed (seed 12345), like a dataset file: the run's seed changes the agent only.
        return ToyData(
            train=make_dataset(DATASET_SIZE, 12345), val=make_dataset(VAL_SIZE, 54321), manifest=manifest
        )

    def make_env(self) -> ToyBanditEnv:
        """A step-by-step environment for online fine-tuning (``reset`` / ``step``, gymnasium's signatures)."""
        return ToyBanditEnv()

    def evaluate(self, act, *, episodes: int, seed: int, video_episodes: int = 0, video_frame_skip: int = 3):
        """``episodes`` one-step episodes in one batch; stats as ``evaluation/...`` keys, no videos."""
        actions = np.clip(np.asarray(act(observation(episodes))), -1.0, 1.0)
        stats = action_stats(actions)
        stats["episode.return"] = stats.pop("return")
        stats["episode.length"] = 1.0
        return stats, []

    def close(self) -> None:
        pass
