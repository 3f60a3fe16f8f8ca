"""The built-in toy task shows what FiDec is for: at the same divergence budget, FiDec's
refinement moves further along the wide (low-Fisher) direction of the behaviour data than
DeFlow's, and stays inside the data along the narrow one, where DeFlow's isotropic budget
leaves it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fisher_decorator.cli import main
from fisher_decorator.envs import toy_bandit as tb
from fisher_decorator.plotting import toy_samples
from fisher_decorator.trainer import Trainer, load_agent, resolve_configs


def moves(agent, n=2000):
    """Mean refinement r = T(a_b) - a_b along (wide, narrow), in behaviour stds; narrow-axis coverage."""
    s = toy_samples(agent, n, seed=1)
    move = (s["refined"] - s["base"]).mean(0) / tb.BEHAVIOUR_STD
    z_narrow = np.abs(s["refined"][:, 1] - tb.BEHAVIOUR_MEAN[1]) / tb.BEHAVIOUR_STD[1]
    return move, float((z_narrow <= tb.SUPPORT_RADIUS).mean())


def test_dataset_and_evaluation():
    task = tb.ToyBanditTask()
    data = task.load_data()
    a = data.train["actions"]
    np.testing.assert_allclose(a.mean(0), tb.BEHAVIOUR_MEAN, atol=0.01)
    np.testing.assert_allclose(a.std(0), tb.BEHAVIOUR_STD, rtol=0.03)
    np.testing.assert_allclose(data.train["rewards"], 1 + a.astype(np.float64).sum(1), rtol=0, atol=1e-6)
    assert np.all(data.train["masks"] == 0) and np.all(data.train["terminals"] == 1)
    stats, videos = task.evaluate(
        lambda obs: np.tile(tb.BEHAVIOUR_MEAN + [0.3, 0.0], (len(obs), 1)), episodes=10, seed=0
    )
    assert (
        stats["in_support"] == 1.0
        and stats["success"] == 1.0
        and stats["episode.return"] == pytest.approx(1.1)
    )
    assert stats["shift_wide_std"] == pytest.approx(1.0) and videos == []
    stats, _ = task.evaluate(lambda obs: np.tile([0.0, 0.2], (len(obs), 1)), episodes=10, seed=0)
    assert stats["in_support"] == 0.0 and stats["success"] == 0.0  # 4 narrow stds out


def test_fidec_moves_along_the_wide_axis_and_stays_in_the_data_along_the_narrow_one(tmp_path):
    """Reduced form of the README's main command (1000 updates of batch 64 instead of 2000 of 128)."""
    results = {}
    for agent in ("fidec", "deflow"):
        train_cfg, agent_cfg, record = resolve_configs(
            "toy-bandit",
            agent,
            flags={
                "steps": 1000,
                "batch_size": 64,
                "eval_interval": 1000,
                "progress": False,
                "tensorboard": False,
            },
        )
        Trainer(train_cfg, agent_cfg, tmp_path / agent, record=record).run()
        results[agent] = moves(load_agent(tmp_path / agent)[0])
    (f_wide, f_narrow), f_cover = results["fidec"]
    (d_wide, d_narrow), d_cover = results["deflow"]
    # the same budget: both hold their divergence at target_divergence = 0.01 ...
    assert f_wide > 1.5 * d_wide, (f_wide, d_wide)  # ... FiDec spends it along the wide axis
    assert f_narrow < 0.75 * d_narrow, (f_narrow, d_narrow)  # ... DeFlow along both, equally
    assert d_narrow > 1.5  # the isotropic budget takes DeFlow 1.5+ narrow stds out
    assert f_cover >= 0.98, f_cover  # FiDec's refined actions stay inside the narrow band of the data


@pytest.mark.slow
def test_readme_command(tmp_path):
    """`fidec train --task toy-bandit` exactly as the README runs it (about a minute on 2 cores)."""
    out = tmp_path / "toy"
    assert main(["train", "--task", "toy-bandit", "--out", str(out), "--no-progress"]) == 0
    assert (out / "toy_bandit.png").stat().st_size > 20_000
    (f_wide, f_narrow), f_cover = moves(load_agent(out / "fidec")[0])
    (d_wide, d_narrow), _ = moves(load_agent(out / "deflow")[0])
    assert f_wide > 2 * d_wide and f_narrow < 0.5 * d_narrow and f_narrow < 1.0 and f_cover >= 0.99
    for agent in ("fidec", "deflow"):
        summary = json.loads((out / agent / "summary.json").read_text())
        assert summary["steps"] == 2000 and summary["score"] is not None
