"""``fidec data verify``: check every dataset file in a directory without training on it."""

from __future__ import annotations

import os
import pathlib
from dataclasses import dataclass

from fisher_decorator.datasets.d4rl import load_d4rl
from fisher_decorator.datasets.errors import DatasetError
from fisher_decorator.datasets.generation import SHARD_DIR
from fisher_decorator.datasets.loading import check_against_manifest, read_manifest
from fisher_decorator.datasets.registry import D4RL_DATASETS, OGBENCH_RECIPES
from fisher_decorator.datasets.validation import read_npz, validate_ogbench_arrays, validate_transitions


@dataclass
class VerifyResult:
    name: str
    """The dataset (or, for an unrecognised file, the file name)."""
    ok: bool
    detail: str
    source: str = ""
    """``regenerated``, ``official``, or empty when not applicable."""


def _verify_ogbench(directory: pathlib.Path, dataset: str) -> VerifyResult:
    recipe = OGBENCH_RECIPES[dataset]
    paths = {"train": directory / recipe.files[0], "val": directory / recipe.files[1]}
    missing = [p.name for p in paths.values() if not p.exists()]
    if missing:
        return VerifyResult(dataset, False, f"missing {', '.join(missing)}")
    try:
        manifest = read_manifest(directory, dataset)
        if manifest is not None:
            check_against_manifest(manifest, paths)
            episode_rows = manifest.get("max_episode_steps", recipe.max_episode_steps)
        else:
            episode_rows = recipe.max_episode_steps
        counts = {}
        for split, path in paths.items():
            raw = read_npz(path)
            lengths = validate_ogbench_arrays(raw, str(path), recipe, episode_rows=episode_rows)
            counts[split] = (len(lengths), int(lengths.sum() - len(lengths)))
    except DatasetError as exc:
        return VerifyResult(
            dataset,
            False,
            str(exc),
            "regenerated" if (directory / f"{dataset}.manifest.json").exists() else "official",
        )
    source = "regenerated" if manifest is not None else "official"
    detail = (
        f"train {counts['train'][0]} episodes / {counts['train'][1]} transitions, "
        f"val {counts['val'][0]} / {counts['val'][1]}"
    )
    if manifest is not None:
        detail += f"; SHA-256 matches manifest (seed {manifest.get('seed')}, plan {manifest.get('plan_hash', '')[:12]}"
        detail += (
            ", official recipe)" if manifest.get("follows_official_recipe") else ", NOT the official size)"
        )
    return VerifyResult(dataset, True, detail, source)


def _verify_d4rl(path: pathlib.Path, name: str) -> VerifyResult:
    try:
        data = load_d4rl(path, D4RL_DATASETS[name])
        validate_transitions(data, f"{name} ({path})")
    except DatasetError as exc:
        return VerifyResult(name, False, str(exc), "official")
    n = data["observations"].shape[0]
    return VerifyResult(
        name, True, f"{path.name}: {n} transitions, {int(data['terminals'].sum())} episodes", "official"
    )


def verify_directory(directory: str | os.PathLike) -> list[VerifyResult]:
    """Check every OGBench ``.npz`` pair and D4RL ``.hdf5`` in ``directory``; never raises for a bad file."""
    directory = pathlib.Path(directory).expanduser()
    if not directory.is_dir():
        return [VerifyResult(str(directory), False, "not a directory")]
    results = []
    names = sorted(p.name for p in directory.iterdir() if p.is_file())
    datasets = set()
    d4rl_by_file = {f: name for name, spec in D4RL_DATASETS.items() for f in spec.candidate_files}
    for file in names:
        if file.endswith(".npz"):
            stem = file[: -len(".npz")]
            dataset = stem[: -len("-val")] if stem.endswith("-val") else stem
            if dataset in OGBENCH_RECIPES:
                datasets.add(dataset)
            else:
                results.append(
                    VerifyResult(file, False, "not an OGBench dataset this package knows (not checked)")
                )
        elif file.endswith(".hdf5") and file in d4rl_by_file:
            results.append(_verify_d4rl(directory / file, d4rl_by_file[file]))
        elif file.startswith(".") and file.endswith(".tmp"):
            results.append(
                VerifyResult(file, False, "temporary file of an interrupted write (safe to delete)")
            )
        elif file.endswith(".manifest.json"):
            dataset = file[: -len(".manifest.json")]
            if dataset in OGBENCH_RECIPES and not (directory / f"{dataset}.npz").exists():
                datasets.add(dataset)
    results.extend(_verify_ogbench(directory, d) for d in sorted(datasets))
    shard_root = directory / SHARD_DIR
    if shard_root.is_dir():
        for run in sorted(p.name for p in shard_root.iterdir()):
            results.append(
                VerifyResult(
                    f"{SHARD_DIR}/{run}",
                    True,
                    "shards of an unfinished generation run (rerun the same command to resume, or delete)",
                )
            )
    return results
