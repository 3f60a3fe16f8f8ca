"""``euler_rollout``: the behaviour flow's Euler sampler, fused (SPEC "Kernel ops", "Where the cost is").

The fused rollout computes the state part of the first layer, ``W_s s + b``, once per rollout; at
step i the time input is folded into that per-state bias (``+ (i/N) w_t``), and the K samples of
every state go through each layer as one (B*K)-row GEMM. Bias add and GELU-tanh run as one
vectorised pass in place (``fidec::bias_gelu_``, ~3x faster than ATen's GELU-tanh on CPU) after a
GEMM into a reused buffer, or oneDNN's fused linear + GELU where this machine's GEMM-path probe
measured it faster (:mod:`fisher_decorator.gemm_path`). Buffers live in a
:class:`RolloutWorkspace` and are reused across steps and calls, so the Euler loop allocates
nothing of its own. GEMMs can run in bf16 (CPU with AVX-512 bf16, GPU) or tf32 (Ampere+ GPU); the
state ``x`` is always accumulated in fp32. Under torch.compile a functional form of the same
computation is traced instead, and inductor does the fusing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from torch import nn

from fdkernels.euler_rollout import euler_rollout_ref, euler_rollout_triton
from fisher_decorator import gemm_path
from fisher_decorator.ops._extension import _load, resolve_backend
from fisher_decorator.ops.velocity_jvp import Params, check_velocity_inputs, mlp_params

ROLLOUT_DTYPES = ("float32", "bfloat16", "tf32")


def onednn_linear_gelu_available() -> bool:
    """Whether this torch has oneDNN's fused linear + GELU-tanh (:func:`fisher_decorator.gemm_path.onednn_available`)."""
    return gemm_path.onednn_available()


