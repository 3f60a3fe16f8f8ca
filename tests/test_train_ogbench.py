"""End to end on an OGBench task: a tiny dataset made by ``fidec data generate`` (OGBench's own
oracle, no internet), loaded through ``fisher_decorator.datasets.load_task_datasets``, a few FiDec
updates, evaluation in OGBench's single-task env, ``fidec eval`` with a rendered video."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fisher_decorator.cli import main
from fisher_decorator.logger import read_csv

pytest.importorskip("ogbench")
pytestmark = [
    pytest.mark.filterwarnings("ignore:.*precision lowered by casting:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*DISPLAY environment variable"),
]
ROOT = Path(__file__).resolve().parent.parent
TASK = "cube-single-play-singletask-task2-v0"


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("ogbench-data")
    code = main(
        ["data", "generate", "cube-single-play-v0", "--episodes", "2", "--val-episodes", "1"]
        + ["--max-episode-steps", "101", "--workers", "1", "--dataset-dir", str(d), "--quiet"]
    )
    assert code in (0, None)
    return d


def test_train_and_eval_on_ogbench(tmp_path, dataset_dir, capsys):
    out = tmp_path / "run"
    args = ["train", "--agent", "fidec", "--task", TASK, "--dataset-dir", str(dataset_dir), "--steps", "3"]
    args += [
        "--eval-episodes",
        "1",
        "--eval-interval",
        "3",
        "--log-interval",
        "3",
        "--out",
        str(out),
        "--no-progress",
    ]
    args += ["--set", "actor_hidden_dims=32,32", "--set", "value_hidden_dims=32,32", "--set", "batch_size=16"]
    assert main(args) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["obs_dim"] == 28 and cfg["action_dim"] == 5  # cube-single
    assert cfg["dataset"]["name"] == "cube-single-play-v0" and cfg["dataset"]["transitions"] == 200
    assert cfg["dataset"]["manifest"]["dataset"] == "cube-single-play-v0"  # the generator's manifest
    assert cfg["agent"]["num_fisher_samples"] == 8 and cfg["agent"]["target_divergence"] == 0.001  # preset
    evals = read_csv(out / "eval.csv")
    assert [r["step"] for r in evals] == [1, 3]  # after the first update (as the authors) and at the end
    assert evals[-1]["evaluation/episode.length"] == 200 and evals[-1]["evaluation/success"] in (0.0, 1.0)
    assert "validation/critic/critic_loss" in read_csv(out / "train.csv")[-1]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["score"] is None and summary["missing_score_steps"] == [800_000, 900_000, 1_000_000]

    env = {**os.environ, "MUJOCO_GL": "egl", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "fisher_decorator", "eval", "--run", str(out), "--episodes", "1"]
    cmd += ["--video-episodes", "1", "--video-frame-skip", "50"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 and "EGL" in proc.stderr:
        pytest.skip(f"no EGL rendering here: {proc.stderr[-300:]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "eval_step3_default.json").read_text())
    assert result["evaluation/episode.length"] == 200
    (gif,) = result["videos"]
    assert Path(gif).stat().st_size > 1000
