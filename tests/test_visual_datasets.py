"""Pixel datasets (fisher_decorator.datasets.visual): frame stacking, crops, memory-mapped loading of a generated
sample, the evaluation env's frame stack, and a tiny pixel run through the CLI.

The frame-stack and crop references below are written from the authors' ``utils/datasets.py`` (``Dataset.sample``
on the transitions, ``random_crop`` = edge padding + slice), independently of the code under test.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

from fisher_decorator.datasets import generation as gen
from fisher_decorator.datasets.errors import DatasetError
from fisher_decorator.datasets.loading import load_task_datasets, ogbench_transitions
from fisher_decorator.datasets.visual import (
    CROP_PADDING,
    FrameStack,
    VisualSampler,
    VisualSplit,
    open_npz,
    random_crop,
    transitions_from_raw,
)

DATASET = "visual-cube-single-play-v0"
TASK = "visual-cube-single-play-singletask-task1-v0"


def _raw(episode_rows=(4, 3, 5), shape=(5, 6, 3), seed=0) -> dict[str, np.ndarray]:
    """A raw OGBench-layout file: episodes of the given rows (the last row of each is its final frame)."""
    rng = np.random.default_rng(seed)
    n = sum(episode_rows)
    terminals = np.zeros(n, dtype=bool)
    terminals[np.cumsum(episode_rows) - 1] = True
    return {
        "observations": rng.integers(0, 256, (n, *shape), dtype=np.uint8),
        "actions": rng.uniform(-1, 1, (n, 5)).astype(np.float32),
        "terminals": terminals,
        "qpos": rng.normal(size=(n, 3)).astype(np.float32),
        "qvel": rng.normal(size=(n, 3)).astype(np.float32),
    }


def _split(raw, frame_stack):
    rows, starts, arrays = transitions_from_raw(raw)
    arrays["rewards"] = np.zeros(len(rows), np.float32)
    arrays["masks"] = np.ones(len(rows), np.float32)
    split = VisualSplit(raw["observations"], rows, starts, arrays)
    split.frame_stack = frame_stack
    return split


def _authors_stack(raw, idxs, frame_stack):
    """The authors' Dataset.sample frame stacking on OGBench's transitions (float arrays, as they load them)."""
    data = ogbench_transitions({k: v.astype(np.float32) for k, v in raw.items()})
    terminal_locs = np.nonzero(data["terminals"] > 0)[0]
    initial_locs = np.concatenate([[0], terminal_locs[:-1] + 1])
    initial = initial_locs[np.searchsorted(initial_locs, idxs, side="right") - 1]
    obs, next_obs = [], []
    for i in reversed(range(frame_stack)):
        cur = np.maximum(idxs - i, initial)
        obs.append(data["observations"][cur])
        if i != frame_stack - 1:
            next_obs.append(data["observations"][cur])
    next_obs.append(data["next_observations"][idxs])
    return np.concatenate(obs, axis=-1), np.concatenate(next_obs, axis=-1)


@pytest.mark.parametrize("frame_stack", [1, 2, 3, 5])
def test_frame_stacking_matches_the_authors_at_episode_boundaries(frame_stack):
    raw = _raw()
    split = _split(raw, frame_stack)
    idxs = np.arange(len(split.rows))  # every transition: each episode's first, middle and last
    obs, next_obs = split.gather(idxs)
    ref_obs, ref_next = _authors_stack(raw, idxs, frame_stack)
    assert obs.dtype == np.uint8 and obs.shape == (len(idxs), 5, 6, 3 * frame_stack)
    np.testing.assert_array_equal(obs, ref_obs)
    np.testing.assert_array_equal(next_obs, ref_next)
    # by hand: episode 2 starts at raw row 4 (transition 3); its first observation repeats that frame
    first = raw["observations"][4]
    np.testing.assert_array_equal(obs[3], np.concatenate([first] * frame_stack, axis=-1))
    assert split["observations"].shape == (9, 5, 6, 3 * frame_stack) and len(split["next_observations"]) == 9


def _authors_crop(img, crop_from, padding):
    padded = np.pad(img, ((padding, padding), (padding, padding), (0, 0)), mode="edge")
    y, x = crop_from
    return padded[y : y + img.shape[0], x : x + img.shape[1]]


def test_random_crop_matches_edge_pad_and_slice():
    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 256, (7, 9, 11, 6), dtype=np.uint8)
    offsets = rng.integers(0, 2 * CROP_PADDING + 1, (7, 2))
    (out,) = random_crop([torch.from_numpy(imgs)], torch.from_numpy(offsets))
    ref = np.stack([_authors_crop(imgs[b], offsets[b], CROP_PADDING) for b in range(7)])
    np.testing.assert_array_equal(out.numpy(), ref)


def _sample_with_indices(sampler: VisualSampler, batch_size: int):
    """A batch and the indices it drew (replayed from a copy of the generator state), uncropped."""
    g = torch.Generator()
    g.set_state(sampler.generator.get_state())
    idx = torch.randint(sampler.size, (batch_size,), generator=g).numpy()
    batch = sampler.sample(batch_size)
    return batch, sampler.data.gather(idx)


def test_crop_same_offsets_for_obs_and_next_obs_and_probability_honoured():
    raw = _raw(episode_rows=(30, 40), shape=(8, 8, 3))
    split = _split(raw, 3)
    split.p_aug = 1.0
    sampler = VisualSampler(split, seed=0)
    batch, (obs, next_obs) = _sample_with_indices(sampler, 16)
    o, n = batch["observations"].numpy(), batch["next_observations"].numpy()
    assert o.dtype == np.uint8 and not np.array_equal(o, obs)
    # the frames obs and next obs share are cropped alike: obs[..., 3:] == next_obs[..., :6] after the crop too
    np.testing.assert_array_equal(o[..., 3:], n[..., :6])
    # p_aug: whole batches; over 200 batches the cropped fraction is within 5 standard errors of p
    se = (0.25 / 200) ** 0.5
    for p, lo, hi in ((0.0, 0, 0), (0.5, 0.5 - 5 * se, 0.5 + 5 * se), (1.0, 1, 1)):
        split.p_aug = p
        cropped = 0
        for _ in range(200):
            batch, (obs, _) = _sample_with_indices(sampler, 8)
            cropped += not np.array_equal(batch["observations"].numpy(), obs)
        assert lo <= cropped / 200 <= hi, (p, cropped)
    split.p_aug = None
    batch, (obs, next_obs) = _sample_with_indices(sampler, 8)
    np.testing.assert_array_equal(batch["observations"].numpy(), obs)


def test_sampler_state_replays_batches():
    split = _split(_raw(episode_rows=(30, 40), shape=(8, 8, 3)), 3)
    split.p_aug = 0.5
    sampler = VisualSampler(split, seed=3)
    state = sampler.state()
    first = [sampler.sample(4) for _ in range(5)]
    sampler.load_state(state)
    again = [sampler.sample(4) for _ in range(5)]
    for a, b in zip(first, again, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_frame_stack_env_wrapper():
    stack = FrameStack(3)
    f0, f1 = np.zeros((2, 2, 3), np.uint8), np.ones((2, 2, 3), np.uint8)
    np.testing.assert_array_equal(stack.reset(f0), np.concatenate([f0, f0, f0], -1))
    np.testing.assert_array_equal(stack.step(f1), np.concatenate([f0, f0, f1], -1))
    np.testing.assert_array_equal(stack.step(f1), np.concatenate([f0, f1, f1], -1))
    assert FrameStack(None).reset(f0).shape == f0.shape


# ------------------------------------------------------------------------------------------------ generated sample


RENDER_ENV = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
"""Rendering runs in subprocesses: MuJoCo fixes its GL backend at its first import, which in a test session may
have happened before MUJOCO_GL was set. Offscreen EGL (Mesa) is required, as for the state tasks' videos."""


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """Two training episodes and one validation episode of 6 rows, by `fidec data generate` (rendered)."""
    directory = tmp_path_factory.mktemp("visual")
    cmd = [
        sys.executable,
        "-m",
        "fisher_decorator",
        "data",
        "generate",
        DATASET,
        "--dataset-dir",
        str(directory),
    ]
    cmd += ["--episodes", "2", "--val-episodes", "1", "--max-episode-steps", "6", "--workers", "1", "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=RENDER_ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads(gen.manifest_path(directory, DATASET).read_text())
    return directory, manifest


def test_generated_sample_is_ogbench_format_and_loads_memory_mapped(generated):
    directory, manifest = generated
    assert manifest["complete"] and manifest["files"]["train"]["transitions"] == 2 * 5
    path = directory / f"{DATASET}.npz"
    with zipfile.ZipFile(path) as zf:  # stored, so the frames can be mapped in place
        assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())
    with np.load(path) as f:  # OGBench's format: np.load reads it, frames uint8 [N, 64, 64, 3]
        raw = {k: f[k] for k in f.files}
    assert raw["observations"].dtype == np.uint8 and raw["observations"].shape == (12, 64, 64, 3)
    assert raw["observations"].std() > 0  # rendered, not blank
    mapped = open_npz(path)
    assert isinstance(mapped["observations"], np.memmap)
    np.testing.assert_array_equal(np.asarray(mapped["observations"]), raw["observations"])

    data = load_task_datasets(TASK, directory)
    train = data.train
    assert isinstance(train, VisualSplit) and isinstance(train.frames, np.memmap)
    assert data.source == "regenerated" and len(train["actions"]) == 10 and len(data.val["actions"]) == 5
    # rewards and masks as the state path computes them (OGBench's relabel on the same qpos; the state env of the
    # task relabels the pixel data, and OGBench's relabel_dataset reads nothing but qpos/button_states and the task)
    from ogbench.relabel_utils import relabel_dataset

    from fisher_decorator.datasets.loading import make_task_env

    ref = ogbench_transitions({k: v.astype(np.float32) if k != "terminals" else v for k, v in raw.items()})
    env = make_task_env("cube-single-singletask-task1-v0")
    relabel_dataset("cube-single-singletask-task1-v0", env, ref)
    env.close()
    for k in ("rewards", "masks", "terminals"):
        np.testing.assert_array_equal(train[k], ref[k])
    np.testing.assert_allclose(train["actions"], np.clip(ref["actions"], -1 + 1e-5, 1 - 1e-5))
    train.frame_stack = 3
    obs, next_obs = train.gather(np.arange(10))
    ref_obs, ref_next = _authors_stack(raw, np.arange(10), 3)
    np.testing.assert_array_equal(obs, ref_obs)
    np.testing.assert_array_equal(next_obs, ref_next)


