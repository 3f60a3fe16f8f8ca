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
import functools
from collections.abc import Sequence

import torch
from torch import nn

from fdkernels.euler_rollout import euler_rollout_ref, euler_rollout_triton
from fisher_decorator import gemm_path
from fisher_decorator.ops._extension import _load, resolve_backend
from fisher_decorator.ops.velocity_jvp import Params, check_velocity_inputs, mlp_params

ROLLOUT_DTYPES = ("float32", "bfloat16", "tf32")


@functools.cache
def packed_linear_available() -> bool:
    """Whether oneDNN's linear takes a weight reordered once (``mkldnn._reorder_linear_weight``, what inductor
    uses) and computes the plain linear with it."""
    op = getattr(torch.ops.mkldnn, "_reorder_linear_weight", None)
    if op is None or not onednn_linear_gelu_available():
        return False
    try:
        g = torch.Generator().manual_seed(0)
        a, w = torch.randn(5, 8, generator=g), torch.randn(16, 8, generator=g)
        got = torch.ops.mkldnn._linear_pointwise(a, op(w, 5), None, "none", [], "")
        return bool(torch.allclose(got, a @ w.t(), rtol=1e-5, atol=1e-5))
    except (RuntimeError, TypeError):
        return False


def onednn_linear_gelu_available() -> bool:
    """Whether this torch has oneDNN's fused linear + GELU-tanh (:func:`fisher_decorator.gemm_path.onednn_available`)."""
    return gemm_path.onednn_available()


