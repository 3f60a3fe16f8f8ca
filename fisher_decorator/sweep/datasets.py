"""Dataset preparation for a sweep: once, in the driver, before any run starts.

Runs only read datasets; two runs regenerating the same file at once would race, and a missing official file
found by the 40th run after hours of training would waste the 39 before it. So the driver checks every dataset
the grid needs, fails first (naming every file to download) if one cannot be regenerated, then regenerates the
missing ones with OGBench's oracles (``fisher_decorator.datasets.generation``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fisher_decorator.datasets.errors import DatasetError, DatasetNotFoundError
from fisher_decorator.datasets.registry import D4RL_DATASETS, OGBENCH_URL, get_recipe, parse_ogbench_task


def datasets_for(tasks: list[str]) -> list[str]:
    """The OGBench dataset names (``cube-single-play-v0``) the tasks read, in first-use order (D4RL tasks read
    their own file, checked by :func:`prepare_datasets`)."""
    return list(dict.fromkeys(parse_ogbench_task(t).dataset for t in tasks if t not in D4RL_DATASETS))


def prepare_datasets(
    tasks: list[str],
    dataset_dir: str | os.PathLike,
    recipe: dict[str, int] | None,
    *,
    workers: int = 1,
    progress: bool = True,
    log=print,
) -> dict[str, dict[str, Any]]:
    """Make sure every dataset of ``tasks`` is in ``dataset_dir``; return ``{dataset: provenance}``.

    recipe: None for OGBench's official recipe (existing regenerated files must follow it: a tiny dataset left
        in the directory must not pass for the paper's); else ``{"episodes", "val_episodes",
        "max_episode_steps"}`` for tiny regenerated datasets (files already there are used as they are).
    Raises :class:`DatasetNotFoundError` listing every dataset that must be downloaded, before generating any.
    """
    from fisher_decorator.datasets.generation import generate
    from fisher_decorator.datasets.loading import check_against_manifest, read_manifest

    directory = Path(dataset_dir).expanduser()
    plan: dict[str, str] = {}
    downloads: list[str] = []
    out: dict[str, dict[str, Any]] = {}
    # D4RL: official files only, so each is either present or listed to download.
    for name in dict.fromkeys(t for t in tasks if t in D4RL_DATASETS):
        spec = D4RL_DATASETS[name]
        found = [f for f in spec.candidate_files if (directory / f).exists()]
        if found:
            out[name] = {"source": "official", "dir": str(directory), "file": found[0]}
        else:
            downloads.append(f"  {name}: {spec.url} (D4RL's file; fidec data download {name})")
    for dataset in datasets_for(tasks):
        r = get_recipe(dataset)
        files = {"train": directory / r.files[0], "val": directory / r.files[1]}
        present = [p.exists() for p in files.values()]
        if all(present):
            plan[dataset] = "check"
        elif any(present):
            missing = [p.name for p in files.values() if not p.exists()]
            raise DatasetNotFoundError(
                f"{dataset}: {', '.join(missing)} missing in {directory} while the other split is there; "
                f"put both official files ({OGBENCH_URL}/{r.files[0]} and -val) there"
                + (" or delete it and let the sweep regenerate both" if r.regenerable else "")
            )
        elif r.regenerable:
            plan[dataset] = "generate"
        else:
            downloads.append(
                f"  {dataset}: {OGBENCH_URL}/{r.files[0]} and {OGBENCH_URL}/{r.files[1]} "
                f"(its recipe rolls out trained {r.family} experts; it cannot be regenerated offline)"
            )
    if downloads:
        raise DatasetNotFoundError(
            f"the sweep needs datasets that are not in {directory} and cannot be regenerated; download them into "
            "that directory (or point --dataset-dir at where they are) and start the sweep again:\n"
            + "\n".join(downloads)
        )

    for dataset, action in plan.items():
        r = get_recipe(dataset)
        files = {"train": directory / r.files[0], "val": directory / r.files[1]}
        if action == "generate":
            size = (
                "official recipe"
                if recipe is None
                else f"{recipe['episodes']} + {recipe['val_episodes']} episodes"
            )
            log(f"dataset {dataset}: regenerating ({size}) in {directory}")
            kwargs = {} if recipe is None else dict(recipe)
            manifest = generate(dataset, directory, workers=workers, progress=progress, **kwargs)
        else:
            manifest = read_manifest(directory, dataset)  # DatasetError if a generation did not finish
            if manifest is None:
                out[dataset] = {"source": "official", "dir": str(directory)}
                continue
            if recipe is None and not manifest.get("follows_official_recipe"):
                raise DatasetError(
                    f"{dataset} in {directory} was regenerated with {manifest.get('train_episodes')} episodes of "
                    f"{manifest.get('max_episode_steps')} steps, not OGBench's official recipe; the paper budget "
                    f"needs official-size data. Regenerate it (fidec data generate {dataset} --dataset-dir "
                    f"{directory} --force), or pass another --dataset-dir"
                )
            check_against_manifest(manifest, files)
        out[dataset] = {
            "source": "regenerated",
            "dir": str(directory),
            "train_episodes": manifest.get("train_episodes"),
            "val_episodes": manifest.get("val_episodes"),
            "max_episode_steps": manifest.get("max_episode_steps"),
            "follows_official_recipe": manifest.get("follows_official_recipe"),
            "plan_hash": manifest.get("plan_hash"),
        }
    return out
