"""What a run writes: config.json, train.csv, eval.csv, TensorBoard events, summary.json."""

from __future__ import annotations

import json

import pytest

from fisher_decorator.evaluation import final_score
from fisher_decorator.logger import CSVLogger, read_csv
from fisher_decorator.presets import load_presets
from tests.train_helpers import run_tiny


def test_run_directory_contents(tmp_path):
    trainer, summary = run_tiny(tmp_path / "run", "fidec", steps=20, log_interval=5, eval_interval=10)
    run = tmp_path / "run"
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["train"]["task"] == "toy-bandit" and cfg["train"]["agent"] == "fidec"
    assert cfg["agent"]["actor_hidden_dims"] == [16, 16]  # --set override applied over the preset
    assert cfg["agent"]["target_divergence"] == 0.01  # the toy preset
    assert cfg["train_preset"]["steps"] == load_presets()["toy-bandit"]["train"]["steps"]
    assert cfg["overrides"]["flow_steps"] == "3"
    assert cfg["dataset"]["manifest"]["dataset"] == "toy-bandit" and cfg["dataset"]["transitions"] > 0
    assert cfg["obs_dim"] == 1 and cfg["action_dim"] == 2
    assert cfg["environment"]["cpu"] and cfg["environment"]["torch"]

    rows = read_csv(run / "train.csv")
    assert [r["step"] for r in rows] == [5, 10, 15, 20]
    names = set(rows[0])
    for key in (
        "critic/critic_loss",
        "critic/q_mean",
        "critic/q_max",
        "critic/q_min",
        "actor/actor_loss",
        "actor/bc_flow_loss",
        "actor/distill_loss",
        "actor/fisher_quad_mean",
        "actor/fisher_trace_per_dim_mean",
        "actor/fisher_diag_mean",
        "actor/refinement_mse",
        "actor/q_loss",
        "actor/q",
        "actor/alpha_loss",
        "actor/alpha_value",
        "actor/mse",
        "grad/norm",
        "grad/clip_scale",
        "validation/critic/critic_loss",
        "validation/actor/distill_loss",
        "time/updates_per_sec",
    ):
        assert key in names, key

    evals = read_csv(run / "eval.csv")
    assert [r["step"] for r in evals] == [10, 20]
    assert {"evaluation/success", "evaluation/episode.return", "evaluation/in_support"} <= set(evals[0])
    assert 0.0 <= evals[-1]["evaluation/success"] <= 1.0

    events = list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("critic/critic_loss")] == [5, 10, 15, 20]
    assert [e.step for e in acc.Scalars("evaluation/success")] == [10, 20]

    saved = json.loads((run / "summary.json").read_text())
    assert saved["score_steps"] == [20] and saved["score"] == evals[-1]["evaluation/success"]
    assert summary["steps"] == 20 and summary["updates_per_sec"] > 0


def test_eval_schedule_and_log_interval_do_not_change_training(tmp_path):
    a, _ = run_tiny(tmp_path / "a", "deflow", steps=12, log_interval=1, eval_interval=3, eval_at_start=True)
    b, _ = run_tiny(tmp_path / "b", "deflow", steps=12, log_interval=6, eval_interval=0)
    for k, v in a.agent.state_dict().items():
        assert (v == b.agent.state_dict()[k]).all(), k
    assert [r["step"] for r in read_csv(tmp_path / "a" / "eval.csv")] == [1, 3, 6, 9, 12]
    assert not (tmp_path / "b" / "eval.csv").exists() or not read_csv(tmp_path / "b" / "eval.csv")


def test_final_score_is_the_mean_at_the_score_steps():
    history = [
        {"step": s, "evaluation/success": v} for s, v in [(1, 0.0), (800, 0.5), (900, 0.7), (1000, 0.6)]
    ]
    out = final_score(history, (800, 900, 1000))
    assert out["score"] == pytest.approx(0.6) and out["missing_score_steps"] == []
    partial = final_score(history[:3], (800, 900, 1000))
    assert partial["score"] is None and partial["missing_score_steps"] == [1000]
    assert final_score(history, ())["score"] == 0.6 and final_score(history, ())["score_steps"] == [1000]
    assert final_score([], (800,))["score"] is None


def test_csv_logger_new_columns_and_resume_truncation(tmp_path):
    path = tmp_path / "log.csv"
    log = CSVLogger(path)
    log.log({"a": 1.0}, 1)
    log.log({"a": 2.0, "b": 3.0}, 2)
    log.log({"a": 4.0}, 3)
    assert read_csv(path) == [{"step": 1, "a": 1.0}, {"step": 2, "a": 2.0, "b": 3.0}, {"step": 3, "a": 4.0}]
    CSVLogger(path, resume_step=2).log({"a": 9.0}, 3)
    assert [r["a"] for r in read_csv(path)] == [1.0, 2.0, 9.0]
    CSVLogger(path)  # a fresh (non-resumed) run starts a new file
    assert not path.exists()
