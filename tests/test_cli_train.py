"""The real entry points: ``fidec train`` for every agent and penalty backend, ``fidec eval``,
``fidec plot``, presets by task name, and the errors bad input gets."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fisher_decorator.agents import derive_seed
from fisher_decorator.cli import main
from fisher_decorator.logger import read_csv
from fisher_decorator.ops import available_backends
from fisher_decorator.plotting import DEFAULT_EVAL_METRICS, DEFAULT_TRAIN_METRICS
from fisher_decorator.presets import load_presets, ogbench_families, parse_task, task_preset
from fisher_decorator.trainer import load_agent, resolve_configs
from tests.plot_helpers import legend_labels, saved_figures, shaded_bands, visible_axes
from tests.sweep_helpers import HANG_GUARD
from tests.toy_helpers import check_toy_figure, toy_scores

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--set", "actor_hidden_dims=16,16", "--set", "value_hidden_dims=16,16", "--set", "flow_steps=3"]
TINY += ["--set", "batch_size=8", "--no-progress", "--no-plot"]


def train(tmp_path, *args, name="run"):
    out = tmp_path / name
    code = main(
        ["train", "--task", "toy-bandit", "--steps", "4", "--log-interval", "2", "--eval-interval", "2"]
        + ["--eval-episodes", "16", "--out", str(out), *TINY, *args]
    )
    return code, out


BACKENDS = [b for b in ("reference", "cpu") if b in available_backends()]


@pytest.mark.parametrize("backend", BACKENDS)
def test_train_fidec_smoke_per_backend(tmp_path, backend):
    code, out = train(
        tmp_path, "--agent", "fidec", "--set", f"penalty_backend={backend}", "--set", "num_fisher_samples=2"
    )
    assert code == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["agent"]["penalty_backend"] == backend
    rows = read_csv(out / "train.csv")
    assert [r["step"] for r in rows] == [2, 4] and all(r["critic/critic_loss"] >= 0 for r in rows)
    assert (out / "checkpoint.pt").is_file() and (out / "summary.json").is_file()
    assert "--set penalty_backend=" + backend in cfg["command"]


@pytest.mark.parametrize("agent", ["deflow", "fql"])
def test_train_baselines_smoke(tmp_path, agent):
    code, out = train(tmp_path, "--agent", agent)
    assert code == 0 and [r["step"] for r in read_csv(out / "eval.csv")] == [2, 4]


def test_train_fidec_triton_backend_smoke(tmp_path):
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "fisher_decorator", "train", "--agent", "fidec", "--task", "toy-bandit"]
    cmd += [
        "--steps",
        "2",
        "--log-interval",
        "1",
        "--eval-interval",
        "0",
        "--out",
        str(tmp_path / "t"),
        *TINY,
    ]
    cmd += ["--set", "penalty_backend=triton", "--set", "num_fisher_samples=2", "--set", "batch_size=4"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=HANG_GUARD)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [r["step"] for r in read_csv(tmp_path / "t" / "train.csv")] == [1, 2]


def test_several_agents_go_to_subdirectories_and_the_toy_figure(tmp_path):
    out = tmp_path / "toy"
    args = [
        "train",
        "--agent",
        "fidec,deflow",
        "--steps",
        "3",
        "--eval-interval",
        "3",
        "--eval-episodes",
        "16",
    ]
    with saved_figures() as figures:
        code = main(
            [
                *args,
                "--out",
                str(out),
                *[a for a in TINY if a != "--no-plot"],
                "--set",
                "num_fisher_samples=2",
            ]
        )
    assert code == 0
    assert (out / "fidec" / "checkpoint.pt").is_file() and (out / "deflow" / "checkpoint.pt").is_file()
    assert (out / "toy_bandit.png").is_file()
    check_toy_figure(figures["toy_bandit.png"], {"fidec": out / "fidec", "deflow": out / "deflow"}, step=3)


def test_console_script_and_module_entry_points():
    exe = shutil.which("fidec") or str(Path(sys.executable).parent / "fidec")
    for cmd in (
        [exe, "train", "--help"],
        [sys.executable, "-m", "fisher_decorator", "train", "--list-tasks"],
    ):
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=HANG_GUARD)
        assert proc.returncode == 0, proc.stderr
    assert "cube-single-play-singletask-task2-v0" in proc.stdout and "toy-bandit" in proc.stdout


def test_eval_and_plot_commands(tmp_path, capsys):
    code, out = train(tmp_path, "--agent", "fidec", "--set", "num_fisher_samples=2")
    assert code == 0
    capsys.readouterr()
    assert (
        main(
            ["eval", "--run", str(out), "--episodes", "32", "--sampling", "iterative", "--refine-steps", "2"]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result["sampling"] == "iterative" and result["checkpoint_step"] == 4
    assert json.loads((out / "eval_step4_iterative.json").read_text()) == result
    # the numbers: the checkpoint's agent, its iterative sampling with the evaluation's seed for step 4,
    # scored here from the task's definition
    agent = load_agent(out)[0]
    g = torch.Generator().manual_seed(derive_seed(0, "eval-actions/4"))
    actions = agent.sample_actions(torch.ones(32, 1), generator=g, mode="iterative", num_refine_steps=2)
    success, in_support, ret = toy_scores(actions.numpy())
    assert (result["evaluation/success"], result["evaluation/in_support"]) == (success, in_support)
    assert result["evaluation/episode.return"] == pytest.approx(ret, rel=1e-12)
    code, out2 = train(
        tmp_path, "--agent", "fidec", "--set", "num_fisher_samples=2", "--seed", "1", name="run2"
    )
    with saved_figures() as figures:
        assert main(["plot", str(tmp_path), "--out", str(tmp_path / "curves.png")]) == 0
    assert (tmp_path / "curves.png").is_file() and (tmp_path / "toy_bandit.png").is_file()
    # one panel per default metric, one line per (task, agent): the mean over the two seeds' logs, shaded range
    metrics = [*DEFAULT_EVAL_METRICS, *DEFAULT_TRAIN_METRICS]
    axes = visible_axes(figures["curves.png"])
    assert [ax.get_title() for ax in axes] == metrics and {ax.get_xlabel() for ax in axes} == {"step"}
    assert legend_labels(axes[0]) == ["fidec (2 seeds)"]
    logs = [read_csv(run / "eval.csv") + read_csv(run / "train.csv") for run in (out, out2)]
    for ax, metric in zip(axes, metrics):
        (line,) = ax.get_lines()
        assert line.get_label() == "fidec (2 seeds)"
        values = [[r[metric] for r in rows if metric in r] for rows in logs]
        assert list(line.get_xdata()) == [2, 4]
        np.testing.assert_array_equal(line.get_ydata(), np.mean(values, axis=0))
        (band,) = shaded_bands(ax)
    # the toy figure of the fidec runs (the first found, seed 0)
    check_toy_figure(figures["toy_bandit.png"], {"fidec": out}, step=4)


# ------------------------------------------------------------------------------ presets


SPEC_TABLE = {  # SPEC "Per-task settings used by the authors": discount, q_agg, target_divergence
    "antmaze-large-navigate": (0.99, "min", 0.01),
    "antmaze-giant-navigate": (0.995, "min", 0.01),
    "humanoidmaze-medium-navigate": (0.995, "mean", 0.001),
    "humanoidmaze-large-navigate": (0.995, "mean", 0.001),
    "antsoccer-arena-navigate": (0.995, "mean", 0.01),
    "cube-single-play": (0.99, "mean", 0.001),
    "cube-double-play": (0.99, "mean", 0.001),
    "scene-play": (0.99, "mean", 0.001),
    "puzzle-3x3-play": (0.99, "mean", 0.005),
    "puzzle-4x4-play": (0.99, "mean", 0.005),
}


def test_presets_match_the_spec_table():
    assert set(ogbench_families()) == set(SPEC_TABLE)
    for family, (discount, q_agg, target) in SPEC_TABLE.items():
        for task in (f"{family}-singletask-v0", f"{family}-singletask-task3-v0"):
            for agent in ("fidec", "deflow"):
                train_cfg, cfg, _ = resolve_configs(task, agent)
                assert (cfg.discount, cfg.q_agg, cfg.target_divergence) == (discount, q_agg, target), (
                    task,
                    agent,
                )
                assert cfg.normalize_q_loss
                assert train_cfg.steps == 1_000_000 and train_cfg.batch_size == 256
                assert train_cfg.eval_interval == 100_000 and train_cfg.score_steps == (
                    800_000,
                    900_000,
                    1_000_000,
                )
            _, fidec, _ = resolve_configs(task, "fidec")
            assert (fidec.fisher_t, fidec.fisher_t_width, fidec.num_fisher_samples) == (0.9, 0.05, 8)
            _, fql, _ = resolve_configs(task, "fql")
            assert (fql.discount, fql.q_agg) == (discount, q_agg) and not fql.normalize_q_loss
    assert resolve_configs("puzzle-4x4-play-singletask-task4-v0", "fql")[1].alpha == 1000


def test_precedence_defaults_preset_flags_sets():
    train_cfg, cfg, record = resolve_configs(
        "cube-single-play-singletask-task2-v0",
        "fidec",
        flags={"steps": 10, "seed": 3},
        overrides={"fisher_t": "0.8", "agent.discount": "0.9", "train.eval_episodes": "5", "steps": "12"},
    )
    assert (train_cfg.steps, train_cfg.seed, train_cfg.eval_episodes) == (12, 3, 5)
    assert (cfg.fisher_t, cfg.discount, cfg.target_divergence) == (0.8, 0.9, 0.001)
    assert record["agent_preset"]["target_divergence"] == 0.001


def test_task_names():
    info = parse_task("cube-single-play-singletask-task2-v0")
    assert (info.kind, info.family, info.dataset, info.task_id) == (
        "ogbench",
        "cube-single-play",
        "cube-single-play-v0",
        2,
    )
    assert parse_task("scene-play-singletask-v0").task_id is None
    assert parse_task("toy-bandit").kind == "toy"
    assert task_preset("toy-bandit", "fidec")[0]["steps"] == load_presets()["toy-bandit"]["train"]["steps"]


# ------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    "args, message",
    [
        (["--task", "cube-single-play-singletask-task9-v0"], "Valid tasks: toy-bandit"),
        (["--task", "hopper-medium-v2"], "cube-single-play"),
        (["--agent", "sac"], "choose one of fidec, deflow, fql"),
        (["--set", "fisher_tt=0.9"], "Did you mean fisher_t"),
        (["--set", "fisher_t=high"], "fisher_t='high'"),
        (["--set", "q_agg=max"], "q_agg must be one of"),
        (["--set", "fisher_t"], "KEY=VALUE"),
        (["--set", "model.lr=1"], "prefix must be 'train.' or 'agent.'"),
        (["--agent", "fql", "--set", "fisher_t=0.9"], "unknown"),
        (["--set", "task=scene-play-singletask-v0"], "--task"),
    ],
)
def test_bad_input_gets_a_clear_error(tmp_path, capsys, args, message):
    code = main(["train", "--out", str(tmp_path / "x"), "--steps", "1", *args])
    assert code == 2
    assert message in capsys.readouterr().err


def test_missing_dataset_says_where_it_looked_and_how_to_make_it(tmp_path, capsys):
    code = main(
        ["train", "--task", "cube-single-play-singletask-task2-v0", "--dataset-dir", str(tmp_path / "none")]
        + ["--out", str(tmp_path / "r"), "--steps", "1"]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert str(tmp_path / "none") in err and "fidec data generate" in err


def test_list_fields_and_print_config(capsys):
    assert main(["train", "--agent", "fidec", "--list-fields"]) == 0
    out = capsys.readouterr().out
    assert "fisher_t_width" in out and "Interpolation time" in out and "eval_interval" in out
    assert main(["train", "--agent", "fql", "--task", "scene-play-singletask-v0", "--print-config"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["fql"]["agent"]["alpha"] == 300 and cfg["fql"]["train"]["steps"] == 1_000_000
