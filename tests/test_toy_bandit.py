"""The built-in toy task shows what FiDec is for: at the same divergence budget, FiDec's
refinement moves further along the wide (low-Fisher) direction of the behaviour data than
DeFlow's, and stays inside the data along the narrow one, where DeFlow's isotropic budget
leaves it."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from fisher_decorator.cli import main
from fisher_decorator.envs import toy_bandit as tb
from fisher_decorator.plotting import toy_samples
from fisher_decorator.trainer import Trainer, load_agent, resolve_configs
from tests.plot_helpers import saved_figures
from tests.precision import U_FP32, U_FP64
from tests.toy_helpers import check_toy_figure


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
    n = len(a)
    # sample moments within 4 standard errors: sigma / sqrt(n) for the mean, sigma / sqrt(2 n) for the std
    # (the clip to [-1, 1] moves them by less: the wide axis' mean is 2.7 stds from -1, a 4e-4 shift)
    np.testing.assert_array_less(np.abs(a.mean(0) - tb.BEHAVIOUR_MEAN), 4 * tb.BEHAVIOUR_STD / np.sqrt(n))
    np.testing.assert_array_less(np.abs(a.std(0) - tb.BEHAVIOUR_STD), 4 * tb.BEHAVIOUR_STD / np.sqrt(2 * n))
    # the stored float32 reward is the fp64 reward of the stored actions rounded once
    np.testing.assert_allclose(
        data.train["rewards"], 1 + a.astype(np.float64).sum(1), rtol=U_FP32 + 4 * U_FP64, atol=0
    )
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


def predicted_moves(cfg) -> tuple[np.ndarray, np.ndarray]:
    """Closed-form refinements (wide, narrow) in behaviour stds of FiDec and DeFlow at the budget, for an
    exact flow and a linear Q (the reward 1 + a_0 + a_1 is linear): r maximises 1 . r at D = target, so
    r ~ F_n^-1 (1, 1) for FiDec and r ~ (1, 1) for DeFlow. FiDec's metric is SPEC's velocity score
    g = v(x_t) / (1 - t) with v(x) = E[a - e | x_t = x]: for a Gaussian behaviour, per axis,
    E[v^2] = mu^2 + k^2 Var(x_t), k = Cov(a - e, x_t) / Var(x_t), averaged over t ~ U[t - width, t]."""
    mu, sd = tb.BEHAVIOUR_MEAN, tb.BEHAVIOUR_STD
    lo, hi = max(1e-3, cfg.fisher_t - cfg.fisher_t_width), min(0.999, cfg.fisher_t)
    t = np.linspace(lo, hi, 201)[:, None]
    var_x = t**2 * sd**2 + (1 - t) ** 2
    k = (t * sd**2 - (1 - t)) / var_x
    fisher = ((mu**2 + k**2 * var_x) / (1 - t) ** 2).mean(0) + cfg.fisher_damping
    fisher_n = fisher / fisher.mean()  # F / (trace(F) / d)
    d = len(mu)
    r = 1 / fisher_n
    r *= np.sqrt(d * cfg.target_divergence / (r**2 * fisher_n).sum())  # mean r^T F_n r / d = target
    return r / sd, np.full(d, np.sqrt(cfg.target_divergence)) / sd


def miss_rate(shift: float) -> float:
    """P(|z| > SUPPORT_RADIUS), z ~ N(shift, 1): the share of refined actions outside the narrow band."""
    cdf = lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2)))  # noqa: E731
    return 1 - cdf(tb.SUPPORT_RADIUS - shift) + cdf(-tb.SUPPORT_RADIUS - shift)


def assert_fisher_effect(results: dict, cfg) -> None:
    """FiDec's and DeFlow's measured moves against the null hypothesis (FiDec's metric no better than
    DeFlow's isotropic one: equal moves) and the closed form. The claims hold at the null's boundary
    (FiDec further along the wide axis, less far along the narrow one); the anisotropy
    (f_narrow / f_wide) / (d_narrow / d_wide), which needs neither run at its budget (1 under the null),
    is below the geometric midpoint between the closed form's and the null's, and so are DeFlow's exit
    from the data and FiDec's share outside it: a run short of the optimum passes, no effect fails."""
    (f_wide, f_narrow), f_cover = results["fidec"]
    (d_wide, d_narrow), _ = results["deflow"]
    (pf_wide, pf_narrow), (pd_wide, pd_narrow) = predicted_moves(cfg)
    assert f_wide > d_wide and f_narrow < d_narrow, results  # the same budget, spent differently
    anisotropy, predicted = (
        (f_narrow / f_wide) / (d_narrow / d_wide),
        (pf_narrow / pf_wide) / (pd_narrow / pd_wide),
    )
    assert anisotropy < np.sqrt(predicted), (anisotropy, predicted)
    # the isotropic budget takes DeFlow out along the narrow axis (null: FiDec's narrow move) ...
    assert d_narrow > np.sqrt(pd_narrow * pf_narrow), (d_narrow, pd_narrow, pf_narrow)
    # ... while FiDec's refined actions stay inside the narrow band of the data (null: DeFlow's share out)
    assert 1 - f_cover < np.sqrt(miss_rate(pf_narrow) * miss_rate(pd_narrow)), f_cover


def test_fidec_moves_along_the_wide_axis_and_stays_in_the_data_along_the_narrow_one(tmp_path):
    """Reduced form of the README's main command (1000 updates of batch 64 instead of 2000 of 128)."""
    results, cfgs = {}, {}
    for agent in ("fidec", "deflow"):
        train_cfg, cfgs[agent], record = resolve_configs(
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
        Trainer(train_cfg, cfgs[agent], tmp_path / agent, record=record).run()
        results[agent] = moves(load_agent(tmp_path / agent)[0])
    assert cfgs["deflow"].target_divergence == cfgs["fidec"].target_divergence  # the same budget
    assert_fisher_effect(results, cfgs["fidec"])


@pytest.mark.slow
def test_readme_command(tmp_path):
    """`fidec train --task toy-bandit` exactly as the README runs it (about a minute on 2 cores)."""
    out = tmp_path / "toy"
    with saved_figures() as figures:
        assert main(["train", "--task", "toy-bandit", "--out", str(out), "--no-progress"]) == 0
    assert (out / "toy_bandit.png").is_file()
    check_toy_figure(figures["toy_bandit.png"], {"fidec": out / "fidec", "deflow": out / "deflow"}, step=2000)
    fidec, deflow = (load_agent(out / agent)[0] for agent in ("fidec", "deflow"))
    assert_fisher_effect({"fidec": moves(fidec), "deflow": moves(deflow)}, fidec.config)
    for agent in ("fidec", "deflow"):
        summary = json.loads((out / agent / "summary.json").read_text())
        assert summary["steps"] == 2000 and summary["score"] is not None
