"""The public Fisher-penalty ops: argument checks, then dispatch to a backend.

Backends: ``reference`` (plain PyTorch, materialises F the authors' way), ``cpu`` (C++/OpenMP),
``cuda`` (CUDA kernels), ``triton``; ``auto`` picks the fastest usable one for the input's device.
"""

from __future__ import annotations

import math

import torch

from fdkernels.fisher_penalty import (
    SCORE_KINDS,
    fisher_matrix_ref,
    fisher_penalty_ref,
    flow_score_ref,
)
from fdkernels.fisher_penalty_registration import register_fisher_penalty_op
from fdkernels.time import TimeArg, time_matrix
from fisher_decorator.ops._extension import _load, resolve_backend


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_tensor(name: str, x, ndim: int, shape_doc: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {shape_doc}, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype, got {x.dtype}")
    if x.dim() != ndim:
        raise ValueError(f"{name} must be {shape_doc}, got shape {tuple(x.shape)}")


def _check_scores_args(velocity, x_t, t, score: str, eps_name: str, eps: float) -> tuple[int, int, int]:
    _check_tensor("velocity", velocity, 3, "[B, K, d]")
    _check_tensor("x_t", x_t, 3, "[B, K, d]")
    B, K, d = velocity.shape
    if K == 0:
        raise ValueError("velocity has K = 0 samples per state; the Fisher estimate needs K >= 1")
    if d == 0:
        raise ValueError("velocity has action dimension d = 0")
    if x_t.shape != velocity.shape:
        raise ValueError(f"x_t must have velocity's shape {tuple(velocity.shape)}, got {tuple(x_t.shape)}")
    if x_t.dtype != velocity.dtype:
        raise TypeError(f"x_t must have velocity's dtype {velocity.dtype}, got {x_t.dtype}")
    if x_t.device != velocity.device:
        raise ValueError(f"x_t is on {x_t.device} but velocity is on {velocity.device}")
    if isinstance(t, torch.Tensor):
        if not t.is_floating_point():
            raise TypeError(f"t must be a float or a floating tensor, got dtype {t.dtype}")
        if t.device != velocity.device:
            raise ValueError(f"t is on {t.device} but velocity is on {velocity.device}")
        if tuple(t.shape) not in ((), (B,), (B, K)):
            raise ValueError(
                f"t must be a float, a [B] = [{B}] or a [B, K] = [{B}, {K}] tensor, got {tuple(t.shape)}"
            )
    elif isinstance(t, (int, float)) and not isinstance(t, bool):
        if not math.isfinite(t):
            raise ValueError(f"t must be finite, got {t}")
    else:
        raise TypeError(f"t must be a float or a tensor, got {type(t).__name__}")
    if score not in SCORE_KINDS:
        raise ValueError(f"score must be one of {SCORE_KINDS}, got {score!r}")
    if not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"{eps_name} must be finite and > 0, got {eps}")
    return B, K, d


def flow_score(
    velocity: torch.Tensor, x_t: torch.Tensor, t: TimeArg, *, kind: str = "velocity", eps: float = 1e-6
) -> torch.Tensor:
    """Scores g[B, K, d] of the flow at (x_t, t) from its velocity (SPEC section 4).

    ``kind="velocity"`` (the authors' default): g = v / max(1 - t, eps);
    ``kind="tweedie"``: g = (t v - x_t) / max(1 - t, eps), the exact score of the Gaussian path.
    ``t``: a float, [B] or [B, K]. Differentiable in plain PyTorch (no stop-gradient here).
    """
    _check_scores_args(velocity, x_t, t, kind, "eps", eps)
    return flow_score_ref(velocity, x_t, t, kind, eps)


