"""Uniform minibatches of transitions, drawn from one seeded torch.Generator (checkpointable)."""

from __future__ import annotations

import numpy as np
import torch

from fisher_decorator.agents.base import BATCH_KEYS


class TransitionSampler:
    """Holds a dataset's arrays as tensors on ``device`` and samples batches uniformly with replacement.

    Args:
        data: dict of [N, ...] arrays with at least ``observations, actions, rewards, masks,
            next_observations``.
        action_clip_eps: actions clipped to [-1 + eps, 1 - eps] (FQL's convention; None: as they are).
    """

    def __init__(
        self,
        data: dict[str, np.ndarray],
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        seed: int = 0,
        action_clip_eps: float | None = 1e-5,
    ):
        missing = [k for k in BATCH_KEYS if k not in data]
        if missing:
            raise KeyError(f"dataset lacks {missing}; training needs {list(BATCH_KEYS)}")
        sizes = {k: len(data[k]) for k in BATCH_KEYS}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"dataset arrays differ in length: {sizes}")
        self.size = sizes["observations"]
        if self.size == 0:
            raise ValueError("dataset is empty")
        self.device = torch.device(device)
        arrays = {k: np.asarray(data[k]) for k in BATCH_KEYS}
        if action_clip_eps is not None:
            arrays["actions"] = np.clip(arrays["actions"], -1 + action_clip_eps, 1 - action_clip_eps)
        self.tensors = {k: torch.as_tensor(v).to(device=self.device, dtype=dtype) for k, v in arrays.items()}
        self.generator = torch.Generator().manual_seed(int(seed))

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """A batch of ``batch_size`` transitions (indices from ``generator``, default the sampler's own)."""
        g = self.generator if generator is None else generator
        idx = torch.randint(self.size, (batch_size,), generator=g).to(self.device)
        return {k: v.index_select(0, idx) for k, v in self.tensors.items()}

    def state(self) -> torch.Tensor:
        return self.generator.get_state()

    def load_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state.cpu())
