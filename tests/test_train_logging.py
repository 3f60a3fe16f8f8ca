"""What a run writes: config.json, train.csv, eval.csv, TensorBoard events, summary.json."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from fisher_decorator.agents import derive_seed, make_agent
from fisher_decorator.evaluation import final_score
from fisher_decorator.logger import CSVLogger, read_csv
from fisher_decorator.presets import load_presets
from fisher_decorator.trainer import Trainer
from tests.toy_helpers import toy_scores
from tests.train_helpers import run_tiny, tiny_configs


class RecordingTrainer(Trainer):
    """Keeps, for every update, the agent state before it, its batch and the agent state after the step."""

    def start(self, **kw):
        super().start(**kw)
        self.before, self.batches_seen, self.after = {}, {}, {}
        update = self.agent.update

        def recorded(batch, *args, **kwargs):
            step = self.agent.num_updates + 1
            self.before[step] = copy.deepcopy(self.agent.checkpoint_state())
            self.batches_seen[step] = {k: v.clone() for k, v in batch.items()}
            return update(batch, *args, **kwargs)

        self.agent.update = recorded

    def end_step(self, step, row, dt):
        self.after[step] = copy.deepcopy(self.agent.checkpoint_state())
        super().end_step(step, row, dt)


def test_run_directory_contents(tmp_path):
    run = tmp_path / "run"
    train_cfg, agent_cfg, record = tiny_configs("fidec", steps=20, log_interval=5, eval_interval=10)
    trainer = RecordingTrainer(train_cfg, agent_cfg, run, record=record)
    summary = trainer.run()
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

    # each logged number is what update `step` returned: replayed from the state before it on its batch
    def replica(state):
        agent = make_agent("fidec", 1, 2, agent_cfg, seed=train_cfg.seed)
        agent.load_checkpoint_state(copy.deepcopy(state))
        return agent

    for row in rows:
        step = int(row["step"])
        info = replica(trainer.before[step]).update(trainer.batches_seen[step], with_metrics=True)
        assert set(info) == {k for k in row if "/" in k and k.split("/")[0] in ("critic", "actor", "grad")}
        for k, v in info.items():
            assert row[k] == float(v), (step, k)
        # validation: the agent after the step on the validation stream of this step (no update)
        agent = replica(trainer.after[step])
        g = torch.Generator().manual_seed(derive_seed(train_cfg.seed, f"validation/{step}"))
        batch = trainer.val_sampler.sample(train_cfg.batch_size, generator=g)
        noise_g = torch.Generator().manual_seed(derive_seed(train_cfg.seed, f"validation-noise/{step}"))
        with torch.no_grad():
            _, val = agent.total_loss(batch, agent.sample_noise(train_cfg.batch_size, generator=noise_g))
        for k, v in val.items():
            assert row[f"validation/{k}"] == float(v), (step, k)
    # throughput: each row's updates/s is its 5 steps over the training time they took
    times = [0.0] + [r["time/train_time"] for r in rows]
    for row, t0, t1 in zip(rows, times, times[1:]):
        assert row["time/updates_per_sec"] == pytest.approx(5 / (t1 - t0), rel=1e-9)

    evals = read_csv(run / "eval.csv")
    assert [r["step"] for r in evals] == [10, 20]
    assert {"evaluation/success", "evaluation/episode.return", "evaluation/in_support"} <= set(evals[0])
    # evaluations: the agent after the step, its actions drawn with the evaluation seed of the step, scored here
    for row in evals:
        step = int(row["step"])
        g = torch.Generator().manual_seed(derive_seed(train_cfg.seed, f"eval-actions/{step}"))
        actions = replica(trainer.after[step]).sample_actions(
            torch.ones(train_cfg.eval_episodes, 1), generator=g
        )
        success, in_support, ret = toy_scores(actions.numpy())
        assert (row["evaluation/success"], row["evaluation/in_support"]) == (success, in_support), step
        assert row["evaluation/episode.return"] == pytest.approx(ret, rel=1e-12)

    events = list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    # the same numbers as the CSV (float32 values, which TensorBoard stores exactly)
    for key, table in (
        ("critic/critic_loss", rows),
        ("actor/distill_loss", rows),
        ("evaluation/success", evals),
    ):
        assert [(e.step, e.value) for e in acc.Scalars(key)] == [(r["step"], r[key]) for r in table], key

    saved = json.loads((run / "summary.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    assert saved["score_steps"] == [20] and saved["score"] == evals[-1]["evaluation/success"]
    assert saved["steps"] == 20 and saved["train_time_s"] == rows[-1]["time/train_time"]
    assert saved["updates_per_sec"] == 20 / saved["train_time_s"]
    assert saved["last_evaluation"]["evaluation/success"] == evals[-1]["evaluation/success"]


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
