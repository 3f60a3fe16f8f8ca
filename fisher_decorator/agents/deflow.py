"""DeFlow (arXiv 2601.10471) as in the authors' ``agents/deflow.py``: the isotropic baseline of FiDec.

The residual's divergence is ``D = mean_b ||r||^2 / d`` (FiDec with F_n = I), held at
``target_divergence`` by a Lagrange multiplier. Its ``normalize_q_loss`` is ``1 / mean|q|``
without the 1e-6 floor FiDec uses (the authors' code).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from fisher_decorator.agents.base import FlowNoise, Info
from fisher_decorator.agents.residual import ResidualAgent, ResidualConfig


@dataclass(frozen=True)
class DeFlowConfig(ResidualConfig):
    """DeFlow's config: the shared fields (see ``fidec train --list-fields --agent deflow``)."""


class DeFlowAgent(ResidualAgent):
    """Behaviour flow + residual with an isotropic L2 penalty + critic ensemble."""

    name: ClassVar[str] = "deflow"
    config_class: ClassVar[type] = DeFlowConfig
    q_norm_eps: ClassVar[float | None] = None

    def divergence(
        self, obs: torch.Tensor, residual: torch.Tensor, noise: FlowNoise, *, with_metrics: bool
    ) -> tuple[torch.Tensor, Info]:
        """D = mean(r^2) = mean_b ||r_b||^2 / d."""
        return residual.square().mean(), {}
