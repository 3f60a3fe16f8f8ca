"""Throughput of the offline generators and summary statistics of a dataset (``fidec data bench`` / ``info``)."""

from __future__ import annotations

import os
import statistics
import time

import numpy as np

from fisher_decorator.datasets.generation import EpisodeCollector, episode_seeds, make_plan


def measure_throughput(
    dataset: str, episodes: int = 3, max_episode_steps: int | None = None, seed: int = 12345, repeats: int = 2
) -> dict:
    """Episodes/s of one worker (this process) generating ``dataset`` at its official episode length.

    Environment construction is timed separately (a worker pays it once). The ``episodes`` episodes are rolled out
    ``repeats`` times (different episodes each time), so a disturbance by other jobs on the machine shows up as a
    spread between repeats rather than as one silently slow number.
    """
    plan = make_plan(dataset, episodes=episodes, max_episode_steps=max_episode_steps, seed=seed)
    t0 = time.perf_counter()
    collector = EpisodeCollector(plan.recipe, plan.max_episode_steps)
    make_seconds = time.perf_counter() - t0
    collector.collect(episode_seeds(seed, 10**6))  # warm-up: first-call allocations, caches
    rates, steps = [], 0
    for r in range(repeats):
        t0 = time.perf_counter()
        for i in range(episodes):
            arrays, _ = collector.collect(episode_seeds(seed, r * episodes + i))
            steps += arrays["terminals"].shape[0]
        rates.append(episodes / (time.perf_counter() - t0))
    return {
        "dataset": dataset,
        "max_episode_steps": plan.max_episode_steps,
        "episodes_per_repeat": episodes,
        "repeats": repeats,
        "episodes_per_s_per_worker": [round(x, 4) for x in rates],
        "episodes_per_s_median": round(statistics.median(rates), 4),
        "env_steps_per_s_median": round(statistics.median(rates) * plan.max_episode_steps, 1),
        "env_make_seconds": round(make_seconds, 3),
        "official_episodes": plan.recipe.num_episodes + plan.recipe.num_val_episodes,
        "projected_hours_1_worker": round(
            (plan.recipe.num_episodes + plan.recipe.num_val_episodes) / statistics.median(rates) / 3600, 3
        ),
    }


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def action_statistics(actions: np.ndarray) -> dict:
    """Per-dimension mean and std of ``actions [N, d]`` (float64 accumulation), plus the fraction at +-1."""
    a = np.asarray(actions, dtype=np.float64)
    return {
        "n": int(a.shape[0]),
        "mean": [round(float(x), 5) for x in a.mean(axis=0)],
        "std": [round(float(x), 5) for x in a.std(axis=0)],
        "frac_at_bound": [round(float(x), 5) for x in (np.abs(a) >= 1 - 1e-4).mean(axis=0)],
    }
