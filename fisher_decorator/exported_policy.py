"""Run a policy written by ``fidec export``, with plain PyTorch only.

This file imports nothing from fisher_decorator and needs no compiled extension: copy it next to your
code to act with an exported policy anywhere PyTorch runs::

    from exported_policy import load_policy      # or: from fisher_decorator.exported_policy import ...

    policy = load_policy("cube2-fidec.safetensors")   # or a TorchScript .pt from --format torchscript
    actions = policy(obs, noise)        # obs [B, obs_dim] float32, noise [B, action_dim] ~ N(0, I)
    actions = policy.act(obs)           # draws the noise itself (torch.randn, optional generator=)

A TorchScript file also loads without this file: ``torch.jit.load(path)(obs, noise)``.

What the policy computes (the agents' default ``sample_actions``, the reference paths of SPEC):
  base action   a_b = clip(x_N, -1, 1), x_0 = noise, x_{i+1} = x_i + v(s, x_i, i/N) / N  (Euler, N steps)
  fidec/deflow  a = clip(a_b + r(s, a_b), -1, 1)
  fql           a = clip(mu(s, noise), -1, 1)     (the one-step policy; no flow needed)
with v, r and mu MLPs on concatenated inputs, GELU (tanh approximation) after each hidden layer and,
where the run used it, LayerNorm (eps 1e-6) after each activation. No observation normaliser is part of
the policy: the agents act on raw observations.
"""

from __future__ import annotations

import json
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

FORMAT = "fidec-policy"
FORMAT_VERSION = 1
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


class ExportedPolicy(nn.Module):
    """The acting part of a trained agent: ``forward(obs [B, obs_dim], noise [B, d]) -> actions [B, d]``.

    ``config``: agent ("fidec", "deflow" or "fql"), obs_dim, action_dim, flow_steps, actor_hidden_dims,
    actor_layer_norm (the entries ``fidec export`` writes; more entries are kept in ``self.config``).
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
        if agent == "fql":  # FQL acts with its one-step policy only
            self.policy = MLP(s + d, hidden, d, layer_norm)
        else:
            self.velocity_field = MLP(s + d + 1, hidden, d, layer_norm)
            self.residual = MLP(s + d, hidden, d, layer_norm)

    def flow_actions(self, obs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Euler rollout of the behaviour flow from ``noise``, clipped to [-1, 1]."""
        x = noise
        t = torch.empty([x.shape[0], 1], dtype=x.dtype, device=x.device)
        for i in range(self.flow_steps):
            t.fill_(i / self.flow_steps)
            x = x + self.velocity_field(torch.cat([obs, x, t], dim=-1)) / self.flow_steps
        return x.clamp(-1.0, 1.0)

    def forward(self, obs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        if obs.dim() != 2 or obs.shape[1] != self.obs_dim:
            raise ValueError(f"obs must be [B, {self.obs_dim}], got {obs.shape}")
        if noise.dim() != 2 or noise.shape[0] != obs.shape[0] or noise.shape[1] != self.action_dim:
            raise ValueError(f"noise must be [B, {self.action_dim}] with B = obs' batch, got {noise.shape}")
        with torch.no_grad():
            if hasattr(self, "policy"):  # TorchScript resolves this when it compiles
                return self.policy(torch.cat([obs, noise], dim=-1)).clamp(-1.0, 1.0)
            base = self.flow_actions(obs, noise)
            return (base + self.residual(torch.cat([obs, base], dim=-1))).clamp(-1.0, 1.0)

    @torch.jit.export
    def act(self, obs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Actions for ``obs`` with fresh N(0, I) noise."""
        noise = torch.randn(
            [obs.shape[0], self.action_dim], generator=generator, dtype=obs.dtype, device=obs.device
        )
        return self.forward(obs, noise)


def _check_config(config: dict[str, Any], path: str) -> dict[str, Any]:
    if config.get("format") != FORMAT or config.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path}: not a fidec policy of format version {FORMAT_VERSION} "
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
