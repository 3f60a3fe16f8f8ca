"""Flow-matching pieces shared by every agent: the Euler rollout and the flow-matching interpolant.

Every rollout of every agent (critic targets, base actions of the residual, the K Fisher samples,
evaluation, diagnostics) goes through :func:`flow_rollout`. A plain MLP velocity field (no
LayerNorm) runs on the op :func:`fisher_decorator.ops.euler_rollout`, which picks a backend (fused: state
part of the first layer once per rollout, time folded into its bias, K samples per state as one GEMM,
reused buffers, optional bf16/tf32 GEMMs); other fields run the plain loop of
:func:`fdkernels.euler_rollout.euler_rollout_ref`, the loop every fused path is tested against.
"""

from __future__ import annotations

import torch

from fdkernels.euler_rollout import VelocityFn, euler_rollout_ref
from fisher_decorator import ops
from fisher_decorator.networks import MLP
from fisher_decorator.ops.rollout_options import RolloutOptions


@torch.no_grad()
def flow_rollout(
    velocity_field: VelocityFn,
    obs: torch.Tensor,
    noise: torch.Tensor,
    steps: int,
    options: RolloutOptions | None = None,
    *,
    backend: str | None = None,
    rollout_dtype: str | None = None,
    workspace: ops.RolloutWorkspace | None = None,
) -> torch.Tensor:
    """Actions of the behaviour flow: ``x_0 = noise``, ``x_{i+1} = x_i + v(s, x_i, i/N) / N``, clipped to [-1, 1].

    Always without gradient (SPEC "Sampling").

    Args:
        velocity_field: ``v(obs [M, obs_dim], x [M, d], t) -> [M, d]`` with t the float i/N.
        obs: [B, obs_dim] states.
        noise: [B, d] one starting point per state, or [B, K, d] K starting points per state; the
            K samples of all states then run as one (B*K)-row batch (states repeated K times in
            place, like the authors' ``jnp.repeat``).
        steps: N, the number of Euler steps (>= 1).
        options: how plain MLP fields roll out (backend, GEMM dtype, reused buffers; the agent holds one);
            "reference" is the plain port, bit for bit the loop of other fields. Default: auto, float32.
        backend, rollout_dtype, workspace: the same, field by field (the older spelling; not with ``options``).

    Returns:
        actions with ``noise``'s shape.
    """
    if options is not None:
        if (backend, rollout_dtype, workspace) != (None, None, None):
            raise TypeError("flow_rollout: pass either options or backend/rollout_dtype/workspace, not both")
        backend, rollout_dtype, workspace = options.backend, options.dtype, options.workspace
    backend = backend or "auto"
    rollout_dtype = rollout_dtype or "float32"
    if isinstance(velocity_field, MLP) and not velocity_field.layer_norm:
        return ops.euler_rollout(
            velocity_field,
            obs,
            noise,
            steps,
            backend=backend,
            rollout_dtype=rollout_dtype,
            workspace=workspace,
        )
    if rollout_dtype != "float32":
        raise ValueError(f"rollout_dtype={rollout_dtype!r} needs a plain MLP velocity field (no LayerNorm)")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if obs.dim() != 2:
        raise ValueError(f"obs must be [B, obs_dim], got shape {tuple(obs.shape)}")
    if noise.dim() not in (2, 3) or noise.shape[0] != obs.shape[0]:
        raise ValueError(
            f"noise must be [B, d] or [B, K, d] with B = {obs.shape[0]} (obs' batch), got {tuple(noise.shape)}"
        )
    return euler_rollout_ref(velocity_field, obs, noise, steps)


@torch.no_grad()
def flow_rollouts(
    velocity_field: VelocityFn,
    rollouts: list[tuple[torch.Tensor, torch.Tensor]],
    steps: int,
    options: RolloutOptions | None = None,
) -> list[torch.Tensor]:
    """:func:`flow_rollout` of several ``(obs, noise)`` pairs; a plain MLP field runs them as one rollout
    (:func:`fisher_decorator.ops.euler_rollout_groups`: each group's rows in the same GEMMs), other fields
    one by one. Results as :func:`flow_rollout`'s for each pair, to rounding."""
    options = options or RolloutOptions()
    if isinstance(velocity_field, MLP) and not velocity_field.layer_norm:
        return ops.euler_rollout_groups(
            velocity_field,
            rollouts,
            steps,
            backend=options.backend,
            rollout_dtype=options.dtype,
            workspace=options.workspace,
        )
    return [flow_rollout(velocity_field, obs, noise, steps, options) for obs, noise in rollouts]


# The name before the op of the same name made it ambiguous; kept working.
euler_rollout = flow_rollout


def flow_matching_target(
    actions: torch.Tensor, x0: torch.Tensor, t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The linear path of SPEC 2: ``(x_t, velocity target) = ((1 - t) x0 + t a, a - x0)``.

    actions, x0: [B, d]; t: [B, 1].
    """
    return (1.0 - t) * x0 + t * actions, actions - x0
