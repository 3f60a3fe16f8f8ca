"""The optimizer step every agent shares, for one agent or for S seeds stacked along a leading dimension.

SPEC "Losses": the gradient of the one loss scaled by ``min(1, grad_clip / (global_norm + 1e-6))`` (the
authors' ``TrainState.apply_loss_fn``), the target critic moved towards the critic of *before* this step
(their ``target_update`` reads the pre-update network), then one Adam step over every trainable parameter.
:meth:`FlowAgent.update <fisher_decorator.agents.base.FlowAgent.update>` and
:meth:`StackedAgents.update <fisher_decorator.multiseed.StackedAgents.update>` both end in :func:`apply_step`;
with ``num_seeds`` each seed's clip and metrics come from that seed's gradients alone.
"""

from __future__ import annotations

import torch

from fisher_decorator.networks import polyak_

Info = dict[str, torch.Tensor]


def clip_gradients_(
    grads: list[torch.Tensor],
    grad_clip: float | None,
    *,
    num_seeds: int | None = None,
    with_metrics: bool = True,
) -> Info:
    """Scale ``grads`` in place by the global-norm clip and return the gradient metrics.

    ``num_seeds=None``: one agent, metrics are 0-d. ``num_seeds=S``: every gradient is [S, ...] and the norm,
    clip and metrics are per seed ([S] tensors).
    """
    S = 1 if num_seeds is None else num_seeds
    pieces = [g_i for g in grads for g_i in g.unbind(0)] if num_seeds is not None else grads
    norms = torch.stack(torch._foreach_norm(pieces)).view(len(grads), S).t()  # [S, tensors]
    global_norm = torch.linalg.vector_norm(norms, dim=1)  # [S]
    info: Info = {}
    if with_metrics:
        info["grad/max"] = torch.stack([g.reshape(S, -1).amax(1) for g in grads]).amax(0)
        info["grad/min"] = torch.stack([g.reshape(S, -1).amin(1) for g in grads]).amin(0)
        info["grad/norm"] = norms.sum(dim=1)  # the authors' figure: the sum of per-tensor norms
        info["grad/global_norm"] = global_norm
    if grad_clip is not None:
        scale = torch.clamp(grad_clip / (global_norm + 1e-6), max=1.0)
        if num_seeds is None:
            torch._foreach_mul_(grads, scale[0])
        else:
            for g in grads:
                g.mul_(scale.view(S, *([1] * (g.dim() - 1))))
        if with_metrics:
            info["grad/clip_scale"] = scale
            info["grad/norm_clipped"] = global_norm * scale
    return {k: v[0] for k, v in info.items()} if num_seeds is None else info


def apply_step(
    optimizer: torch.optim.Optimizer,
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    *,
    target: list[torch.Tensor],
    source: list[torch.Tensor],
    tau: float,
) -> None:
    """Polyak target towards the critic as it is now (before the step), then the optimizer step on ``grads``."""
    for p, g in zip(params, grads):
        p.grad = g
    polyak_(target, source, tau)
    optimizer.step()
