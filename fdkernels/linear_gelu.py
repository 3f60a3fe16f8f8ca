"""Fused linear + bias + GELU-tanh (and its tangent): the reference and the Triton kernel.

One MLP layer of the flow field, as the rollouts and the velocity JVP need it::

    h  = a W^T + bias            bias: [out] or, per group of R rows, [M / R, out]
    y  = gelu_tanh(h)            (or y = h for the output layer)
    ty = gelu_tanh'(h) * (ta W^T)    when a tangent ``ta`` is carried (forward-mode JVP)
    dy = gelu_tanh'(h)               kept for the backward of the JVP

The per-group bias is how an Euler step folds the state part of the first layer and the time
input into the bias: the K samples of a state share one bias row. The Triton kernel computes
the GEMM tile and applies bias, GELU and tangent in its epilogue, so the activations make one
trip to memory. Importable without Triton (the reference always exists).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fdkernels._triton import jit_kernel, tl, triton, triton_usable

GELU_BETA = 0.7978845608028654  # sqrt(2 / pi)
GELU_KAPPA = 0.044715


def gelu_tanh_ref(h: torch.Tensor) -> torch.Tensor:
    return F.gelu(h, approximate="tanh")


def gelu_tanh_grad_ref(h: torch.Tensor) -> torch.Tensor:
    """d gelu_tanh / dh, from the closed form (checked against autograd in the tests)."""
    th = torch.tanh(GELU_BETA * (h + GELU_KAPPA * h**3))
    return 0.5 * (1 + th) + 0.5 * h * (1 - th * th) * GELU_BETA * (1 + 3 * GELU_KAPPA * h * h)


def _bias_rows(bias: torch.Tensor, M: int) -> torch.Tensor:
    if bias.dim() == 1:
        return bias
    return bias.repeat_interleave(M // bias.shape[0], dim=0)


def linear_gelu_ref(
    a: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    *,
    gelu: bool = True,
    ta: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(y, ty, dy) of one layer, in plain PyTorch. ``a, ta: [M, in]``, ``weight: [out, in]``."""
    h = a @ weight.t() + _bias_rows(bias, a.shape[0])
    if not gelu:
        return h, (None if ta is None else ta @ weight.t()), None
    y = gelu_tanh_ref(h)
    if ta is None:
        return y, None, None
    dy = gelu_tanh_grad_ref(h)
    return y, dy * (ta @ weight.t()), dy


def _linear_gelu_kernel(
    a_ptr, ta_ptr, w_ptr, b_ptr, y_ptr, ty_ptr, dy_ptr,
    M, N, K, rows_per_bias,
    HAS_TANGENT: tl.constexpr, GELU: tl.constexpr, GROUP_BIAS: tl.constexpr, ACC: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    # All tensors contiguous: a, ta [M, K]; w [N, K] (nn.Linear layout); y, ty, dy [M, N].
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mm = offs_m < M
    nm = offs_n < N
    acc = tl.full([BLOCK_M, BLOCK_N], 0.0, dtype=ACC)
    tacc = tl.full([BLOCK_M, BLOCK_N], 0.0, dtype=ACC)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        km = offs_k < K
        w = tl.load(w_ptr + offs_n[None, :] * K + offs_k[:, None], mask=km[:, None] & nm[None, :], other=0.0)
        a = tl.load(a_ptr + offs_m[:, None] * K + offs_k[None, :], mask=mm[:, None] & km[None, :], other=0.0)
        acc += tl.dot(a, w, input_precision=PRECISION, out_dtype=ACC)
        if HAS_TANGENT:
            ta = tl.load(
                ta_ptr + offs_m[:, None] * K + offs_k[None, :], mask=mm[:, None] & km[None, :], other=0.0
            )
            tacc += tl.dot(ta, w, input_precision=PRECISION, out_dtype=ACC)
    if GROUP_BIAS:
        b = tl.load(
            b_ptr + (offs_m // rows_per_bias)[:, None] * N + offs_n[None, :], mask=mm[:, None] & nm[None, :]
        )
        h = acc + b.to(ACC)
    else:
        b = tl.load(b_ptr + offs_n, mask=nm, other=0.0)
        h = acc + b.to(ACC)[None, :]
    out_mask = mm[:, None] & nm[None, :]
    out_off = offs_m[:, None] * N + offs_n[None, :]
    if GELU:
        u = 0.7978845608028654 * (h + 0.044715 * h * h * h)
        e = tl.exp(-2.0 * tl.abs(u))  # tanh(u) = sign(u) (1 - e) / (1 + e): no overflow
        th = tl.where(u >= 0, 1.0, -1.0) * (1.0 - e) / (1.0 + e)
        y = 0.5 * h * (1.0 + th)
        if HAS_TANGENT:
            dy = 0.5 * (1.0 + th) + 0.5 * h * (1.0 - th * th) * 0.7978845608028654 * (
                1.0 + 3.0 * 0.044715 * h * h
            )
            tl.store(dy_ptr + out_off, dy, mask=out_mask)
            tl.store(ty_ptr + out_off, dy * tacc, mask=out_mask)
    else:
        y = h
        if HAS_TANGENT:
            tl.store(ty_ptr + out_off, tacc, mask=out_mask)
    tl.store(y_ptr + out_off, y, mask=out_mask)


def linear_gelu_triton(
    a: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    *,
    gelu: bool = True,
    ta: torch.Tensor | None = None,
    allow_tf32: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """The Triton kernel with :func:`linear_gelu_ref`'s contract (no autograd: rollouts run without grad).

    fp32 GEMMs run in full precision ("ieee") unless ``allow_tf32``.
    """
    if not triton_usable(a.device):
        raise RuntimeError("linear_gelu_triton needs a CUDA device, or TRITON_INTERPRET=1 on CPU")
    a = a.contiguous()
    weight = weight.contiguous()
    bias = bias.contiguous()
    M, K = a.shape
    N = weight.shape[0]
    if weight.shape[1] != K:
        raise ValueError(f"weight must be [out, {K}], got {tuple(weight.shape)}")
    group = bias.dim() == 2
    rows_per_bias = M // bias.shape[0] if group else 1
    if group and bias.shape[0] * rows_per_bias != M:
        raise ValueError(f"a per-group bias [G, out] needs M = G * R rows; M = {M}, G = {bias.shape[0]}")
    y = torch.empty(M, N, dtype=a.dtype, device=a.device)
    ty = torch.empty_like(y) if ta is not None else y
    dy = torch.empty_like(y) if (ta is not None and gelu) else y
    acc = tl.float64 if a.dtype == torch.float64 else tl.float32
    BLOCK_M, BLOCK_N, BLOCK_K = 32, 64, 32
    grid = (triton.cdiv(M, BLOCK_M), triton.cdiv(N, BLOCK_N))
    jit_kernel(_linear_gelu_kernel)[grid](
        a, ta.contiguous() if ta is not None else a, weight, bias, y, ty, dy, M, N, K, rows_per_bias,
        HAS_TANGENT=ta is not None, GELU=gelu, GROUP_BIAS=group, ACC=acc,
        PRECISION="tf32" if (allow_tf32 and a.dtype == torch.float32) else "ieee",
        BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K,
    )  # fmt: skip
    return y, (ty if ta is not None else None), (dy if (ta is not None and gelu) else None)
