"""Offline generation of OGBench datasets: every supported dataset, OGBench's loader vs ours, determinism, resume.

Episodes here are short (a few hundred steps instead of 1001) so the whole file runs in well under a minute on
two cores; ``@pytest.mark.slow`` tests use the official episode length.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("ogbench")

import ogbench  # noqa: E402

from fisher_decorator.datasets import (  # noqa: E402
    OGBENCH_RECIPES,
    DatasetError,
    TaskData,
    load_task_datasets,
)
from fisher_decorator.datasets import generation as gen  # noqa: E402
from fisher_decorator.datasets.fileio import sha256_file  # noqa: E402
from fisher_decorator.datasets.registry import PAPER_REGENERABLE  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

# Rows per episode for the quick tests: long enough that every oracle finishes at least one task.
SHORT_STEPS = {"pointmaze-medium-navigate-v0": 300}
DEFAULT_SHORT_STEPS = 200
TASK_OF = {  # the paper's tasks (SPEC: FiDec's OGBench settings)
    "cube-single-play-v0": "cube-single-play-singletask-task2-v0",
    "cube-double-play-v0": "cube-double-play-singletask-task2-v0",
    "scene-play-v0": "scene-play-singletask-task2-v0",
    "puzzle-3x3-play-v0": "puzzle-3x3-play-singletask-task4-v0",
    "puzzle-4x4-play-v0": "puzzle-4x4-play-singletask-task4-v0",
    "pointmaze-medium-navigate-v0": "pointmaze-medium-navigate-singletask-v0",
}


def _fql_actions(a: np.ndarray) -> np.ndarray:
    return np.clip(a, -1 + 1e-5, 1 - 1e-5)


def _assert_same_as_ogbench(ours: TaskData, task: str, directory) -> None:
    """Our loader must return exactly what ogbench.make_env_and_datasets (+ FQL's action clip) returns."""
    _, train, val = ogbench.make_env_and_datasets(task, dataset_dir=str(directory))
    for split, theirs in (("train", train), ("val", val)):
        mine = getattr(ours, split)
        assert set(mine) == {"observations", "actions", "rewards", "terminals", "masks", "next_observations"}
        for key, value in mine.items():
            expected = _fql_actions(theirs[key]) if key == "actions" else theirs[key]
            assert value.dtype == np.float32, (split, key, value.dtype)
            np.testing.assert_array_equal(
                value, expected, err_msg=f"{task} {split} {key} differs from ogbench"
            )


def _object_moved(dataset: str, raw: dict) -> bool:
    """Data-level evidence that the oracle manipulated something (independent of the env's success flag)."""
    if dataset.startswith("cube"):
        cube_xyz = raw["qpos"][:, 14:17]
        return float(np.linalg.norm(cube_xyz - cube_xyz[0], axis=1).max()) > 0.05
    if dataset.startswith(("scene", "puzzle")):
        return bool((raw["button_states"] != raw["button_states"][0]).any())
    xy = raw["qpos"][:, :2]
    return float(np.linalg.norm(xy - xy[0], axis=1).max()) > 2.0


@pytest.mark.parametrize("dataset", PAPER_REGENERABLE)
def test_generate_and_load_every_paper_dataset(dataset, tmp_path):
    steps = SHORT_STEPS.get(dataset, DEFAULT_SHORT_STEPS)
    recipe = OGBENCH_RECIPES[dataset]
    manifest = gen.generate(
        dataset, tmp_path, episodes=2, val_episodes=1, max_episode_steps=steps, workers=1, progress=False
    )

    # Files in OGBench's layout, a complete manifest with checksums, and no leftovers.
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*recipe.files, f"{dataset}.manifest.json"])
    assert manifest["complete"] and not manifest["follows_official_recipe"]
    assert manifest["files"]["train"]["sha256"] == sha256_file(tmp_path / recipe.files[0])
    assert manifest["files"]["train"]["transitions"] == 2 * (steps - 1)
    assert manifest["versions"]["ogbench"] != "missing" and manifest["seed"] == 0

    # The oracle accomplishes tasks: success events in every split, and objects (or the point) actually move.
    assert manifest["stats"]["train"]["success_events"] > 0, manifest["stats"]
    assert manifest["stats"]["val"]["success_events"] > 0, manifest["stats"]
    with np.load(tmp_path / recipe.files[0]) as f:
        raw = {k: f[k] for k in f.files}
    assert _object_moved(dataset, raw)
    assert raw["terminals"].dtype == bool and raw["observations"].dtype == np.float32
    assert raw["observations"].shape == (2 * steps, recipe.ob_dim)

    # Loaded through OGBench's loader and ours: identical, right shapes and ranges.
    task = TASK_OF[dataset]
    data = load_task_datasets(task, tmp_path)
    assert data.source == "regenerated" and data.manifest["plan_hash"] == manifest["plan_hash"]
    assert data.train["observations"].shape == (2 * (steps - 1), recipe.ob_dim)
    assert data.train["actions"].shape == (2 * (steps - 1), recipe.action_dim)
    assert np.abs(data.train["actions"]).max() <= 1 - 1e-5
    assert data.train["terminals"].sum() == 2 and data.val["terminals"].sum() == 1
    assert set(np.unique(data.train["masks"])) <= {0.0, 1.0}
    # OGBench's single-task reward is -(number of unsolved subgoals): 0 exactly where the task is solved (mask 0).
    assert data.train["rewards"].max() <= 0
    np.testing.assert_array_equal(data.train["rewards"] == 0, data.train["masks"] == 0)
    _assert_same_as_ogbench(data, task, tmp_path)


