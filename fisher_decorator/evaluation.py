"""Evaluation of an agent on a task, the paper's final score, and video files.

Evaluations are seeded by (run seed, step) only, so an evaluation gives the same numbers whether
the run went straight through or was resumed, and never touches the training random streams.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

from fisher_decorator.agents.base import FlowAgent, derive_seed


def make_actor(
    agent: FlowAgent, *, seed: int, mode: str = "default", num_samples: int = 10, refine_steps: int = 5
):
    """``act(obs [N, obs_dim] ndarray) -> actions [N, d] ndarray`` with its own noise generator."""
    generator = torch.Generator(device=agent.device).manual_seed(seed)
    kwargs = {}
    if mode == "best_of_n":
        kwargs["num_samples"] = num_samples
    elif mode == "iterative":
        kwargs["num_refine_steps"] = refine_steps

    def act(obs: np.ndarray) -> np.ndarray:
        o = torch.as_tensor(np.asarray(obs), device=agent.device, dtype=agent.dtype)
        return agent.sample_actions(o, generator=generator, mode=mode, **kwargs).cpu().numpy()

    return act


def evaluate_agent(
    agent: FlowAgent,
    task,
    *,
    episodes: int,
    seed: int,
    step: int,
    mode: str = "default",
    num_samples: int = 10,
    refine_steps: int = 5,
    video_episodes: int = 0,
    video_frame_skip: int = 3,
) -> tuple[dict[str, float], list[np.ndarray]]:
    """``episodes`` episodes of ``task``; returns (stats, videos [T, H, W, 3] uint8 each)."""
    act = make_actor(
        agent,
        seed=derive_seed(seed, f"eval-actions/{step}"),
        mode=mode,
        num_samples=num_samples,
        refine_steps=refine_steps,
    )
    return task.evaluate(
        act,
        episodes=episodes,
        seed=derive_seed(seed, f"eval-env/{step}") % (2**31 - 1),
        video_episodes=video_episodes,
        video_frame_skip=video_frame_skip,
    )


def final_score(history: list[dict[str, float]], score_steps, key: str = "evaluation/success") -> dict:
    """The paper's score: mean of ``key`` over the evaluations at ``score_steps``.

    With no ``score_steps`` the last evaluation is the score. Steps that were not evaluated are
    listed as missing and the score is None (never a partial average passed off as the score).
    Returns ``score, score_key, score_steps, score_values, missing_score_steps``.
    """
    by_step = {int(row["step"]): row for row in history if key in row}
    steps = list(score_steps) if score_steps else ([max(by_step)] if by_step else [])
    missing = [s for s in steps if s not in by_step]
    values = [float(by_step[s][key]) for s in steps if s in by_step]
    score = float(np.mean(values)) if values and not missing else None
    return {
        "score": score,
        "score_key": key,
        "score_steps": steps,
        "score_values": values,
        "missing_score_steps": missing,
    }


def save_videos(
    videos: list[np.ndarray], directory: str | os.PathLike, step: int, fps: int = 15
) -> list[Path]:
    """Each video as an animated GIF ``step{step}_ep{i}.gif`` (needs Pillow)."""
    from PIL import Image

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, frames in enumerate(videos):
        images = [Image.fromarray(np.asarray(f, dtype=np.uint8)) for f in frames]
        path = directory / f"step{step}_ep{i}.gif"
        images[0].save(
            path, save_all=True, append_images=images[1:], duration=max(1, math.floor(1000 / fps)), loop=0
        )
        paths.append(path)
    return paths
