"""Fisher penalty: the plain-PyTorch reference and the Triton kernels, side by side.

SPEC sections 4-5. For one state with K score samples ``g_k`` and residual ``r``::

    F   = mean_k g_k g_k^T + damping * I          (symmetrised, as the authors do)
    c   = max(trace(F) / d, trace_eps)             (constant: no gradient)
    pen = r^T (F / c) r / d

The fused kernels never form ``F``: ``r^T F r = mean_k (g_k . r)^2 + damping ||r||^2`` and
``trace(F) = mean_k ||g_k||^2 + damping d``, so a state costs O(K d), not O(K d^2).
The gradient reaches ``residual`` only; the scores are constants, like the authors'
``jax.lax.stop_gradient``:  ``d pen / d r = 2 (mean_k (g_k . r) g_k + damping r) / (c d)``.

Everything here is importable without Triton; the kernels exist when Triton does (fdkernels/_triton.py).
"""

from __future__ import annotations

import functools

import torch

from fdkernels._triton import HAS_TRITON, jit_kernel, tl, triton, triton_usable
from fdkernels.fisher_penalty_registration import register_fisher_penalty_op
from fdkernels.time import time_matrix

__all__ = [
    "HAS_TRITON",
    "SCORE_KINDS",
    "fisher_matrix_ref",
    "fisher_penalty_ref",
    "flow_score_ref",
    "triton_usable",
]

SCORE_KINDS = ("velocity", "tweedie")


# --------------------------------------------------------------------------------------------
# Reference (plain PyTorch, materialises F exactly as the authors' JAX code does)
# --------------------------------------------------------------------------------------------
def flow_score_ref(
    velocity: torch.Tensor,
    x_t: torch.Tensor,
    t: float | torch.Tensor,
    kind: str = "velocity",
    eps: float = 1e-6,
) -> torch.Tensor:
    """Score of the flow's marginal at time t, from its velocity. ``velocity, x_t: [B, K, d]``.

    ``velocity``: g = v / max(1 - t, eps) (the authors' default);
    ``tweedie``:  g = (t v - x) / max(1 - t, eps) (the exact score of the Gaussian path).
    """
    B, K, _ = velocity.shape
    # t as the authors hold it: one value per (b, k) row (a float stays a Python float)
    tt = (
        time_matrix(t, B, K, velocity.dtype, velocity.device)[..., None]
        if isinstance(t, torch.Tensor)
        else float(t)
    )
    if isinstance(tt, float):
        denom = max(1.0 - tt, eps)
    else:
        denom = torch.clamp(1.0 - tt, min=eps)
    if kind == "velocity":
        return velocity / denom
    if kind == "tweedie":
        return (tt * velocity - x_t) / denom
    raise ValueError(f"score kind must be one of {SCORE_KINDS}, got {kind!r}")


def fisher_matrix_ref(
    velocity: torch.Tensor,
    x_t: torch.Tensor,
    t: float | torch.Tensor,
    *,
    score: str = "velocity",
    damping: float = 1e-3,
    score_eps: float = 1e-6,
    trace_eps: float = 1e-6,
    normalize: bool = False,
) -> torch.Tensor:
    """F[B, d, d] = sym(mean_k g_k g_k^T) + damping I; divided by c when ``normalize``."""
    B, K, d = velocity.shape
    g = flow_score_ref(velocity.detach(), x_t.detach(), t, score, score_eps)
    fisher = (g[..., :, None] * g[..., None, :]).mean(dim=1)
    fisher = 0.5 * (fisher + fisher.transpose(-1, -2))
    fisher = fisher + damping * torch.eye(d, dtype=fisher.dtype, device=fisher.device)
    if normalize:
        trace_per_dim = torch.clamp(torch.diagonal(fisher, dim1=-2, dim2=-1).sum(-1) / d, min=trace_eps)
        fisher = fisher / trace_per_dim[:, None, None]
    return fisher


