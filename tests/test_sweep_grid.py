"""Grid expansion, budgets and each run's resolved configs."""

from __future__ import annotations

import json

import pytest

from fisher_decorator.cli import main
from fisher_decorator.config import ConfigError, parse_seeds
from fisher_decorator.presets import load_presets, ogbench_families
from fisher_decorator.sweep.grid import (
    RunSpec,
    SweepDefinition,
    SweepError,
    expand_grid,
    get_budget,
    parse_agents,
    parse_tasks,
    resolve_run,
)

CUBE1 = "cube-single-play-singletask-task1-v0"


def test_seeds_agents_tasks():
    assert parse_seeds("0-3") == [0, 1, 2, 3]
    assert parse_seeds("0,2,5") == [0, 2, 5]
    assert parse_seeds("0-2, 7") == [0, 1, 2, 7]
    assert parse_seeds("4") == [4]
    for bad, msg in (("3-1", "empty"), ("a", "not a seed"), ("0-2,1", "more than once"), ("", "empty")):
        with pytest.raises(ConfigError, match=msg):
            parse_seeds(bad)
    assert parse_agents("fidec,fql") == ["fidec", "fql"]
    with pytest.raises(SweepError, match="valid agents: fidec, deflow, fql"):
        parse_agents("fidec,iql")
    paper = parse_tasks("paper")
    # 50 OGBench tasks + the 18 D4RL datasets
    assert len(paper) == 50 + 18 and paper[0] == "antmaze-large-navigate-singletask-task1-v0"
    assert [t.rsplit("-singletask", 1)[0] for t in paper[:50:5]] == ogbench_families()
    assert paper[50] == "antmaze-umaze-v2" and paper[56] == "pen-human-v1"
    assert parse_tasks("cube-single-play") == [f"cube-single-play-singletask-task{i}-v0" for i in range(1, 6)]
    assert parse_tasks(f"{CUBE1},cube-single-play,toy-bandit")[:2] == [
        CUBE1,
        "cube-single-play-singletask-task2-v0",
    ]
    assert len(parse_tasks(f"{CUBE1},cube-single-play")) == 5  # named twice, run once
    with pytest.raises(SweepError, match="scene-play"):  # the message lists the families
        parse_tasks("cube-single")


def test_grid_is_seed_major_and_complete():
    grid = expand_grid(["fidec", "deflow", "fql"], parse_tasks("paper"), parse_seeds("0-3"))
    assert len(grid) == 3 * 68 * 4 == len(set(grid))
    assert grid[:3] == [
        RunSpec("antmaze-large-navigate-singletask-task1-v0", a, 0) for a in ("fidec", "deflow", "fql")
    ]
    assert {r.seed for r in grid[:204]} == {0}  # a sweep stopped early has whole seeds
    assert grid[0].run_id == "antmaze-large-navigate-singletask-task1-v0/fidec/seed0"
    assert grid[0].rel_dir == "runs/antmaze-large-navigate-singletask-task1-v0/fidec/seed0"


def test_budgets():
    with pytest.raises(SweepError, match="valid budgets: paper, small"):
        get_budget("tiny")
    assert get_budget("paper").schedule() == {
        "steps": 1_000_000,
        "eval_interval": 100_000,
        "score_steps": [800_000, 900_000, 1_000_000],
        "save_interval": 10_000,
        "log_interval": 5000,
    }
    assert get_budget("small").schedule(200) == {
        "steps": 200,
        "eval_interval": 20,
        "score_steps": [160, 180, 200],
        "save_interval": 20,
        "log_interval": 20,
    }
    with pytest.raises(SweepError, match="multiple of 10"):
        get_budget("small").schedule(205)


def _resolve(agent, task=CUBE1, budget="paper", **kw):
    definition = SweepDefinition(agents=(agent,), tasks=(task,), seeds=(3,), budget=budget, **kw)
    return resolve_run(definition, RunSpec(task, agent, 3), sweep_dir="/s", dataset_dir="/d", cpus_per_run=2)


def test_paper_budget_is_the_authors_protocol():
    """The paper budget changes nothing the task presets set (SPEC's per-task table), but the checkpoint interval."""
    preset = load_presets()["ogbench"]
    for agent in ("fidec", "deflow", "fql"):
        run = _resolve(agent)
        for key, value in preset["train"].items():
            expected = 10_000 if key == "save_interval" else value
            assert run.train[key] == expected, (agent, key)
        for key, value in {
            **preset["agents"][agent],
            **preset["families"]["cube-single-play"]["all"],
        }.items():
            assert run.agent[key] == value, (agent, key)
        assert run.agent["actor_hidden_dims"] == [512, 512, 512, 512]
        assert (run.train["seed"], run.train["threads"], run.train["device"]) == (3, 2, "cpu")
        assert run.train["dataset_dir"] == "/d" and run.train["progress"] is False
    fidec = _resolve("fidec").agent
    assert (fidec["num_fisher_samples"], fidec["fisher_t"], fidec["target_divergence"]) == (8, 0.9, 0.001)


def test_small_budget_and_overrides():
    run = _resolve(
        "fidec", budget="small", steps=500, overrides=(("num_fisher_samples", "2"), ("lr", "1e-3"))
    )
    assert run.train["steps"] == 500 and run.train["score_steps"] == [400, 450, 500]
    assert run.train["batch_size"] == 64 and run.train["eval_episodes"] == 3
    assert run.agent["actor_hidden_dims"] == [64, 64] and run.agent["flow_steps"] == 10
    assert run.agent["num_fisher_samples"] == 2 and run.agent["lr"] == 1e-3
    # An agent field of another agent in the sweep is left out for this one; unknown fields are errors.
    fql = resolve_run(
        SweepDefinition(
            agents=("fidec", "fql"), tasks=(CUBE1,), seeds=(0,), overrides=(("num_fisher_samples", "2"),)
        ),
        RunSpec(CUBE1, "fql", 0),
        sweep_dir="/s",
        dataset_dir="/d",
    )
    assert "num_fisher_samples" not in fql.agent
    with pytest.raises(SweepError, match="Valid fields"):
        _resolve("fidec", overrides=(("fisher_tt", "0.5"),))
    with pytest.raises(SweepError, match="use --steps"):
        _resolve("fidec", overrides=(("steps", "5"),))
    with pytest.raises(SweepError, match="use --seeds"):
        _resolve("fidec", overrides=(("train.seed", "5"),))


def test_recorded_command_reproduces_the_run(capsys):
    """config.json's `command` is a `fidec train` line that resolves to the run's exact configs."""
    run = _resolve("fidec", budget="small", steps=300, overrides=(("num_fisher_samples", "2"),))
    argv = run.record["command"].split()[1:] + ["--print-config"]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)["fidec"]
    assert printed == {"train": run.train, "agent": run.agent}


def test_definition_roundtrip_and_extension():
    a = SweepDefinition(
        agents=("fidec",), tasks=(CUBE1,), seeds=(0, 1), budget="small", overrides=(("lr", "1"),)
    )
    assert SweepDefinition.from_dict(json.loads(json.dumps(a.to_dict()))) == a
    b = SweepDefinition(
        agents=("fql", "fidec"), tasks=(CUBE1,), seeds=(2,), budget="small", overrides=(("lr", "1"),)
    )
    ext = a.extend(b)
    assert ext.agents == ("fidec", "fql") and ext.seeds == (0, 1, 2)
    with pytest.raises(SweepError, match="budget: stored 'small', given 'paper'"):
        a.extend(
            SweepDefinition(
                agents=("fidec",), tasks=(CUBE1,), seeds=(0,), budget="paper", overrides=a.overrides
            )
        )
