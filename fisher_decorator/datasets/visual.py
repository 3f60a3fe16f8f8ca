"""Pixel datasets (OGBench's ``visual-*``): uint8 frames memory-mapped, frame stacks and crops per batch.

A 1M-frame dataset is ~12 GB of uint8 ``[N, 64, 64, 3]`` frames. Nothing here ever holds it in memory, let
alone as floats: the frames are memory-mapped from the ``.npz`` (a stored member is mapped in place; a deflated
one, as in OGBench's official files, is unpacked once into a ``.npy`` next to it), each batch gathers its rows
(with their stacked frames) from the map, and the float conversion happens per batch in the encoder (on the GPU
when there is one).

As the authors' ``utils/datasets.py`` (``Dataset.sample`` / ``augment``):

- **Frame stacking** within an episode only: a transition's observation is the frames ``t - k + 1 .. t``, the
  episode's first frame repeated where ``t - j`` falls before the episode start; its next observation is the
  frames ``t - k + 2 .. t, t + 1`` (the same clamping), concatenated along channels.
- **Random crop** of the whole batch with probability ``p_aug``: every image padded by ``CROP_PADDING`` pixels
  (edge mode) and cropped back at a random offset per sample, the same offset for its observation and its next
  observation. The authors' code pads by 3 pixels (``padding = 3`` in ``augment``), whatever the prose says.

The evaluation environment stacks frames the same way (:class:`FrameStack`).
"""

from __future__ import annotations

import os
import pathlib
import shutil
import zipfile
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from fisher_decorator.atomic import atomic_path
from fisher_decorator.datasets.errors import DatasetError


def before_rendering() -> None:
    """Call in a process that will create a pixel environment, before anything imports MuJoCo.

    - ``MUJOCO_GL=egl`` unless set: pixel envs render offscreen, which GLFW cannot without a display and EGL can
      (Mesa's llvmpipe on a CPU). MuJoCo reads it once, at its first import; state tasks are left alone.
    - Triton, where installed, imported first: Mesa's EGL loads its own LLVM, and importing Triton (its LLVM)
      after that crashes the process (SIGSEGV in Triton's extension init); the other order is fine.
    """
    os.environ.setdefault("MUJOCO_GL", "egl")
    try:
        import triton  # noqa: F401
    except ImportError:
        pass


FRAME_SHAPE = (64, 64, 3)
"""OGBench's visual observations: one 64x64 RGB frame, uint8."""
CROP_PADDING = 3
"""Pixels of edge padding of the random crop (the authors' ``augment``)."""
_MEMMAP_KEYS = ("observations",)


def is_visual(name: str) -> bool:
    """Whether an OGBench dataset, environment or task name is a pixel one."""
    return name.startswith("visual-")


# --------------------------------------------------------------------------------------------------- .npz I/O


def _member_offset(path: pathlib.Path, info: zipfile.ZipInfo) -> int:
    """Byte offset of a stored member's data: after its local header (30 bytes + name + extra)."""
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        header = f.read(30)
        if header[:4] != b"PK\x03\x04":
            raise DatasetError(f"{path}: member {info.filename} has no local header")
        name_len = int.from_bytes(header[26:28], "little")
        extra_len = int.from_bytes(header[28:30], "little")
        return info.header_offset + 30 + name_len + extra_len


def _npy_header(f) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    return np.lib.format.read_array_header_2_0(f)


def _memmap_member(path: pathlib.Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    with zf.open(info) as f:
        shape, fortran, dtype = _npy_header(f)
        header_len = f.tell()
    if fortran or dtype.hasobject:
        raise DatasetError(f"{path}: {info.filename} is not a C-ordered numeric array")
    offset = _member_offset(path, info) + header_len
    if int(np.prod(shape)) == 0:
        return np.zeros(shape, dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=tuple(shape))


def _unpacked_path(path: pathlib.Path, key: str) -> pathlib.Path:
    return path.with_name(f".{path.name}.{key}.npy")


def _unpack_member(path: pathlib.Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo, key: str) -> np.ndarray:
    """A deflated member, unpacked (streamed, atomically) once into a .npy beside the file, then mapped.
    The unpacked copy is reused while it is newer than the file."""
    out = _unpacked_path(path, key)
    if not (out.exists() and out.stat().st_mtime >= path.stat().st_mtime):
        with atomic_path(out) as tmp, zf.open(info) as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 22)
    return np.load(out, mmap_mode="r", allow_pickle=False)


