"""The report's arithmetic against numbers computed by hand from the fixture sweep (tests/fixtures/sweep_report:
a manifest and, per run, a config.json with score steps 800/900/1000 and an eval.csv).

Run scores (mean success at 800/900/1000, in %; the evaluations at steps 1 and 500 must be ignored):

    cube-single task1 fidec s0: .5 .6 .7 -> 60     task2 fidec s0: .2 .2 .2 -> 20    family s0: 40
    cube-single task1 fidec s1: .9 1 .8 -> 90      task2 fidec s1: 0 .1 .2 -> 10     family s1: 50
        FiDec cube-single: mean 45, sample std sqrt(((40-45)^2 + (50-45)^2) / 1) = sqrt(50) = 7.0711;
        paper 94 -> difference -49
    cube-single task1 fql s0: .4 .4 .4 -> 40       task2 fql s0: .1 .2 .3 -> 20      family s0: 30
    cube-single task1 fql s1: no step-1000 eval -> no score; task2 fql s1: 0 -> 0 -> seed 1 incomplete
        FQL cube-single: 30 over 1 seed, no std; paper unknown
    puzzle-4x4 task3 fidec s0: .25 .5 .75 -> 50 (seed 1 failed); paper unknown (not in the listing)
    per task, cube-single task1 fidec: 60, 90 -> 75 +- sqrt(450) = 21.2132
"""

from __future__ import annotations

import csv
import math
import shutil
from pathlib import Path

import pytest

from fisher_decorator.cli import main
from fisher_decorator.sweep.report import (
    collect_runs,
    family_rows,
    load_paper_scores,
    task_rows,
)
from tests.plot_helpers import legend_labels, saved_figures, shaded_bands, visible_axes

FIXTURE = Path(__file__).parent / "fixtures" / "sweep_report"
C1 = "cube-single-play-singletask-task1-v0"


@pytest.fixture
def sweep(tmp_path) -> Path:
    shutil.copytree(FIXTURE, tmp_path / "sweep")
    return tmp_path / "sweep"


def _row(rows, **match):
    found = [r for r in rows if all(r[k] == v for k, v in match.items())]
    assert len(found) == 1, (match, rows)
    return found[0]


def test_family_and_task_arithmetic(sweep):
    results = collect_runs(sweep)
    scores = {(r.task, r.agent, r.seed): r.score for r in results}
    assert scores[(C1, "fidec", 0)] == pytest.approx(60.0)
    assert scores[(C1, "fql", 1)] is None  # step 1000 missing: no partial mean
    rows = family_rows(results)
    fidec = _row(rows, family="cube-single-play", agent="fidec")
    assert fidec["tasks"] == 2 and fidec["tasks_in_family"] == 5 and fidec["seeds"] == 2
    assert fidec["seed_scores"] == pytest.approx({0: 40.0, 1: 50.0})
    assert fidec["mean"] == pytest.approx(45.0)
    assert fidec["std"] == pytest.approx(math.sqrt(50.0))
    assert fidec["paper"] == 94 and fidec["difference"] == pytest.approx(-49.0)
    fql = _row(rows, family="cube-single-play", agent="fql")
    assert fql["seeds"] == 1 and fql["mean"] == pytest.approx(30.0) and fql["std"] is None
    assert fql["incomplete_seeds"] == [1]
    assert fql["paper"] is None and fql["difference"] is None
    puzzle = _row(rows, family="puzzle-4x4-play", agent="fidec")
    assert puzzle["mean"] == pytest.approx(50.0) and puzzle["seeds"] == 1
    assert puzzle["paper"] is None and puzzle["difference"] is None
    task = _row(task_rows(results), task=C1, agent="fidec")
    assert task["mean"] == pytest.approx(75.0) and task["std"] == pytest.approx(math.sqrt(450.0))