def test_official_deflated_file_is_unpacked_once_then_mapped(generated, tmp_path):
    directory, _ = generated
    for name in (
        f"{DATASET}.npz",
        f"{DATASET}-val.npz",
    ):  # as OGBench ships them: savez_compressed, no manifest
        with np.load(directory / name) as f:
            np.savez_compressed(tmp_path / name, **{k: f[k] for k in f.files})
    data = load_task_datasets(TASK, tmp_path, validate=False)  # 6-row episodes, not the official 1001
    assert data.source == "official" and isinstance(data.train.frames, np.memmap)
    unpacked = tmp_path / f".{DATASET}.npz.observations.npy"
    assert unpacked.exists()
    with np.load(directory / f"{DATASET}.npz") as f:
        np.testing.assert_array_equal(np.asarray(data.train.frames), f["observations"])


def test_corrupt_file_is_refused(generated, tmp_path):
    directory, _ = generated
    for p in directory.glob(f"{DATASET}*"):
        (tmp_path / p.name).write_bytes(p.read_bytes())
    path = tmp_path / f"{DATASET}.npz"
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF  # one frame byte: only the manifest's checksum can tell
    path.write_bytes(bytes(blob))
    with pytest.raises(DatasetError):
        load_task_datasets(TASK, tmp_path)


