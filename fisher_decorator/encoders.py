"""Image encoders of the pixel tasks: the IMPALA ResNet of the authors' ``utils/encoders.py``.

``impala_small`` (the authors' visual grid): three stacks of 16, 32, 32 channels, each a 3x3 'SAME'
convolution, a 3x3 stride-2 'SAME' max-pool and one residual block (ReLU, conv, ReLU, conv, + input);
then ReLU, flatten in (H, W, C) order, and an MLP of one 512-wide layer with its GELU-tanh applied
(``activate_final=True``). Input: uint8 frames ``[B, H, W, C]`` (C = 3 * frame_stack), scaled by 1/255.
Initialisation as flax: Xavier-uniform kernels (conv fans: 9 * in / 9 * out channels), zero biases.

The frames arrive channels-last (``[B, H, W, C]``); ``permute(0, 3, 1, 2)`` of them is already a
``channels_last`` NCHW tensor, so the convolutions run channels-last without a copy, and the final
``permute(0, 2, 3, 1)`` flattens in flax's (H, W, C) order for free. ``compute_dtype="bfloat16"``
runs the convolutions and the dense layer under autocast and returns fp32 features.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fisher_decorator.networks import gelu, plain_gelu, xavier_uniform_

ENCODERS = ("impala_small", "impala", "impala_debug", "impala_large")
"""The authors' ``encoder_modules`` names."""
_SPECS = {
    # name: (stack sizes, residual blocks per stack, MLP hidden dims) as the authors' partials
    "impala": ((16, 32, 32), 2, (512,)),
    "impala_small": ((16, 32, 32), 1, (512,)),
    "impala_debug": ((4, 4), 1, (512,)),
    "impala_large": ((64, 128, 128), 2, (1024,)),
}
ENCODER_DTYPES = ("float32", "bfloat16")


def _conv(cin: int, cout: int, generator, device, dtype) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, 3, padding=1, device=device, dtype=dtype)
    xavier_uniform_(conv.weight, 9 * cin, 9 * cout, generator)  # flax fans of a (3, 3, in, out) kernel
    nn.init.zeros_(conv.bias)
    return conv


def max_pool_same(x: torch.Tensor, window: int = 3, stride: int = 2) -> torch.Tensor:
    """flax ``max_pool(window, stride, padding='SAME')`` on NCHW: out = ceil(in / stride); the total
    padding (window - stride for even sizes) goes low // 2 before, the rest after, filled with -inf."""
    pads = []
    for size in (x.shape[-1], x.shape[-2]):  # F.pad order: last dim first
        out = math.ceil(size / stride)
        total = max((out - 1) * stride + window - size, 0)
        pads += [total // 2, total - total // 2]
    if any(pads):
        x = F.pad(x, pads, value=float("-inf"))
    return F.max_pool2d(x, window, stride)


class ResnetStack(nn.Module):
    """conv 3x3 -> max-pool 3x3/2 SAME -> ``num_blocks`` x (ReLU, conv, ReLU, conv, + input)."""

    def __init__(self, cin: int, features: int, num_blocks: int, *, generator=None, device=None, dtype=None):
        super().__init__()
        self.conv = _conv(cin, features, generator, device, dtype)
        self.blocks = nn.ModuleList(
            nn.ModuleList(_conv(features, features, generator, device, dtype) for _ in range(2))
            for _ in range(num_blocks)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = max_pool_same(self.conv(x))
        for conv_a, conv_b in self.blocks:
            x = x + conv_b(F.relu(conv_a(F.relu(x))))
        return x


class ImpalaEncoder(nn.Module):
    """``forward(frames [B, H, W, C] uint8 or float in [0, 255]) -> features [B, out_dim] float32``.

    Args:
        obs_shape: (H, W, C) of one (frame-stacked) observation.
        stack_sizes, num_blocks, mlp_hidden_dims: the architecture (see :data:`ENCODERS`).
        compute_dtype: "float32", or "bfloat16" (autocast; features returned in fp32).
        fused_gelu: the MLP's GELU by the compiled kernel or by ATen (same values to rounding).
    """

    def __init__(
        self,
        obs_shape: Sequence[int],
        stack_sizes: Sequence[int] = (16, 32, 32),
        num_blocks: int = 1,
        mlp_hidden_dims: Sequence[int] = (512,),
        *,
        compute_dtype: str = "float32",
        fused_gelu: bool = True,
        generator: torch.Generator | None = None,
        device=None,
        dtype=None,
    ):
        super().__init__()
        if len(obs_shape) != 3:
            raise ValueError(f"obs_shape must be (H, W, C), got {tuple(obs_shape)}")
        if compute_dtype not in ENCODER_DTYPES:
            raise ValueError(f"compute_dtype must be one of {ENCODER_DTYPES}, got {compute_dtype!r}")
        self.obs_shape = tuple(int(s) for s in obs_shape)
        self.compute_dtype = compute_dtype
        self.channels_last = (
            True  # False: convolutions on a contiguous NCHW copy (benchmarks/visual_throughput.py)
        )
        self.activation = gelu if fused_gelu else plain_gelu
        h, w, c = self.obs_shape
        self.stacks = nn.ModuleList()
        for features in stack_sizes:
            self.stacks.append(
                ResnetStack(c, features, num_blocks, generator=generator, device=device, dtype=dtype)
            )
            c, h, w = features, math.ceil(h / 2), math.ceil(w / 2)
        dims = (h * w * c, *mlp_hidden_dims)
        self.dense = nn.ModuleList()
        for i in range(len(dims) - 1):
            lin = nn.Linear(dims[i], dims[i + 1], device=device, dtype=dtype)
            xavier_uniform_(lin.weight, dims[i], dims[i + 1], generator)
            nn.init.zeros_(lin.bias)
            self.dense.append(lin)
        self.out_dim = int(dims[-1])

    def _autocast(self, x: torch.Tensor):
        if self.compute_dtype == "bfloat16":
            return torch.autocast(x.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        if frames.dim() != 4 or tuple(frames.shape[1:]) != self.obs_shape:
            raise ValueError(
                f"frames must be [B, {', '.join(map(str, self.obs_shape))}], got {tuple(frames.shape)}"
            )
        weight = self.dense[0].weight
        x = frames.to(weight.dtype) / 255.0
        x = x.permute(0, 3, 1, 2)  # NHWC storage -> an NCHW view in channels_last layout (no copy)
        if not self.channels_last:
            x = x.contiguous()
        with self._autocast(x):
            for stack in self.stacks:
                x = stack(x)
            x = F.relu(x).permute(0, 2, 3, 1).flatten(1)  # flax's (H, W, C) flatten order
            act = plain_gelu if self.compute_dtype == "bfloat16" else self.activation  # the kernel is fp32
            for lin in self.dense:  # MLP(hidden_dims, activate_final=True)
                x = act(lin(x))
        return x.to(weight.dtype)


def make_encoder(name: str, obs_shape: Sequence[int], **kwargs) -> ImpalaEncoder:
    """The authors' ``encoder_modules[name]()`` for frames of ``obs_shape`` (H, W, C)."""
    if name not in _SPECS:
        raise ValueError(f"unknown encoder {name!r}; choose one of {', '.join(ENCODERS)}")
    stacks, blocks, mlp = _SPECS[name]
    return ImpalaEncoder(obs_shape, stacks, blocks, mlp, **kwargs)