def test_markdown_csv_and_curves(sweep, capsys):
    with saved_figures() as figures:
        assert main(["report", str(sweep)]) == 0
    printed = capsys.readouterr().out
    assert (
        "| cube-single | 2 of 5 | 45.0 ± 7.1 (2 seeds) | 94 | -49.0 | 30.0 (1 seed) | unknown | unknown |"
        in printed
    )
    assert "| puzzle-4x4 | 1 of 5 | 50.0 (1 seed) | unknown | unknown | - | - | - |" in printed
    md = (sweep / "report" / "results.md").read_text()
    assert "cube-single / fql: seed(s) 1 left out" in md
    assert (
        "`puzzle-4x4-play-singletask-task3-v0/fidec/seed1` (failed): DatasetError: puzzle-4x4-play-v0.npz"
        in md
    )
    assert "not evaluated at step(s) 1000 yet" in md  # the fql run still running
    with open(sweep / "report" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    fidec = _row(rows, family="cube-single-play", agent="fidec")
    assert float(fidec["mean"]) == pytest.approx(45.0) and float(fidec["std"]) == pytest.approx(7.071068)
    assert float(fidec["paper"]) == 94 and float(fidec["difference"]) == pytest.approx(-49.0)
    assert fidec["seed_scores"] == "0:40.0;1:50.0"
    fql = _row(rows, family="cube-single-play", agent="fql")
    assert (fql["paper"], fql["difference"], fql["std"]) == ("unknown", "unknown", "")
    with open(sweep / "report" / "runs.csv") as f:
        runs = list(csv.DictReader(f))
    assert len(runs) == 10 and {r["state"] for r in runs} == {"done", "running", "failed"}
    curves = sorted((sweep / "report" / "curves").glob("*.png"))
    assert [p.stem for p in curves] == sorted(
        [C1, "cube-single-play-singletask-task2-v0", "puzzle-4x4-play-singletask-task3-v0"]
    )
    assert sorted(figures) == [p.name for p in curves]
    # what the curves show, from the fixture's eval.csv files by hand (success in %, mean over the seeds that
    # have the step): C1 fidec seeds .0 .9 .5 .6 .7 and .0 .3 .9 1 .8; fql .0 .2 .4 .4 .4 and .0 .5 .5 .5 (no 1000)
    steps = [1, 500, 800, 900, 1000]
    expected = {
        C1: {"fidec (2 seeds)": [0, 60, 70, 80, 75], "fql (2 seeds)": [0, 35, 45, 45, 40]},
        "puzzle-4x4-play-singletask-task3-v0": {"fidec (1 seed)": [0, 0, 25, 50, 75]},
    }
    for task, lines in expected.items():
        (ax,) = visible_axes(figures[f"{task}.png"])
        assert ax.get_title().startswith(task + "\n")
        assert (ax.get_xlabel(), ax.get_ylabel()) == ("updates", "success (%)")
        assert legend_labels(ax) == list(lines)
        curves_drawn = {
            line.get_label(): line for line in ax.get_lines() if not line.get_label().startswith("_")
        }
        assert set(curves_drawn) == set(lines)
        for label, values in lines.items():
            assert list(curves_drawn[label].get_xdata()) == steps
            assert list(curves_drawn[label].get_ydata()) == pytest.approx(values, rel=1e-12, abs=1e-12)
        # the score steps dotted, one band (min-max) per agent with more than one seed
        vlines = [line.get_xdata()[0] for line in ax.get_lines() if line.get_label().startswith("_")]
        assert sorted(vlines) == [800, 900, 1000]
        assert len(shaded_bands(ax)) == sum(label.endswith("seeds)") for label in lines)


def test_report_without_manifest_reads_run_directories(sweep):
    (sweep / "manifest.json").unlink()
    results = collect_runs(sweep)
    assert len(results) == 9  # the failed run had no directory
    assert _row(family_rows(results), family="cube-single-play", agent="fidec")["mean"] == pytest.approx(45.0)
    with pytest.raises(FileNotFoundError, match="no manifest.json and no run directories"):
        collect_runs(sweep / "runs" / "nothing-here")


def test_paper_numbers_are_the_listing_and_unknowns_stay_unknown():
    """SPEC's "Published FiDec scores" table, transcribed; puzzle-4x4 and every baseline are not in it."""
    listing = {
        "antmaze-large-navigate": 87,
        "antmaze-giant-navigate": 13,
        "humanoidmaze-medium-navigate": 72,
        "humanoidmaze-large-navigate": 8,
        "antsoccer-arena-navigate": 64,
        "cube-single-play": 94,
        "cube-double-play": 43,
        "scene-play": 56,
        "puzzle-3x3-play": 43,
        "puzzle-4x4-play": None,
        "d4rl-antmaze": 87,  # SPEC's "D4RL AntMaze" row
        "d4rl-adroit": None,
    }
    families = load_paper_scores()["families"]
    assert {f: e["fidec"] for f, e in families.items()} == listing
    assert all(e["deflow"] is None and e["fql"] is None for e in families.values())
