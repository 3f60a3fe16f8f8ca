"""The residual ("decorator") policy shared by DeFlow and FiDec: ``a = clip(a_b + r(s, a_b), -1, 1)``.

``a_b = euler(s, z)`` is the behaviour flow's action; ``r_phi(s, a)`` is the local transport map
``T(a) = a + r(s, a)``. Besides the default sample, two evaluation modes of the authors' code:
best-of-n base actions by Q (then one refinement) and iterative refinement (keep the best by Q).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from fisher_decorator.agents.base import AgentConfig, Batch, FlowAgent, FlowNoise, Info
from fisher_decorator.config import ConfigError, _positive, option
from fisher_decorator.networks import StateActionMLP

SAMPLING_MODES = ("default", "best_of_n", "iterative")


@dataclass(frozen=True)
class ResidualConfig(AgentConfig):
    """Fields of the residual agents (DeFlow, FiDec)."""

    alpha: float = option(
        10.0, "Initial Lagrange multiplier alpha (fixed coefficient when use_lagrange is off)."
    )
    use_lagrange: bool = option(True, "Tune alpha by dual ascent on log_alpha towards target_divergence.")
    target_divergence: float = option(0.001, "Divergence budget of the residual (SPEC 6).")
    fix_bc_flow_online: bool = option(
        False,
        "Online fine-tuning: the behaviour flow frozen (no flow-matching loss, no Adam step on its parameters; "
        "the authors zero the loss only, so Adam's momentum still moves it for a few hundred steps).",
    )

    def check(self) -> None:
        super().check()
        _positive(self, "alpha")
        _positive(self, "target_divergence", allow_zero=True)


class ResidualAgent(FlowAgent):
    """Behaviour flow + residual + critic; subclasses define the divergence in ``actor_loss``."""

    config_class: ClassVar[type] = ResidualConfig

    def _build_actor(self, generator: torch.Generator, dtype: torch.dtype) -> None:
        cfg = self.config
        self.residual = StateActionMLP(
            self.obs_dim,
            self.action_dim,
            cfg.actor_hidden_dims,
            layer_norm=cfg.actor_layer_norm,
            fused_gelu=cfg.fused_gelu,
            generator=generator,
            dtype=dtype,
        )
        # SPEC 6: the Lagrange multiplier alpha = exp(log_alpha), tuned by dual ascent (or a fixed alpha).
        self.log_alpha = (
            nn.Parameter(torch.tensor(math.log(cfg.alpha), dtype=dtype)) if cfg.use_lagrange else None
        )

    @property
    def flow_frozen(self) -> bool:
        """fix_bc_flow_online in the online phase (``online`` is set by fisher_decorator.online)."""
        return self.config.fix_bc_flow_online and getattr(self, "online", False)

    def flow_matching_loss(self, batch: Batch, noise: FlowNoise) -> torch.Tensor:
        if self.flow_frozen:  # the authors' bc_flow_loss = 0.0 online
            return torch.zeros((), device=self.device, dtype=self.dtype)
        return super().flow_matching_loss(batch, noise)

    def update(self, batch: Batch, noise: FlowNoise | None = None, *, with_metrics: bool = True) -> Info:
        """FlowAgent.update; with the flow frozen, its parameters are left out of the clip and the Adam step."""
        if not self.flow_frozen:
            return super().update(batch, noise, with_metrics=with_metrics)
        flow = {id(p) for p in self.velocity_field.parameters()}
        groups = self.optimizer.param_groups
        saved = [g["params"] for g in groups]
        for g in groups:
            g["params"] = [p for p in g["params"] if id(p) not in flow]
        try:
            return super().update(batch, noise, with_metrics=with_metrics)
        finally:
            for g, params in zip(groups, saved):
                g["params"] = params
            for p in self.velocity_field.parameters():
                p.grad = None

    def update_rollouts(self, batch: Batch, noise: FlowNoise, *, with_metrics: bool) -> list[tuple]:
        """The critic target's a_b(s') (SPEC 1), the base actions a_b(s) (SPEC 3) and, on logging steps, the
        ``mse`` diagnostic's."""
        obs = batch["observations"]
        rollouts = [(batch["next_observations"], noise.next_action), (obs, noise.base)]
        return rollouts + [(obs, noise.metric)] if with_metrics else rollouts

    def divergence(
        self, obs: torch.Tensor, residual: torch.Tensor, noise: FlowNoise, *, with_metrics: bool
    ) -> tuple[torch.Tensor, Info]:
        """D (0-d, with gradient to the residual only) and the metrics particular to it."""
        raise NotImplementedError

    def lagrange(self, divergence: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """SPEC 6: (alpha_detached * D, alpha_loss = -log_alpha (D_detached - target), alpha); with a fixed
        alpha: (alpha * D, 0, alpha)."""
        cfg = self.config
        if cfg.use_lagrange:
            alpha = self.log_alpha.exp()
            alpha_loss = -self.log_alpha * (divergence.detach() - cfg.target_divergence)
            return alpha.detach() * divergence, alpha_loss, alpha.detach()
        alpha = torch.tensor(cfg.alpha, dtype=divergence.dtype, device=divergence.device)
        return alpha * divergence, torch.zeros_like(divergence), alpha

    def actor_loss(
        self, batch: Batch, noise: FlowNoise, *, with_metrics: bool = True
    ) -> tuple[torch.Tensor, Info]:
        """The actor part of SPEC 8 for DeFlow and FiDec; only the divergence D differs (:meth:`divergence`)."""
        obs, actions = batch["observations"], batch["actions"]
        bc_flow_loss = self.flow_matching_loss(batch, noise)  # SPEC 2
        base_actions = self.flow_actions(obs, noise.base)  # SPEC 3: a_b = euler(s, z), no gradient
        residual = self.residual(obs, base_actions)  # SPEC 3: r = r_phi(s, a_b)
        divergence, divergence_info = self.divergence(
            obs, residual, noise, with_metrics=with_metrics
        )  # SPEC 4-5
        weighted_divergence, alpha_loss, alpha = self.lagrange(divergence)  # SPEC 6
        q_loss, q = self.q_loss(obs, (base_actions + residual).clamp(-1.0, 1.0))  # SPEC 7
        actor_loss = bc_flow_loss + weighted_divergence + q_loss + alpha_loss  # SPEC 8, less the critic's
        info = {
            "actor_loss": actor_loss.detach(),
            "bc_flow_loss": bc_flow_loss.detach(),
            "distill_loss": divergence.detach(),  # the authors' name for D itself (not alpha * D)
            "q_loss": q_loss.detach(),
            "q": q.detach().mean(),
            "alpha_loss": alpha_loss.detach(),
            "alpha_value": alpha,
        }
        if with_metrics:
            info.update(divergence_info)
            with torch.no_grad():
                info["refinement_mse"] = residual.detach().square().mean()
                info["mse"] = (self.policy_actions(obs, noise.metric) - actions).square().mean()
        return actor_loss, info

    def refine(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """One application of the transport map, clipped: ``clip(a + r(s, a), -1, 1)``."""
        return (actions + self.residual(obs, actions)).clamp(-1.0, 1.0)

    def policy_actions(self, obs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.refine(obs, self.flow_actions(obs, noise))

    @torch.no_grad()
    def sample_actions(
        self,
        obs: torch.Tensor,
        *,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        mode: str = "default",
        num_samples: int = 10,
        num_refine_steps: int = 5,
    ) -> torch.Tensor:
        """Actions [B, d] for states [B, obs_dim] (or [d] for one [obs_dim] state).

        mode "default": ``clip(a_b + r(s, a_b))`` with a_b = euler(s, z), noise [B, d].
        mode "best_of_n": ``num_samples`` base actions per state (noise [B, n, d]), keep the one
            with the highest mean-over-heads Q, refine it once (the authors' ``sample_actions_max_q``).
        mode "iterative": a_0 = euler(s, z), a_{i+1} = clip(a_i + r(s, a_i)) for ``num_refine_steps``
            steps; keep the a_i with the highest Q (``sample_actions_iterative_refinement``).
        """
        if mode not in SAMPLING_MODES:
            raise ConfigError(f"sampling mode must be one of {list(SAMPLING_MODES)}, got {mode!r}")
        obs, single = self._batched_obs(obs)
        B, d = obs.shape[0], self.action_dim
        g = generator if generator is not None else self.noise_generator
        if mode == "best_of_n":
            if noise is None:
                noise = self._randn(g, B, num_samples, d)
            base = self.flow_actions(obs, noise)  # [B, n, d]
            n = base.shape[1]
            q = self.critic(obs.repeat_interleave(n, dim=0), base.reshape(B * n, d)).mean(dim=0).reshape(B, n)
            best = base[torch.arange(B, device=obs.device), q.argmax(dim=1)]
            actions = self.refine(obs, best)
        else:
            if noise is None:
                noise = self._randn(g, B, d)
            actions = self.flow_actions(obs, noise)
            if mode == "default":
                actions = self.refine(obs, actions)
            else:
                chain = [actions]
                for _ in range(num_refine_steps):
                    chain.append(self.refine(obs, chain[-1]))
                stacked = torch.stack(chain)  # [S+1, B, d]
                S1 = stacked.shape[0]
                q = self.critic(obs.repeat(S1, 1), stacked.reshape(S1 * B, d)).mean(dim=0).reshape(S1, B)
                actions = stacked[q.argmax(dim=0), torch.arange(B, device=obs.device)]
        return actions[0] if single else actions
