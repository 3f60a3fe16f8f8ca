"""The online replay buffer (the authors' ``utils/datasets.py`` ``ReplayBuffer``) and its files.

:class:`ReplayBuffer`: preallocated tensors on the training device, a ring of ``capacity`` rows; a
transition goes to row ``pointer``, ``pointer = (pointer + 1) % capacity``, ``size = max(pointer, size)``
(their ``add_transition``; once the ring has wrapped, ``size`` stays ``capacity - 1``, as theirs); batches are uniform over the ``size`` rows. ``from_dataset`` starts it with
the offline data in rows ``0..N-1`` (their ``create_from_initial_dataset``).

:class:`ReplayStore`: the online transitions on disk, so a killed run resumes with its buffer. Only the
transitions added online are stored (the offline rows come back from the dataset): each checkpoint
appends one chunk file ``replay/chunk-<start>-<end>.npz`` with the transitions added since the previous
one, then rewrites the small ``replay/index.json`` (both atomically), then the checkpoint records how many
transitions it covers. A file is never rewritten: a checkpoint costs the new transitions only. Chunks whose
transitions have all been overwritten in the ring are deleted; a chunk past the checkpoint's count (written
by a run killed before its checkpoint) is dropped on resume.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fisher_decorator.atomic import atomic_path, write_json
from fisher_decorator.checkpoint import remove_stale_temporaries

#: the fields of a stored transition, in the authors' layout (``terminals`` = done, ``masks`` = 1 - terminated)
FIELDS = ("observations", "actions", "rewards", "terminals", "masks", "next_observations")
INDEX = "index.json"
_CHUNK = re.compile(r"^chunk-(\d+)-(\d+)\.npz$")


class ReplayBuffer:
    """A ring of ``capacity`` transitions held as tensors on ``device``.

    Args:
        shapes: per-field shape of one transition (``FIELDS`` keys; rewards/terminals/masks are ``()``).
    """

    def __init__(self, capacity: int, shapes: dict[str, tuple[int, ...]], *, device, dtype=torch.float32):
        if capacity < 1:
            raise ValueError(f"replay buffer capacity must be >= 1, got {capacity}")
        self.capacity = int(capacity)
        self.device = torch.device(device)
        self.tensors = {
            k: torch.zeros((self.capacity, *shapes[k]), device=self.device, dtype=dtype) for k in FIELDS
        }
        self.size = 0
        self.pointer = 0

    @classmethod
    def from_dataset(
        cls, data: dict[str, np.ndarray], capacity: int, *, device, dtype=torch.float32, action_clip_eps=None
    ) -> ReplayBuffer:
        """The buffer started with ``data`` (rows 0..N-1; ``capacity`` >= N + 1 as the authors size it)."""
        n = len(data["observations"])
        if capacity < n + 1:
            raise ValueError(f"capacity {capacity} cannot hold the {n} offline transitions and one more")
        arrays = dataset_fields(data, action_clip_eps)
        buf = cls(capacity, {k: v.shape[1:] for k, v in arrays.items()}, device=device, dtype=dtype)
        for k, v in arrays.items():
            buf.tensors[k][:n] = torch.as_tensor(v).to(device=buf.device, dtype=dtype)
        buf.size = buf.pointer = n
        return buf

    def add(self, transition: dict[str, Any]) -> None:
        """One transition (arrays or numbers per field) at ``pointer``."""
        for k in FIELDS:
            self.tensors[k][self.pointer] = torch.as_tensor(np.asarray(transition[k], dtype=np.float32))
        self.pointer = (self.pointer + 1) % self.capacity
        self.size = max(self.pointer, self.size)

    def write_rows(self, rows: np.ndarray, arrays: dict[str, np.ndarray]) -> None:
        """Put ``arrays[k][i]`` at row ``rows[i]`` (a resume restoring stored transitions)."""
        idx = torch.as_tensor(rows, dtype=torch.long, device=self.device)
        for k in FIELDS:
            self.tensors[k][idx] = torch.as_tensor(arrays[k]).to(self.device, self.tensors[k].dtype)

    def sample(self, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """``batch_size`` transitions uniformly over the filled rows (indices from ``generator``, on the CPU)."""
        if self.size == 0:
            raise RuntimeError("cannot sample an empty replay buffer")
        idx = torch.randint(self.size, (batch_size,), generator=generator).to(self.device)
        return {k: v.index_select(0, idx) for k, v in self.tensors.items()}


def dataset_fields(data: dict[str, np.ndarray], action_clip_eps: float | None) -> dict[str, np.ndarray]:
    """The offline data in the buffer's fields: actions clipped as the sampler clips them, ``terminals``
    zero where the dataset has none (the authors' ``train_dataset.get('terminals', zeros)``)."""
    n = len(data["observations"])
    out = {}
    for k in FIELDS:
        v = data.get(k)
        out[k] = np.zeros(n, np.float32) if v is None else np.asarray(v, dtype=np.float32)
    if action_clip_eps is not None:
        out["actions"] = np.clip(out["actions"], -1 + action_clip_eps, 1 - action_clip_eps)
    return out


class ReplayStore:
    """The online transitions of a run in ``directory`` as append-only chunks and an atomic index.

    Transition ``t`` (the t-th added online, from 0) lives in row ``(offset + t) % capacity`` of the buffer,
    ``offset`` the number of offline rows the buffer started with (0 with balanced sampling).
    """

    def __init__(self, directory: str | Path, *, capacity: int, offset: int):
        self.directory = Path(directory)
        self.capacity, self.offset = int(capacity), int(offset)
        self.chunks: list[dict[str, Any]] = []
        self.pending: dict[str, list[np.ndarray]] = {k: [] for k in FIELDS}
        self.count = 0  # online transitions added
        self.flushed = 0  # of which on disk

    def append(self, transition: dict[str, Any]) -> None:
        for k in FIELDS:
            self.pending[k].append(np.asarray(transition[k], dtype=np.float32))
        self.count += 1

    def flush(self) -> None:
        """Write the transitions added since the last flush as one chunk, then the index; drop dead chunks."""
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.count > self.flushed:
            name = f"chunk-{self.flushed:012d}-{self.count:012d}.npz"
            with atomic_path(self.directory / name) as tmp:
                with open(tmp, "wb") as f:
                    np.savez(f, **{k: np.stack(v) for k, v in self.pending.items()})
            self.chunks.append({"file": name, "start": self.flushed, "end": self.count})
            self.pending = {k: [] for k in FIELDS}
            self.flushed = self.count
        alive_from = self.count - self.capacity  # transition t is overwritten by t + capacity
        dead = [c for c in self.chunks if c["end"] <= alive_from]
        self.chunks = [c for c in self.chunks if c["end"] > alive_from]
        write_json(self.directory / INDEX, self.index())
        for c in dead:  # after the index no longer names them
            (self.directory / c["file"]).unlink(missing_ok=True)

    def index(self) -> dict[str, Any]:
        return {
            "version": 1,
            "capacity": self.capacity,
            "offset": self.offset,
            "count": self.count,
            "chunks": self.chunks,
        }

    def restore(self, buffer: ReplayBuffer, count: int) -> None:
        """Put the first ``count`` online transitions (a checkpoint's) back into ``buffer``, which holds
        the offline rows only; files past ``count`` are removed."""
        remove_stale_temporaries(self.directory)
        path = self.directory / INDEX
        index = json.loads(path.read_text()) if path.is_file() else {"chunks": []}
        if count > 0 and not index["chunks"]:
            raise FileNotFoundError(
                f"{path}: the checkpoint counts {count} online transitions, none are stored"
            )
        if (
            index.get("capacity", self.capacity) != self.capacity
            or index.get("offset", self.offset) != self.offset
        ):
            raise ValueError(
                f"{path}: stored for capacity/offset {index.get('capacity')}/{index.get('offset')}"
            )
        kept = [c for c in index["chunks"] if c["end"] <= count]
        if kept and kept[-1]["end"] != count:
            raise ValueError(f"{path}: chunks end at {kept[-1]['end']}, the checkpoint counts {count}")
        alive_from = max(0, count - self.capacity)
        if count > 0 and (not kept or kept[0]["start"] > alive_from):
            raise ValueError(f"{path}: transitions {alive_from}..{count} are not all stored")
        for c in kept:
            with np.load(self.directory / c["file"], allow_pickle=False) as z:
                arrays = {k: z[k] for k in FIELDS}
            t = np.arange(c["start"], c["end"])
            live = t >= alive_from
            buffer.write_rows(
                (self.offset + t[live]) % self.capacity, {k: v[live] for k, v in arrays.items()}
            )
        total = (
            self.offset + count
        )  # as add() leaves it: size = the largest pointer seen (capacity - 1 once wrapped)
        buffer.size = total if total < self.capacity else self.capacity - 1
        buffer.pointer = (self.offset + count) % self.capacity
        self.chunks, self.count, self.flushed = kept, count, count
        names = {c["file"] for c in kept}
        for p in self.directory.glob("chunk-*.npz"):  # written by a run killed before its checkpoint
            if p.name not in names:
                p.unlink()
        write_json(path, self.index())
