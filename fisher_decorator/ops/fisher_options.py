"""The Fisher-penalty options (SPEC 4-5) as one frozen object, so an agent holds them once instead of threading
five fields to three ops."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fisher_decorator.ops.fisher_penalty import TimeArg, fisher_penalty, flow_score
from fisher_decorator.ops.velocity_jvp import Params, fisher_quadratic_jacobian


@dataclass(frozen=True)
class FisherOptions:
    """score: "velocity" (the authors') or "tweedie"; damping: lambda on F's diagonal; score_eps / trace_eps: the
    clamps of SPEC 4; backend: of the ops ("auto", "reference", "cpu", "cuda", "triton")."""

    score: str = "velocity"
    damping: float = 1e-3
    score_eps: float = 1e-6
    trace_eps: float = 1e-6
    backend: str = "auto"

    def scores(self, velocity: torch.Tensor, x_t: torch.Tensor, t: TimeArg) -> torch.Tensor:
        """g[B, K, d] (:func:`~fisher_decorator.ops.flow_score`)."""
        return flow_score(velocity, x_t, t, kind=self.score, eps=self.score_eps)

    def penalty(
        self, velocity: torch.Tensor, x_t: torch.Tensor, t: TimeArg, residual: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(penalty[B], trace_per_dim[B]) (:func:`~fisher_decorator.ops.fisher_penalty`)."""
        return fisher_penalty(
            velocity,
            x_t,
            t,
            residual,
            score=self.score,
            damping=self.damping,
            score_eps=self.score_eps,
            trace_eps=self.trace_eps,
            backend=self.backend,
        )

    def quadratic_jacobian(
        self,
        params: nn.Module | Params,
        s: torch.Tensor,
        x_t: torch.Tensor,
        t: TimeArg,
        residual: torch.Tensor,
    ) -> torch.Tensor:
        """-mean_k r^T J_x g r + damping ||r||^2 per state (:func:`~fisher_decorator.ops.fisher_quadratic_jacobian`)."""
        return fisher_quadratic_jacobian(
            params,
            s,
            x_t,
            t,
            residual,
            score=self.score,
            damping=self.damping,
            score_eps=self.score_eps,
            backend=self.backend,
        )
