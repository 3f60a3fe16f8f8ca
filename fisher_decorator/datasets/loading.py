"""``load_task_datasets``: the one entry point the trainer uses to get transitions for a task.

OGBench single-task names (``cube-single-play-singletask-task2-v0``) read ``<dataset>.npz`` and
``<dataset>-val.npz`` from the dataset directory, whether we regenerated them (a manifest sits next to them) or
they are the official downloads, and produce exactly what FQL's ``make_env_and_datasets`` produces:
``ogbench.make_env_and_datasets``'s arrays (``next_observations`` by shifting within episodes; ``terminals`` at
episode ends; ``rewards``/``masks`` from OGBench's own ``relabel_dataset`` with the task's environment), then
actions clipped to ``[-1 + 1e-5, 1 - 1e-5]``. D4RL AntMaze/Adroit names read the official HDF5 file
(:mod:`fisher_decorator.datasets.d4rl`).
"""

from __future__ import annotations

import json
import os
import pathlib
from dataclasses import dataclass

import numpy as np

from fisher_decorator.datasets.d4rl import conventions, load_d4rl
from fisher_decorator.datasets.errors import DatasetError, DatasetNotFoundError
from fisher_decorator.datasets.fileio import sha256_file
from fisher_decorator.datasets.generation import manifest_path
from fisher_decorator.datasets.registry import (
    D4RL_DATASETS,
    OGBENCH_URL,
    D4RLDataset,
    OGBenchTask,
    Recipe,
    parse_ogbench_task,
)
from fisher_decorator.datasets.validation import read_npz, validate_ogbench_arrays, validate_transitions
from fisher_decorator.datasets.visual import load_visual_task

FQL_ACTION_CLIP_EPS = 1e-5
"""FQL (and the FiDec authors) clip dataset actions to [-1 + eps, 1 - eps] after loading."""
_INFO_KEYS = ("qpos", "qvel", "button_states")


def default_dataset_dir() -> pathlib.Path:
    """``$FIDEC_DATASET_DIR`` if set, else OGBench's default ``~/.ogbench/data``."""
    env = os.environ.get("FIDEC_DATASET_DIR")
    return pathlib.Path(env).expanduser() if env else pathlib.Path("~/.ogbench/data").expanduser()


@dataclass
class TaskData:
    """The transitions of one task, and where they came from.

    ``train``/``val``: ``observations [N, ob_dim]``, ``actions [N, action_dim]``, ``rewards [N]``,
    ``terminals [N]`` (1 at the last transition of an episode), ``masks [N]`` (0 where the task is solved: no
    bootstrap), ``next_observations [N, ob_dim]``; all float32. ``val`` is None for D4RL (no split).
    ``manifest``: our generation manifest for regenerated data; for official files
    ``{"source": "official", "files": {split: {"name", "sha256", "bytes"}}}``.
    """

    train: dict[str, np.ndarray]
    val: dict[str, np.ndarray] | None
    dataset_name: str
    files: list[pathlib.Path]
    manifest: dict | None
    task: str = ""
    env_name: str = ""
    """The environment to evaluate in: OGBench's single-task id (``cube-single-singletask-task2-v0``) or the D4RL id."""
    source: str = ""
    """``regenerated`` (by ``fidec data generate``) or ``official``."""

    def provenance(self) -> dict:
        """What a training run's ``config.json`` should record about its data."""
        m = self.manifest or {}
        out = {
            "task": self.task,
            "dataset": self.dataset_name,
            "env_name": self.env_name,
            "source": self.source,
            "files": {
                k: {"name": v.get("name"), "sha256": v.get("sha256")} for k, v in m.get("files", {}).items()
            },
            "train_transitions": int(self.train["observations"].shape[0]),
            "val_transitions": int(self.val["observations"].shape[0]) if self.val is not None else 0,
        }
        if self.source == "regenerated":
            for key in (
                "plan_hash",
                "seed",
                "follows_official_recipe",
                "train_episodes",
                "val_episodes",
                "max_episode_steps",
                "generator_version",
                "versions",
            ):
                out[key] = m.get(key)
        return out


