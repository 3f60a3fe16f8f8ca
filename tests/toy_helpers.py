"""The toy-bandit task's scores written out from its definition (not fisher_decorator.envs.toy_bandit), so
tests can check logged and printed evaluation numbers against an independent computation; the toy figure's
content against the agents' checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fisher_decorator.envs.toy_bandit import make_dataset
from fisher_decorator.trainer import load_agent
from tests.plot_helpers import legend_labels, scatters, visible_axes


def toy_scores(actions) -> tuple[float, float, float]:
    """(success, in_support, mean return) of toy-bandit actions [n, 2]: inside = Mahalanobis distance to
    N([-0.2, 0], diag(0.3, 0.05)^2) <= 3, reward 1 + a_0 + a_1, success = inside and reward above the
    behaviour mean's (0.8)."""
    a = np.clip(np.asarray(actions, dtype=np.float64), -1.0, 1.0)
    inside = np.sqrt((((a - [-0.2, 0.0]) / [0.3, 0.05]) ** 2).sum(-1)) <= 3.0
    reward = 1.0 + a.sum(-1)
    return float((inside & (reward > 0.8)).mean()), float(inside.mean()), float(reward.mean())


def check_toy_figure(fig, runs: dict, *, step: int, n: int = 1000):
    """One panel per agent: the behaviour data, the agent's flow samples a_b = euler(s, z) and refined actions
    clip(a_b + r(s, a_b)) for z ~ N(0, I) drawn with seed 0 (recomputed here from the checkpoint), the support."""
    axes = visible_axes(fig)
    assert len(axes) == len(runs)
    data = make_dataset(n, seed=12345)["actions"]
    for ax, (name, run) in zip(axes, runs.items()):
        agent = load_agent(run)[0]
        z = torch.randn(n, 2, generator=torch.Generator().manual_seed(0))
        obs = torch.ones(n, 1)
        with torch.no_grad():
            base = agent.flow_actions(obs, z)
            refined = (base + agent.residual(obs, base)).clamp(-1, 1)
        pts = [c.get_offsets() for c in scatters(ax)]
        assert len(pts) == 3
        np.testing.assert_array_equal(pts[0], data)
        np.testing.assert_array_equal(pts[1], base.numpy())
        np.testing.assert_array_equal(pts[2], refined.numpy())
        _, in_support, ret = toy_scores(refined.numpy())
        title = ax.get_title()
        assert title.startswith(f"{name}, step {step}\n"), title
        assert f"inside the data: {in_support:.0%}, mean reward {ret:.3f}" in title, title
        assert legend_labels(ax) == [
            "behaviour data",
            "flow samples a_b",
            f"{name}: a_b + r",
            "data support (3 std)",
        ]
        (ellipse,) = ax.patches
        assert tuple(ellipse.center) == (-0.2, 0.0)
        assert (ellipse.width, ellipse.height) == pytest.approx((1.8, 0.3), rel=1e-12)
        assert (ax.get_xlabel(), ax.get_ylabel()) == ("a_0 (wide axis)", "a_1 (narrow axis)")
