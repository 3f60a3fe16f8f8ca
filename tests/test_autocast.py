"""autocast=bfloat16: the networks' forward and backward in bf16 on fp32 parameters, Adam and losses.

200 FiDec updates with bf16 autocast and bf16 rollouts against the fp32 run of tests/test_agents_convergence.py
(same initial parameters, batches and noise). bf16 rounds every activation to u = 2^-8, so per-step losses part
ways; the judgement is the one that test uses for bf16 rollouts: every loss over the last 50 steps within 3
standard errors of the fp32 run's, and the flow field and critics closer to the fp32 run's parameters than that
run's own parameters moved in those 50 steps.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fisher_decorator.agents import make_agent
from fisher_decorator.networks import set_autocast
from tests.precision import U_BF16, U_FP32, assert_rounded_at
from tests.test_agents_convergence import KEYS, WINDOW, config, needs_ext, runs, train


@pytest.fixture(scope="module")
def bf16_run():
    return train(autocast="bfloat16", rollout_dtype="bfloat16")


def _fp32_and_bf16_outputs(agent):
    g = torch.Generator().manual_seed(5)
    obs, act = torch.randn(64, 6, generator=g), torch.rand(64, 2, generator=g) * 2 - 1
    t = torch.rand(64, 1, generator=g)
    out = {}
    for mode in ("none", "bfloat16"):
        set_autocast(agent, mode)
        out[mode] = (agent.velocity_field(obs, act, t), agent.critic(obs, act))
    return out


def test_autocast_runs_networks_in_bf16_with_fp32_state():
    agent = make_agent("fidec", 6, 2, config(autocast="bfloat16"), seed=0)
    out = _fp32_and_bf16_outputs(agent)
    for full, half, name in zip(out["none"], out["bfloat16"], ("velocity", "critic")):
        assert half.dtype == torch.float32  # outputs back in fp32: the losses are fp32
        assert_rounded_at(half, full, U_BF16, name=name)  # ... computed in bf16
        # within bf16 rounding: a few u_bf16 per layer of the result's scale
        assert (half - full).abs().max().item() <= 3 * 8 * U_BF16 * full.abs().max().item(), name
    set_autocast(agent, "bfloat16")
    batch = {
        "observations": torch.randn(32, 6),
        "actions": torch.rand(32, 2) * 2 - 1,
        "rewards": torch.randn(32),
        "masks": torch.ones(32),
        "next_observations": torch.randn(32, 6),
    }
    before = {k: v.clone() for k, v in agent.state_dict().items()}
    agent.update(batch)
    for p in agent.trainable_parameters():  # fp32 master weights, gradients and Adam moments
        assert p.dtype == torch.float32 and p.grad.dtype == torch.float32
        st = agent.optimizer.state[p]
        assert st["exp_avg"].dtype == torch.float32 and st["exp_avg_sq"].dtype == torch.float32
    moved = [k for k, v in agent.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("velocity_field.") for k in moved) and any(k.startswith("critic.") for k in moved)
    # an update moves parameters by ~lr, far below bf16's spacing near 1: they must not have been stored in bf16
    w = agent.velocity_field.linears[0].weight
    assert_rounded_at(w, w.bfloat16().float(), U_FP32 * 64, name="weights kept beyond bf16")


def test_autocast_rejects_unknown_dtype():
    agent = make_agent("fidec", 6, 2, config(), seed=0)
    with pytest.raises(ValueError, match="autocast must be one of"):
        set_autocast(agent, "float16")


@needs_ext
def test_bf16_autocast_trains_like_fp32(bf16_run):
    plain = runs("plain")
    out = _fp32_and_bf16_outputs(bf16_run.agent)  # the run's networks ran in bf16
    assert_rounded_at(out["bfloat16"][1], out["none"][1], U_BF16, name="critic")
    for j, k in enumerate(KEYS):
        a, b = plain.losses[-WINDOW:, j], bf16_run.losses[-WINDOW:, j]
        se = np.sqrt((a.var(ddof=1) + b.var(ddof=1)) / WINDOW)
        assert abs(b.mean() - a.mean()) <= 3 * se, (k, b.mean(), a.mean(), se)
    for k, v in plain.params.items():
        if k.startswith(
            ("residual.", "log_alpha")
        ):  # trained on the rollouts' actions: part ways (see there)
            continue
        wander = (v - plain.window_start[k]).norm().item()
        dist = (bf16_run.params[k] - v).norm().item()
        assert dist <= wander, (k, dist, wander)
