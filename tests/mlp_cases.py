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


# GELU-tanh: |gelu'| <= 1.13 and |gelu''| <= 0.8 everywhere (Lipschitz constants of the value and the slope).
GELU_LIP, GELU_SLOPE_LIP = 1.13, 0.8
# Rounding of one activation value or slope, in units of u: tanh/exp polynomial of our own or libm's plus the
# few products around it; generous, since it is dwarfed by the n-term dot products beside it.
ACT_ULPS = 16


def mlp_jvp_rounding_bound(params, s, x, t, tangent, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Elementwise bounds on |v - v_exact| and |J v . tangent - exact| for the velocity MLP and its JVP computed
    in ``dtype`` by any summation order, the exact values being fp64 on the same (dtype-rounded) inputs.

    First-order forward error analysis, carried in fp64 on absolute values: a layer z = W h + b with n inputs
    adds n u (|W| |h| + |b|) (a sum of n products, Higham 3.1) to the propagated |W| e_h; the activation maps
    an error e_z to GELU_LIP e_z plus its own rounding. The tangent layer z' = W h' picks up n u |W| |h'|,
    |W| e_h', and the slope's error GELU_SLOPE_LIP e_z times |z'|.
    """
    u = torch.finfo(dtype).eps / 2
    d64 = lambda a: a.detach().double().cpu()
    tcol = d64(t).reshape(-1, 1) if isinstance(t, torch.Tensor) else torch.full((x.shape[0], 1), float(t))
    h = torch.cat([d64(s), d64(x), tcol.double()], dim=-1)
    th = torch.cat([torch.zeros_like(d64(s)), d64(tangent), torch.zeros_like(tcol.double())], dim=-1)
    eh = torch.zeros_like(h)  # the inputs are exact in dtype
    eth = torch.zeros_like(th)
    for i, (w, b) in enumerate(params):
        w, b = d64(w), d64(b)
        n = w.shape[1] + 1
        z, tz = h @ w.T + b, th @ w.T
        ez = eh @ w.abs().T + n * u * (h.abs() @ w.abs().T + b.abs())
        etz = eth @ w.abs().T + n * u * (th.abs() @ w.abs().T)
        if i == len(params) - 1:
            return ez, etz
        h = torch.nn.functional.gelu(z, approximate="tanh")
        slope = torch.func.vmap(torch.func.grad(lambda q: torch.nn.functional.gelu(q, approximate="tanh")))(
            z.flatten()
        ).reshape(z.shape)
        th = slope * tz
        # The activation's own rounding is relative to |z|, not |h|: 0.5 z (1 + tanh(.)) cancels for z < 0.
        eh = GELU_LIP * ez + ACT_ULPS * u * (h.abs() + z.abs())
        eth = slope.abs() * etz + GELU_SLOPE_LIP * ez * tz.abs() + ACT_ULPS * u * (slope.abs() + 1) * tz.abs()
    raise ValueError("params must hold at least one layer")