class RolloutWorkspace:
    """Reused rollout buffers, and weight copies in the compute dtype cached until a weight changes.

    One per agent (or thread): a rollout writes into the buffers of the last call with the same
    shapes, so results must be consumed (or copied) before the next rollout of the same shape.
    """

    def __init__(self):
        self._buffers: dict[tuple, torch.Tensor] = {}
        self._casts: dict[int, tuple[int, torch.dtype, torch.Tensor, torch.Tensor]] = {}

    def buffer(
        self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
    ) -> torch.Tensor:
        key = (name, tuple(shape), dtype, str(device))
        buf = self._buffers.get(key)
        if buf is None:
            buf = self._buffers[key] = torch.empty(shape, dtype=dtype, device=device)
        return buf

    def cast(self, p: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``p`` in ``dtype``, recast only when ``p`` has changed (its version counter moved)."""
        if p.dtype == dtype:
            return p
        hit = self._casts.get(id(p))
        if hit is not None and hit[0] == p._version and hit[1] == dtype and hit[3] is p:
            return hit[2]
        out = p.detach().to(dtype)
        self._casts[id(p)] = (p._version, dtype, out, p)
        return out

    def clear(self) -> None:
        self._buffers.clear()
        self._casts.clear()


_DEFAULT_WORKSPACE = RolloutWorkspace()


def _compute_dtype(rollout_dtype: str, device: torch.device, param_dtype: torch.dtype) -> torch.dtype:
    if rollout_dtype not in ROLLOUT_DTYPES:
        raise ValueError(f"rollout_dtype must be one of {ROLLOUT_DTYPES}, got {rollout_dtype!r}")
    if rollout_dtype == "tf32" and device.type != "cuda":
        raise ValueError("rollout_dtype='tf32' needs a CUDA device (TF32 is an Ampere+ GPU format)")
    if rollout_dtype == "bfloat16":
        return torch.bfloat16
    return param_dtype


def _bias_gelu_(h: torch.Tensor, bias: torch.Tensor) -> None:
    """In place ``h[g] <- gelu_tanh(h[g] + bias[g])``, h [G, R, H], bias [G, H]: the compiled kernel where
    the extension has one for h's device, else ATen."""
    mod, _ = _load()
    if mod is not None and (h.device.type == "cpu" or (h.device.type == "cuda" and mod.with_cuda)):
        torch.ops.fidec.bias_gelu_(h, bias)
    else:
        h.copy_(torch.nn.functional.gelu(h + bias[:, None, :], approximate="tanh"))


def _matmul_out(a: torch.Tensor, w: torch.Tensor, out: torch.Tensor) -> None:
    """``out[s] = a[s] @ w[s]^T`` for a stack of S; S = 1 takes the plain GEMM."""
    if a.shape[0] == 1:
        torch.mm(a[0], w[0].t(), out=out[0])
    else:
        torch.bmm(a, w.transpose(1, 2), out=out)


@torch.no_grad()
def _rollout_fused(
    layers: list[tuple[torch.Tensor, torch.Tensor]],
    s: torch.Tensor,
    noise: torch.Tensor,
    steps: int,
    ws: RolloutWorkspace,
    use_onednn: bool,
) -> torch.Tensor:
    """The fused rollout of a stack of S MLPs: ``layers`` [(W [S, out, in], b [S, out])] already in the
    compute dtype, ``s: [S, B, obs]``, ``noise: [S, B, d]`` or ``[S, B, K, d]``; S = 1 for one agent."""
    shape = noise.shape
    S, B, obs = s.shape
    d = shape[-1]
    K = shape[2] if noise.dim() == 4 else 1
    M = B * K
    dev, dtype = s.device, layers[0][0].dtype
    w1, b1 = layers[0]
    w_s, w_x, w_t = w1[..., :obs], w1[..., obs : obs + d].contiguous(), w1[..., obs + d]
    hidden, out_layer = layers[1:-1], (layers[-1] if len(layers) > 1 else None)
    H1 = w1.shape[1]
    acc = torch.float64 if noise.dtype == torch.float64 else torch.float32

    state_bias = torch.baddbmm(b1[:, None, :], s.to(dtype), w_s.transpose(1, 2))  # [S, B, H1], once
    x = ws.buffer("x", (S, M, d), acc, dev)
    x.copy_(noise.reshape(S, M, d))
    x_in = x if dtype == acc else ws.buffer("x_in", (S, M, d), dtype, dev)
    bias = ws.buffer("bias", (S, B, H1), dtype, dev)
    h1 = ws.buffer("h1", (S, M, H1), dtype, dev)
    hid = [ws.buffer(f"h{j + 2}", (S, M, w.shape[1]), dtype, dev) for j, (w, _) in enumerate(hidden)]
    v = ws.buffer("v", (S, M, d), dtype, dev)
    onednn = use_onednn and S == 1  # oneDNN's fused linear is a 2-D op
    for i in range(steps):
        if x_in is not x:
            x_in.copy_(x)
        torch.add(state_bias, w_t[:, None, :], alpha=i / steps, out=bias)
        _matmul_out(x_in, w_x, h1)
        if out_layer is None:  # a one-layer "MLP": the first layer is the output
            h1.view(S * B, K, H1).add_(bias.view(S * B, 1, H1))
            x.add_(h1, alpha=1.0 / steps)
            continue
        _bias_gelu_(h1.view(S * B, K, H1), bias.view(S * B, H1))
        a = h1
        for (w, b), buf in zip(hidden, hid):
            if onednn:
                a = torch.ops.mkldnn._linear_pointwise(a[0], w[0], b[0], "gelu", [], "tanh")[None]
            else:
                _matmul_out(a, w, buf)
                _bias_gelu_(buf, b)
                a = buf
        w_out, b_out = out_layer
        torch.baddbmm(b_out[:, None, :], a, w_out.transpose(1, 2), out=v)
        x.add_(v, alpha=1.0 / steps)
    return x.clamp(-1.0, 1.0).to(noise.dtype).reshape(shape)


def _rollout_functional(
    layers: list[tuple[torch.Tensor, torch.Tensor]], s, noise, steps: int
) -> torch.Tensor:
    """The fused rollout's computation without buffers or custom ops: what torch.compile traces."""
    shape = noise.shape
    S, B, obs = s.shape
    d = shape[-1]
    K = shape[2] if noise.dim() == 4 else 1
    dtype = layers[0][0].dtype
    w1, b1 = layers[0]
    w_s, w_x, w_t = w1[..., :obs], w1[..., obs : obs + d], w1[..., obs + d]
    acc = torch.float64 if noise.dtype == torch.float64 else torch.float32
    state_bias = torch.baddbmm(b1[:, None, :], s.to(dtype), w_s.transpose(1, 2))
    x = noise.reshape(S, B * K, d).to(acc)
    for i in range(steps):
        bias = (state_bias + (i / steps) * w_t[:, None, :]).repeat_interleave(K, dim=1)
        a = torch.baddbmm(bias, x.to(dtype), w_x.transpose(1, 2))
        if len(layers) > 1:
            a = torch.nn.functional.gelu(a, approximate="tanh")
            for j, (w, b) in enumerate(layers[1:], start=1):
                a = torch.baddbmm(b[:, None, :], a, w.transpose(1, 2))
                if j < len(layers) - 1:
                    a = torch.nn.functional.gelu(a, approximate="tanh")
        x = x + a.to(acc) / steps
    return x.clamp(-1.0, 1.0).to(noise.dtype).reshape(shape)


@torch.no_grad()
def stacked_euler_rollout(
    weights: Sequence[torch.Tensor],
    biases: Sequence[torch.Tensor],
    s: torch.Tensor,
    noise: torch.Tensor,
    steps: int,
    *,
    rollout_dtype: str = "float32",
    workspace: RolloutWorkspace | None = None,
) -> torch.Tensor:
    """Euler rollouts of S velocity MLPs at once, each on its own states and noise: the fused rollout of
    :func:`euler_rollout` with every GEMM batched over a leading seed dimension (multi-seed training).

    Args:
        weights, biases: per layer, ``[S, out, in]`` and ``[S, out]`` (layer 1 takes concat [s, x, t]).
        s: [S, B, obs_dim]. noise: [S, B, d] or [S, B, K, d]. steps: N >= 1.
        rollout_dtype: as :func:`euler_rollout`. workspace: reused buffers (default: a module-level one).

    Returns:
        actions with ``noise``'s shape, clipped to [-1, 1].
    """
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    if s.dim() != 3 or noise.dim() not in (3, 4) or noise.shape[:2] != s.shape[:2]:
        raise ValueError(
            f"s must be [S, B, obs_dim] and noise [S, B, d] or [S, B, K, d], got {tuple(s.shape)} and "
            f"{tuple(noise.shape)}"
        )
    obs, d = s.shape[-1], noise.shape[-1]
    if weights[0].shape[-1] != obs + d + 1:
        raise ValueError(f"layer 1 takes {weights[0].shape[-1]} inputs, not obs_dim + d + 1 = {obs + d + 1}")
    dtype = _compute_dtype(rollout_dtype, s.device, weights[0].dtype)
    layers = [(w.to(dtype), b.to(dtype)) for w, b in zip(weights, biases)]
    if torch.compiler.is_compiling():
        return _rollout_functional(layers, s, noise, steps)
    with _tf32(rollout_dtype == "tf32"):
        return _rollout_fused(layers, s, noise, steps, workspace or _DEFAULT_WORKSPACE, use_onednn=False)


def euler_rollout(
    params: nn.Module | Params,
    s: torch.Tensor,
    noise: torch.Tensor,
    steps: int,
    *,
    backend: str = "auto",
    rollout_dtype: str = "float32",
    workspace: RolloutWorkspace | None = None,
    hidden_impl: str = "auto",
) -> torch.Tensor:
    """Actions of the behaviour flow from ``noise`` by N Euler steps, clipped to [-1, 1], no gradient.

    Args:
        params: the velocity MLP on concat [s, x, t]: a module with ``.linears`` or ``[(weight, bias), ...]``.
        s: [B, obs_dim] states. noise: [B, d] or [B, K, d] (K samples per state, run as one GEMM).
        steps: N >= 1.
        backend: "auto", "reference" (the plain port), "cpu"/"cuda" (fused, torch GEMMs + our kernels),
            "triton" (fused GEMM + bias + GELU kernels).
        rollout_dtype: "float32" (default; the parameters' dtype), "bfloat16" (GEMMs and activations in
            bf16, x accumulated in fp32) or "tf32" (CUDA only: fp32 storage, TF32 tensor-core GEMMs).
        workspace: buffers to reuse (default: a module-level one; use one per thread).
        hidden_impl: "auto", "onednn" (oneDNN fused linear+GELU, CPU) or "mm" (GEMM into a reused buffer
            + the in-place bias+GELU kernel). "auto": the GEMM path chosen for this machine and dtype
            (:func:`fisher_decorator.gemm_path.configure`; "mm" before it is configured).

    Returns:
        actions with ``noise``'s shape and dtype.
    """
    params = mlp_params(params)
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    if noise.dim() not in (2, 3) or noise.shape[0] != s.shape[0]:
        raise ValueError(
            f"noise must be [B, d] or [B, K, d] with B = {s.shape[0]} (s' rows), got {tuple(noise.shape)}"
        )
    check_velocity_inputs(params, s, noise.reshape(-1, noise.shape[-1])[: s.shape[0]], name_x="noise")
    name = resolve_backend(backend, s.device)
    dtype = _compute_dtype(rollout_dtype, s.device, params[0][0].dtype)
    tf32 = rollout_dtype == "tf32"
    if torch.compiler.is_compiling() and name != "reference":
        layers = [(w.to(dtype)[None], b.to(dtype)[None]) for w, b in params]
        return _rollout_functional(layers, s[None], noise[None], steps)[0]
    if name == "reference":
        if dtype != params[0][0].dtype:
            raise ValueError(
                "the reference rollout runs in the parameters' dtype only (rollout_dtype='float32')"
            )
        with _tf32(tf32):
            return euler_rollout_ref(params, s, noise, steps)
    if name == "triton":
        if dtype != params[0][0].dtype:
            params = [(w.to(dtype), b.to(dtype)) for w, b in params]
        return euler_rollout_triton(params, s.to(dtype), noise, steps, allow_tf32=tf32)
    if hidden_impl not in ("auto", "onednn", "mm"):
        raise ValueError(f"hidden_impl must be 'auto', 'onednn' or 'mm', got {hidden_impl!r}")
    onednn_ok = (
        s.device.type == "cpu" and dtype in (torch.float32, torch.bfloat16) and onednn_linear_gelu_available()
    )
    if hidden_impl == "onednn" and not onednn_ok:
        raise RuntimeError(
            "hidden_impl='onednn' needs CPU tensors in fp32/bf16 and torch's mkldnn._linear_pointwise"
        )
    if hidden_impl == "auto":
        use_onednn = onednn_ok and gemm_path.path_for(dtype, "linear_gelu") == "onednn"
    else:
        use_onednn = hidden_impl == "onednn"
    ws = workspace or _DEFAULT_WORKSPACE
    layers = [(ws.cast(w, dtype)[None], ws.cast(b, dtype)[None]) for w, b in params]  # the S = 1 stack
    with _tf32(tf32):
        return _rollout_fused(layers, s[None], noise[None], steps, ws, use_onednn)[0]


@contextlib.contextmanager
def _tf32(enabled: bool):
    if not enabled:
        yield
        return
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
