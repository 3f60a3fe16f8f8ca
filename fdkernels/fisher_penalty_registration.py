"""Fake (meta) impls and autograd of a Fisher-penalty op pair, the one contract of every compiled backend.

``fidec::fisher_penalty_{fwd,bwd}`` (schema: csrc/ops.cpp; kernels: csrc/fisher_penalty_{cpu,cuda}*; registered
by fisher_decorator/ops/fisher_penalty.py) and ``fidec_triton::fisher_penalty_{fwd,bwd}`` (fdkernels/fisher_penalty.py)
both register here, so they share: outputs (penalty[B], trace_per_dim[B], scores[B, K, d] in the accumulation
dtype) and a backward that saves only the scores, the residual and the per-state scale (SPEC 5).
"""

from __future__ import annotations

import torch


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def register_fisher_penalty_op(fwd_op, bwd_op) -> None:
    """Register the fake impls of ``fwd_op``/``bwd_op`` and ``fwd_op``'s autograd (gradient to the residual only)."""

    @torch.library.register_fake(fwd_op)
    def _fwd_fake(velocity, x_t, t, residual, score, damping, score_eps, trace_eps):
        B, K, D = velocity.shape
        acc = _acc_dtype(velocity.dtype)
        return velocity.new_empty(B), velocity.new_empty(B), velocity.new_empty((B, K, D), dtype=acc)

    @torch.library.register_fake(bwd_op)
    def _bwd_fake(grad_penalty, scores, residual, trace_per_dim, damping):
        return torch.empty_like(residual, memory_format=torch.contiguous_format)

    def setup_context(ctx, inputs, output):
        _, _, _, residual, _, damping, _, _ = inputs
        _, trace_per_dim, scores = output
        ctx.save_for_backward(scores, residual, trace_per_dim)
        ctx.damping = damping
        ctx.mark_non_differentiable(trace_per_dim, scores)

    def backward(ctx, grad_penalty, grad_trace, grad_scores):
        scores, residual, trace_per_dim = ctx.saved_tensors
        grad_r = None
        if ctx.needs_input_grad[3]:
            grad_r = bwd_op(grad_penalty, scores, residual, trace_per_dim, ctx.damping)
        return None, None, None, grad_r, None, None, None, None

    torch.library.register_autograd(fwd_op, backward, setup_context=setup_context)
