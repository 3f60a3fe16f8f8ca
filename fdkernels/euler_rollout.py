"""Euler rollout of the flow field: the plain reference and the Triton path.

SPEC "Sampling": ``x_0 = noise``, ``x_{i+1} = x_i + v(s, x_i, i/N) / N``, clipped to [-1, 1], without
gradient. The reference is the straightforward port: states repeated per sample, the input
concat [s, x, t] rebuilt and the whole MLP run at every step. The fused paths (here for Triton,
in fisher_decorator.ops.euler_rollout for CPU/CUDA) instead compute the state part of the first
layer once per rollout, fold the time input into that per-state bias, and run the K samples of
all states as one (B*K)-row GEMM.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from fdkernels.linear_gelu import linear_gelu_triton
from fdkernels.velocity_jvp import Params, velocity_mlp_ref

VelocityFn = Callable[[torch.Tensor, torch.Tensor, "float | torch.Tensor"], torch.Tensor]


@torch.no_grad()
def euler_rollout_ref(
    velocity: Params | VelocityFn, s: torch.Tensor, noise: torch.Tensor, steps: int
) -> torch.Tensor:
    """The one plain Euler loop (every fused rollout is tested against it).

    ``velocity``: the MLP's ``[(weight, bias), ...]`` on concat [s, x, t], or any ``v(s, x, t)`` callable (a
    network with LayerNorm, say); t is passed as the float i/N. ``s: [B, obs]``, ``noise: [B, d]`` or
    ``[B, K, d]`` (the states repeated K times, like the authors' ``jnp.repeat``) -> actions of noise's shape.
    """
    v = velocity if callable(velocity) else functools.partial(velocity_mlp_ref, velocity)
    shape = noise.shape
    if noise.dim() == 3:
        s = s.repeat_interleave(shape[1], dim=0)
    x = noise.reshape(-1, shape[-1])
    for i in range(steps):
        x = x + v(s, x, i / steps) / steps
    return x.clamp(-1.0, 1.0).reshape(shape)


def rollout_first_layer_gelu_ref(
    x: torch.Tensor,
    w_xT: torch.Tensor,
    state_bias: torch.Tensor,
    w_t: torch.Tensor,
    t: float,
    row_state: torch.Tensor,
) -> torch.Tensor:
    """The first layer of an Euler step of the fused rollout: ``gelu_tanh(state_bias[row_state] + t w_t +
    x @ w_xT)``, x [M, d], w_xT [d, H], state_bias [B, H] (``W_s s + b`` per state), w_t [H], row_state [M]
    (each row's state). The reference of the CPU op ``fidec::rollout_first_layer_gelu_``."""
    return torch.nn.functional.gelu(state_bias[row_state] + t * w_t + x @ w_xT, approximate="tanh")


def rollout_out_layer_euler_ref(
    x: torch.Tensor, h: torch.Tensor, b: torch.Tensor, w_out: torch.Tensor, b_out: torch.Tensor, scale: float
) -> torch.Tensor:
    """The end of an Euler step of the fused rollout: ``x + scale (b_out + gelu_tanh(h + b) @ w_out^T)``, x [M, d],
    h [M, H] (the last hidden layer's GEMM output, bias not added), b [H], w_out [d, H], b_out [d], scale 1/N.
    The reference of the CPU op ``fidec::rollout_out_layer_euler_`` (which updates x in place)."""
    a = torch.nn.functional.gelu(h.to(x.dtype) + b, approximate="tanh")
    return x + scale * (b_out + a @ w_out.t())


def split_first_layer(params: Params, obs_dim: int, d: int):
    """The first layer's weight split by input block: (W_s [H, obs], W_x [H, d], w_t [H])."""
    w1 = params[0][0]
    return w1[:, :obs_dim], w1[:, obs_dim : obs_dim + d], w1[:, obs_dim + d]


@torch.no_grad()
def euler_rollout_triton(
    params: Params, s: torch.Tensor, noise: torch.Tensor, steps: int, *, allow_tf32: bool = False
) -> torch.Tensor:
    """The rollout through the fused Triton layer kernel (GEMM + per-state bias + GELU epilogue)."""
    shape = noise.shape
    B, d = s.shape[0], shape[-1]
    w_s, w_x, w_t = split_first_layer(params, s.shape[1], d)
    b1 = params[0][1]
    state_bias = torch.addmm(b1, s, w_s.t())  # [B, H]: once per rollout
    x = noise.reshape(-1, d).to(torch.float32 if noise.dtype != torch.float64 else torch.float64).clone()
    for i in range(steps):
        bias = torch.add(state_bias, w_t, alpha=i / steps)
        a, _, _ = linear_gelu_triton(
            x.to(w_x.dtype), w_x.contiguous(), bias, gelu=len(params) > 1, allow_tf32=allow_tf32
        )
        for j, (w, b) in enumerate(params[1:], start=1):
            a, _, _ = linear_gelu_triton(a, w, b, gelu=j < len(params) - 1, allow_tf32=allow_tf32)
        x.add_(a, alpha=1.0 / steps)
    del B
    return x.clamp_(-1.0, 1.0).to(noise.dtype).reshape(shape)