def load_task_datasets(
    task: str,
    dataset_dir: str | os.PathLike | None = None,
    *,
    validate: bool = True,
    action_clip_eps: float | None = FQL_ACTION_CLIP_EPS,
) -> TaskData:
    """Load the train (and validation) transitions of ``task``.

    task: an OGBench single-task name (``cube-single-play-singletask-task2-v0``; ``...-singletask-v0`` is OGBench's
        default task) or a D4RL name (``antmaze-large-diverse-v2``, ``pen-human-v1``).
    dataset_dir: where the files are; default :func:`default_dataset_dir`.
    validate: check the raw files (keys, shapes, dtypes, NaN/Inf, action range, episode lengths), the manifest's
        SHA-256 of regenerated files, and the resulting transitions. Off only for speed on trusted data.
    action_clip_eps: clip actions to ``[-1 + eps, 1 - eps]`` as FQL does; None keeps them as stored.

    Raises :class:`DatasetNotFoundError` (with the command or download that produces the files),
    :class:`DatasetError` for a malformed file, :class:`UnknownDatasetError` for an unknown name.
    """
    explicit_dir = dataset_dir is not None
    directory = pathlib.Path(dataset_dir).expanduser() if explicit_dir else default_dataset_dir()
    if task in D4RL_DATASETS:
        data, episode_length = _load_d4rl(task, D4RL_DATASETS[task], directory, explicit_dir)
    else:
        t = parse_ogbench_task(task)
        if t.recipe.is_visual:  # pixel tasks: the frames memory-mapped, never a float copy
            return load_visual_task(t, directory, validate=validate, action_clip_eps=action_clip_eps)
        data, episode_length = _load_ogbench(t, directory, validate)
    for split, path in zip((data.train, data.val), data.files):
        if split is None:
            continue
        if action_clip_eps is not None:
            np.clip(split["actions"], -1 + action_clip_eps, 1 - action_clip_eps, out=split["actions"])
        if validate:
            validate_transitions(split, f"{task} ({path})", expected_episode_length=episode_length)
    return data


# ------------------------------------------------------------------------------------------------------------
# OGBench


def missing_files_message(recipe: Recipe, directory: pathlib.Path, missing: list[str]) -> str:
    urls = " and ".join(f"{OGBENCH_URL}/{f}" for f in recipe.files)
    head = f"{recipe.dataset}: {', '.join(missing)} not found in {directory}."
    if recipe.regenerable:
        return (
            f"{head} Regenerate the dataset offline with OGBench's own oracles (official recipe: "
            f"{recipe.num_episodes} + {recipe.num_val_episodes} validation episodes of {recipe.max_episode_steps} "
            f"steps):\n  fidec data generate {recipe.dataset} --dataset-dir {directory}\n"
            f"(add --workers N to use N cores), or download the official files:\n"
            f"  fidec data download {recipe.dataset} --dataset-dir {directory}\n({urls})."
        )
    return (
        f"{head} This dataset cannot be regenerated offline: OGBench's recipe rolls out trained {recipe.family} "
        f"expert policies. Download the official files:\n  fidec data download {recipe.dataset} --dataset-dir "
        f"{directory}\n(or by hand: {urls}; put {recipe.files[0]} and {recipe.files[1]} in {directory}, or point "
        "--dataset-dir / FIDEC_DATASET_DIR at the directory that holds them)."
    )


def read_manifest(dataset_dir: pathlib.Path, dataset: str) -> dict | None:
    """Our generation manifest of ``dataset`` in ``dataset_dir``, or None for official/external files."""
    path = manifest_path(dataset_dir, dataset)
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(
            f"{path}: unreadable manifest ({exc}); delete it and regenerate {dataset}"
        ) from exc
    if not manifest.get("complete"):
        raise DatasetError(
            f"{path}: generation of {dataset} did not finish (the manifest says complete=false: the run stopped "
            f"while replacing the files). Rerun: fidec data generate {dataset} --dataset-dir {dataset_dir} --force "
            "(finished shards are reused)"
        )
    return manifest


def check_against_manifest(manifest: dict, files: dict[str, pathlib.Path]) -> None:
    """Every file's SHA-256 must equal the one its manifest recorded."""
    for split, path in files.items():
        entry = manifest.get("files", {}).get(split)
        if entry is None:
            raise DatasetError(f"{path}: its manifest has no entry for the {split} split")
        digest = sha256_file(path)
        if digest != entry["sha256"]:
            raise DatasetError(
                f"{path}: SHA-256 {digest[:16]}... does not match the manifest's {entry['sha256'][:16]}... "
                "(the file was modified, truncated or replaced after generation)"
            )


def official_manifest(dataset: str, files: dict[str, pathlib.Path], source: str = "official") -> dict:
    return {
        "source": source,
        "dataset": dataset,
        "files": {
            split: {"name": p.name, "sha256": sha256_file(p), "bytes": p.stat().st_size}
            for split, p in files.items()
        },
    }


