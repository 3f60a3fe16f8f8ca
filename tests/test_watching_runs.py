"""Watching runs: the code's git commit in config.json, optional W&B logging with the authors' metric
names (a fake ``wandb`` module records what would be sent), plot markers and smoothing, and the toy
figure quoting eval.csv."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from fisher_decorator.cli import main
from fisher_decorator.logger import authors_metric_name, read_csv

ROOT = Path(__file__).resolve().parent.parent
TINY_SETS = [
    *("--set", "actor_hidden_dims=16,16", "--set", "value_hidden_dims=16,16"),
    *("--set", "batch_size=16", "--set", "num_fisher_samples=2", "--set", "tensorboard=false"),
]


def _train(out: Path, *extra: str) -> int:
    argv = [
        "train",
        "--agent",
        "fidec",
        "--out",
        str(out),
        "--no-progress",
        "--no-plot",
        "--eval-episodes",
        "8",
    ]
    return main([*argv, *extra])


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_config_json_records_the_git_commit(tmp_path):
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("not a git checkout")
    out = tmp_path / "r"
    assert _train(out, "--steps", "2", "--eval-interval", "0", *TINY_SETS) == 0
    code = json.loads((out / "config.json").read_text())["code"]
    assert code["git_commit"] == head.stdout.strip()
    assert isinstance(code["git_dirty"], bool)


class FakeWandb(types.ModuleType):
    """What the trainer sends to W&B: init's arguments, logged rows, finish calls."""

    def __init__(self):
        super().__init__("wandb")
        self.inits, self.logs, self.finished = [], [], 0

    def init(self, **kwargs):
        self.inits.append(kwargs)
        fake = self

        class Run:
            def log(self, row, step):
                fake.logs.append((step, dict(row)))

            def finish(self):
                fake.finished += 1

        return Run()


def test_wandb_is_off_by_default_and_logs_the_authors_names(tmp_path, monkeypatch):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    args = [
        "--steps",
        "10",
        "--log-interval",
        "5",
        "--eval-interval",
        "10",
        "--save-interval",
        "5",
        *TINY_SETS,
    ]
    assert _train(tmp_path / "off", *args) == 0
    assert fake.inits == [] and fake.logs == []

    out = tmp_path / "on"
    assert _train(out, *args, "--wandb", "--set", "wandb_entity=lab") == 0
    (init,) = fake.inits
    config = json.loads((out / "config.json").read_text())
    assert init["id"] == config["wandb_id"] and init["resume"] == "allow"
    assert (init["project"], init["entity"], init["group"]) == ("fisher-decorator", "lab", "toy-bandit")
    assert init["name"] == "fidec-toy-bandit-s0" and init["dir"] == str(out)
    assert init["config"]["train"] == config["train"] and init["config"]["agent"] == config["agent"]
    # every CSV value under FQL's name: training/<metric> for update metrics, evaluation/ and time/ as they are
    train_rows, eval_rows = read_csv(out / "train.csv"), read_csv(out / "eval.csv")
    expected = [
        (int(r["step"]), {authors_metric_name(k): v for k, v in r.items() if k != "step"}) for r in train_rows
    ]
    expected += [(int(r["step"]), {k: v for k, v in r.items() if k != "step"}) for r in eval_rows]
    logged = sorted(fake.logs, key=lambda x: (x[0], "evaluation/success" in x[1]))
    assert [s for s, _ in logged] == [5, 10, 10]
    assert sorted(expected, key=lambda x: (x[0], "evaluation/success" in x[1])) == logged
    names = set().union(*(row for _, row in logged))
    assert {
        "training/critic/critic_loss",
        "training/actor/bc_flow_loss",
        "training/actor/distill_loss",
    } <= names
    assert {"evaluation/success", "time/eval_time", "time/updates_per_sec"} <= names
    assert fake.finished == 1

    # a resumed run continues the same W&B run; --set wandb_project alone turns it on
    assert (
        _train(out, "--resume", "--steps", "15", "--set", "wandb_project=mine", "--set", "wandb=false") == 0
    )
    assert fake.inits[1]["id"] == init["id"] and fake.inits[1]["project"] == "mine"
    assert [s for s, _ in fake.logs[3:]] == [15, 15]


def test_wandb_without_the_package_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    assert _train(tmp_path / "r", "--steps", "2", "--eval-interval", "0", "--wandb", *TINY_SETS) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == (
        "fidec train: error: W&B logging (--wandb) needs the wandb package: pip install 'fisher-decorator[wandb]'"
    )
    assert "Traceback" not in err


def test_plot_markers_for_a_one_row_run_and_smoothing(tmp_path):
    pytest.importorskip("matplotlib")
    from tests.plot_helpers import saved_figures, visible_axes

    one = tmp_path / "one"
    assert _train(one, "--steps", "1", "--log-interval", "1", "--eval-interval", "1", *TINY_SETS) == 0
    with saved_figures() as figures:
        assert main(["plot", str(one), "--out", str(tmp_path / "one.png"), "--no-toy"]) == 0
    for ax in visible_axes(figures["one.png"]):
        (line,) = ax.get_lines()
        assert list(line.get_xdata()) == [1] and line.get_marker() == "o", ax.get_title()

    long = tmp_path / "long"
    assert _train(long, "--steps", "12", "--log-interval", "1", "--eval-interval", "0", *TINY_SETS) == 0
    with saved_figures() as figures:
        argv = ["plot", str(long), "--out", str(tmp_path / "s.png"), "--metrics", "critic/critic_loss"]
        assert main([*argv, "--smooth", "4"]) == 0
    (ax,) = visible_axes(figures["s.png"])
    raw, smoothed = ax.get_lines()
    values = [r["critic/critic_loss"] for r in read_csv(long / "train.csv")]
    np.testing.assert_array_equal(raw.get_ydata(), values)
    expected = [np.mean(values[max(0, i - 3) : i + 1]) for i in range(len(values))]
    np.testing.assert_allclose(smoothed.get_ydata(), expected, rtol=4 * np.finfo(float).eps)
    assert smoothed.get_label() == "fidec (1 seed)" and raw.get_label().startswith("_")
    assert main([*argv, "--smooth", "0"]) == 2


def test_toy_figure_quotes_eval_csv(tmp_path):
    pytest.importorskip("matplotlib")
    from tests.plot_helpers import saved_figures, visible_axes

    out = tmp_path / "r"
    assert _train(out, "--steps", "4", "--eval-interval", "4", *TINY_SETS) == 0
    with saved_figures() as figures:
        assert main(["plot", str(out), "--out", str(tmp_path / "c.png")]) == 0
    (ax,) = visible_axes(figures["toy_bandit.png"])
    (row,) = read_csv(out / "eval.csv")
    assert ax.get_title().endswith(
        f"\neval.csv, step 4: mean reward {row['evaluation/episode.return']:.3f}, "
        f"inside the data {row['evaluation/in_support']:.0%}"
    )
