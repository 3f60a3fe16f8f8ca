"""Random velocity MLPs and inputs shared by the MLP-op tests (kernels and references)."""

from __future__ import annotations

import torch


def make_mlp(
    obs: int, d: int, hidden: tuple[int, ...], dtype=torch.float64, seed: int = 0, scale: float = 1.0
):
    """[(weight [out, in], bias [out]), ...] of a velocity MLP on concat [s, x, t], Xavier-like init."""
    g = torch.Generator().manual_seed(seed)
    dims = (obs + d + 1, *hidden, d)
    params = []
    for i in range(len(dims) - 1):
        bound = scale * (6.0 / (dims[i] + dims[i + 1])) ** 0.5
        w = (torch.rand(dims[i + 1], dims[i], generator=g, dtype=torch.float64) * 2 - 1) * bound
        b = 0.1 * torch.randn(dims[i + 1], generator=g, dtype=torch.float64)
        params.append((w.to(dtype), b.to(dtype)))
    return params


def make_batch(N: int, obs: int, d: int, dtype=torch.float64, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(N, obs, generator=g, dtype=torch.float64).to(dtype)
    x = torch.randn(N, d, generator=g, dtype=torch.float64).to(dtype)
    t = torch.rand(N, generator=g, dtype=torch.float64).to(dtype)
    tangent = torch.randn(N, d, generator=g, dtype=torch.float64).to(dtype)
    return s, x, t, tangent
