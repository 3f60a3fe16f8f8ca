"""D4RL AntMaze and Adroit from their official HDF5 files, without the unmaintained ``d4rl`` package.

Reproduces what the FiDec authors' ``envs/d4rl_utils.get_dataset`` (identical to FQL's) computes on top of
``d4rl.qlearning_dataset(env)`` (``terminate_on_end=False``):

1. ``qlearning_dataset``: for every row ``i < N - 1`` that is not a timeout, the transition
   ``(obs[i], act[i], rew[i], obs[i + 1], done=terminals[i])``; timeout rows are dropped, because the next row
   belongs to another episode. (Files without a ``timeouts`` key fall back to D4RL's episode-step counter.)
2. The authors' conventions, ``masks = 1 - done`` for both; then
   AntMaze: ``rewards - 1`` (so 0 at the goal and -1 elsewhere), ``terminals[i] = 1`` where the next transition
   does not continue this one (``||observations[i + 1] - next_observations[i]|| > 1e-6``), ``terminals[-1] = 1``;
   Adroit: rewards as stored, ``terminals[i] = 1`` at such a discontinuity *or* where the file's ``terminals[i]``
   is 1 (pen drops the pen), ``terminals[-1] = 1``.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np

from fisher_decorator.datasets.errors import DatasetError
from fisher_decorator.datasets.registry import D4RLAdroit, D4RLAntMaze, D4RLDataset

REQUIRED_KEYS = ("observations", "actions", "rewards", "terminals")


def read_d4rl_hdf5(path: str | os.PathLike, spec: D4RLDataset | None = None) -> dict[str, np.ndarray]:
    """The top-level arrays of a D4RL HDF5 file (``timeouts`` if present), checked for keys and shapes."""
    import h5py

    path = pathlib.Path(path)
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in REQUIRED_KEYS if k not in f]
            if missing:
                raise DatasetError(f"{path}: missing key(s) {missing}; a D4RL file has {list(REQUIRED_KEYS)}")
            data = {k: np.asarray(f[k][()]) for k in (*REQUIRED_KEYS, "timeouts") if k in f}
    except DatasetError:
        raise
    except (OSError, KeyError, ValueError) as exc:
        raise DatasetError(
            f"{path}: cannot be read as HDF5 ({exc}); the file is truncated or corrupt"
        ) from exc
    for key in ("rewards", "terminals", "timeouts"):
        if key in data and data[key].ndim == 2 and data[key].shape[1] == 1:
            data[key] = data[key][:, 0]  # D4RL squeezes [N, 1] columns
    n = data["observations"].shape[0]
    if n < 2:
        raise DatasetError(f"{path}: {n} row(s); a D4RL file needs at least 2")
    for key, a in data.items():
        if a.shape[0] != n:
            raise DatasetError(f"{path}: '{key}' has {a.shape[0]} rows but 'observations' has {n}")
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise DatasetError(
                f"{path}: '{key}' contains NaN or Inf (first bad row "
                f"{int(np.argmax(~np.isfinite(a).reshape(n, -1).all(axis=1)))})"
            )
    if spec is not None:
        if data["observations"].shape[1:] != (spec.ob_dim,) or data["actions"].shape[1:] != (
            spec.action_dim,
        ):
            raise DatasetError(
                f"{path}: {spec.name} has observations [N, {spec.ob_dim}] and actions [N, {spec.action_dim}], "
                f"the file has {data['observations'].shape} and {data['actions'].shape}"
            )
    for key in ("rewards", "terminals", "timeouts"):
        if key in data and data[key].shape != (n,):
            raise DatasetError(f"{path}: '{key}' has shape {data[key].shape}, expected ({n},)")
    return data


def qlearning_transitions(
    raw: dict[str, np.ndarray], max_episode_steps: int | None = None
) -> dict[str, np.ndarray]:
    """``d4rl.qlearning_dataset(terminate_on_end=False)``, vectorised when the file has ``timeouts``."""
    n = raw["observations"].shape[0]
    done = raw["terminals"][: n - 1].astype(bool)
    if "timeouts" in raw:
        final = raw["timeouts"][: n - 1].astype(bool)
    else:
        if max_episode_steps is None:
            raise DatasetError("a D4RL file without 'timeouts' needs max_episode_steps to find episode ends")
        # D4RL's counter, literally: a step is final when the counter reads max_episode_steps - 1; the counter
        # restarts at 0 after a final step (which is skipped) and at 1 after a terminal step (which is kept).
        final = np.zeros(n - 1, dtype=bool)
        step = 0
        for i in range(n - 1):
            if step == max_episode_steps - 1:
                final[i] = True
                step = 0
                continue
            step = 1 if done[i] else step + 1
    keep = np.flatnonzero(~final)
    return {
        "observations": raw["observations"][keep].astype(np.float32),
        "actions": raw["actions"][keep].astype(np.float32),
        "next_observations": raw["observations"][keep + 1].astype(np.float32),
        "rewards": raw["rewards"][keep].astype(np.float32),
        "terminals": done[keep],
    }


def authors_antmaze_conventions(q: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The FiDec authors' (and FQL's) AntMaze post-processing of a ``qlearning_dataset`` dict."""
    obs, next_obs = q["observations"], q["next_observations"]
    m = obs.shape[0]
    terminals = np.ones(m, dtype=np.float32)
    if m > 1:
        jump = np.linalg.norm(obs[1:] - next_obs[:-1], axis=1) > 1e-6
        terminals[:-1] = jump.astype(np.float32)
    return {
        "observations": obs,
        "actions": q["actions"],
        "next_observations": next_obs,
        "terminals": terminals,
        "rewards": (q["rewards"] - 1.0).astype(np.float32),
        "masks": (1.0 - q["terminals"].astype(np.float32)).astype(np.float32),
    }


