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

import numpy as np

from fisher_decorator.datasets.visual import FrameStack, before_rendering, set_visual_options


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


class OGBenchTask:
    """One OGBench single task: its datasets and episode-by-episode evaluation."""

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

    def make_env(self):
        """A fresh env for online exploration (the authors' ``env``, apart from the evaluation ``eval_env``)."""
        return make_env(self.name)

    @property
    def env(self):
        if self._env is None:
            self._env = make_env(self.name)
        return self._env

    def _run_episode(self, env, act, seed: int, frame_skip: int | None):
        stack = FrameStack(self.frame_stack)  # pixel tasks: frames stacked as in the training data
        obs, info = env.reset(seed=seed)
        obs = stack.reset(obs)
        done, ret, length, frames = False, 0.0, 0, []
        while not done:
            action = np.clip(np.asarray(act(np.asarray(obs, dtype=np.float32)[None]))[0], -1.0, 1.0)
            obs, reward, terminated, truncated, info = env.step(action)
            obs = stack.step(obs)
            done = terminated or truncated
            ret += float(reward)
            length += 1
            if frame_skip is not None and (length % frame_skip == 0 or done):
                frames.append(np.asarray(env.render()).copy())
        return info, ret, length, frames

    def evaluate(self, act, *, episodes: int, seed: int, video_episodes: int = 0, video_frame_skip: int = 3):
        """Mean success / return / length over ``episodes`` episodes, plus rendered videos (frames)."""
        rng = np.random.default_rng(seed)
        success, returns, lengths = [], [], []
        for _ in range(episodes):
            info, ret, length, _ = self._run_episode(self.env, act, int(rng.integers(2**31 - 1)), None)
            success.append(float(info.get("success", 0.0)))
            returns.append(ret)
            lengths.append(length)
        videos = []
        if video_episodes > 0:
            if self._render_env is None:
                self._render_env = make_env(self.name, render=True)
            for _ in range(video_episodes):
                _, _, _, frames = self._run_episode(
                    self._render_env, act, int(rng.integers(2**31 - 1)), video_frame_skip
                )
                videos.append(np.stack(frames))
        stats = {
            "success": float(np.mean(success)),
            "episode.return": float(np.mean(returns)),
            "episode.length": float(np.mean(lengths)),
        }
        return stats, videos

    def close(self) -> None:
        for env in (self._env, self._render_env):
            if env is not None:
                env.close()
        self._env = self._render_env = None