_EVAL_SCRIPT = """
import json, sys
import gymnasium
import numpy as np
from fisher_decorator.envs import make_task

task = make_task(sys.argv[1], dataset_dir=sys.argv[2], frame_stack=3)
task._env = gymnasium.wrappers.TimeLimit(task.env, max_episode_steps=3)  # 3 rendered steps, not 200
seen = []

def act(obs):
    seen.append(obs.copy())
    return np.zeros((1, 5), np.float32)

stats, _ = task.evaluate(act, episodes=1, seed=0)
task.close()
print(json.dumps({
    "length": stats["episode.length"], "calls": len(seen), "shape": list(seen[0].shape),
    "first_repeated": bool(np.array_equal(seen[0][..., :3], seen[0][..., 6:])
                           and np.array_equal(seen[0][..., :3], seen[0][..., 3:6])),
    "shifted": bool(np.array_equal(seen[1][..., :6], seen[0][..., 3:])),
    "moved": bool(not np.array_equal(seen[0], seen[2])),
}))
"""


def test_evaluation_env_stacks_frames(generated):
    """The task's evaluation episodes hand the policy frame stacks built like the training data's."""
    directory, _ = generated
    proc = subprocess.run(
        [sys.executable, "-c", _EVAL_SCRIPT, TASK, str(directory)],
        capture_output=True,
        text=True,
        timeout=600,
        env=RENDER_ENV,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["length"] == 3 and r["calls"] == 3 and r["shape"] == [1, 64, 64, 9]
    assert r["first_repeated"] and r["shifted"]  # the first frame repeated, then shifted by one frame


def test_tiny_pixel_run_through_the_cli(generated, tmp_path):
    directory, _ = generated
    out = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "fisher_decorator", "train", "--agent", "fidec", "--task", TASK,
        "--dataset-dir", str(directory), "--steps", "3", "--eval-interval", "0", "--log-interval", "1",
        "--save-interval", "3", "--no-progress", "--no-plot", "--out", str(out),
        "--set", "batch_size=4", "--set", "actor_hidden_dims=16", "--set", "value_hidden_dims=16",
    ]  # fmt: skip
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=900, env={**os.environ, "MUJOCO_GL": "egl"}
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = json.loads((out / "config.json").read_text())
    # the preset's pixel settings (the authors' visual grid) reached the run
    assert config["obs_dim"] == [64, 64, 9] and config["agent"]["encoder"] == "impala_small"
    assert config["train"]["frame_stack"] == 3 and config["train"]["p_aug"] == 0.5
    assert config["train"]["score_steps"] == [300000, 400000, 500000]
    assert config["agent"]["target_divergence"] == 0.001
    rows = (out / "train.csv").read_text().splitlines()
    assert len(rows) == 4 and "critic/critic_loss" in rows[0]


def test_triton_after_a_pixel_env_does_not_crash():
    """Mesa's EGL loads its own LLVM; Triton imported after it segfaults. Our pixel envs import Triton first."""
    if (
        importlib.util.find_spec("triton") is None
    ):  # not imported here: this process may have rendered already
        pytest.skip("triton is not installed")
    code = (
        "from fisher_decorator.envs.ogbench_tasks import make_env\n"
        f"env = make_env({TASK!r}); env.reset(seed=0)\n"
        "import triton\n"
        "print('alive')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=RENDER_ENV
    )
    assert proc.returncode == 0 and "alive" in proc.stdout, proc.stderr[-2000:]
