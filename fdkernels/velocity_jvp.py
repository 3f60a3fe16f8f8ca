"""Flow-velocity MLP and its Jacobian-vector product: the references and the Triton path.

The velocity field is an MLP on concat [s, x, t] (SPEC "Networks"): ``params`` is the list of its
layers' ``(weight [out, in], bias [out])``, GELU-tanh between layers, none after the last.
``velocity_jvp`` carries a tangent of ``x`` through every layer (forward mode), so
``J_x v . tangent`` costs about one extra pass instead of d passes. The parameters, s, x and t
get no gradient from it: like the scores of the Fisher penalty, the flow field is a constant of
the penalty. Only the tangent is differentiable (its backward is ``J_x v^T . grad``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from fdkernels.linear_gelu import linear_gelu_triton
from fdkernels.time import time_column

Params = Sequence[tuple[torch.Tensor, torch.Tensor]]


def velocity_mlp_ref(
    params: Params, s: torch.Tensor, x: torch.Tensor, t: float | torch.Tensor
) -> torch.Tensor:
    """v(s, x, t) as a plain nn.Linear chain: ``s [N, obs], x [N, d], t float/[N]/[N, 1] -> [N, d]``."""
    h = torch.cat([s, x, time_column(t, x)], dim=-1)
    for i, (w, b) in enumerate(params):
        h = F.linear(h, w, b)
        if i < len(params) - 1:
            h = F.gelu(h, approximate="tanh")
    return h


def velocity_jvp_ref(
    params: Params, s: torch.Tensor, x: torch.Tensor, t: float | torch.Tensor, tangent: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(v, J_x v . tangent) by ``torch.func.jvp`` of the reference MLP; differentiable in ``tangent`` only."""
    fixed = [(w.detach(), b.detach()) for w, b in params]
    s, x = s.detach(), x.detach()
    t = t.detach() if isinstance(t, torch.Tensor) else t
    v, jv = torch.func.jvp(lambda x_: velocity_mlp_ref(fixed, s, x_, t), (x,), (tangent,))
    return v.detach(), jv


def velocity_jvp_triton(
    params: Params, s: torch.Tensor, x: torch.Tensor, t: float | torch.Tensor, tangent: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """The forward through the fused Triton layer kernel: (v, jv, [gelu'(h_l) per hidden layer])."""
    obs, d = s.shape[-1], x.shape[-1]
    w1, b1 = params[0]
    inp = torch.cat([s, x, time_column(t, x)], dim=-1)
    # Layer 1: the tangent enters through the x columns only.
    ta = torch.zeros_like(inp)
    ta[:, obs : obs + d] = tangent
    a, ta, dy = linear_gelu_triton(inp, w1, b1, gelu=len(params) > 1, ta=ta)
    saved = [dy] if dy is not None else []
    for i, (w, b) in enumerate(params[1:], start=1):
        a, ta, dy = linear_gelu_triton(a, w, b, gelu=i < len(params) - 1, ta=ta)
        if dy is not None:
            saved.append(dy)
    return a, ta, saved
