"""FiDec, Fisher Decorator (arXiv 2604.17919), as in the authors' ``agents/fidec.py`` (SPEC 1-8).

DeFlow's residual policy with an anisotropic penalty: the residual r is measured in the
trace-normalised Fisher metric of the behaviour flow at the state, estimated from K flow samples
``a~_k = euler(s, z_k)`` pushed to ``x_k = (1 - t_f) e_k + t_f a~_k`` with scores
``g_k = v(s, x_k, t_f) / max(1 - t_f, eps)``:
``D = mean_b r^T F_n r / d``, ``F = mean_k g_k g_k^T + damping I``, ``F_n = F / max(tr F / d, eps)``.

The whole loss reads top to bottom in :meth:`ResidualAgent.actor_loss
<fisher_decorator.agents.residual.ResidualAgent.actor_loss>` (SPEC 2-8, shared with DeFlow) and
:meth:`FiDecAgent.divergence` below (SPEC 4-5), plus the critic's loss (SPEC 1, ``FlowAgent.critic_loss``).
The penalty is ``fisher_decorator.ops.fisher_penalty`` with ``penalty_backend`` from the config
("reference" materialises F as the authors do; "cpu"/"cuda"/"triton" are the fused matrix-free
kernels; "auto" the fastest available).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from fisher_decorator.agents.base import FlowNoise, Info
from fisher_decorator.agents.residual import ResidualAgent, ResidualConfig
from fisher_decorator.config import ConfigError, _positive, option
from fisher_decorator.ops import BACKENDS
from fisher_decorator.ops.fisher_options import FisherOptions

SCORES = ("velocity", "tweedie")
ESTIMATORS = ("score", "jacobian")


@dataclass(frozen=True)
class FiDecConfig(ResidualConfig):
    """FiDec's config; defaults are the authors' ``get_config`` (their OGBench runs use the task presets)."""

    num_fisher_samples: int = option(4, "K: flow samples per state for the Fisher estimate.")
    fisher_t: float = option(0.95, "Interpolation time t_f of the Fisher samples.")
    fisher_t_width: float = option(
        0.0, "If > 0, t per (state, sample) ~ U[max(1e-3, fisher_t - width), min(0.999, fisher_t)]."
    )
    fisher_damping: float = option(1e-3, "lambda: damping added to F's diagonal before trace normalisation.")
    fisher_score_eps: float = option(1e-6, "eps of the score's 1 / max(1 - t, eps).")
    fisher_trace_eps: float = option(1e-6, "Floor of the per-state trace normaliser tr(F) / d.")
    fisher_score: str = option(
        "velocity",
        "Score estimate: v / (1 - t) (the authors') or the exact Gaussian-path (t v - x) / (1 - t).",
        choices=SCORES,
    )
    penalty_backend: str = option(
        "auto",
        "Backend of the Fisher penalty op (reference: the authors' d x d matrices).",
        choices=("auto", *BACKENDS),
    )
    fisher_estimator: str = option(
        "score",
        "r^T F r from the score samples, mean_k (g_k . r)^2 (the authors'), or 'jacobian': "
        "-mean_k r^T J_x g(x_k) r by a velocity JVP (second Bartlett identity; can be negative for a "
        "learned field). The trace normaliser comes from the scores either way.",
        choices=ESTIMATORS,
    )

    def check(self) -> None:
        super().check()
        _positive(self, "num_fisher_samples", "fisher_score_eps", "fisher_trace_eps")
        _positive(self, "fisher_t_width", "fisher_damping", allow_zero=True)
        if not 0.0 <= self.fisher_t <= 1.0:
            raise ConfigError(f"fisher_t must be in [0, 1], got {self.fisher_t}")
        if self.fisher_t_width > 0 and max(1e-3, self.fisher_t - self.fisher_t_width) > min(
            0.999, self.fisher_t
        ):
            raise ConfigError(
                f"fisher_t={self.fisher_t} with fisher_t_width={self.fisher_t_width} gives an empty t range"
            )


@dataclass
class FiDecNoise(FlowNoise):
    """FlowNoise plus the Fisher draws: fisher_noise [B, K, d] (the z_k), fisher_x0 [B, K, d] (the e_k),
    fisher_t [B, K] (t_f per state and sample)."""

    fisher_noise: torch.Tensor
    fisher_x0: torch.Tensor
    fisher_t: torch.Tensor


class FiDecAgent(ResidualAgent):
    """Behaviour flow + residual with the trace-normalised Fisher penalty + critic ensemble."""

    name: ClassVar[str] = "fidec"
    config_class: ClassVar[type] = FiDecConfig
    noise_class: ClassVar[type] = FiDecNoise
    q_norm_eps: ClassVar[float | None] = 1e-6

    def _build_actor(self, generator: torch.Generator, dtype: torch.dtype) -> None:
        super()._build_actor(generator, dtype)
        cfg = self.config
        # The penalty ops' options (SPEC 4-5), one object for the three ops (built here, outside any traced code).
        self.fisher_options = FisherOptions(
            score=cfg.fisher_score,
            damping=cfg.fisher_damping,
            score_eps=cfg.fisher_score_eps,
            trace_eps=cfg.fisher_trace_eps,
            backend=cfg.penalty_backend,
        )

    def _extra_noise(self, g: torch.Generator, batch_size: int) -> dict[str, torch.Tensor]:
        cfg = self.config
        B, K, d = batch_size, cfg.num_fisher_samples, self.action_dim
        fisher_noise = self._randn(g, B, K, d)
        fisher_x0 = self._randn(g, B, K, d)
        if cfg.fisher_t_width > 0.0:
            low, high = max(1e-3, cfg.fisher_t - cfg.fisher_t_width), min(0.999, cfg.fisher_t)
            fisher_t = low + (high - low) * self._rand(g, B, K)
        else:
            fisher_t = torch.full((B, K), cfg.fisher_t, device=self.device, dtype=self.dtype)
        return {"fisher_noise": fisher_noise, "fisher_x0": fisher_x0, "fisher_t": fisher_t}

    def update_rollouts(self, batch, noise: FiDecNoise, *, with_metrics: bool) -> list[tuple]:
        """The residual agents' rollouts and the K Fisher samples a~_k = euler(s, z_k) of SPEC 4."""
        rollouts = super().update_rollouts(batch, noise, with_metrics=with_metrics)
        return rollouts + [(batch["observations"], noise.fisher_noise)]

    @torch.no_grad()
    def fisher_samples(self, obs: torch.Tensor, noise: FiDecNoise) -> tuple[torch.Tensor, torch.Tensor]:
        """SPEC 4 without gradient: (velocity [B, K, d], x_t [B, K, d]) at the K Fisher points of each state."""
        B, K, d = noise.fisher_noise.shape
        sampled = self.flow_actions(obs, noise.fisher_noise)  # [B, K, d], one (B*K)-row rollout
        t = noise.fisher_t[..., None]
        x_t = (1.0 - t) * noise.fisher_x0 + t * sampled
        velocity = self.velocity_field(
            obs.repeat_interleave(K, dim=0), x_t.reshape(B * K, d), noise.fisher_t.reshape(B * K, 1)
        )
        return velocity.reshape(B, K, d), x_t

    def divergence(
        self, obs: torch.Tensor, residual: torch.Tensor, noise: FiDecNoise, *, with_metrics: bool
    ) -> tuple[torch.Tensor, Info]:
        """D = mean_b r^T F_n r / d, F_n the trace-normalised Fisher metric of the flow at the state."""
        cfg, fisher = self.config, self.fisher_options
        d = self.action_dim
        velocity, x_t = self.fisher_samples(obs, noise)
        penalty, trace_per_dim = fisher.penalty(velocity, x_t, noise.fisher_t, residual)
        if cfg.fisher_estimator == "jacobian":
            field_obs = self.velocity_field.select_obs(obs)  # pixel tasks: the flow's feature columns
            quad = fisher.quadratic_jacobian(self.velocity_field, field_obs, x_t, noise.fisher_t, residual)
            penalty = quad / (trace_per_dim * d)
        info = {}
        if with_metrics:
            with torch.no_grad():
                scores = fisher.scores(velocity, x_t, noise.fisher_t)
                raw_trace_per_dim = (scores.square().sum(-1).mean(1) + cfg.fisher_damping * d) / d
                info["fisher_quad_mean"] = (penalty.detach() * d).mean()
                info["fisher_trace_per_dim_mean"] = trace_per_dim.detach().mean()
                info["fisher_diag_mean"] = (raw_trace_per_dim / trace_per_dim).mean()
        return penalty.mean(), info