def test_noisy_and_stitch_recipes_generate(tmp_path):
    """The Markov ('noisy') oracles and the pointmaze 'stitch' goals run through the same pipeline."""
    for dataset, steps in (
        ("cube-single-noisy-v0", 150),
        ("puzzle-3x3-noisy-v0", 150),
        ("pointmaze-medium-stitch-v0", 201),
    ):
        m = gen.generate(
            dataset, tmp_path, episodes=1, val_episodes=1, max_episode_steps=steps, progress=False
        )
        assert m["stats"]["train"]["success_events"] + m["stats"]["val"]["success_events"] > 0, (
            dataset,
            m["stats"],
        )
    data = load_task_datasets("cube-single-noisy-singletask-v0", tmp_path)
    assert data.train["observations"].shape == (149, 28)


def test_generation_is_deterministic_and_independent_of_worker_count(tmp_path):
    kwargs = dict(episodes=3, val_episodes=1, max_episode_steps=60, shard_episodes=1, progress=False)
    one = gen.generate("cube-single-play-v0", tmp_path / "w1", workers=1, **kwargs)
    two = gen.generate("cube-single-play-v0", tmp_path / "w2", workers=2, **kwargs)
    for split in ("train", "val"):
        assert one["files"][split]["sha256"] == two["files"][split]["sha256"], split
    assert two["generation"]["workers"] == 2
    # Seeds are recorded per episode and follow the documented rule.
    assert [s for shard in one["shards"] for s in shard["seeds"]] == [
        list(gen.episode_seeds(0, i)) for i in range(4)
    ]
    other = gen.generate("cube-single-play-v0", tmp_path / "s1", workers=1, seed=1, **kwargs)
    assert other["files"]["train"]["sha256"] != one["files"]["train"]["sha256"]


def test_restart_reuses_finished_shards_and_redoes_corrupt_ones(tmp_path, monkeypatch):
    kwargs = dict(episodes=3, val_episodes=1, max_episode_steps=40, shard_episodes=1, progress=False)
    reference = gen.generate("cube-single-play-v0", tmp_path / "ref", workers=1, **kwargs)

    # A run "killed" after two shards: their files are on disk, nothing else.
    out = tmp_path / "out"
    plan = gen.make_plan(
        "cube-single-play-v0", episodes=3, val_episodes=1, max_episode_steps=40, shard_episodes=1
    )
    shard_dir = out / gen.SHARD_DIR / f"cube-single-play-v0-{plan.plan_hash()[:12]}"
    for shard in plan.shards()[:2]:
        gen.run_shard(plan, shard, shard_dir)
    npz1 = shard_dir / "shard-00001.npz"
    npz1.write_bytes(npz1.read_bytes()[:-100])  # shard 1 damaged: must be redone

    ran = []
    real = gen.run_shard
    monkeypatch.setattr(
        gen, "run_shard", lambda plan, shard, *a, **k: ran.append(shard[0]) or real(plan, shard, *a, **k)
    )
    manifest = gen.generate("cube-single-play-v0", out, workers=1, **kwargs)
    assert ran == [1, 2, 3]
    assert manifest["files"]["train"]["sha256"] == reference["files"]["train"]["sha256"]
    assert not (out / gen.SHARD_DIR).exists()  # merged shards are cleaned up


