"""Uniform minibatches of transitions, drawn from one seeded torch.Generator (checkpointable), and a
prefetcher that draws the next batches in a background thread while the current update runs."""

from __future__ import annotations

import queue
import threading

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


def sampler_for(data) -> type:
    """The sampler class of a dataset split: :class:`TransitionSampler` (arrays as tensors on the device), or for
    a pixel dataset ``datasets.visual.VisualSampler`` (stacked frames gathered per batch from the memory map)."""
    from fisher_decorator.datasets.visual import VisualSampler, VisualSplit

    return VisualSampler if isinstance(data, VisualSplit) else TransitionSampler


class BatchPrefetcher:
    """The batches of ``sampler.sample(batch_size)``, in the same order, drawn ``depth`` ahead in a thread.

    The sampler's generator belongs to the thread while it runs: :meth:`state` returns the generator
    state right after the last batch handed out (recorded with that batch), so a checkpoint taken
    between updates restores exactly the stream an unprefetched run would continue with.
    ``depth=0`` draws synchronously. Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, sampler: TransitionSampler, batch_size: int, depth: int = 2):
        if depth < 0:
            raise ValueError(f"prefetch depth must be >= 0, got {depth}")
        self.sampler, self.batch_size, self.depth = sampler, int(batch_size), int(depth)
        self._state = sampler.state()
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        if depth > 0:
            self._queue = queue.Queue(maxsize=depth)
            self._thread = threading.Thread(target=self._work, name="fidec-batch-prefetch", daemon=True)
            self._thread.start()

    def _draw(self) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        batch = self.sampler.sample(self.batch_size)
        return batch, self.sampler.state()

    def _work(self) -> None:
        try:
            while not self._stop.is_set():
                item = self._draw()
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as exc:  # handed to the consumer, never swallowed
            self._error = exc
            self._queue.put(None)

    def next(self) -> dict[str, torch.Tensor]:
        if self._queue is None:
            batch, self._state = self._draw()
            return batch
        item = self._queue.get()
        if item is None:
            raise RuntimeError("the batch prefetch thread failed") from self._error
        batch, self._state = item
        return batch

    def state(self) -> torch.Tensor:
        """The sampler generator's state after the last batch returned by :meth:`next`."""
        return self._state

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            while self._thread.is_alive():
                try:  # unblock a put() waiting on a full queue
                    self._queue.get_nowait()
                except queue.Empty:
                    pass
                self._thread.join(timeout=0.05)

    def __enter__(self) -> BatchPrefetcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