def open_npz(path: str | os.PathLike, memmap_keys: Sequence[str] = _MEMMAP_KEYS) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz``: ``memmap_keys`` memory-mapped (read-only), the others read into memory."""
    path = pathlib.Path(path)
    out = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                key = info.filename.removesuffix(".npy")
                if key in memmap_keys:
                    if info.compress_type == zipfile.ZIP_STORED:
                        out[key] = _memmap_member(path, zf, info)
                    else:
                        out[key] = _unpack_member(path, zf, info, key)
                else:
                    with zf.open(info) as f:
                        out[key] = np.lib.format.read_array(f, allow_pickle=False)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        size = path.stat().st_size if path.exists() else 0
        raise DatasetError(
            f"{path}: cannot be read as an .npz ({type(exc).__name__}: {exc}); the file ({size} bytes) is "
            "truncated or corrupt. Delete it and regenerate or re-download it."
        ) from exc
    return out


class RowChunks:
    """Row blocks of one array (memory maps of shards) standing for their concatenation, never materialised:
    ``shape``, ``dtype``, ``ndim``, ``split(n)``, and iteration over the blocks for a streaming write."""

    def __init__(self, chunks: Sequence[np.ndarray]):
        self.chunks = [c for c in chunks if len(c)]
        first = chunks[0]
        self.dtype, self.ndim = first.dtype, first.ndim
        self.shape = (sum(len(c) for c in chunks), *first.shape[1:])

    def __len__(self) -> int:
        return self.shape[0]

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter(self.chunks)

    def __getitem__(self, rows: slice) -> RowChunks:
        """``[:n]`` or ``[n:]`` (what a split of the merged shards needs), as views of the blocks."""
        if (
            not isinstance(rows, slice)
            or rows.step not in (None, 1)
            or (rows.start and rows.stop is not None)
        ):
            raise TypeError(f"RowChunks takes [:n] or [n:], got {rows!r}")
        head, tail = self.split(rows.stop if rows.stop is not None else (rows.start or 0))
        return head if rows.stop is not None else tail

    def split(self, n: int) -> tuple[RowChunks, RowChunks]:
        head, tail, seen = [], [], 0
        for c in self.chunks:
            cut = min(max(n - seen, 0), len(c))
            head.append(c[:cut])
            tail.append(c[cut:])
            seen += len(c)
        empty = self.chunks[0][:0]
        return RowChunks([empty, *head]), RowChunks([empty, *tail])


def write_npz_stream(path: str | os.PathLike, arrays: dict) -> None:
    """``arrays`` (ndarrays or :class:`RowChunks`) as a stored (uncompressed, memory-mappable) ``.npz``, written
    block by block, atomically and byte-reproducibly (fixed timestamps, as ``fileio.write_npz``)."""
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key, value in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_STORED
            info.external_attr = 0o644 << 16
            chunks = list(value) if isinstance(value, RowChunks) else [np.asarray(value)]
            header = {"descr": np.lib.format.dtype_to_descr(value.dtype), "fortran_order": False}
            header["shape"] = tuple(value.shape)
            with zf.open(info, mode="w", force_zip64=True) as f:
                np.lib.format.write_array_header_2_0(f, header)
                for c in chunks:
                    f.write(np.ascontiguousarray(c).tobytes())


# --------------------------------------------------------------------------------------------------- transitions


def stack_rows(rows: np.ndarray, starts: np.ndarray, frame_stack: int) -> np.ndarray:
    """Raw-row indices ``[B, frame_stack + 1]`` of frames ``t - k + 1 .. t, t + 1`` of transitions at raw rows
    ``rows``, clamped to their episodes' first rows ``starts``; ``[:, :-1]`` is the observation, ``[:, 1:]`` the
    next observation (``t + 1`` never crosses an episode: the file's last row of an episode is no transition)."""
    offsets = np.arange(frame_stack - 1, -2, -1)  # k-1, ..., 0, -1
    return np.maximum(rows[:, None] - offsets[None, :], starts[:, None])


class StackedFrames:
    """The observations (or next observations) of a :class:`VisualSplit`, gathered on indexing: ``[B, H, W,
    3 * frame_stack]`` uint8 for an index array; ``shape`` as if the stacked array existed."""

    def __init__(self, split: VisualSplit, next_obs: bool):
        self.split, self.next_obs = split, next_obs

    @property
    def shape(self) -> tuple[int, ...]:
        h, w, c = self.split.frames.shape[1:]
        return (len(self.split.rows), h, w, c * self.split.frames_per_obs)

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __len__(self) -> int:
        return len(self.split.rows)

    def __getitem__(self, idx) -> np.ndarray:
        obs, next_obs = self.split.gather(np.atleast_1d(np.arange(len(self))[idx]))
        return next_obs if self.next_obs else obs


class VisualSplit(dict):
    """One split of a pixel dataset: the dict of transitions the trainer reads (``actions``, ``rewards``,
    ``masks``, ``terminals`` [N] float32 arrays, ``observations``/``next_observations`` as
    :class:`StackedFrames`), over memory-mapped raw frames.

    frames: raw rows [R, H, W, 3] uint8 (memory map); rows: [N] raw row of each transition; starts: [N] raw row
    of its episode's first frame. ``frame_stack`` (None: 1) and ``p_aug`` (None: no crop) are set by the task,
    as the authors set them on their datasets.
    """

    def __init__(
        self, frames: np.ndarray, rows: np.ndarray, starts: np.ndarray, arrays: dict[str, np.ndarray]
    ):
        super().__init__(arrays)
        self.frames, self.rows, self.starts = frames, rows.astype(np.int64), starts.astype(np.int64)
        self.frame_stack: int | None = None
        self.p_aug: float | None = None
        self["observations"] = StackedFrames(self, next_obs=False)
        self["next_observations"] = StackedFrames(self, next_obs=True)

    @property
    def frames_per_obs(self) -> int:
        return int(self.frame_stack or 1)

    def gather(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(observations, next observations) ``[B, H, W, 3k]`` uint8 of transitions ``idx``: one gather of the
        B * (k + 1) distinct frames from the map."""
        k = self.frames_per_obs
        raw = stack_rows(self.rows[idx], self.starts[idx], k)  # [B, k + 1]
        frames = self.frames[raw.reshape(-1)].reshape(len(idx), k + 1, *self.frames.shape[1:])
        frames = np.moveaxis(frames, 1, 3)  # [B, H, W, k + 1, 3]

        def cat(f):
            return f.reshape(*f.shape[:3], -1)  # channels of frame t-k+1 first, as np.concatenate(axis=-1)

        return cat(frames[:, :, :, :-1]), cat(frames[:, :, :, 1:])


def transitions_from_raw(raw: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """A raw OGBench file -> (rows, starts, arrays), as ``ogbench_transitions`` without touching the frames: the
    rows with ``terminals`` False are the transitions, their next frame the following row."""
    terminals = np.asarray(raw["terminals"]).astype(bool)
    rows = np.flatnonzero(~terminals)
    episode = np.concatenate([[0], np.cumsum(terminals)[:-1]])  # episode index of every raw row
    first_rows = np.concatenate([[0], np.flatnonzero(terminals)[:-1] + 1])
    starts = first_rows[episode[rows]]
    arrays = {
        "actions": raw["actions"][rows].astype(np.float32),
        "terminals": terminals[rows + 1].astype(np.float32),  # 1 at each episode's last transition
    }
    for k in ("qpos", "qvel", "button_states"):
        if k in raw:
            arrays[k] = raw[k][rows]
    return rows, starts, arrays


def validate_visual_arrays(raw: dict, name: str, episode_rows: int | None) -> np.ndarray:
    """Keys, shapes and dtypes of a raw visual file, action range and episode structure; the frames are only
    looked at through their shape and dtype (uint8 has no NaN), never read. Returns the episode lengths."""
    from fisher_decorator.datasets.validation import _action_range, _finite

    for key in ("observations", "actions", "terminals", "qpos", "qvel"):
        if key not in raw:
            raise DatasetError(f"{name}: missing array {key!r}")
    obs, terminals = raw["observations"], np.asarray(raw["terminals"])
    n = obs.shape[0]
    if obs.dtype != np.uint8 or tuple(obs.shape[1:]) != FRAME_SHAPE:
        raise DatasetError(
            f"{name}: observations must be uint8 [N, 64, 64, 3] frames, got {obs.dtype} {obs.shape}"
        )
    for key in ("actions", "terminals", "qpos", "qvel"):
        if len(raw[key]) != n:
            raise DatasetError(f"{name}: '{key}' has {len(raw[key])} rows, observations {n}")
    for key in ("actions", "qpos", "qvel"):
        _finite(name, key, raw[key])
    _action_range(name, raw["actions"])
    if n == 0 or not terminals[-1]:
        raise DatasetError(f"{name}: the last row is not an episode end (truncated?)")
    lengths = np.diff(np.concatenate([[-1], np.flatnonzero(terminals)]))
    if (lengths < 2).any() or (episode_rows is not None and (lengths != episode_rows).any()):
        raise DatasetError(
            f"{name}: episode lengths {sorted(set(lengths.tolist()))}, expected {episode_rows} rows"
        )
    return lengths


def load_visual_split(
    path: pathlib.Path,
    env_name: str,
    env,
    *,
    validate: bool,
    episode_rows: int | None,
    action_clip_eps: float | None,
) -> VisualSplit:
    """One file -> a :class:`VisualSplit` with OGBench's rewards/masks for the task (``relabel_dataset``)."""
    from ogbench.relabel_utils import relabel_dataset

    raw = open_npz(path)
    if validate:
        validate_visual_arrays(raw, str(path), episode_rows)
    rows, starts, arrays = transitions_from_raw(raw)
    relabel_dataset(env_name, env, arrays)
    if action_clip_eps is not None:
        np.clip(arrays["actions"], -1 + action_clip_eps, 1 - action_clip_eps, out=arrays["actions"])
    keep = {k: arrays[k].astype(np.float32) for k in ("actions", "rewards", "terminals", "masks")}
    return VisualSplit(raw["observations"], rows, starts, keep)


def set_visual_options(data, frame_stack: int | None, p_aug: float | None) -> None:
    """Frame stack and crop probability on both splits (the authors set them on train and val alike)."""
    for split in (data.train, data.val):
        if isinstance(split, VisualSplit):
            split.frame_stack, split.p_aug = frame_stack, p_aug


# --------------------------------------------------------------------------------------------------- batches


def random_crop(images: Sequence[torch.Tensor], offsets: torch.Tensor, padding: int = CROP_PADDING):
    """Each ``[B, H, W, C]`` image batch cropped at ``offsets [B, 2]`` (row, col in ``[0, 2 * padding]``) from its
    edge-padded self: pixel (i, j) of sample b is the input's (clamp(i + dy - p), clamp(j + dx - p)). The same
    offsets for every tensor of ``images`` (observations and next observations)."""
    B, H, W = images[0].shape[:3]
    dev = images[0].device
    offsets = offsets.to(dev)
    ri = (torch.arange(H, device=dev)[None] + offsets[:, :1] - padding).clamp(0, H - 1)  # [B, H]
    ci = (torch.arange(W, device=dev)[None] + offsets[:, 1:] - padding).clamp(0, W - 1)  # [B, W]
    b = torch.arange(B, device=dev)[:, None, None]
    return [img[b, ri[:, :, None], ci[:, None, :]] for img in images]


class VisualSampler:
    """Batches of a :class:`VisualSplit` with stacked frames and the crop, drawn from one seeded generator (the
    indices, then the augmentation coin and offsets), like ``TransitionSampler``. Observations stay uint8 until
    the encoder; the rest is moved to ``device`` as ``dtype``."""

    def __init__(
        self, data: VisualSplit, *, device="cpu", dtype=torch.float32, seed: int = 0, action_clip_eps=None
    ):
        self.data, self.size = data, len(data.rows)
        if self.size == 0:
            raise ValueError("dataset is empty")
        self.device = torch.device(device)
        actions = data["actions"]
        if action_clip_eps is not None:
            actions = np.clip(actions, -1 + action_clip_eps, 1 - action_clip_eps)
        self.tensors = {
            k: torch.as_tensor(v).to(device=self.device, dtype=dtype)
            for k, v in (("actions", actions), ("rewards", data["rewards"]), ("masks", data["masks"]))
        }
        self.generator = torch.Generator().manual_seed(int(seed))

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        g = self.generator if generator is None else generator
        idx = torch.randint(self.size, (batch_size,), generator=g)
        obs, next_obs = self.data.gather(idx.numpy())
        pin = self.device.type == "cuda"
        obs, next_obs = (torch.from_numpy(a) for a in (obs, next_obs))
        if pin:
            obs, next_obs = obs.pin_memory(), next_obs.pin_memory()
        obs = obs.to(self.device, non_blocking=pin)
        next_obs = next_obs.to(self.device, non_blocking=pin)
        p_aug = self.data.p_aug
        if p_aug is not None and torch.rand((), generator=g).item() < p_aug:
            offsets = torch.randint(0, 2 * CROP_PADDING + 1, (batch_size, 2), generator=g)
            obs, next_obs = random_crop([obs, next_obs], offsets)
        dev_idx = idx.to(self.device)
        batch = {k: v.index_select(0, dev_idx) for k, v in self.tensors.items()}
        batch.update(observations=obs, next_observations=next_obs)
        return batch

    def state(self) -> torch.Tensor:
        return self.generator.get_state()

    def load_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state.cpu())


# --------------------------------------------------------------------------------------------------- evaluation


class FrameStack:
    """The evaluation env's frame stack, as the training data's: at reset the first frame ``k`` times, then the
    last ``k`` frames, concatenated along channels (FQL's ``FrameStackWrapper``)."""

    def __init__(self, frame_stack: int | None):
        self.k = int(frame_stack or 1)
        self.frames: list[np.ndarray] = []

    def reset(self, obs: np.ndarray) -> np.ndarray:
        self.frames = [obs] * self.k
        return np.concatenate(self.frames, axis=-1)

    def step(self, obs: np.ndarray) -> np.ndarray:
        self.frames = [*self.frames[1:], obs]
        return np.concatenate(self.frames, axis=-1)


# --------------------------------------------------------------------------------------------------- tasks


def load_visual_task(t, directory: pathlib.Path, *, validate: bool, action_clip_eps: float | None):
    """``load_task_datasets`` for a pixel task: the same files, manifest checks and OGBench relabelling as the
    state datasets, with the frames memory-mapped (:class:`VisualSplit`)."""
    from fisher_decorator.datasets import loading
    from fisher_decorator.datasets.errors import DatasetNotFoundError

    recipe = t.recipe
    paths = {"train": directory / recipe.files[0], "val": directory / recipe.files[1]}
    missing = [p.name for p in paths.values() if not p.exists()]
    if missing:
        raise DatasetNotFoundError(loading.missing_files_message(recipe, directory, missing))
    manifest = loading.read_manifest(directory, recipe.dataset)
    if manifest is not None:
        source = "regenerated"
        if validate:
            loading.check_against_manifest(manifest, paths)
        episode_rows = manifest.get("max_episode_steps", recipe.max_episode_steps)
    else:
        source = "official"
        manifest = loading.official_manifest(recipe.dataset, paths)
        episode_rows = recipe.max_episode_steps
    # The rewards depend on the state (qpos, buttons) and the task only: the state env of the same task relabels
    # exactly as the pixel one, without rendering.
    state_env_name = t.env_name.removeprefix("visual-")
    before_rendering()  # the evaluation env of this process will render
    env = loading.make_task_env(state_env_name)
    splits = {
        split: load_visual_split(
            path,
            state_env_name,
            env,
            validate=validate,
            episode_rows=episode_rows if validate else None,
            action_clip_eps=action_clip_eps,
        )
        for split, path in paths.items()
    }
    env.close()
    return loading.TaskData(
        train=splits["train"],
        val=splits["val"],
        dataset_name=recipe.dataset,
        files=[paths["train"], paths["val"]],
        manifest=manifest,
        task=t.task,
        env_name=t.env_name,
        source=source,
    )
