"""Run a policy written by ``fidec export``, with plain PyTorch only.

This file imports nothing from fisher_decorator and needs no compiled extension: copy it next to your
code to act with an exported policy anywhere PyTorch runs::

    from exported_policy import load_policy      # or: from fisher_decorator.exported_policy import ...

    policy = load_policy("cube2-fidec.safetensors")   # or a TorchScript .pt from --format torchscript
    actions = policy(obs, noise)        # obs [B, obs_dim] float32, noise [B, action_dim] ~ N(0, I)
    actions = policy.act(obs)           # draws the noise itself (torch.randn, optional generator=)

A TorchScript file also loads without this file: ``torch.jit.load(path)(obs, noise)``.

Pixel policies (runs with ``encoder``, e.g. impala_small) take frames instead of states::

    stack = FrameStacker(policy.frame_stack)    # policy.config["frame_stack"]; 1 when the run stacked none
    obs = stack.reset(frame)                    # frame [B, H, W, 3] uint8, as the env renders it
    actions = policy(obs, noise)                # obs [B, H, W, 3 * frame_stack] uint8
    obs = stack.step(next_frame)                # after each env step

The frames are channels-last uint8 in [0, 255] (float frames in that range work too), and the last axis
holds the ``frame_stack`` most recent frames oldest first, each frame's RGB together: at an episode's
start the first frame repeated ``frame_stack`` times (the training data's and the evaluation env's stack).
The caller keeps this stack; :class:`FrameStacker` does it. The image size is the run's (``obs_shape``).

What the policy computes (the agents' default ``sample_actions``, the reference paths of SPEC):
  base action   a_b = clip(x_N, -1, 1), x_0 = noise, x_{i+1} = x_i + v(s, x_i, i/N) / N  (Euler, N steps)
  fidec/deflow  a = clip(a_b + r(s, a_b), -1, 1)
  fql           a = clip(mu(s, noise), -1, 1)     (the one-step policy; no flow needed)
with v, r and mu MLPs on concatenated inputs, GELU (tanh approximation) after each hidden layer and,
where the run used it, LayerNorm (eps 1e-6) after each activation. No observation normaliser is part of
the policy: the agents act on raw observations. Pixel policies replace s by image features: v reads the
flow's encoder, r and mu the actor's (one encoder per network, as in training; the critic and its encoder
are not exported, since the default sampling never asks Q). Each encoder is the IMPALA ResNet of
``fisher_decorator/encoders.py``: frames / 255, per stack a 3x3 conv, a 3x3 stride-2 max-pool with flax's
'SAME' padding (-inf), residual blocks (ReLU, conv, ReLU, conv, + input); ReLU, flatten in (H, W, C) order,
dense layers each followed by GELU(tanh). With ``encoder_dtype`` bfloat16 the convolutions and dense
layers run in bf16 on bf16-rounded weights (what the run's autocast did) and the features return in fp32.
"""

from __future__ import annotations

import json
import math
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

FORMAT = "fidec-policy"
FORMAT_VERSION = 1  # state policies; pixel policies are version 2 (an older loader refuses them by name)
PIXEL_FORMAT_VERSION = 2
VERSIONS = (FORMAT_VERSION, PIXEL_FORMAT_VERSION)
METADATA_KEY = "fidec_policy"  # safetensors metadata entry / TorchScript extra file holding the config
LAYER_NORM_EPS = 1e-6


class _Hidden(nn.Module):
    """Linear -> GELU(tanh) -> LayerNorm (or nothing)."""

    def __init__(self, in_dim: int, out_dim: int, layer_norm: bool):
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)
        self.norm = nn.LayerNorm(out_dim, eps=LAYER_NORM_EPS) if layer_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(F.gelu(self.linear(x), approximate="tanh"))


