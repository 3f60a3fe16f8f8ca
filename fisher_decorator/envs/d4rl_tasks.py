"""D4RL AntMaze (``antmaze-*-v2``) and Adroit (``<pen|door|hammer|relocate>-<dataset>-v1``) as trainer tasks.

``make_d4rl_env(task)`` is a gymnasium env with D4RL's episode limit, usable step by step (offline evaluation
here, online fine-tuning elsewhere). ``D4RLTask`` loads the dataset (``load_task_datasets``: the official HDF5
file with the authors' conventions) and evaluates as FQL's ``evaluate`` does: actions clipped to [-1, 1], an
episode's success is the ``success`` flag of its last step, its return the sum of D4RL's rewards.

Scores (``fisher_decorator.presets.score_key``): AntMaze the success rate (D4RL's normalised score with reference
returns 0 and 1 is the same number, since the episode ends with reward 1 at the goal); Adroit D4RL's normalised
return ``(R - R_random) / (R_expert - R_random)`` (``evaluation/normalized_score``; x100 in reports).
"""

from __future__ import annotations

import numpy as np

from fisher_decorator.datasets.registry import D4RL_DATASETS, D4RLAdroit
from fisher_decorator.envs.episodes import EpisodeTask


def d4rl_spec(task: str):
    try:
        return D4RL_DATASETS[task]
    except KeyError:
        raise ValueError(f"unknown D4RL task {task!r}; valid: {', '.join(D4RL_DATASETS)}") from None


def make_d4rl_env(task: str, *, render: bool = False, render_size: int = 200):
    """D4RL's evaluation env for ``task`` (gymnasium API), with D4RL's ``max_episode_steps`` as a ``TimeLimit``."""
    from gymnasium.wrappers import TimeLimit

    spec = d4rl_spec(task)
    kwargs = {"render_mode": "rgb_array", "width": render_size, "height": render_size} if render else {}
    if isinstance(spec, D4RLAdroit):
        from fisher_decorator.envs.d4rl_adroit import D4RLAdroitEnv

        env = D4RLAdroitEnv(spec.env, **kwargs)
    else:
        from fisher_decorator.envs.d4rl_antmaze import D4RLAntMazeEnv, maze_of

        env = D4RLAntMazeEnv(maze_of(task), **kwargs)
    return TimeLimit(env, max_episode_steps=spec.max_episode_steps)


def normalized_score(task: str, episode_return: float) -> float:
    """D4RL's ``get_normalized_score``: ``(R - REF_MIN_SCORE) / (REF_MAX_SCORE - REF_MIN_SCORE)`` (not x100)."""
    spec = d4rl_spec(task)
    return (episode_return - spec.ref_min_score) / (spec.ref_max_score - spec.ref_min_score)


class D4RLTask(EpisodeTask):
    """One D4RL dataset: its transitions and episode-by-episode evaluation in D4RL's env."""

    def __init__(self, task: str, dataset_dir: str | None = None):
        self.spec = d4rl_spec(task)
        self.name = task
        self.dataset_dir = dataset_dir
        self.obs_dim = self.spec.ob_dim
        self.action_dim = self.spec.action_dim
        self._env = None
        self._render_env = None

    def load_data(self):
        from fisher_decorator.datasets import load_task_datasets

        return load_task_datasets(self.name, self.dataset_dir, validate=True)

    def new_env(self, *, render: bool = False):
        return make_d4rl_env(self.name, render=render)

    def extra_stats(self, returns: list[float]) -> dict[str, float]:
        return {"normalized_score": float(np.mean([normalized_score(self.name, r) for r in returns]))}
