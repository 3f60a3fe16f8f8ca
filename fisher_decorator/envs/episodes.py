"""Episode-by-episode evaluation shared by every task with a gymnasium env (OGBench, D4RL), as FQL's
``evaluate`` does it: actions clipped to [-1, 1], an episode's success is the ``success`` flag of its last step,
its return the sum of rewards; pixel tasks stack frames as their training data does."""

from __future__ import annotations

import numpy as np

from fisher_decorator.datasets.visual import FrameStack


class EpisodeTask:
    """Base of the env-backed tasks. A subclass sets ``name`` and defines :meth:`new_env`; it may set
    ``frame_stack`` (pixel tasks) and add per-task numbers in :meth:`extra_stats`."""

    name: str
    frame_stack: int | None = None

    def new_env(self, *, render: bool = False):
        raise NotImplementedError

    def extra_stats(self, returns: list[float]) -> dict[str, float]:
        """Numbers beyond success/return/length computed from the episodes' returns (D4RL's normalised score)."""
        return {}

    def make_env(self):
        """A fresh env for online exploration (the authors' ``env``, apart from the evaluation ``eval_env``)."""
        return self.new_env()

    @property
    def env(self):
        if getattr(self, "_env", None) is None:
            self._env = self.new_env()
        return self._env

    def _run_episode(self, env, act, seed: int, frame_skip: int | None):
        stack = FrameStack(self.frame_stack)  # identity for state tasks (k = 1)
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
        """Mean success / return / length (and :meth:`extra_stats`) over ``episodes`` episodes, plus rendered
        videos (frames) of ``video_episodes`` more."""
        rng = np.random.default_rng(seed)
        success, returns, lengths = [], [], []
        for _ in range(episodes):
            info, ret, length, _ = self._run_episode(self.env, act, int(rng.integers(2**31 - 1)), None)
            success.append(float(info.get("success", 0.0)))
            returns.append(ret)
            lengths.append(length)
        videos = []
        if video_episodes > 0:
            if getattr(self, "_render_env", None) is None:
                self._render_env = self.new_env(render=True)
            for _ in range(video_episodes):
                _, _, _, frames = self._run_episode(
                    self._render_env, act, int(rng.integers(2**31 - 1)), video_frame_skip
                )
                videos.append(np.stack(frames))
        stats = {
            "success": float(np.mean(success)),
            "episode.return": float(np.mean(returns)),
            "episode.length": float(np.mean(lengths)),
            **self.extra_stats(returns),
        }
        return stats, videos

    def close(self) -> None:
        for env in (getattr(self, "_env", None), getattr(self, "_render_env", None)):
            if env is not None:
                env.close()
        self._env = self._render_env = None
