"""Checks run on every load and by ``fidec data verify``.

Two levels:
- raw OGBench files (``observations, actions, terminals, qpos, qvel[, button_states]``, one row per step, the
  last row of an episode has ``terminals=True`` and yields no transition): :func:`validate_ogbench_arrays`;
- transition dicts handed to training (``observations, actions, rewards, terminals, masks, next_observations``):
  :func:`validate_transitions`.
Every error names the file or dataset and the problem, so a truncated download or a half-written file is
reported as such instead of surfacing later as a shape error inside the trainer.
"""

from __future__ import annotations

import os
import pathlib
import zipfile
import zlib

import numpy as np

from fisher_decorator.datasets.errors import DatasetError
from fisher_decorator.datasets.registry import Recipe

TRANSITION_KEYS = ("observations", "actions", "rewards", "terminals", "masks", "next_observations")
ACTION_TOLERANCE = 1e-4
"""Actions may exceed [-1, 1] by this much (float rounding in third-party files) before it is an error."""
CONTINUITY_TOLERANCE = 1e-5
"""Inside an episode ``next_observations[i]`` must equal ``observations[i + 1]`` to this L2 distance (D4RL's
episode-boundary test uses 1e-6; OGBench files match exactly)."""
_CHUNK = 1 << 16


def _finite(name: str, key: str, a: np.ndarray) -> None:
    if a.dtype.kind != "f":
        return
    for start in range(0, a.shape[0], _CHUNK):
        block = a[start : start + _CHUNK]
        if not np.isfinite(block).all():
            rows = start + np.flatnonzero(~np.isfinite(block).reshape(block.shape[0], -1).all(axis=1))
            kind = "NaN" if np.isnan(block).any() else "Inf"
            raise DatasetError(f"{name}: '{key}' contains {kind}, first at row {rows[0]}")


def _action_range(name: str, actions: np.ndarray) -> None:
    lo, hi = float(actions.min(initial=0.0)), float(actions.max(initial=0.0))
    if lo < -1 - ACTION_TOLERANCE or hi > 1 + ACTION_TOLERANCE:
        col = int(np.argmax(np.abs(actions).max(axis=0)))
        raise DatasetError(
            f"{name}: actions must lie in [-1, 1] (tolerance {ACTION_TOLERANCE}); found range [{lo:.6g}, {hi:.6g}] "
            f"(largest |a| in dimension {col})"
        )


def _binary(name: str, key: str, a: np.ndarray) -> None:
    if a.dtype == bool:
        return
    bad = (a != 0) & (a != 1)
    if bad.any():
        raise DatasetError(
            f"{name}: '{key}' must be 0/1, found {a[bad][:3].tolist()} at row {int(np.argmax(bad))}"
        )


def validate_transitions(data: dict, name: str, *, expected_episode_length: int | None = None) -> None:
    """Check a transition dict: keys, shapes, dtypes (float32), NaN/Inf, action range, 0/1 terminals and masks,
    and that ``terminals`` mark exactly the episode ends (``next_observations[i] == observations[i+1]`` wherever
    ``terminals[i] == 0``, the last transition is terminal, and, if given, every episode has
    ``expected_episode_length`` transitions). Raises :class:`DatasetError` naming ``name`` and the problem.
    """
    missing = [k for k in TRANSITION_KEYS if k not in data]
    if missing:
        raise DatasetError(
            f"{name}: missing key(s) {missing}; a transition dataset needs {list(TRANSITION_KEYS)}"
        )
    n = None
    for key in TRANSITION_KEYS:
        a = data[key]
        if not isinstance(a, np.ndarray):
            raise DatasetError(f"{name}: '{key}' must be a numpy array, got {type(a).__name__}")
        if a.dtype != np.float32:
            raise DatasetError(f"{name}: '{key}' must be float32, got {a.dtype}")
        want_ndim = 2 if key in ("observations", "actions", "next_observations") else 1
        if a.ndim != want_ndim:
            raise DatasetError(
                f"{name}: '{key}' must be {want_ndim}-D [transitions{', dim' * (want_ndim - 1)}], "
                f"got shape {a.shape}"
            )
        if n is None:
            n = a.shape[0]
        elif a.shape[0] != n:
            raise DatasetError(f"{name}: '{key}' has {a.shape[0]} rows but 'observations' has {n}")
    if n == 0:
        raise DatasetError(f"{name}: the dataset is empty (0 transitions)")
    obs, next_obs = data["observations"], data["next_observations"]
    if obs.shape[1:] != next_obs.shape[1:]:
        raise DatasetError(
            f"{name}: observations {obs.shape} and next_observations {next_obs.shape} differ in width"
        )
    for key in TRANSITION_KEYS:
        _finite(name, key, data[key])
    _action_range(name, data["actions"])
    terminals = data["terminals"]
    _binary(name, "terminals", terminals)
    masks = data["masks"]
    if masks.min() < 0 or masks.max() > 1:
        raise DatasetError(f"{name}: 'masks' must lie in [0, 1], found [{masks.min()}, {masks.max()}]")

    if terminals[-1] != 1:
        raise DatasetError(
            f"{name}: the last transition must be terminal (terminals[-1] = {terminals[-1]}); "
            "the data end in the middle of an episode (truncated?)"
        )
    # Inside an episode the next observation is the following row's observation.
    for start in range(0, n - 1, _CHUNK):
        stop = min(start + _CHUNK, n - 1)
        gap = np.linalg.norm(obs[start + 1 : stop + 1] - next_obs[start:stop], axis=1)
        broken = (terminals[start:stop] == 0) & (gap > CONTINUITY_TOLERANCE)
        if broken.any():
            i = start + int(np.argmax(broken))
            raise DatasetError(
                f"{name}: terminals are inconsistent with the episodes: terminals[{i}] = 0 but "
                f"next_observations[{i}] != observations[{i + 1}] (L2 gap {gap[i - start]:.3g}); "
                f"{int(broken.sum())} such row(s) in this block"
            )
    if expected_episode_length is not None:
        lengths = np.diff(np.concatenate([[-1], np.flatnonzero(terminals)]))
        bad = np.flatnonzero(lengths != expected_episode_length)
        if bad.size:
            raise DatasetError(
                f"{name}: every episode should have {expected_episode_length} transitions, but episode {bad[0]} "
                f"has {lengths[bad[0]]} ({bad.size} of {lengths.size} episodes differ)"
            )