class RolloutWorkspace:
    """Reused rollout buffers (activations, x): one per agent (or thread). A rollout writes into the buffers
    of the last call with the same shapes, so results must be consumed (or copied) before the next rollout
    of the same shape.

    Weight copies (bf16 casts, oneDNN's packed layouts) are made afresh by every call, never kept across
    calls: in-place optimizer steps do not all move a tensor's version counter (fused Adam does not), so a
    kept copy could not tell it had gone stale. They cost ~0.03 ms (cast) and ~0.2 ms (pack) per 512 x 512
    weight on a 2-core Zen 4, against ~20 ms for a 256-row rollout.
    """

    def __init__(self):
        self._buffers: dict[tuple, torch.Tensor] = {}

    def buffer(
        self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
    ) -> torch.Tensor:
        key = (name, tuple(shape), dtype, str(device))
        buf = self._buffers.get(key)
        if buf is None:
            buf = self._buffers[key] = torch.empty(shape, dtype=dtype, device=device)
        return buf

    @staticmethod
    def cast(p: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``p`` (detached) in ``dtype``: a copy for this call only."""
        return p.detach() if p.dtype == dtype else p.detach().to(dtype)

    @staticmethod
    def packed(p: torch.Tensor, dtype: torch.dtype, rows: int) -> torch.Tensor:
        """``p`` in ``dtype`` reordered into oneDNN's blocked layout for ``rows``-row inputs, for this call's
        steps: a plain-layout weight is reordered inside every oneDNN call, a packed one once per rollout
        (:func:`packed_linear_available`)."""
        return torch.ops.mkldnn._reorder_linear_weight(p.detach().to(dtype), rows)

    def clear(self) -> None:
        self._buffers.clear()


# rollouts with fewer rows (acting in an environment) reorder each weight inside oneDNN's call instead:
# the ~0.2 ms pack per weight would not pay back over their steps
PACK_MIN_ROWS = 256


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
    packed: Sequence[torch.Tensor] | None = None,
    groups: Sequence[tuple[int, int]] | None = None,
) -> torch.Tensor:
    """The fused rollout of a stack of S MLPs: ``layers`` [(W [S, out, in], b [S, out])] already in the
    compute dtype, ``s: [S, B, obs]``, ``noise: [S, B, d]`` or ``[S, B, K, d]``; S = 1 for one agent.
    ``packed``: the hidden layers' weights reordered for oneDNN (S = 1); their GEMMs then run on oneDNN
    and the bias + GELU on our kernel, which costs less than oneDNN's GELU post-op.
    ``groups`` (S = 1): [(B_g, K_g)], consecutive runs of states with K_g samples each (noise then holds the
    sum of B_g K_g rows as [1, M, d]): several rollouts of the same field as one."""
    shape = noise.shape
    S, B, obs = s.shape
    d = shape[-1]
    K = shape[2] if noise.dim() == 4 else 1
    M = B * K
    if groups is None:
        groups = [(B, K)]
    elif S != 1 or sum(b for b, _ in groups) != B or sum(b * k for b, k in groups) != noise.shape[1]:
        raise ValueError(
            f"groups {list(groups)} do not tile {B} states and {noise.shape[1]} noise rows (S = 1)"
        )
    else:
        M = noise.shape[1]
    dev, dtype = s.device, layers[0][0].dtype
    w1, b1 = layers[0]
    w_s, w_x, w_t = w1[..., :obs], w1[..., obs : obs + d].contiguous(), w1[..., obs + d]
    hidden, out_layer = layers[1:-1], (layers[-1] if len(layers) > 1 else None)
    H1 = w1.shape[1]
    acc = torch.float64 if noise.dtype == torch.float64 else torch.float32

    x = ws.buffer("x", (S, M, d), acc, dev)
    x.copy_(noise.reshape(S, M, d))
    h1 = ws.buffer("h1", (S, M, H1), dtype, dev)
    hid = [ws.buffer(f"h{j + 2}", (S, M, w.shape[1]), dtype, dev) for j, (w, _) in enumerate(hidden)]
    v = ws.buffer("v", (S, M, d), dtype, dev)
    onednn = use_onednn and S == 1  # oneDNN's fused linear is a 2-D op
    # one pass for the first layer (x's d-wide product, state and time bias, GELU) where the kernel exists;
    # its sums run in the accumulation dtype on the compute-dtype weights
    first = S == 1 and out_layer is not None and _first_layer_kernel(dev)
    if first:
        state_bias = torch.addmm(b1[0].to(acc), s[0].to(acc), w_s[0].to(acc).t())  # [B, H1], once
        w_xT, w_t1 = w_x[0].to(acc).t().contiguous(), w_t[0].to(acc).contiguous()
        row_state = torch.cat(
            [
                torch.arange(b, device=dev).repeat_interleave(k) + off
                for (b, k), off in zip(groups, _offsets(groups))
            ]
        )
    else:
        state_bias = torch.baddbmm(b1[:, None, :], s.to(dtype), w_s.transpose(1, 2))  # [S, B, H1], once
        x_in = x if dtype == acc else ws.buffer("x_in", (S, M, d), dtype, dev)
        bias = ws.buffer("bias", (S, B, H1), dtype, dev)
    # and one pass for the end of the step (last hidden bias + GELU, the d-wide output layer, x += v / N)
    last_fused = first and len(hidden) >= 1
    if last_fused:
        b_last = hidden[-1][1][0].to(acc)
        w_out1, b_out1 = out_layer[0][0].to(acc).contiguous(), out_layer[1][0].to(acc)
    for i in range(steps):
        if first:
            torch.ops.fidec.rollout_first_layer_gelu_(
                h1[0], x[0], w_xT, state_bias, w_t1, i / steps, row_state
            )
        else:
            if x_in is not x:
                x_in.copy_(x)
            torch.add(state_bias, w_t[:, None, :], alpha=i / steps, out=bias)
            _matmul_out(x_in, w_x, h1)
            if out_layer is None:  # a one-layer "MLP": the first layer is the output
                for hg, bg in _group_views(h1, bias, groups):
                    hg.add_(bg[:, None, :])
                x.add_(h1, alpha=1.0 / steps)
                continue
            for hg, bg in _group_views(h1, bias, groups):
                _bias_gelu_(hg, bg)
        a = h1
        for j, ((w, b), buf) in enumerate(zip(hidden, hid)):
            raw = last_fused and j == len(hidden) - 1  # its bias + GELU go to the output pass below
            if packed is not None:
                a = torch.ops.mkldnn._linear_pointwise(a[0], packed[j], None, "none", [], "")[None]
            elif onednn:
                a = torch.ops.mkldnn._linear_pointwise(a[0], w[0], None if raw else b[0], *_post(raw))[None]
                continue
            else:
                _matmul_out(a, w, buf)
                a = buf
            if not raw:
                _bias_gelu_(a, b)
        if last_fused:
            torch.ops.fidec.rollout_out_layer_euler_(x[0], a[0], b_last, w_out1, b_out1, 1.0 / steps)
            continue
        w_out, b_out = out_layer
        torch.baddbmm(b_out[:, None, :], a, w_out.transpose(1, 2), out=v)
        x.add_(v, alpha=1.0 / steps)
    return x.clamp(-1.0, 1.0).to(noise.dtype).reshape(shape)


def _post(raw: bool) -> tuple:
    """oneDNN linear's post-op arguments: none for a raw GEMM output, else GELU-tanh."""
    return ("none", [], "") if raw else ("gelu", [], "tanh")


def _first_layer_kernel(device: torch.device) -> bool:
    """Whether ``fidec::rollout_first_layer_gelu_`` runs here (the compiled extension, a CPU tensor)."""
    return device.type == "cpu" and _load()[0] is not None


def _offsets(groups: Sequence[tuple[int, int]]) -> list[int]:
    """The first state index of each group."""
    out, n = [], 0
    for b, _ in groups:
        out.append(n)
        n += b
    return out


def _group_views(h: torch.Tensor, bias: torch.Tensor, groups: Sequence[tuple[int, int]]):
    """(h rows [B_g, K_g, H], their state biases [B_g, H]) per group; h [S, M, H], bias [S, B, H]."""
    S, H = h.shape[0], h.shape[-1]
    if len(groups) == 1:
        (B, K), Hb = groups[0], bias.shape[-1]
        return [(h.view(S * B, K, H), bias.view(S * B, Hb))]
    views, row, state = [], 0, 0
    for B, K in groups:
        views.append((h[0, row : row + B * K].view(B, K, H), bias[0, state : state + B]))
        row, state = row + B * K, state + B
    return views


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
    return _run_fused(params, s, noise, steps, dtype, tf32, workspace, hidden_impl)


def _run_fused(
    params: Params,
    s: torch.Tensor,
    noise: torch.Tensor,
    steps: int,
    dtype: torch.dtype,
    tf32: bool,
    workspace: RolloutWorkspace | None,
    hidden_impl: str,
    groups: Sequence[tuple[int, int]] | None = None,
) -> torch.Tensor:
    """The fused CPU/CUDA rollout of one MLP (the S = 1 stack), after the inputs were checked."""
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
    packed = None
    rows = noise.numel() // noise.shape[-1]
    if use_onednn and rows >= PACK_MIN_ROWS and packed_linear_available():
        packed = [ws.packed(w, dtype, rows) for w, _ in params[1:-1]]
    with _tf32(tf32):
        return _rollout_fused(layers, s[None], noise[None], steps, ws, use_onednn, packed, groups)[0]


def euler_rollout_groups(
    params: nn.Module | Params,
    rollouts: Sequence[tuple[torch.Tensor, torch.Tensor]],
    steps: int,
    *,
    backend: str = "auto",
    rollout_dtype: str = "float32",
    workspace: RolloutWorkspace | None = None,
    hidden_impl: str = "auto",
) -> list[torch.Tensor]:
    """Several rollouts of one velocity MLP: ``[(s_g [B_g, obs_dim], noise_g [B_g, d] or [B_g, K_g, d])]``.

    On the fused CPU/CUDA backends they run as one rollout whose GEMMs take every group's rows (an update's
    next-action, base and Fisher rollouts: one 2560-row rollout instead of 256 + 256 + 2048 rows, so one
    set of GEMM calls and packed weights, each at the best row count). Each result equals the group's own
    :func:`euler_rollout` to rounding (another row count may block the GEMMs otherwise). The reference and
    Triton backends, and torch.compile, run one rollout per group. Options as :func:`euler_rollout`.

    Returns:
        the actions of each group, with its noise's shape.
    """
    params = mlp_params(params)
    kw = dict(backend=backend, rollout_dtype=rollout_dtype, workspace=workspace, hidden_impl=hidden_impl)
    if not rollouts:
        return []
    device = rollouts[0][0].device
    name = resolve_backend(backend, device)
    if len(rollouts) == 1 or name in ("reference", "triton") or torch.compiler.is_compiling():
        return [euler_rollout(params, s, z, steps, **kw) for s, z in rollouts]
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    groups = []
    for g, (s, z) in enumerate(rollouts):
        if z.dim() not in (2, 3) or z.shape[0] != s.shape[0]:
            raise ValueError(
                f"rollout {g}: noise must be [B, d] or [B, K, d] with B = {s.shape[0]} (s' rows), "
                f"got {tuple(z.shape)}"
            )
        try:
            check_velocity_inputs(params, s, z.reshape(-1, z.shape[-1])[: s.shape[0]], name_x="noise")
        except (TypeError, ValueError) as e:
            raise type(e)(f"rollout {g}: {e}") from None
        if z.dtype != rollouts[0][1].dtype or s.device != device:
            raise ValueError(f"rollout {g}: every rollout needs the first one's noise dtype and device")
        groups.append((s.shape[0], z.shape[1] if z.dim() == 3 else 1))
    d = rollouts[0][1].shape[-1]
    s = torch.cat([s for s, _ in rollouts])
    noise = torch.cat([z.reshape(-1, d) for _, z in rollouts])  # [M, d], group after group
    dtype = _compute_dtype(rollout_dtype, device, params[0][0].dtype)
    out = _run_fused(params, s, noise, steps, dtype, rollout_dtype == "tf32", workspace, hidden_impl, groups)
    sizes = [z.numel() // d for _, z in rollouts]
    return [a.reshape(z.shape) for a, (_, z) in zip(out.split(sizes), rollouts)]


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
