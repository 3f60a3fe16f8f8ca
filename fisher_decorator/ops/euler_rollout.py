"""``euler_rollout``: the behaviour flow's Euler sampler, fused (SPEC "Kernel ops", "Where the cost is").

The fused rollout computes the state part of the first layer, ``W_s s + b``, once per rollout; at
step i the time input is folded into that per-state bias (``+ (i/N) w_t``), and the K samples of
every state go through each layer as one (B*K)-row GEMM. Bias add and GELU-tanh run as one
vectorised pass in place (``fidec::bias_gelu_``, ~3x faster than ATen's GELU-tanh on CPU) after a
GEMM into a reused buffer; in bf16 on CPU the hidden layers use oneDNN's fused linear + GELU
instead, which measured faster there (benchmarks/bench_mlp_ops.py). Buffers live in a
:class:`RolloutWorkspace` and are reused across steps and calls, so the Euler loop allocates
nothing of its own. GEMMs can run in bf16 (CPU with AVX-512 bf16, GPU) or tf32 (Ampere+ GPU); the
state ``x`` is always accumulated in fp32. Under torch.compile a functional form of the same
computation is traced instead, and inductor does the fusing.
"""

from __future__ import annotations

import contextlib
import functools

import torch
from torch import nn

from fdkernels.euler_rollout import euler_rollout_ref, euler_rollout_triton, split_first_layer
from fisher_decorator.ops._extension import resolve_backend
from fisher_decorator.ops.velocity_jvp import Params, check_velocity_inputs, mlp_params

ROLLOUT_DTYPES = ("float32", "bfloat16", "tf32")


@functools.cache
def onednn_linear_gelu_available() -> bool:
    """Whether this torch has oneDNN's fused linear + GELU-tanh (``mkldnn._linear_pointwise``, a
    private op), and it computes the plain chain's values on a tiny probe."""
    op = getattr(torch.ops.mkldnn, "_linear_pointwise", None)
    if op is None or not torch.backends.mkldnn.is_available():
        return False
    try:
        g = torch.Generator().manual_seed(0)
        a, w, b = (
            torch.randn(5, 8, generator=g),
            torch.randn(16, 8, generator=g),
            torch.randn(16, generator=g),
        )
        got = op(a, w, b, "gelu", [], "tanh")
        want = torch.nn.functional.gelu(a @ w.t() + b, approximate="tanh")
        return bool(torch.allclose(got, want, rtol=1e-5, atol=1e-5))
    except (RuntimeError, TypeError):
        return False


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


@torch.no_grad()
def _rollout_fused(
    params: Params, s, noise, steps: int, dtype: torch.dtype, ws: RolloutWorkspace, use_onednn: bool
):
    shape = noise.shape
    B, d = s.shape[0], shape[-1]
    K = shape[1] if noise.dim() == 3 else 1
    M = B * K
    dev = s.device
    w_s, w_x, w_t = split_first_layer(params, s.shape[1], d)
    cast = lambda p: ws.cast(p, dtype)
    w_s, w_x, w_t, b1 = (
        cast(w_s.contiguous()),
        cast(w_x.contiguous()),
        cast(w_t.contiguous()),
        cast(params[0][1]),
    )
    hidden = [(cast(w), cast(b)) for w, b in params[1:-1]]
    w_out, b_out = (cast(params[-1][0]), cast(params[-1][1])) if len(params) > 1 else (None, None)
    H1 = w_x.shape[0]
    acc = torch.float64 if noise.dtype == torch.float64 else torch.float32

    state_bias = torch.addmm(b1, s.to(dtype), w_s.t())  # [B, H1], once per rollout
    x = ws.buffer("x", (M, d), acc, dev)
    x.copy_(noise.reshape(M, d))
    x_in = x if dtype == acc else ws.buffer("x_in", (M, d), dtype, dev)
    bias = ws.buffer("bias", (B, H1), dtype, dev)
    h1 = ws.buffer("h1", (M, H1), dtype, dev)
    hid = [ws.buffer(f"h{j + 2}", (M, w.shape[0]), dtype, dev) for j, (w, _) in enumerate(hidden)]
    v = ws.buffer("v", (M, d), dtype, dev)
    for i in range(steps):
        if x_in is not x:
            x_in.copy_(x)
        torch.add(state_bias, w_t, alpha=i / steps, out=bias)
        torch.mm(x_in, w_x.t(), out=h1)
        if w_out is None:  # a one-layer "MLP": the first layer is the output
            h1.view(B, K, H1).add_(bias[:, None, :])
            x.add_(h1, alpha=1.0 / steps)
            continue
        torch.ops.fidec.bias_gelu_(h1.view(B, K, H1), bias)
        a = h1
        for (w, b), buf in zip(hidden, hid):
            if use_onednn:
                a = torch.ops.mkldnn._linear_pointwise(a, w, b, "gelu", [], "tanh")
            else:
                torch.mm(a, w.t(), out=buf)
                torch.ops.fidec.bias_gelu_(buf.view(1, M, buf.shape[1]), b.view(1, -1))
                a = buf
        torch.addmm(b_out, a, w_out.t(), out=v)
        x.add_(v, alpha=1.0 / steps)
    return x.clamp(-1.0, 1.0).to(noise.dtype).reshape(shape)


def _rollout_functional(params: Params, s, noise, steps: int, dtype: torch.dtype):
    """The fused rollout's computation without buffers or custom ops: what torch.compile traces."""
    shape = noise.shape
    B, d = s.shape[0], shape[-1]
    K = shape[1] if noise.dim() == 3 else 1
    w_s, w_x, w_t = (w.to(dtype) for w in split_first_layer(params, s.shape[1], d))
    b1 = params[0][1].to(dtype)
    acc = torch.float64 if noise.dtype == torch.float64 else torch.float32
    state_bias = torch.addmm(b1, s.to(dtype), w_s.t())
    x = noise.reshape(B * K, d).to(acc)
    for i in range(steps):
        h = (x.to(dtype) @ w_x.t()).view(B, K, -1) + (state_bias + (i / steps) * w_t)[:, None, :]
        if len(params) == 1:
            x = x + h.reshape(B * K, d).to(acc) / steps
            continue
        a = torch.nn.functional.gelu(h, approximate="tanh").reshape(B * K, -1)
        for j, (w, b) in enumerate(params[1:], start=1):
            a = torch.nn.functional.linear(a, w.to(dtype), b.to(dtype))
            if j < len(params) - 1:
                a = torch.nn.functional.gelu(a, approximate="tanh")
        x = x + a.to(acc) / steps
    return x.clamp(-1.0, 1.0).to(noise.dtype).reshape(shape)


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
            + the in-place bias+GELU kernel). "auto": "mm", except oneDNN for bf16 on CPU.

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
        return _rollout_functional(params, s, noise, steps, dtype)
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
    use_onednn = (onednn_ok and dtype == torch.bfloat16) if hidden_impl == "auto" else hidden_impl == "onednn"
    with _tf32(tf32):
        return _rollout_fused(params, s, noise, steps, dtype, workspace or _DEFAULT_WORKSPACE, use_onednn)


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
