"""DeFlow (arXiv 2601.10471) as in the authors' ``agents/deflow.py``: the isotropic baseline of FiDec.

The residual's divergence is ``D = mean_b ||r||^2 / d`` (FiDec with F_n = I), held at
``target_divergence`` by a Lagrange multiplier. Its ``normalize_q_loss`` is ``1 / mean|q|``
without the 1e-6 floor FiDec uses (the authors' code).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from fisher_decorator.agents.base import Batch, FlowNoise, Info
from fisher_decorator.agents.residual import ResidualAgent, ResidualConfig


@dataclass(frozen=True)
class DeFlowConfig(ResidualConfig):
    """DeFlow's config: the shared fields (see ``fidec train --list-fields --agent deflow``)."""


class DeFlowAgent(ResidualAgent):
    """Behaviour flow + residual with an isotropic L2 penalty + critic ensemble."""

    name: ClassVar[str] = "deflow"
    config_class: ClassVar[type] = DeFlowConfig
    q_norm_eps: ClassVar[float | None] = None

    def actor_loss(
        self, batch: Batch, noise: FlowNoise, *, with_metrics: bool = True
    ) -> tuple[torch.Tensor, Info]:
        """bc_flow_loss + alpha * mean(r^2) + q_loss (+ alpha_loss)."""
        obs, actions = batch["observations"], batch["actions"]
        bc_flow_loss = self.flow_matching_loss(batch, noise)
        base_actions = self.flow_actions(obs, noise.base)
        residual = self.residual(obs, base_actions)
        divergence = residual.square().mean()
        distill_loss, alpha_loss, alpha = self.lagrange(divergence)
        q_loss, q = self.q_loss(obs, (base_actions + residual).clamp(-1.0, 1.0))
        actor_loss = bc_flow_loss + distill_loss + q_loss + alpha_loss
        info = {
            "actor_loss": actor_loss.detach(),
            "bc_flow_loss": bc_flow_loss.detach(),
            "distill_loss": divergence.detach(),
            "q_loss": q_loss.detach(),
            "q": q.detach().mean(),
            "alpha_loss": alpha_loss.detach(),
            "alpha_value": alpha,
        }
        if with_metrics:
            info["refinement_mse"] = divergence.detach()
            with torch.no_grad():
                info["mse"] = (self.policy_actions(obs, noise.metric) - actions).square().mean()
        return actor_loss, info
