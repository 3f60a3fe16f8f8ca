"""OGBench single-task environments: the evaluation env and the datasets, as FQL uses them.

The env is OGBench's own (``ogbench.make_env_and_datasets(task, env_only=True)``; gymnasium 1.x
needs ``disable_env_checker=True``). An episode's success is the ``success`` flag of its last step,
its return the sum of rewards (FQL's ``EpisodeMonitor`` / ``evaluate``). The datasets come from
``fisher_decorator.datasets.load_task_datasets`` (validated on load; a missing file names the
directory searched and the command that makes it).
"""

from __future__ import annotations

import os
import warnings

from fisher_decorator.datasets.visual import before_rendering, set_visual_options
from fisher_decorator.envs.episodes import EpisodeTask


def _quiet_imports():
    # glfw warns about a missing X11 display although rendering goes through EGL/OSMesa or not at all.
    warnings.filterwarnings("ignore", message=".*DISPLAY environment variable.*")
    warnings.filterwarnings("ignore", message=".*precision lowered by casting.*")
    warnings.filterwarnings("ignore", message=".*is being initialised with render_mode.*")


def make_env(task: str, *, render: bool = False, render_size: int = 200):
    """OGBench's evaluation env for ``task`` (e.g. ``cube-single-play-singletask-task2-v0``)."""
    _quiet_imports()
    if render:
        os.environ.setdefault("MUJOCO_GL", "egl")
    try:
        import ogbench
    except ImportError as exc:  # pragma: no cover - ogbench is a declared dependency of [envs]
        raise ImportError(
            "OGBench tasks need the ogbench package: pip install 'fisher-decorator[envs]'"
        ) from exc
    if task.startswith("visual-"):
        before_rendering()
    kwargs = {"disable_env_checker": True}
    if render:
        kwargs.update(render_mode="rgb_array", width=render_size, height=render_size)
    return ogbench.make_env_and_datasets(task, env_only=True, **kwargs)


class OGBenchTask(EpisodeTask):
    """One OGBench single task: its datasets and episode-by-episode evaluation (:class:`EpisodeTask`)."""

    def __init__(
        self,
        task: str,
        dataset_dir: str | None = None,
        frame_stack: int | None = None,
        p_aug: float | None = None,
    ):
        _quiet_imports()
        self.name = task
        self.dataset_dir = dataset_dir
        self.frame_stack, self.p_aug = frame_stack, p_aug  # pixel tasks (datasets.visual)
        self._env = None
        self._render_env = None
        self.obs_dim: int | None = None
        self.action_dim: int | None = None

    def load_data(self):
        from fisher_decorator.datasets import load_task_datasets

        data = load_task_datasets(self.name, self.dataset_dir, validate=True)
        set_visual_options(data, self.frame_stack, self.p_aug)
        self.obs_dim = int(data.train["observations"].shape[-1])
        self.action_dim = int(data.train["actions"].shape[-1])
        return data

    def new_env(self, *, render: bool = False):
        return make_env(self.name, render=render)
