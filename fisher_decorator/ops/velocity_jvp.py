"""``velocity_jvp``: the flow field and its Jacobian along a direction in one pass (SPEC "Kernel ops").

Also the "jacobian" Fisher estimator built on it (second Bartlett identity, SPEC "Kernel ops"):
``r^T F r ~ -mean_k r^T J_x g(x_k) r + damping ||r||^2``, an option, never the default: for a
learned field it can go negative.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from fdkernels.time import time_column, time_matrix
from fdkernels.velocity_jvp import velocity_jvp_ref, velocity_jvp_triton
from fisher_decorator.gemm_path import matmul_t
from fisher_decorator.ops import gelu as _gelu  # noqa: F401  (fake impls of the GELU ops)
from fisher_decorator.ops._extension import resolve_backend

Params = Sequence[tuple[torch.Tensor, torch.Tensor]]


def mlp_params(mlp: nn.Module | Params) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``[(weight [out, in], bias [out]), ...]`` of an MLP: a module with ``.linears`` (nn.Linear
    layers, as fisher_decorator.networks builds them) or an explicit sequence of pairs."""
    if isinstance(mlp, nn.Module):
        linears = getattr(mlp, "linears", None)
        if linears is None or not all(isinstance(m, nn.Linear) for m in linears):
            raise TypeError(
                f"{type(mlp).__name__} has no .linears of nn.Linear layers; pass [(weight, bias), ...]"
            )
        return [(m.weight, m.bias) for m in linears]
    params = [tuple(p) for p in mlp]
    if not params or any(len(p) != 2 for p in params):
        raise TypeError("params must be a non-empty sequence of (weight, bias) pairs")
    return params  # type: ignore[return-value]


def check_velocity_inputs(params: Params, s: torch.Tensor, x: torch.Tensor, name_x: str = "x") -> None:
    """Shapes and dtypes of a velocity-field call, with errors that name the argument."""
    if s.dim() != 2:
        raise ValueError(f"s must be [N, obs_dim], got shape {tuple(s.shape)}")
    if x.dim() != 2 or x.shape[0] != s.shape[0]:
        raise ValueError(f"{name_x} must be [N, d] with N = {s.shape[0]} (s' rows), got {tuple(x.shape)}")
    w1 = params[0][0]
    want = s.shape[1] + x.shape[1] + 1
    if w1.dim() != 2 or w1.shape[1] != want:
        raise ValueError(
            f"the first layer's weight must be [hidden, obs_dim + d + 1] = [*, {want}] for s {tuple(s.shape)} and "
            f"{name_x} {tuple(x.shape)}, got {tuple(w1.shape)}"
        )
    last = params[-1][0]
    if last.shape[0] != x.shape[1]:
        raise ValueError(f"the last layer must output d = {x.shape[1]} values, it outputs {last.shape[0]}")
    for i, (w, b) in enumerate(params):
        if w.dtype != x.dtype or b.dtype != x.dtype or s.dtype != x.dtype:
            raise TypeError(
                f"layer {i}, s and {name_x} must share one dtype, got {w.dtype}/{b.dtype}, {s.dtype}, {x.dtype}"
            )
        if i and w.shape[1] != params[i - 1][0].shape[0]:
            raise ValueError(
                f"layer {i} takes {w.shape[1]} inputs but layer {i - 1} gives {params[i - 1][0].shape[0]}"
            )


def _jvp_forward_compiled(params, s, x, t, tangent):
    """torch GEMMs (on this machine's GEMM path) + the fused C++/CUDA gelu_jvp kernel; returns (v, jv, saved
    gelu' per hidden layer)."""
    obs, d = s.shape[1], x.shape[1]
    w1, b1 = params[0]
    inp = torch.cat([s, x, time_column(t, x)], dim=-1)
    h = matmul_t(inp, w1)
    th = tangent @ w1[:, obs : obs + d].t()
    if len(params) == 1:
        return h + b1, th, []
    a, ta, dy = torch.ops.fidec.gelu_jvp(h, b1, th)
    saved = [dy]
    n = a.shape[0]
    for i, (w, b) in enumerate(params[1:], start=1):
        y = matmul_t(torch.cat([a, ta]), w)  # primal and tangent rows in one GEMM
        h, th = y[:n], y[n:]
        if i == len(params) - 1:
            return h + b, th, saved
        a, ta, dy = torch.ops.fidec.gelu_jvp(h, b, th)
        saved.append(dy)
    raise AssertionError("unreachable")