def load_d4rl_antmaze(path: str | os.PathLike, spec: D4RLAntMaze | None = None) -> dict[str, np.ndarray]:
    """Transitions of a D4RL AntMaze HDF5 file with the authors' conventions (actions not yet clipped)."""
    raw = read_d4rl_hdf5(path, spec)
    q = qlearning_transitions(raw, spec.max_episode_steps if spec is not None else None)
    if q["observations"].shape[0] == 0:
        raise DatasetError(f"{path}: no transitions left after dropping timeout steps")
    return authors_antmaze_conventions(q)


def _discontinuities(obs: np.ndarray, next_obs: np.ndarray) -> np.ndarray:
    """1 where the next transition does not start where this one ends, and at the last transition."""
    m = obs.shape[0]
    out = np.ones(m, dtype=bool)
    if m > 1:
        out[:-1] = np.linalg.norm(obs[1:] - next_obs[:-1], axis=1) > 1e-6
    return out


def authors_adroit_conventions(q: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The FiDec authors' (and FQL's) Adroit post-processing of a ``qlearning_dataset`` dict: no reward shift."""
    done = q["terminals"].astype(bool)
    terminals = _discontinuities(q["observations"], q["next_observations"]) | done
    return {
        "observations": q["observations"],
        "actions": q["actions"],
        "next_observations": q["next_observations"],
        "terminals": terminals.astype(np.float32),
        "rewards": q["rewards"].astype(np.float32),
        "masks": (1.0 - done.astype(np.float32)).astype(np.float32),
    }


def load_d4rl_adroit(path: str | os.PathLike, spec: D4RLAdroit | None = None) -> dict[str, np.ndarray]:
    """Transitions of a D4RL Adroit HDF5 file with the authors' conventions (actions not yet clipped)."""
    raw = read_d4rl_hdf5(path, spec)
    q = qlearning_transitions(raw, spec.max_episode_steps if spec is not None else None)
    if q["observations"].shape[0] == 0:
        raise DatasetError(f"{path}: no transitions left after dropping timeout steps")
    return authors_adroit_conventions(q)


def load_d4rl(path: str | os.PathLike, spec: D4RLDataset) -> dict[str, np.ndarray]:
    """Transitions of any D4RL file this package knows, with the authors' conventions for its family."""
    if isinstance(spec, D4RLAdroit):
        return load_d4rl_adroit(path, spec)
    return load_d4rl_antmaze(path, spec)


def conventions(spec: D4RLDataset) -> str:
    """One line for a run's manifest: what was done to the file's arrays."""
    if isinstance(spec, D4RLAdroit):
        return (
            "d4rl.qlearning_dataset + FiDec/FQL d4rl_utils (Adroit: rewards as stored, masks = 1 - terminals)"
        )
    return "d4rl.qlearning_dataset + FiDec/FQL d4rl_utils (rewards - 1, masks = 1 - terminals)"


def read_d4rl_states(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The simulator states D4RL stores under ``infos/`` (``qpos``, ``qvel`` and the env's object/target keys,
    e.g. ``door_body_pos``, ``desired_orien``, ``board_pos``, ``obj_pos``, ``target_pos``), one row per observation."""
    import h5py

    with h5py.File(path, "r") as f:
        if "infos" not in f:
            raise DatasetError(
                f"{path}: no 'infos' group; D4RL's Adroit files store the simulator state there"
            )
        return {k: np.asarray(v[()]) for k, v in f["infos"].items() if isinstance(v, h5py.Dataset)}
