"""The flow time ``t`` in the two layouts the ops take it, from a float, a 0-d, [N], [N, 1] or [B, K] tensor."""

from __future__ import annotations

import torch

TimeArg = float | torch.Tensor


def time_column(t: TimeArg, like: torch.Tensor) -> torch.Tensor:
    """``t`` as the [N, 1] column the velocity MLP concatenates to ``[s, x]`` (N = ``like``'s rows), in its dtype."""
    if not isinstance(t, torch.Tensor):
        return torch.full((like.shape[0], 1), float(t), dtype=like.dtype, device=like.device)
    t = t.to(like.dtype)
    return t if t.dim() == 2 else t.reshape(-1, 1).expand(like.shape[0], 1)


def time_matrix(t: TimeArg, B: int, K: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``t`` (a float, 0-d, [B] or [B, K]) as a contiguous [B, K] tensor: one t per Fisher sample."""
    if not isinstance(t, torch.Tensor):
        return torch.full((B, K), float(t), dtype=dtype, device=device)
    t = t.to(dtype=dtype, device=device)
    return (t[:, None] if t.dim() == 1 else t).expand(B, K).contiguous()
