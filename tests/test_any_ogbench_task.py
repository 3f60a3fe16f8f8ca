"""Any OGBench single task trains: tasks outside the paper's table (pointmaze here) get FQL's defaults and a
one-line notice; the paper's tasks keep their presets and print no notice."""

from __future__ import annotations

import json

import pytest

from fisher_decorator.agents import agent_class
from fisher_decorator.cli import main
from fisher_decorator.presets import has_paper_preset, list_tasks, load_presets, parse_task

TASK = "pointmaze-medium-navigate-singletask-task1-v0"
NOTICE = (
    f"note: no paper preset for {TASK}; using FQL's defaults (the OGBench settings without a per-task entry)"
)


def test_preset_of_a_task_outside_the_paper():
    assert parse_task(TASK).family == "pointmaze-medium-navigate"
    assert not has_paper_preset(TASK) and has_paper_preset("cube-single-play-singletask-task2-v0")
    assert TASK in list_tasks() and "cube-triple-play-singletask-v0" in list_tasks()
    with pytest.raises(ValueError, match="Valid tasks: toy-bandit"):
        parse_task("pointmaze-medium-navigate-singletask-task9-v0")


@pytest.mark.parametrize("agent", ["fidec", "fql"])
def test_print_config_uses_fql_defaults_with_a_notice(capsys, agent):
    assert main(["train", "--agent", agent, "--task", TASK, "--print-config"]) == 0
    out, err = capsys.readouterr()
    assert err.splitlines() == [NOTICE]
    cfg = json.loads(out)[agent]
    ogbench = load_presets()["ogbench"]
    defaults = agent_class(agent).config_class()
    for key, value in cfg["agent"].items():  # defaults, changed only by the benchmark-wide agent entries
        expected = ogbench["agents"].get(agent, {}).get(key, getattr(defaults, key))
        assert value == (list(expected) if isinstance(expected, tuple) else expected), key
    assert (cfg["agent"]["discount"], cfg["agent"]["q_agg"]) == (0.99, "mean")
    assert {k: cfg["train"][k] for k in ogbench["train"]} == ogbench["train"]

    assert (
        main(["train", "--agent", agent, "--task", "cube-single-play-singletask-task2-v0", "--print-config"])
        == 0
    )
    out, err = capsys.readouterr()
    assert err == "" and json.loads(out)[agent]["agent"]["discount"] == 0.99


def test_pointmaze_trains_and_evaluates(tmp_path, capsys):
    pytest.importorskip("ogbench")
    data = tmp_path / "data"
    argv = ["data", "generate", "pointmaze-medium-navigate-v0", "--episodes", "2", "--val-episodes", "1"]
    assert main([*argv, "--max-episode-steps", "101", "--dataset-dir", str(data), "--quiet"]) == 0
    out = tmp_path / "run"
    argv = ["train", "--agent", "fidec", "--task", TASK, "--dataset-dir", str(data), "--out", str(out)]
    argv += [
        "--steps",
        "3",
        "--eval-interval",
        "3",
        "--eval-episodes",
        "1",
        "--no-progress",
        "--threads",
        "1",
    ]
    argv += ["--set", "actor_hidden_dims=16,16", "--set", "value_hidden_dims=16,16", "--set", "batch_size=8"]
    argv += ["--set", "num_fisher_samples=2", "--set", "tensorboard=false"]
    capsys.readouterr()
    assert main(argv) == 0
    assert NOTICE in capsys.readouterr().err.splitlines()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["last_evaluation"]["step"] == 3
    assert json.loads((out / "config.json").read_text())["train"]["task"] == TASK