def ogbench_transitions(raw: dict[str, np.ndarray], keep_info: bool = True) -> dict[str, np.ndarray]:
    """A raw OGBench file -> transitions, as ``ogbench.utils.load_dataset(compact_dataset=False)`` does.

    Rows with ``terminals=True`` are the final observations of their episodes: they become the last
    ``next_observations`` and are dropped as transitions; ``terminals`` then marks each episode's last transition.
    """
    terminals = raw["terminals"].astype(np.float32)
    ob_mask = terminals == 0
    next_mask = np.concatenate([[False], ob_mask[:-1]])
    out = {
        "observations": raw["observations"][ob_mask].astype(np.float32, copy=False),
        "actions": raw["actions"][ob_mask].astype(np.float32, copy=False),
        "next_observations": raw["observations"][next_mask].astype(np.float32, copy=False),
        "terminals": np.concatenate([terminals[1:], [1.0]])[ob_mask].astype(np.float32),
    }
    if keep_info:
        for k in _INFO_KEYS:
            if k in raw:
                out[k] = raw[k][ob_mask]
    return out


def make_task_env(env_name: str):
    """The single-task environment (as ``ogbench.make_env_and_datasets`` creates it)."""
    import gymnasium
    import ogbench  # noqa: F401  (registers the environments)

    return gymnasium.make(env_name)


def _load_ogbench(t: OGBenchTask, directory: pathlib.Path, validate: bool) -> tuple[TaskData, int]:
    recipe = t.recipe
    paths = {"train": directory / recipe.files[0], "val": directory / recipe.files[1]}
    missing = [p.name for p in paths.values() if not p.exists()]
    if missing:
        raise DatasetNotFoundError(missing_files_message(recipe, directory, missing))
    manifest = read_manifest(directory, recipe.dataset)
    if manifest is not None:
        source = "regenerated"
        if validate:
            check_against_manifest(manifest, paths)
        episode_rows = manifest.get("max_episode_steps", recipe.max_episode_steps)
    else:
        source = "official"
        manifest = official_manifest(recipe.dataset, paths)
        episode_rows = recipe.max_episode_steps

    from ogbench.relabel_utils import relabel_dataset

    env = make_task_env(t.env_name)
    splits = {}
    for split, path in paths.items():
        raw = read_npz(path)
        if validate:
            validate_ogbench_arrays(raw, str(path), recipe, episode_rows=episode_rows)
        data = ogbench_transitions(raw)
        del raw
        relabel_dataset(t.env_name, env, data)  # OGBench's own rewards/masks for this task
        splits[split] = {
            k: data[k]
            for k in ("observations", "actions", "rewards", "terminals", "masks", "next_observations")
        }
    env.close()
    data = TaskData(
        train=splits["train"],
        val=splits["val"],
        dataset_name=recipe.dataset,
        files=[paths["train"], paths["val"]],
        manifest=manifest,
        task=t.task,
        env_name=t.env_name,
        source=source,
    )
    return data, episode_rows - 1


# ------------------------------------------------------------------------------------------------------------
# D4RL


def d4rl_search_dirs(directory: pathlib.Path, explicit: bool) -> list[pathlib.Path]:
    dirs = [directory]
    if not explicit:  # also D4RL's own download directory
        d4rl_dir = pathlib.Path(os.environ.get("D4RL_DATASET_DIR", "~/.d4rl/datasets")).expanduser()
        if d4rl_dir not in dirs:
            dirs.append(d4rl_dir)
    return dirs


def _load_d4rl(
    name: str, spec: D4RLDataset, directory: pathlib.Path, explicit: bool
) -> tuple[TaskData, None]:
    dirs = d4rl_search_dirs(directory, explicit)
    path = next((d / f for d in dirs for f in spec.candidate_files if (d / f).exists()), None)
    if path is None:
        raise DatasetNotFoundError(
            f"{name}: {' or '.join(dict.fromkeys(spec.candidate_files))} not found in "
            f"{', '.join(map(str, dirs))}. Download the official D4RL file: fidec data download {name} "
            f"--dataset-dir {directory} ({spec.url}; either name works; the d4rl package is not needed)."
        )
    data = load_d4rl(path, spec)
    manifest = official_manifest(name, {"train": path})
    manifest["conventions"] = conventions(spec)
    task_data = TaskData(
        train=data,
        val=None,
        dataset_name=name,
        files=[path],
        manifest=manifest,
        task=name,
        env_name=name,
        source="official",
    )
    return task_data, None  # D4RL episodes vary in length
