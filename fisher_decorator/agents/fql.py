"""FQL, Flow Q-learning (Park, Li, Levine, ICML 2025), as in ``seohongpark/fql`` ``agents/fql.py``.

A one-step policy ``mu_w(s, z)`` is distilled from the behaviour flow (``euler(s, z)`` with the same
noise) and pushed up the critic: ``alpha * mean (mu_w(s, z) - euler(s, z))^2 + q_loss``.
FQL's own code clips no gradients (``grad_clip`` None) and normalises Q by ``1 / mean|q|``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from fisher_decorator.agents.base import AgentConfig, Batch, FlowAgent, FlowNoise, Info
from fisher_decorator.config import _positive, option
from fisher_decorator.networks import StateActionMLP


@dataclass(frozen=True)
class FQLConfig(AgentConfig):
    """FQL's config; defaults are FQL's ``get_config``."""

    grad_clip: float | None = option(None, "Global-norm gradient clip (FQL clips none).")
    alpha: float = option(10.0, "Distillation (BC) coefficient; FQL tunes it per task.")

    def check(self) -> None:
        super().check()
        _positive(self, "alpha", allow_zero=True)


class FQLAgent(FlowAgent):
    """Behaviour flow + one-step policy + critic ensemble."""

    name: ClassVar[str] = "fql"
    config_class: ClassVar[type] = FQLConfig
    q_norm_eps: ClassVar[float | None] = None

    def _build_actor(self, generator: torch.Generator, dtype: torch.dtype) -> None:
        cfg = self.config
        self.onestep_policy = StateActionMLP(
            self.obs_dim,
            self.action_dim,
            cfg.actor_hidden_dims,
            layer_norm=cfg.actor_layer_norm,
            fused_gelu=cfg.fused_gelu,
            generator=generator,
            dtype=dtype,
        )

    def policy_actions(self, obs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.onestep_policy(obs, noise).clamp(-1.0, 1.0)

    def actor_loss(
        self, batch: Batch, noise: FlowNoise, *, with_metrics: bool = True
    ) -> tuple[torch.Tensor, Info]:
        """bc_flow_loss + alpha * mean (mu(s, z) - euler(s, z))^2 + q_loss."""
        obs, actions = batch["observations"], batch["actions"]
        bc_flow_loss = self.flow_matching_loss(batch, noise)
        target_flow_actions = self.flow_actions(obs, noise.base)
        actor_actions = self.onestep_policy(obs, noise.base)
        distill_loss = (actor_actions - target_flow_actions).square().mean()
        q_loss, q = self.q_loss(obs, actor_actions.clamp(-1.0, 1.0))
        actor_loss = bc_flow_loss + self.config.alpha * distill_loss + q_loss
        info = {
            "actor_loss": actor_loss.detach(),
            "bc_flow_loss": bc_flow_loss.detach(),
            "distill_loss": distill_loss.detach(),
            "q_loss": q_loss.detach(),
            "q": q.detach().mean(),
        }
        if with_metrics:
            with torch.no_grad():
                info["mse"] = (self.policy_actions(obs, noise.metric) - actions).square().mean()
        return actor_loss, info
