"""Tasks the trainer can run: OGBench single tasks, D4RL AntMaze/Adroit and the built-in ``toy-bandit``.

A task object has ``name``, ``obs_dim`` / ``action_dim`` (known after ``load_data`` for OGBench),
``load_data() -> TaskData`` (train / val dicts of float32 arrays, dataset name, files, manifest),
``evaluate(act, episodes=, seed=, video_episodes=, video_frame_skip=) -> (stats, videos)`` where
``act(obs [N, obs_dim]) -> actions [N, d]``, and ``close()``.
"""

from __future__ import annotations

from fisher_decorator.envs.ogbench_tasks import OGBenchTask, make_env
from fisher_decorator.envs.toy_bandit import ToyBanditTask
from fisher_decorator.presets import parse_task


def make_task(
    task: str,
    *,
    dataset_dir: str | None = None,
    seed: int = 0,
    frame_stack: int | None = None,
    p_aug: float | None = None,
):
    """The task object for ``task``; an unknown name gets an error listing the valid ones. ``frame_stack`` and
    ``p_aug``: pixel tasks only (their data and evaluation env)."""
    info = parse_task(task)
    if (frame_stack is not None or p_aug is not None) and not (
        info.kind == "ogbench" and info.family.startswith("visual-")
    ):
        from fisher_decorator.config import ConfigError

        raise ConfigError(
            f"frame_stack and p_aug are for pixel (visual-*) tasks; {task} has state observations"
        )
    if info.kind == "toy":
        return ToyBanditTask(seed=seed)
    if info.kind == "d4rl":  # imported here: its envs need gymnasium / gymnasium-robotics only when used
        from fisher_decorator.envs.d4rl_tasks import D4RLTask

        return D4RLTask(task, dataset_dir=dataset_dir)
    return OGBenchTask(task, dataset_dir=dataset_dir, frame_stack=frame_stack, p_aug=p_aug)


def make_d4rl_env(task: str, *, render: bool = False, render_size: int = 200):
    """D4RL's evaluation env for ``task`` (gymnasium, step by step, with D4RL's episode limit)."""
    from fisher_decorator.envs.d4rl_tasks import make_d4rl_env as make

    return make(task, render=render, render_size=render_size)


__all__ = ["OGBenchTask", "ToyBanditTask", "make_d4rl_env", "make_env", "make_task"]