def ogbench_required_keys(recipe: Recipe | None) -> tuple[str, ...]:
    keys = ("observations", "actions", "terminals", "qpos", "qvel")
    if recipe is not None and recipe.has_button_states:
        keys += ("button_states",)
    return keys


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read every array of an ``.npz`` into memory; a truncated or corrupt file raises :class:`DatasetError`."""
    path = pathlib.Path(path)
    key = None
    try:
        with np.load(path, allow_pickle=False) as f:  # never unpickle: a pickle can run code
            out = {}
            for key in f.files:
                out[key] = f[key]
            return out
    except ValueError as exc:
        if "Object arrays cannot be loaded" not in str(exc):
            raise _unreadable(path, exc) from exc
        raise DatasetError(
            f"{path}: array '{key}' is an object array (Python objects, loadable only by unpickling, which "
            "can run code); dataset arrays must be numbers or booleans. Not loaded."
        ) from None
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, KeyError) as exc:
        raise _unreadable(path, exc) from exc


def _unreadable(path: pathlib.Path, exc: BaseException) -> DatasetError:
    size = path.stat().st_size if path.exists() else 0
    return DatasetError(
        f"{path}: cannot be read as an .npz ({type(exc).__name__}: {exc}); the file ({size} bytes) is truncated "
        "or corrupt. Delete it and regenerate or re-download it."
    )


def validate_ogbench_arrays(
    arrays: dict[str, np.ndarray],
    name: str,
    recipe: Recipe | None = None,
    *,
    episode_rows: int | None = None,
) -> np.ndarray:
    """Check the arrays of a raw OGBench file and return the episode lengths (rows per episode).

    ``episode_rows``: every episode must have this many rows (``max_episode_steps``; OGBench's recipes never end
    an episode early). Defaults to the recipe's.
    """
    if recipe is not None and recipe.is_visual:  # uint8 frames, never read whole (they may be memory maps)
        from fisher_decorator.datasets.visual import validate_visual_arrays

        return validate_visual_arrays(arrays, name, episode_rows or recipe.max_episode_steps)
    required = ogbench_required_keys(recipe)
    missing = [k for k in required if k not in arrays]
    if missing:
        raise DatasetError(
            f"{name}: missing array(s) {missing}; an OGBench file has {list(required)} "
            "(qpos/qvel/button_states are needed to compute single-task rewards)"
        )
    obs, actions, terminals = arrays["observations"], arrays["actions"], arrays["terminals"]
    n = obs.shape[0] if obs.ndim else 0
    if n == 0:
        raise DatasetError(f"{name}: the file holds no rows")
    for key in required:
        a = arrays[key]
        if a.ndim == 0 or a.shape[0] != n:
            raise DatasetError(f"{name}: '{key}' has shape {a.shape}, expected {n} rows like 'observations'")
    if obs.ndim != 2 or actions.ndim != 2 or terminals.ndim != 1:
        raise DatasetError(
            f"{name}: expected observations [N, ob_dim], actions [N, action_dim], terminals [N]; "
            f"got {obs.shape}, {actions.shape}, {terminals.shape}"
        )
    if recipe is not None:
        if obs.shape[1] != recipe.ob_dim or actions.shape[1] != recipe.action_dim:
            raise DatasetError(
                f"{name}: {recipe.dataset} has ob_dim {recipe.ob_dim} and action_dim {recipe.action_dim}, the file "
                f"has {obs.shape[1]} and {actions.shape[1]} (a file of another dataset under this name?)"
            )
    for key in ("observations", "actions", "qpos", "qvel"):
        if arrays[key].dtype.kind != "f":
            raise DatasetError(f"{name}: '{key}' must be floating point, got {arrays[key].dtype}")
    if terminals.dtype != bool and terminals.dtype.kind not in "iuf":
        raise DatasetError(f"{name}: 'terminals' must be bool, got {terminals.dtype}")
    _binary(name, "terminals", terminals)
    for key in ("observations", "actions", "qpos", "qvel"):
        _finite(name, key, arrays[key])
    _action_range(name, actions)
    if not terminals[-1]:
        raise DatasetError(
            f"{name}: the last row is not an episode end (terminals[-1] is False): the file ends "
            "in the middle of an episode (truncated?)"
        )
    lengths = np.diff(np.concatenate([[-1], np.flatnonzero(terminals)]))
    if (lengths < 2).any():
        i = int(np.argmax(lengths < 2))
        raise DatasetError(f"{name}: episode {i} has {lengths[i]} row(s); an episode needs at least 2 rows")
    expected = episode_rows if episode_rows is not None else (recipe.max_episode_steps if recipe else None)
    if expected is not None:
        bad = np.flatnonzero(lengths != expected)
        if bad.size:
            raise DatasetError(
                f"{name}: every episode should have {expected} rows (max_episode_steps), but episode {bad[0]} "
                f"has {lengths[bad[0]]} ({bad.size} of {lengths.size} episodes differ)"
            )
    return lengths
