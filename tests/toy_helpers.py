"""The toy-bandit task's scores written out from its definition (not fisher_decorator.envs.toy_bandit), so
tests can check logged and printed evaluation numbers against an independent computation."""

from __future__ import annotations

import numpy as np


def toy_scores(actions) -> tuple[float, float, float]:
    """(success, in_support, mean return) of toy-bandit actions [n, 2]: inside = Mahalanobis distance to
    N([-0.2, 0], diag(0.3, 0.05)^2) <= 3, reward 1 + a_0 + a_1, success = inside and reward above the
    behaviour mean's (0.8)."""
    a = np.clip(np.asarray(actions, dtype=np.float64), -1.0, 1.0)
    inside = np.sqrt((((a - [-0.2, 0.0]) / [0.3, 0.05]) ** 2).sum(-1)) <= 3.0
    reward = 1.0 + a.sum(-1)
    return float((inside & (reward > 0.8)).mean()), float(inside.mean()), float(reward.mean())