class MLP(nn.Module):
    """``in_dim -> hidden... -> out_dim``, the agents' MLP in plain PyTorch."""

    def __init__(self, in_dim: int, hidden_dims: list[int], out_dim: int, layer_norm: bool):
        super().__init__()
        dims = [in_dim, *hidden_dims]
        self.hidden = nn.ModuleList([_Hidden(a, b, layer_norm) for a, b in zip(dims[:-1], dims[1:])])
        self.out = nn.Linear(dims[-1], out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.hidden:
            x = layer(x)
        return self.out(x)


class _Conv(nn.Conv2d):
    """A 3x3 'SAME' convolution in x's dtype (bf16 weights for a bf16 encoder, as autocast casts them)."""

    def __init__(self, cin: int, cout: int):
        super().__init__(cin, cout, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias
        assert bias is not None
        return F.conv2d(x, self.weight.to(x.dtype), bias.to(x.dtype), 1, 1)


class _ResBlock(nn.Module):
    """ReLU -> conv -> ReLU -> conv, + input."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv_a = _Conv(channels, channels)
        self.conv_b = _Conv(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_b(F.relu(self.conv_a(F.relu(x))))


class _Stack(nn.Module):
    """conv 3x3 -> max-pool 3x3/2 'SAME' (pads precomputed for the input size) -> residual blocks."""

    def __init__(self, cin: int, features: int, num_blocks: int, height: int, width: int):
        super().__init__()
        self.conv = _Conv(cin, features)
        self.blocks = nn.ModuleList([_ResBlock(features) for _ in range(num_blocks)])
        pads: list[int] = []
        for size in (width, height):  # F.pad order: last dim first; flax puts total // 2 before
            total = max((math.ceil(size / 2) - 1) * 2 + 3 - size, 0)
            pads += [total // 2, total - total // 2]
        self.pads = pads
        self.padded = any(pads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.padded:
            x = F.pad(x, self.pads, value=float("-inf"))
        x = F.max_pool2d(x, 3, 2)
        for block in self.blocks:
            x = block(x)
        return x


class ImpalaEncoder(nn.Module):
    """``frames [B, H, W, C] (uint8 or float in [0, 255]) -> features [B, mlp_dims[-1]]`` in the weights' dtype."""

    def __init__(
        self,
        obs_shape: list[int],
        stack_sizes: list[int],
        num_blocks: int,
        mlp_dims: list[int],
        bf16: bool = False,
    ):
        super().__init__()
        h, w, c = (int(v) for v in obs_shape)
        self.stacks = nn.ModuleList()
        for features in stack_sizes:
            self.stacks.append(_Stack(c, int(features), int(num_blocks), h, w))
            c, h, w = int(features), math.ceil(h / 2), math.ceil(w / 2)
        dims = [h * w * c, *(int(m) for m in mlp_dims)]
        self.dense = nn.ModuleList([nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:])])
        self.bf16 = bool(bf16)
        self.out_dim = dims[-1]

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        dtype = self.dense[0].weight.dtype
        x = frames.to(dtype) / 255.0
        x = x.permute(0, 3, 1, 2)  # an NCHW view of channels-last frames, as the agent's encoder
        if self.bf16 and dtype == torch.float32:
            x = x.to(torch.bfloat16)
        for stack in self.stacks:
            x = stack(x)
        x = F.relu(x).permute(0, 2, 3, 1).flatten(1)  # flax's (H, W, C) flatten order
        for lin in self.dense:
            x = F.gelu(F.linear(x, lin.weight.to(x.dtype), lin.bias.to(x.dtype)), approximate="tanh")
        return x.to(dtype)


class FrameStacker:
    """The frame stack a pixel policy needs: ``reset(frame)`` at an episode's start (the first frame ``k``
    times), ``step(frame)`` after each env step (the last ``k`` frames); both return the stacked
    observation ``[..., H, W, C * k]``, oldest frame first, concatenated along channels."""

    def __init__(self, frame_stack: int):
        self.k = max(int(frame_stack), 1)
        self.frames: list[torch.Tensor] = []

    def reset(self, frame) -> torch.Tensor:
        self.frames = [torch.as_tensor(frame)] * self.k
        return torch.cat(self.frames, dim=-1)

    def step(self, frame) -> torch.Tensor:
        if not self.frames:
            raise RuntimeError("FrameStacker.step before reset")
        self.frames = [*self.frames[1:], torch.as_tensor(frame)]
        return torch.cat(self.frames, dim=-1)