def fisher_matrix(
    velocity: torch.Tensor,
    x_t: torch.Tensor,
    t: TimeArg,
    *,
    score: str = "velocity",
    damping: float = 1e-3,
    score_eps: float = 1e-6,
    trace_eps: float = 1e-6,
    normalize: bool = False,
) -> torch.Tensor:
    """The materialised metric F[B, d, d] = sym(mean_k g_k g_k^T) + damping I (a diagnostic).

    With ``normalize=True`` it is divided per state by c = max(trace(F)/d, trace_eps), the
    matrix the penalty uses. Scores are detached, as in the penalty.
    """
    _check_scores_args(velocity, x_t, t, score, "score_eps", score_eps)
    return fisher_matrix_ref(
        velocity,
        x_t,
        t,
        score=score,
        damping=damping,
        score_eps=score_eps,
        trace_eps=trace_eps,
        normalize=normalize,
    )


def fisher_penalty(
    velocity: torch.Tensor,
    x_t: torch.Tensor,
    t: TimeArg,
    residual: torch.Tensor,
    *,
    score: str = "velocity",
    damping: float = 1e-3,
    score_eps: float = 1e-6,
    trace_eps: float = 1e-6,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Trace-normalised Fisher penalty of a residual, per state (SPEC sections 4-5).

    Args:
        velocity: [B, K, d] flow velocities v(s, x_k, t_k) at the K Fisher samples of each state.
        x_t: [B, K, d] the interpolated points x_k the velocities were evaluated at.
        t: the interpolation time: a float, a [B] or a [B, K] tensor (one t per sample).
        residual: [B, d] the decorator's residual r(s, a).
        score: "velocity" (authors' default) or "tweedie" (exact Gaussian-path score).
        damping: lambda added to F's diagonal. score_eps / trace_eps: the clamps of SPEC 4.
        backend: "auto", "reference", "cpu", "cuda" or "triton".

    Returns:
        penalty[B] = r^T F_n r / d and trace_per_dim[B] = c = max(trace(F)/d, trace_eps), in the
        inputs' dtype. The gradient reaches ``residual`` only: the scores are constants (the
        authors' stop_gradient), and c carries no gradient.
    """
    B, K, d = _check_scores_args(velocity, x_t, t, score, "score_eps", score_eps)
    _check_tensor("residual", residual, 2, "[B, d]")
    if tuple(residual.shape) != (B, d):
        raise ValueError(f"residual must be [B, d] = [{B}, {d}], got {tuple(residual.shape)}")
    if residual.dtype != velocity.dtype:
        raise TypeError(f"residual must have velocity's dtype {velocity.dtype}, got {residual.dtype}")
    if residual.device != velocity.device:
        raise ValueError(f"residual is on {residual.device} but velocity is on {velocity.device}")
    if not (math.isfinite(damping) and damping >= 0):
        raise ValueError(f"damping must be finite and >= 0, got {damping}")
    if not (math.isfinite(trace_eps) and trace_eps > 0):
        raise ValueError(f"trace_eps must be finite and > 0, got {trace_eps}")

    name = resolve_backend(backend, velocity.device)
    if name == "reference":
        return fisher_penalty_ref(
            velocity, x_t, t, residual, score=score, damping=damping, score_eps=score_eps, trace_eps=trace_eps
        )
    op = torch.ops.fidec_triton.fisher_penalty_fwd if name == "triton" else torch.ops.fidec.fisher_penalty_fwd
    tt = time_matrix(t, B, K, _acc_dtype(velocity.dtype), velocity.device)
    pen, trace, _ = op(
        velocity.detach(),
        x_t.detach(),
        tt,
        residual,
        score,
        float(damping),
        float(score_eps),
        float(trace_eps),
    )
    return pen, trace


# fidec::fisher_penalty_{fwd,bwd}: schema in csrc/ops.cpp, CPU/CUDA kernels in csrc/fisher_penalty_*; their fake
# impls and autograd (shared with the Triton op) are registered here, where a reader of this op looks.
if _load()[0] is not None:
    register_fisher_penalty_op(
        torch.ops.fidec.fisher_penalty_fwd.default, torch.ops.fidec.fisher_penalty_bwd.default
    )