def test_existing_files_are_kept_unless_forced(tmp_path):
    kwargs = dict(episodes=1, val_episodes=1, max_episode_steps=30, progress=False)
    first = gen.generate("cube-single-play-v0", tmp_path, **kwargs)
    mtime = (tmp_path / "cube-single-play-v0.npz").stat().st_mtime_ns
    again = gen.generate(
        "cube-single-play-v0", tmp_path, shard_episodes=7, **kwargs
    )  # same data: nothing to do
    assert again["files"] == first["files"]
    assert (tmp_path / "cube-single-play-v0.npz").stat().st_mtime_ns == mtime
    with pytest.raises(DatasetError, match="different plan.*--force"):
        gen.generate("cube-single-play-v0", tmp_path, **{**kwargs, "max_episode_steps": 31})
    (tmp_path / "cube-single-play-v0.manifest.json").unlink()  # now they look like official downloads
    with pytest.raises(DatasetError, match="official or externally provided"):
        gen.generate("cube-single-play-v0", tmp_path, **kwargs)
    forced = gen.generate("cube-single-play-v0", tmp_path, force=True, **kwargs)
    assert forced["files"]["train"]["sha256"] == first["files"]["train"]["sha256"]


def test_official_files_are_used_as_they_are(tmp_path):
    gen.generate(
        "cube-single-play-v0", tmp_path, episodes=1, val_episodes=1, max_episode_steps=30, progress=False
    )
    (tmp_path / "cube-single-play-v0.manifest.json").unlink()
    # Official files have 1001-row episodes; ours here 30, so the episode-length check must fire...
    with pytest.raises(DatasetError, match="should have 1001 rows"):
        load_task_datasets("cube-single-play-singletask-v0", tmp_path)
    # ...while the data themselves load unchanged, recorded as official with their checksums.
    data = load_task_datasets("cube-single-play-singletask-v0", tmp_path, validate=False)
    assert data.source == "official" and data.manifest["source"] == "official"
    assert data.manifest["files"]["train"]["sha256"] == sha256_file(tmp_path / "cube-single-play-v0.npz")
    assert data.provenance()["files"]["val"]["name"] == "cube-single-play-v0-val.npz"


def test_manifest_guards_against_modified_and_half_replaced_files(tmp_path):
    gen.generate(
        "cube-single-play-v0", tmp_path, episodes=1, val_episodes=1, max_episode_steps=30, progress=False
    )
    task = "cube-single-play-singletask-v0"
    mpath = tmp_path / "cube-single-play-v0.manifest.json"
    manifest = json.loads(mpath.read_text())

    backup = tmp_path / "backup.npz"
    shutil.copy(tmp_path / "cube-single-play-v0-val.npz", backup)
    with np.load(backup) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["actions"] = arrays["actions"] * 0.5
    np.savez_compressed(tmp_path / "cube-single-play-v0-val.npz", **arrays)
    with pytest.raises(DatasetError, match="cube-single-play-v0-val.npz: SHA-256 .* does not match"):
        load_task_datasets(task, tmp_path)
    shutil.copy(backup, tmp_path / "cube-single-play-v0-val.npz")
    backup.unlink()

    mpath.write_text(json.dumps({**manifest, "complete": False}))
    with pytest.raises(DatasetError, match="did not finish.*fidec data generate cube-single-play-v0"):
        load_task_datasets(task, tmp_path)
    mpath.write_text(json.dumps(manifest))
    assert load_task_datasets(task, tmp_path).source == "regenerated"


def test_registry_dimensions_match_the_environments():
    import gymnasium

    seen = set()
    for recipe in OGBENCH_RECIPES.values():
        # pixel envs render (EGL): tests/test_visual_datasets.py
        if recipe.env_name in seen or recipe.is_visual:
            continue
        seen.add(recipe.env_name)
        kwargs = {"mode": "data_collection"} if recipe.family == "manipspace" else {}
        env = gymnasium.make(recipe.env_name, disable_env_checker=True, **kwargs)
        ob, _ = env.reset(seed=0)
        assert ob.shape == (recipe.ob_dim,), recipe.dataset
        assert env.action_space.shape == (recipe.action_dim,), recipe.dataset
        env.close()


@pytest.mark.slow
@pytest.mark.parametrize("dataset", PAPER_REGENERABLE)
def test_official_length_episodes_accomplish_tasks(dataset):
    """At the official episode length every episode of every paper dataset contains success events."""
    plan = gen.make_plan(dataset, episodes=3)
    collector = gen.EpisodeCollector(plan.recipe, plan.max_episode_steps)
    for i in range(3):
        arrays, stats = collector.collect(gen.episode_seeds(0, i))
        assert arrays["terminals"].shape == (plan.recipe.max_episode_steps,)
        assert arrays["terminals"][-1] and not arrays["terminals"][:-1].any()
        assert stats["success_events"] >= 2, (dataset, i, stats)
