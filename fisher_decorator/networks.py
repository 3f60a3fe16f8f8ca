"""The networks of SPEC "Networks": plain MLPs, the flow velocity field, the residual, the critic ensemble.

Everything follows the authors' flax modules (``utils/networks.py``): GELU with the tanh
approximation between hidden layers, Xavier-uniform ("fan_avg", scale 1) weights, zero biases,
optional LayerNorm (eps 1e-6, learned scale and bias) after every hidden activation, none after
the output layer. Shapes: ``obs: [N, obs_dim]``, ``actions / x: [N, d]``, ``t: [N, 1]`` (or a float).

The critic ensemble keeps the weights of its heads stacked (``[H, in, out]``) and evaluates all
heads in one batched computation, like the authors' ``nn.vmap`` ensemble.

The MLPs' linear layers run on the GEMM path this machine measured fastest (:mod:`fisher_decorator.gemm_path`), and
with :func:`set_autocast` a network's forward and backward run in bf16 (CPU autocast) on fp32 parameters,
returning fp32 outputs: the losses and Adam stay fp32.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fdkernels.time import time_column
from fisher_decorator.gemm_path import linear
from fisher_decorator.ops.gelu import gelu_tanh

LAYER_NORM_EPS = 1e-6


def gelu(x: torch.Tensor) -> torch.Tensor:
    """GELU, tanh approximation (flax's ``nn.gelu`` default): the compiled kernel where built
    (fisher_decorator.ops.gelu_tanh, same values to rounding, ~3x faster on CPU), else F.gelu."""
    return gelu_tanh(x)


def plain_gelu(x: torch.Tensor) -> torch.Tensor:
    """``F.gelu(x, approximate="tanh")``: ATen's GELU, for the plain (unfused) networks."""
    return F.gelu(x, approximate="tanh")


def xavier_uniform_(weight: torch.Tensor, fan_in: int, fan_out: int, generator: torch.Generator | None):
    """In-place U(-a, a) with a = sqrt(6 / (fan_in + fan_out)): variance_scaling(1, 'fan_avg', 'uniform')."""
    bound = (6.0 / (fan_in + fan_out)) ** 0.5
    with torch.no_grad():
        weight.uniform_(-bound, bound, generator=generator)
    return weight


class EncodedInput:
    """An image encoder in front of a network (pixel tasks), as the authors' ``encoder=`` field.

    The agent encodes a batch once per state and passes every network the concatenated features of all
    its encoders (``[N, sum of widths]``); a network with an encoder reads its own columns ``obs_slice``.
    Features already ``obs_dim`` wide (a fused rollout hands the selected columns on) pass unchanged.
    """

    def attach_encoder(self, encoder: nn.Module, obs_slice: slice) -> None:
        self.encoder = encoder  # a submodule: trained, checkpointed and Polyak-averaged with the network
        self.obs_slice = obs_slice

    def select_obs(self, obs: torch.Tensor) -> torch.Tensor:
        cols = self.__dict__.get("obs_slice")
        return obs if cols is None or obs.shape[-1] == self.obs_dim else obs[..., cols]


def _check_dims(name: str, hidden_dims: Sequence[int]) -> tuple[int, ...]:
    dims = tuple(int(h) for h in hidden_dims)
    if not dims or any(h <= 0 for h in dims):
        raise ValueError(f"{name} must be a non-empty sequence of positive widths, got {hidden_dims!r}")
    return dims


class MLP(nn.Module):
    """``in_dim -> hidden_dims... -> out_dim``; GELU (+ LayerNorm) after each hidden layer, linear output.

    Args:
        in_dim, out_dim: input and output widths.
        hidden_dims: hidden widths, e.g. (512, 512, 512, 512).
        layer_norm: LayerNorm (eps 1e-6) after every hidden activation.
        generator: the torch.Generator the initial weights are drawn from (reproducible init).
        fused_gelu: GELU by the compiled kernel (:func:`gelu`) or by ATen (:func:`plain_gelu`).
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dims: Sequence[int],
        out_dim: int,
        *,
        layer_norm: bool = False,
        fused_gelu: bool = True,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        dims = (int(in_dim), *_check_dims("hidden_dims", hidden_dims), int(out_dim))
        self.in_dim, self.out_dim = dims[0], dims[-1]
        self.hidden_dims = dims[1:-1]
        self.layer_norm = layer_norm
        self.activation = gelu if fused_gelu else plain_gelu
        self.linears = nn.ModuleList()
        self.norms = nn.ModuleList()
        for i in range(len(dims) - 1):
            lin = nn.Linear(dims[i], dims[i + 1], device=device, dtype=dtype)
            xavier_uniform_(lin.weight, dims[i], dims[i + 1], generator)
            nn.init.zeros_(lin.bias)
            self.linears.append(lin)
            if layer_norm and i < len(dims) - 2:
                self.norms.append(nn.LayerNorm(dims[i + 1], eps=LAYER_NORM_EPS, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.linears) - 1
        out_dtype = x.dtype
        with _autocast(self, x):
            for i, lin in enumerate(self.linears):
                x = linear(x, lin.weight, lin.bias)
                if i < last:
                    x = self.activation(x)
                    if self.layer_norm:
                        x = self.norms[i](x)
        return x.to(out_dtype)


class VelocityField(EncodedInput, MLP):
    """The behaviour flow's velocity ``v_theta(s, x, t)``: MLP on concat [s, x, t] -> [N, d]."""

    def __init__(self, obs_dim: int, action_dim: int, hidden_dims: Sequence[int], **kwargs):
        super().__init__(obs_dim + action_dim + 1, hidden_dims, action_dim, **kwargs)
        self.obs_dim, self.action_dim = int(obs_dim), int(action_dim)

    def forward(self, obs: torch.Tensor, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """obs [N, obs_dim], x [N, d], t a float, [N] or [N, 1] -> velocity [N, d]."""
        return super().forward(torch.cat([self.select_obs(obs), x, time_column(t, x)], dim=-1))


class StateActionMLP(EncodedInput, MLP):
    """An MLP on concat [s, a] with d outputs: the residual ``r_phi(s, a)`` and FQL's ``mu_w(s, z)``."""

    def __init__(self, obs_dim: int, action_dim: int, hidden_dims: Sequence[int], **kwargs):
        super().__init__(obs_dim + action_dim, hidden_dims, action_dim, **kwargs)
        self.obs_dim, self.action_dim = int(obs_dim), int(action_dim)

    def forward(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """obs [N, obs_dim], actions [N, d] -> [N, d]."""
        return super().forward(torch.cat([self.select_obs(obs), actions], dim=-1))


class CriticEnsemble(EncodedInput, nn.Module):
    """``Q_k(s, a)`` for k = 1..H in one batched computation: weights stacked as [H, in, out].

    ``forward(obs [N, obs_dim], actions [N, d]) -> q [H, N]``. With ``detach_params=True`` the
    heads run on detached parameters: gradients reach the actions but never the critic (the
    actor's Q term, SPEC 7).
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        hidden_dims: Sequence[int],
        *,
        num_heads: int = 2,
        layer_norm: bool = True,
        fused_gelu: bool = True,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        if num_heads < 1:
            raise ValueError(f"num_heads must be >= 1, got {num_heads}")
        dims = (obs_dim + action_dim, *_check_dims("hidden_dims", hidden_dims), 1)
        self.obs_dim, self.action_dim, self.num_heads = int(obs_dim), int(action_dim), int(num_heads)
        self.hidden_dims = dims[1:-1]
        self.layer_norm = layer_norm
        self.activation = gelu if fused_gelu else plain_gelu
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.norm_weights = nn.ParameterList()
        self.norm_biases = nn.ParameterList()
        for i in range(len(dims) - 1):
            w = torch.empty(num_heads, dims[i], dims[i + 1], device=device, dtype=dtype)
            for h in range(num_heads):  # each head's kernel has the fans of one Dense layer
                xavier_uniform_(w[h], dims[i], dims[i + 1], generator)
            self.weights.append(nn.Parameter(w))
            self.biases.append(
                nn.Parameter(torch.zeros(num_heads, 1, dims[i + 1], device=device, dtype=dtype))
            )
            if layer_norm and i < len(dims) - 2:
                shape = (num_heads, 1, dims[i + 1])
                self.norm_weights.append(nn.Parameter(torch.ones(shape, device=device, dtype=dtype)))
                self.norm_biases.append(nn.Parameter(torch.zeros(shape, device=device, dtype=dtype)))

    def forward(
        self, obs: torch.Tensor, actions: torch.Tensor, *, detach_params: bool = False
    ) -> torch.Tensor:
        get = (lambda p: p.detach()) if detach_params else (lambda p: p)
        x = torch.cat([self.select_obs(obs), actions], dim=-1)
        H, N = self.num_heads, x.shape[0]
        last = len(self.weights) - 1
        out_dtype = x.dtype
        h = x.unsqueeze(0).expand(H, N, x.shape[-1])
        with _autocast(self, x):
            # heads stay one batched MKL GEMM per layer: per-head oneDNN calls on the [in, out] weights measured
            # slower at the paper's sizes on Zen 4 (fp32 158 vs 168 GFLOP/s, bf16 377 vs 413)
            for i in range(len(self.weights)):
                h = torch.baddbmm(get(self.biases[i]), h, get(self.weights[i]))
                if i < last:
                    h = self.activation(h)
                    if self.layer_norm:
                        h = F.layer_norm(h, (h.shape[-1],), eps=LAYER_NORM_EPS)
                        h = torch.addcmul(get(self.norm_biases[i]), h, get(self.norm_weights[i]))
        return h.squeeze(-1).to(out_dtype)


AUTOCAST_DTYPES = ("none", "bfloat16")


def set_autocast(module: nn.Module, dtype: str = "none") -> None:
    """Run the forward (and so the backward) of every MLP / critic in ``module`` under CPU/CUDA autocast in
    ``dtype``: bf16 GEMMs and activations on fp32 parameters, outputs cast back to the input's dtype."""
    if dtype not in AUTOCAST_DTYPES:
        raise ValueError(f"autocast must be one of {AUTOCAST_DTYPES}, got {dtype!r}")
    for m in module.modules():
        if isinstance(m, (MLP, CriticEnsemble)):
            m.autocast_dtype = None if dtype == "none" else getattr(torch, dtype)


def _autocast(net: nn.Module, x: torch.Tensor):
    """The network's autocast context (a no-op one when off; fp64 inputs are never autocast)."""
    dtype = getattr(net, "autocast_dtype", None)
    enabled = dtype is not None and x.dtype == torch.float32
    return torch.autocast(x.device.type, dtype=dtype or torch.bfloat16, enabled=enabled)


@torch.no_grad()
@torch.no_grad()
def polyak_(target: list[torch.Tensor], source: list[torch.Tensor], tau: float) -> None:
    """``target <- tau * source + (1 - tau) * target`` (SPEC "Losses") over lists of tensors, as foreach kernels.

    Two passes (scale, then add) rather than ``_foreach_lerp_``: lerp rounds differently (``t + w (s - t)``),
    and these are the numerics the runs, checkpoints and parity tests were recorded with."""
    if len(target) != len(source):
        raise ValueError(f"target has {len(target)} tensors, source {len(source)}")
    torch._foreach_mul_(target, 1.0 - tau)
    torch._foreach_add_(target, source, alpha=tau)


def polyak_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """:func:`polyak_` over two modules' parameters."""
    polyak_(list(target.parameters()), list(source.parameters()), tau)
