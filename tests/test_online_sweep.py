"""Offline-to-online tasks in a sweep: the online run depends on its offline run in the manifest, starts only once
that one is done, continues from its checkpoint, and the report shows the scores before and after."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from fisher_decorator.checkpoint import load_checkpoint
from fisher_decorator.logger import read_csv
from fisher_decorator.sweep.grid import SweepDefinition, parse_tasks, resolve_run
from fisher_decorator.sweep.manifest import Manifest
from tests.sweep_helpers import ROOT, TINY_SETS, env

STEPS = 20


def test_groups_expand_to_offline_and_online_runs():
    tasks = parse_tasks("o2o_ogbench5")
    assert tasks[2] == "cube-double-play-singletask-task2-v0@o2o" and len(tasks) == 5
    assert len(parse_tasks("o2o_d4rl_antmaze6,o2o_d4rl_adroit4")) == 10
    d = SweepDefinition(agents=("fidec",), tasks=(tasks[2],), seeds=(0,), budget="paper")
    offline, online = d.runs()
    assert (offline.stage, online.stage) == ("o2o-offline", "o2o-online")
    assert online.depends_on == [offline.run_id] and offline.depends_on == []
    assert offline.rel_dir.endswith("/offline") and online.rel_dir.endswith("/online")
    a = resolve_run(d, offline, sweep_dir="/s", dataset_dir="/d")
    b = resolve_run(d, online, sweep_dir="/s", dataset_dir="/d")
    # the authors' grid: 1M offline steps scored at 1M, then 1M online from that checkpoint, normalize_q_loss off
    assert (a.train["steps"], a.train["score_steps"], a.train["eval_interval"]) == (
        1_000_000,
        [1_000_000],
        100_000,
    )
    assert a.agent["normalize_q_loss"] is False and a.agent["target_divergence"] == 0.001
    assert b.train == a.train and b.agent == a.agent and a.online is None
    assert b.online["online_steps"] == 1_000_000 and b.total_steps == 2_000_000
    assert b.init_from == f"{offline.rel_dir}/checkpoint.pt"
    assert b.record["command"].startswith("fidec finetune --run /s/runs/o2o/cube-double-play")


class _Executor:
    capacity = None

    def __init__(self):
        self.submitted = []

    def submit(self, work):
        self.submitted.append(work.run_id)

    def threads_for(self, cpus):
        return cpus


@pytest.mark.parametrize("offline_state", ["pending", "failed", "done"])
def test_the_online_run_waits_for_its_offline_run(tmp_path, offline_state):
    from fisher_decorator.sweep.runner import Resources, _Driver

    d = SweepDefinition(agents=("fql",), tasks=("toy-bandit@o2o",), seeds=(0,), budget="small", steps=STEPS)
    specs = d.runs()
    resolved = {s.run_id: resolve_run(d, s, sweep_dir=tmp_path, dataset_dir=tmp_path) for s in specs}
    manifest = Manifest.open(tmp_path)
    manifest.add(specs)
    off, on = (s.run_id for s in specs)
    assert manifest[on]["depends_on"] == [off]
    if offline_state != "pending":
        manifest.set_state(off, "running")
        manifest.set_state(off, offline_state)
    executor = _Executor()
    driver = _Driver(manifest, resolved, executor, Resources(), tmp_path, False, lambda *a: None)
    driver.queue.extend([off, on] if offline_state == "pending" else [on])
    driver._submit_ready()
    if offline_state == "pending":  # the offline run goes first; the online one stays queued behind it
        assert executor.submitted == [off] and list(driver.queue) == [on]
        assert manifest[on]["state"] == "pending"
    elif offline_state == "failed":
        assert executor.submitted == [] and manifest[on]["state"] == "failed"
        assert "must be done first" in manifest[on]["error"]
    else:
        assert executor.submitted == [on]
        payload = json.loads((tmp_path / specs[1].rel_dir / "sweep-run.json").read_text())
        assert payload["init_from"] == str(tmp_path / specs[0].rel_dir / "checkpoint.pt")
        assert payload["online"]["online_steps"] == STEPS


def test_sweep_runs_the_online_run_after_its_offline_run_and_reports_both_scores(tmp_path):
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "fisher_decorator", "sweep", "--out", str(out), "--agents", "fidec"]
    cmd += ["--tasks", "toy-bandit@o2o", "--seeds", "0", "--budget", "small", "--steps", str(STEPS)]
    cmd += [x for item in TINY_SETS for x in ("--set", item)]
    cmd += ["--backend", "pool", "--workers", "2", "--no-progress"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    runs = json.loads((out / "manifest.json").read_text())["runs"]
    off, on = runs["toy-bandit/fidec/seed0/o2o-offline"], runs["toy-bandit/fidec/seed0/o2o-online"]
    assert off["state"] == on["state"] == "done"
    assert on["started"] >= off["finished"]  # started only once the offline run was done
    off_dir, on_dir = out / off["run_dir"], out / on["run_dir"]
    state = load_checkpoint(on_dir / "checkpoint.pt")
    assert state["step"] == 2 * STEPS and state["agent"]["num_updates"] == 2 * STEPS
    assert json.loads((on_dir / "config.json").read_text())["restored_from"]["step"] == STEPS
    before = [r for r in read_csv(off_dir / "eval.csv") if r["step"] == STEPS][0]["evaluation/success"]
    after = read_csv(on_dir / "eval.csv")[-1]
    assert after["step"] == 2 * STEPS
    with open(out / "report" / "online.csv") as f:
        row = next(r for r in csv.DictReader(f) if r["task"] == "toy-bandit")
    assert float(row["before"]) == pytest.approx(100 * before, abs=1e-6)
    assert float(row["after"]) == pytest.approx(100 * after["evaluation/success"], abs=1e-6)
    text = (out / "report" / "results.md").read_text()
    assert "## Offline to online" in text and "| o2o | toy-bandit | FiDec | 1 |" in text


def test_report_of_a_folder_with_a_finetuned_run(tmp_path):
    """``fidec report`` on plain run directories: a ``fidec finetune`` run reads its score before from its
    offline run's eval.csv."""
    from fisher_decorator.cli import main
    from fisher_decorator.sweep.report import collect_runs

    sets = [x for item in TINY_SETS for x in ("--set", item)]
    base = ["--no-progress", "--eval-interval", "5", "--save-interval", "5"]
    assert (
        main(
            [
                "train",
                "--agent",
                "fidec",
                "--steps",
                "5",
                "--out",
                str(tmp_path / "off"),
                "--no-plot",
                *base,
                *sets,
            ]
        )
        == 0
    )
    assert main(["finetune", "--run", str(tmp_path / "off"), "--online-steps", "5", *base]) == 0
    results = {r.run_dir.name: r for r in collect_runs(tmp_path)}
    tuned = results["off-online"]
    assert tuned.stage == "o2o-online" and results["off"].stage == ""
    assert tuned.score_before == pytest.approx(
        100 * read_csv(tmp_path / "off" / "eval.csv")[-1]["evaluation/success"]
    )
    assert tuned.score == pytest.approx(
        100 * read_csv(tmp_path / "off-online" / "eval.csv")[-1]["evaluation/success"]
    )
    assert Path(tmp_path / "off-online" / "summary.json").is_file()
