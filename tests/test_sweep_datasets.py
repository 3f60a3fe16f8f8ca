"""Datasets are prepared once per sweep, by the driver, before any run: regenerated where the project can,
an error naming every file to download where it cannot (before anything is generated), official-size data
required by the paper budget. Plus, opt-in (-m slow), the small budget end to end on OGBench tasks."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fisher_decorator.datasets import DatasetError, DatasetNotFoundError
from fisher_decorator.sweep.datasets import datasets_for, prepare_datasets
from tests.sweep_helpers import HANG_GUARD, ROOT, env

pytest.importorskip("ogbench")
pytestmark = [
    pytest.mark.filterwarnings("ignore:.*precision lowered by casting:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*DISPLAY environment variable"),
]
CUBE = [f"cube-single-play-singletask-task{i}-v0" for i in (1, 2)]
TINY = {"episodes": 2, "val_episodes": 1, "max_episode_steps": 21}


def test_regenerated_once_then_reused(tmp_path):
    assert datasets_for([*CUBE, "scene-play-singletask-task1-v0"]) == ["cube-single-play-v0", "scene-play-v0"]
    info = prepare_datasets(CUBE, tmp_path, TINY, progress=False, log=lambda *_: None)
    assert info["cube-single-play-v0"]["source"] == "regenerated"
    assert info["cube-single-play-v0"]["train_episodes"] == 2
    assert info["cube-single-play-v0"]["follows_official_recipe"] is False
    files = [tmp_path / "cube-single-play-v0.npz", tmp_path / "cube-single-play-v0-val.npz"]
    stamps = [p.stat().st_mtime_ns for p in files]
    messages = []
    again = prepare_datasets(CUBE, tmp_path, TINY, progress=False, log=messages.append)
    assert [p.stat().st_mtime_ns for p in files] == stamps and not messages  # nothing regenerated
    assert again == info
    # The paper budget refuses a tiny dataset left in its directory instead of training on it.
    with pytest.raises(
        DatasetError, match="not OGBench's official recipe; the paper budget needs official-size"
    ):
        prepare_datasets(CUBE, tmp_path, None, progress=False)
    # Files changed after generation are caught before any run reads them.
    files[1].write_bytes(files[1].read_bytes()[:-10])
    with pytest.raises(DatasetError, match="does not match the manifest"):
        prepare_datasets(CUBE, tmp_path, TINY, progress=False)


def test_downloads_are_named_before_anything_is_generated(tmp_path):
    tasks = ["cube-double-play-singletask-task1-v0", "antmaze-large-navigate-singletask-task1-v0"]
    tasks.append("humanoidmaze-medium-navigate-singletask-task2-v0")
    with pytest.raises(DatasetNotFoundError) as err:
        prepare_datasets(tasks, tmp_path, TINY, progress=False)
    message = str(err.value)
    for name in ("antmaze-large-navigate-v0.npz", "antmaze-large-navigate-v0-val.npz"):
        assert f"https://rail.eecs.berkeley.edu/datasets/ogbench/{name}" in message
    assert "humanoidmaze-medium-navigate-v0-val.npz" in message and "cube-double" not in message
    assert list(tmp_path.iterdir()) == []  # the regenerable one was not generated first
    # Official files (no manifest) are used as they are; half a pair is an error.
    (tmp_path / "antmaze-large-navigate-v0.npz").write_bytes(b"x")
    with pytest.raises(DatasetNotFoundError, match="antmaze-large-navigate-v0-val.npz missing"):
        prepare_datasets(tasks[1:2], tmp_path, None, progress=False)
    (tmp_path / "antmaze-large-navigate-v0-val.npz").write_bytes(b"x")
    assert prepare_datasets(tasks[1:2], tmp_path, None, progress=False)["antmaze-large-navigate-v0"] == {
        "source": "official",
        "dir": str(tmp_path),
    }


@pytest.fixture
def slow_opt_in(request):
    """`pytest -q` does not deselect the slow marker by itself; this runs only when asked for (`-m slow`)."""
    if "slow" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("slow (about 3 minutes on 2 cores): run with -m slow")


@pytest.mark.slow
def test_small_budget_end_to_end_on_ogbench(tmp_path, slow_opt_in):
    """The README's small-budget sweep: 2 agents x 2 tasks x 2 seeds, tiny regenerated data, report and plots."""
    out = tmp_path / "check"
    cmd = [
        sys.executable,
        "-m",
        "fisher_decorator",
        "sweep",
        "--agents",
        "fidec,deflow",
        "--tasks",
        ",".join(CUBE),
    ]
    cmd += ["--seeds", "0-1", "--budget", "small", "--backend", "pool", "--out", str(out), "--no-progress"]
    done = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=HANG_GUARD)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    runs = json.loads((out / "manifest.json").read_text())["runs"]
    assert len(runs) == 8 and {e["state"] for e in runs.values()} == {"done"}
    assert all(e["score_steps"] == [800, 900, 1000] for e in runs.values())
    assert (out / "datasets" / "cube-single-play-v0.npz").is_file()
    md = (out / "report" / "results.md").read_text()
    assert "| cube-single | 2 of 5 |" in md and "| 94 |" in md
    assert len(list((out / "report" / "curves").glob("*.png"))) == 2
