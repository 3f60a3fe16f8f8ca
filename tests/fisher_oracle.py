"""An independent NumPy (float64) oracle of SPEC sections 4-5, written from the formulas.

Deliberately naive: explicit loops over states and samples, the metric built as a d x d matrix,
the gradient as 2 F_n r / d. It shares no code with the torch reference or the kernels.
"""

from __future__ import annotations

import numpy as np


def oracle_fisher_penalty(
    velocity, x_t, t, residual, *, score="velocity", damping=1e-3, score_eps=1e-6, trace_eps=1e-6
):
    """Returns (penalty[B], trace_per_dim[B], grad_residual[B, d], F_normalised[B, d, d])."""
    v = np.asarray(velocity, dtype=np.float64)
    x = np.asarray(x_t, dtype=np.float64)
    r = np.asarray(residual, dtype=np.float64)
    B, K, d = v.shape
    t = np.asarray(t, dtype=np.float64)
    if t.ndim == 0:
        t = np.full((B, K), float(t))
    elif t.ndim == 1:
        t = np.repeat(t[:, None], K, axis=1)
    pen = np.zeros(B)
    trace = np.zeros(B)
    grad = np.zeros((B, d))
    fisher_n = np.zeros((B, d, d))
    for b in range(B):
        F = np.zeros((d, d))
        for k in range(K):
            denom = max(1.0 - t[b, k], score_eps)
            if score == "velocity":
                g = v[b, k] / denom
            else:
                g = (t[b, k] * v[b, k] - x[b, k]) / denom
            F += np.outer(g, g) / K
        F = (F + F.T) / 2 + damping * np.eye(d)
        c = max(np.trace(F) / d, trace_eps)
        Fn = F / c
        pen[b] = r[b] @ Fn @ r[b] / d
        grad[b] = 2.0 * Fn @ r[b] / d
        trace[b] = c
        fisher_n[b] = Fn
    return pen, trace, grad, fisher_n