class _VelocityJVP(torch.autograd.Function):
    """Differentiable in the tangent only: backward = J_x v^T . grad (reverse pass with saved gelu')."""

    @staticmethod
    def forward(ctx, tangent, s, x, t, backend, *flat):
        params = [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]
        if backend == "triton":
            v, jv, saved = velocity_jvp_triton(params, s, x, t, tangent)
        else:
            v, jv, saved = _jvp_forward_compiled(params, s, x, t, tangent)
        ctx.obs, ctx.d = s.shape[1], x.shape[1]
        ctx.save_for_backward(*saved, *[w for w, _ in params])
        ctx.n_saved = len(saved)
        ctx.mark_non_differentiable(v)
        return v, jv

    @staticmethod
    def backward(ctx, grad_v, grad_jv):
        tensors = ctx.saved_tensors
        saved, weights = tensors[: ctx.n_saved], tensors[ctx.n_saved :]
        g = grad_jv
        for layer in range(len(weights) - 1, 0, -1):
            g = (g @ weights[layer]) * saved[layer - 1]
        grad_tangent = g @ weights[0][:, ctx.obs : ctx.obs + ctx.d]
        return (grad_tangent, None, None, None, None, *([None] * (2 * len(weights))))


def velocity_jvp(
    params: nn.Module | Params,
    s: torch.Tensor,
    x: torch.Tensor,
    t: float | torch.Tensor,
    tangent: torch.Tensor,
    *,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(v, J_x v . tangent) of the velocity MLP in one forward-mode pass.

    Args:
        params: the velocity MLP: a module with ``.linears`` or ``[(weight [out, in], bias [out]), ...]``;
            its input is concat [s, x, t].
        s: [N, obs_dim]; x: [N, d]; t: a float, [N] or [N, 1]; tangent: [N, d].
        backend: "auto", "reference" (torch.func.jvp), "cpu"/"cuda" (GEMMs + the fused gelu_jvp kernel)
            or "triton" (fused GEMM + bias + GELU + tangent kernel).

    Returns:
        v [N, d] (no gradient) and jv [N, d], differentiable in ``tangent`` only.
    """
    params = mlp_params(params)
    check_velocity_inputs(params, s, x)
    if tangent.shape != x.shape:
        raise ValueError(f"tangent must have x's shape {tuple(x.shape)}, got {tuple(tangent.shape)}")
    if tangent.dtype != x.dtype:
        raise TypeError(f"tangent must have x's dtype {x.dtype}, got {tangent.dtype}")
    name = resolve_backend(backend, x.device)
    if name == "reference":
        return velocity_jvp_ref(params, s, x, t, tangent)
    t_arg = t.detach() if isinstance(t, torch.Tensor) else t
    flat = [p.detach() for pair in params for p in pair]
    return _VelocityJVP.apply(tangent, s.detach(), x.detach(), t_arg, name, *flat)


def fisher_quadratic_jacobian(
    params: nn.Module | Params,
    s: torch.Tensor,
    x_t: torch.Tensor,
    t: float | torch.Tensor,
    residual: torch.Tensor,
    *,
    score: str = "velocity",
    damping: float = 1e-3,
    score_eps: float = 1e-6,
    backend: str = "auto",
) -> torch.Tensor:
    """``-mean_k r^T J_x g(x_k) r + damping ||r||^2`` per state: [B], differentiable in ``residual``.

    ``s: [B, obs]`` (the state of each group of K samples), ``x_t: [B, K, d]``, ``t``: a float, [B] or
    [B, K]; ``residual: [B, d]``. For the exact score of the data this equals ``r^T F r`` in
    expectation (E[g g^T] = -E[J_x g]); for a learned field it can be negative.
    ``score="velocity"``: J_x g = J_x v / (1-t); ``"tweedie"``: J_x g = (t J_x v - I) / (1-t).
    """
    B, K, d = x_t.shape
    if residual.shape != (B, d):
        raise ValueError(f"residual must be [B, d] = [{B}, {d}], got {tuple(residual.shape)}")
    if score not in ("velocity", "tweedie"):
        raise ValueError(f"score must be 'velocity' or 'tweedie', got {score!r}")
    tt = time_matrix(t, B, K, x_t.dtype, x_t.device)
    s_rep = s.repeat_interleave(K, dim=0)
    r_rep = residual.repeat_interleave(K, dim=0)
    _, jv = velocity_jvp(params, s_rep, x_t.reshape(B * K, d), tt.reshape(-1), r_rep, backend=backend)
    r_jv = (r_rep * jv).sum(-1).reshape(B, K)
    r_sq = (residual * residual).sum(-1)
    inv = 1.0 / torch.clamp(1.0 - tt, min=score_eps)
    if score == "velocity":
        r_jg = r_jv * inv
    else:
        r_jg = (tt * r_jv - r_sq[:, None]) * inv
    return -r_jg.mean(dim=1) + damping * r_sq