class ExportedPolicy(nn.Module):
    """The acting part of a trained agent: ``forward(obs, noise [B, d]) -> actions [B, d]`` with obs
    ``[B, obs_dim]`` states, or for a pixel policy ``[B, H, W, C * frame_stack]`` frames.

    ``config``: agent ("fidec", "deflow" or "fql"), obs_dim (the networks' state or feature width),
    action_dim, flow_steps, actor_hidden_dims, actor_layer_norm; a pixel policy also obs_shape (H, W, C),
    frame_stack and encoder {stack_sizes, num_blocks, mlp_dims, dtype} (the entries ``fidec export``
    writes; more entries are kept in ``self.config``).
    """

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        agent = str(config["agent"])
        if agent not in ("fidec", "deflow", "fql"):
            raise ValueError(f"unknown agent {agent!r} in the policy's config")
        self.config = dict(config)
        self.agent = agent
        self.obs_dim, self.action_dim = int(config["obs_dim"]), int(config["action_dim"])
        self.flow_steps = int(config["flow_steps"])
        hidden = [int(h) for h in config["actor_hidden_dims"]]
        layer_norm = bool(config["actor_layer_norm"])
        d, s = self.action_dim, self.obs_dim
        enc = config.get("encoder")
        self.pixels = bool(enc)
        # one observation's shape: [obs_dim] or [H, W, C] (never empty: TorchScript cannot type an empty list)
        self.obs_shape = [int(v) for v in config["obs_shape"]] if enc else [self.obs_dim]
        self.frame_stack = int(config.get("frame_stack") or 1)

        def encoder() -> ImpalaEncoder:
            e = ImpalaEncoder(
                self.obs_shape,
                enc["stack_sizes"],
                enc["num_blocks"],
                enc["mlp_dims"],
                enc["dtype"] == "bfloat16",
            )
            if e.out_dim != s:
                raise ValueError(f"the encoder's {e.out_dim} features != obs_dim {s} in the policy's config")
            return e

        if agent == "fql":  # FQL acts with its one-step policy only
            self.policy = MLP(s + d, hidden, d, layer_norm)
        else:
            self.velocity_field = MLP(s + d + 1, hidden, d, layer_norm)
            self.residual = MLP(s + d, hidden, d, layer_norm)
            if enc:
                self.flow_encoder = encoder()
        if enc:  # the residual's / one-step policy's encoder
            self.actor_encoder = encoder()

    def flow_actions(self, obs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Euler rollout of the behaviour flow from ``noise``, clipped to [-1, 1] (``obs``: states or the
        flow encoder's features)."""
        x = noise
        t = torch.empty([x.shape[0], 1], dtype=x.dtype, device=x.device)
        for i in range(self.flow_steps):
            t.fill_(i / self.flow_steps)
            x = x + self.velocity_field(torch.cat([obs, x, t], dim=-1)) / self.flow_steps
        return x.clamp(-1.0, 1.0)

    def _check_obs(self, obs: torch.Tensor) -> None:
        if list(obs.shape[1:]) == self.obs_shape:
            return
        if not self.pixels:
            raise ValueError(f"obs must be [B, {self.obs_dim}], got {obs.shape}")
        raise ValueError(
            f"frames must be [B, H, W, C * frame_stack] = [B, {self.obs_shape}] uint8, got {obs.shape}"
        )

    def forward(self, obs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        self._check_obs(obs)
        if noise.dim() != 2 or noise.shape[0] != obs.shape[0] or noise.shape[1] != self.action_dim:
            raise ValueError(f"noise must be [B, {self.action_dim}] with B = obs' batch, got {noise.shape}")
        with torch.no_grad():
            # hasattr is resolved when TorchScript compiles: only the branches this policy has are kept
            s_actor = obs
            if hasattr(self, "actor_encoder"):
                s_actor = self.actor_encoder(obs)
            if hasattr(self, "policy"):
                return self.policy(torch.cat([s_actor, noise], dim=-1)).clamp(-1.0, 1.0)
            s_flow = obs
            if hasattr(self, "flow_encoder"):
                s_flow = self.flow_encoder(obs)
            base = self.flow_actions(s_flow, noise)
            return (base + self.residual(torch.cat([s_actor, base], dim=-1))).clamp(-1.0, 1.0)

    def _dtype(self) -> torch.dtype:
        if hasattr(self, "policy"):
            return self.policy.out.weight.dtype
        return self.residual.out.weight.dtype

    @torch.jit.export
    def act(self, obs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Actions for ``obs`` with fresh N(0, I) noise (in the weights' dtype: frames are uint8)."""
        noise = torch.randn(
            [obs.shape[0], self.action_dim], generator=generator, dtype=self._dtype(), device=obs.device
        )
        return self.forward(obs, noise)


def _check_config(config: dict[str, Any], path: str) -> dict[str, Any]:
    if config.get("format") != FORMAT or config.get("format_version") not in VERSIONS:
        raise ValueError(
            f"{path}: not a fidec policy of format version {' or '.join(map(str, VERSIONS))} "
            f"(format {config.get('format')!r}, version {config.get('format_version')!r})"
        )
    return config


def load_policy(path: str, *, device: str | torch.device = "cpu"):
    """The policy in ``path``: an :class:`ExportedPolicy` from a ``.safetensors`` file, or the
    ``torch.jit.ScriptModule`` of a TorchScript file (both called as ``policy(obs, noise)``)."""
    path = str(path)
    with open(path, "rb") as f:
        head = f.read(4)
    if head == b"PK\x03\x04":  # TorchScript archives are zip files (safetensors start with a header size)
        extra = {f"{METADATA_KEY}.json": ""}
        with warnings.catch_warnings():  # torch >= 2.10 marks TorchScript deprecated; it still loads
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(path, map_location=device, _extra_files=extra)
        _check_config(json.loads(extra[f"{METADATA_KEY}.json"] or "{}"), path)
        return module
    from safetensors import safe_open  # pip install safetensors

    with safe_open(path, framework="pt", device=str(device)) as f:
        metadata = f.metadata() or {}
        if METADATA_KEY not in metadata:
            raise ValueError(
                f"{path}: a safetensors file without a {METADATA_KEY!r} entry (not from fidec export)"
            )
        config = _check_config(json.loads(metadata[METADATA_KEY]), path)
        state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has keys(), not iteration
    policy = ExportedPolicy(config)
    policy.load_state_dict(state, strict=True)
    dtype = next(iter(state.values())).dtype
    return policy.to(device=device, dtype=dtype).eval()
