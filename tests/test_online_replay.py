"""The replay buffer (the authors' ReplayBuffer semantics) and its on-disk chunks (resume without rewriting)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fisher_decorator.replay import FIELDS, INDEX, ReplayBuffer, ReplayStore


def _data(n: int, start: int = 0) -> dict[str, np.ndarray]:
    i = np.arange(start, start + n, dtype=np.float32)
    return {
        "observations": np.stack([i, -i], 1),
        "actions": np.stack([i / 1000, i / 2000], 1),
        "rewards": i,
        "terminals": np.zeros(n, np.float32),
        "masks": np.ones(n, np.float32),
        "next_observations": np.stack([i + 1, -i - 1], 1),
    }


def _transition(t: int) -> dict:
    return {k: v[0] for k, v in _data(1, 10_000 + t).items()}


def test_add_wraps_like_the_authors_buffer():
    buf = ReplayBuffer.from_dataset(_data(3), 5, device="cpu")
    assert (buf.size, buf.pointer) == (3, 3)
    sizes = []
    for t in range(6):
        buf.add(_transition(t))
        sizes.append((buf.size, buf.pointer))
    # their add_transition: pointer = (pointer + 1) % max_size; size = max(pointer, size): size stays max_size - 1
    assert sizes == [(4, 4), (4, 0), (4, 1), (4, 2), (4, 3), (4, 4)]
    assert buf.tensors["rewards"].tolist() == [10_002, 10_003, 10_004, 10_005, 10_001]
    with pytest.raises(ValueError, match="cannot hold"):
        ReplayBuffer.from_dataset(_data(3), 3, device="cpu")


def test_sampling_draws_only_filled_rows():
    buf = ReplayBuffer(100, {k: v.shape[1:] for k, v in _data(1).items()}, device="cpu")
    for t in range(7):
        buf.add(_transition(t))
    batch = buf.sample(500, torch.Generator().manual_seed(0))
    assert set(batch["rewards"].tolist()) == {10_000.0 + t for t in range(7)}


@pytest.mark.parametrize("offset", [0, 3])
def test_store_restores_the_buffer_exactly_and_drops_dead_and_uncommitted_chunks(tmp_path, offset):
    capacity = 8
    shapes = {k: v.shape[1:] for k, v in _data(1).items()}

    def fresh():
        if offset:
            return ReplayBuffer.from_dataset(_data(offset), capacity, device="cpu")
        return ReplayBuffer(capacity, shapes, device="cpu")

    live, store = fresh(), ReplayStore(tmp_path, capacity=capacity, offset=offset)
    for t in range(23):  # wraps the ring about three times; checkpoints after 5, 12, 20 transitions
        live.add(_transition(t))
        store.append(_transition(t))
        if t + 1 in (5, 12, 20):
            store.flush()
            if t + 1 == 20:
                committed = {k: v.clone() for k, v in live.tensors.items()}, live.size, live.pointer
    index = json.loads((tmp_path / INDEX).read_text())
    assert [(c["start"], c["end"]) for c in index["chunks"]] == [(12, 20)]  # 0-5 and 5-12 overwritten
    assert sorted(p.name for p in tmp_path.glob("chunk-*")) == [c["file"] for c in index["chunks"]]
    store.flush()  # a chunk for 20..23 written, then the process dies before the checkpoint that counts it
    assert len(list(tmp_path.glob("chunk-*"))) == 2

    restored = fresh()
    ReplayStore(tmp_path, capacity=capacity, offset=offset).restore(restored, 20)
    tensors, size, pointer = committed
    assert (restored.size, restored.pointer) == (size, pointer)
    for k in FIELDS:
        assert torch.equal(restored.tensors[k], tensors[k]), k
    assert [p.name for p in tmp_path.glob("chunk-*")] == ["chunk-000000000012-000000000020.npz"]
    assert json.loads((tmp_path / INDEX).read_text())["count"] == 20


def test_store_refuses_a_checkpoint_whose_transitions_are_missing(tmp_path):
    store = ReplayStore(tmp_path, capacity=10, offset=0)
    for t in range(4):
        store.append(_transition(t))
    store.flush()
    buf = ReplayBuffer(10, {k: v.shape[1:] for k, v in _data(1).items()}, device="cpu")
    with pytest.raises(ValueError, match="chunks end at 4, the checkpoint counts 6"):
        ReplayStore(tmp_path, capacity=10, offset=0).restore(buf, 6)
    (tmp_path / INDEX).unlink()
    with pytest.raises(FileNotFoundError, match="none are stored"):
        ReplayStore(tmp_path, capacity=10, offset=0).restore(buf, 4)