def fisher_penalty_ref(
    velocity: torch.Tensor,
    x_t: torch.Tensor,
    t: float | torch.Tensor,
    residual: torch.Tensor,
    *,
    score: str = "velocity",
    damping: float = 1e-3,
    score_eps: float = 1e-6,
    trace_eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(penalty[B], trace_per_dim[B]) computed the authors' way, with a d x d matrix per state.

    Gradients reach ``residual`` only (the scores are detached, as the authors stop them).
    """
    d = velocity.shape[-1]
    fisher = fisher_matrix_ref(velocity, x_t, t, score=score, damping=damping, score_eps=score_eps)
    trace_per_dim = torch.clamp(torch.diagonal(fisher, dim1=-2, dim2=-1).sum(-1) / d, min=trace_eps)
    fisher_n = fisher / trace_per_dim[:, None, None]
    quad = torch.einsum("bi,bij,bj->b", residual, fisher_n, residual)
    return quad / d, trace_per_dim


# --------------------------------------------------------------------------------------------
# Triton kernels
# --------------------------------------------------------------------------------------------
def _fisher_penalty_fwd_kernel(
    v_ptr,
    x_ptr,
    t_ptr,
    r_ptr,
    pen_ptr,
    trace_ptr,
    score_ptr,
    B,
    K,
    D,
    opts_ptr,
    TWEEDIE: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    # One program: BLOCK_B states, all K samples, the whole action row (BLOCK_D >= D).
    damping, score_eps, trace_eps = tl.load(opts_ptr), tl.load(opts_ptr + 1), tl.load(opts_ptr + 2)
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.arange(0, BLOCK_D)
    rmask = rows < B
    m2 = rmask[:, None] & (cols < D)[None, :]
    r = tl.load(r_ptr + rows[:, None] * D + cols[None, :], mask=m2, other=0.0).to(ACC)
    dot_sq = tl.zeros([BLOCK_B], dtype=ACC)
    g_sq = tl.zeros([BLOCK_B], dtype=ACC)
    for k in range(K):
        off = (rows[:, None] * K + k) * D + cols[None, :]
        v = tl.load(v_ptr + off, mask=m2, other=0.0).to(ACC)
        t = tl.load(t_ptr + rows * K + k, mask=rmask, other=0.0).to(ACC)
        inv = 1.0 / tl.maximum(1.0 - t, score_eps, propagate_nan=tl.PropagateNan.ALL)
        if TWEEDIE:
            x = tl.load(x_ptr + off, mask=m2, other=0.0).to(ACC)
            g = (t[:, None] * v - x) * inv[:, None]
        else:
            g = v * inv[:, None]
        tl.store(score_ptr + off, g, mask=m2)
        dot = tl.sum(g * r, axis=1)
        dot_sq += dot * dot
        g_sq += tl.sum(g * g, axis=1)
    r_sq = tl.sum(r * r, axis=1)
    trace = tl.maximum((g_sq / K + damping * D) / D, trace_eps, propagate_nan=tl.PropagateNan.ALL)
    pen = (dot_sq / K + damping * r_sq) / (trace * D)
    tl.store(pen_ptr + rows, pen, mask=rmask)
    tl.store(trace_ptr + rows, trace, mask=rmask)


def _fisher_penalty_bwd_kernel(
    gp_ptr,
    score_ptr,
    r_ptr,
    trace_ptr,
    gr_ptr,
    B,
    K,
    D,
    opts_ptr,
    ACC: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    damping = tl.load(opts_ptr)
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.arange(0, BLOCK_D)
    rmask = rows < B
    m2 = rmask[:, None] & (cols < D)[None, :]
    r = tl.load(r_ptr + rows[:, None] * D + cols[None, :], mask=m2, other=0.0).to(ACC)
    acc = tl.zeros([BLOCK_B, BLOCK_D], dtype=ACC)
    for k in range(K):
        g = tl.load(score_ptr + (rows[:, None] * K + k) * D + cols[None, :], mask=m2, other=0.0).to(ACC)
        dot = tl.sum(g * r, axis=1)
        acc += dot[:, None] * g
    gp = tl.load(gp_ptr + rows, mask=rmask, other=0.0).to(ACC)
    c = tl.load(trace_ptr + rows, mask=rmask, other=1.0).to(ACC)
    coef = 2.0 * gp / (c * D)
    gr = coef[:, None] * (acc / K + damping * r)
    tl.store(gr_ptr + rows[:, None] * D + cols[None, :], gr, mask=m2)


def _geometry(B: int, D: int) -> tuple[int, int, int]:
    block_d = max(triton.next_power_of_2(D), 2)
    block_b = max(1, min(64, 4096 // block_d, triton.next_power_of_2(B)))
    return block_b, block_d, triton.cdiv(B, block_b)


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@functools.lru_cache(maxsize=64)
def _options(dtype: torch.dtype, device: torch.device, *values: float) -> torch.Tensor:
    """The float options as a tensor in the accumulation dtype: Triton types a Python float argument fp32,
    which would round damping and the eps to fp32 in an fp64 kernel. Cached, so a call copies nothing to the
    device after the first (and a CUDA-graph capture after a warm-up finds it made)."""
    return torch.tensor(values, dtype=dtype, device=device)


def fisher_penalty_forward(
    velocity: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    residual: torch.Tensor,
    score: str,
    damping: float,
    score_eps: float,
    trace_eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the forward kernel. Inputs contiguous, ``t: [B, K]``. Returns (penalty, trace, scores)."""
    B, K, D = velocity.shape
    acc = _acc_dtype(velocity.dtype)
    pen = torch.empty(B, dtype=acc, device=velocity.device)
    trace = torch.empty(B, dtype=acc, device=velocity.device)
    scores = torch.empty(B, K, D, dtype=acc, device=velocity.device)
    block_b, block_d, grid = _geometry(B, D)
    jit_kernel(_fisher_penalty_fwd_kernel)[(grid,)](
        velocity,
        x_t,
        t,
        residual,
        pen,
        trace,
        scores,
        B,
        K,
        D,
        _options(acc, velocity.device, damping, score_eps, trace_eps),
        TWEEDIE=score == "tweedie",
        ACC=tl.float64 if acc == torch.float64 else tl.float32,
        BLOCK_B=block_b,
        BLOCK_D=block_d,
    )
    return pen.to(velocity.dtype), trace.to(velocity.dtype), scores


def fisher_penalty_backward(
    grad_penalty: torch.Tensor,
    scores: torch.Tensor,
    residual: torch.Tensor,
    trace_per_dim: torch.Tensor,
    damping: float,
) -> torch.Tensor:
    """Launch the backward kernel: d(sum_b grad_penalty_b * pen_b) / d residual."""
    B, K, D = scores.shape
    acc = scores.dtype
    grad_r = torch.empty(B, D, dtype=acc, device=scores.device)
    block_b, block_d, grid = _geometry(B, D)
    jit_kernel(_fisher_penalty_bwd_kernel)[(grid,)](
        grad_penalty.contiguous(),
        scores,
        residual,
        trace_per_dim.contiguous(),
        grad_r,
        B,
        K,
        D,
        _options(acc, scores.device, damping),
        ACC=tl.float64 if acc == torch.float64 else tl.float32,
        BLOCK_B=block_b,
        BLOCK_D=block_d,
    )
    return grad_r.to(residual.dtype)


# The Triton path as a registered op: opaque to inductor (``triton_op``/``wrap_triton`` do not
# trace under the interpreter), with a fake impl so torch.compile(fullgraph=True) still traces.
@torch.library.custom_op("fidec_triton::fisher_penalty_fwd", mutates_args=())
def fisher_penalty_triton_fwd(
    velocity: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    residual: torch.Tensor,
    score: str,
    damping: float,
    score_eps: float,
    trace_eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if not triton_usable(velocity.device):
        raise RuntimeError(
            "the triton backend needs a CUDA device, or TRITON_INTERPRET=1 set before the first call on CPU"
        )
    return fisher_penalty_forward(
        velocity.contiguous(),
        x_t.contiguous(),
        t.contiguous(),
        residual.contiguous(),
        score,
        damping,
        score_eps,
        trace_eps,
    )


@torch.library.custom_op("fidec_triton::fisher_penalty_bwd", mutates_args=())
def fisher_penalty_triton_bwd(
    grad_penalty: torch.Tensor,
    scores: torch.Tensor,
    residual: torch.Tensor,
    trace_per_dim: torch.Tensor,
    damping: float,
) -> torch.Tensor:
    return fisher_penalty_backward(grad_penalty, scores, residual.contiguous(), trace_per_dim, damping)


register_fisher_penalty_op(fisher_penalty_triton_fwd, fisher_penalty_triton_bwd)
