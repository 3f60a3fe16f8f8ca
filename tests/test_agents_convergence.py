"""Convergence: 200 FiDec updates on a small synthetic dataset with the reference penalty (the
authors' d x d matrices) and with the fused kernel; the per-step losses and the final parameters
agree within the stated tolerances (fp32 rounding, which reorders the penalty's sums, is the only
difference)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fisher_decorator.agents import FiDecConfig, make_agent
from fisher_decorator.ops import available_backends
from fisher_decorator.sampler import TransitionSampler

STEPS = 200
LOSS_RTOL = 1e-4  # relative, per step, on every logged loss
PARAM_ATOL = 1e-5  # absolute, on every parameter after 200 updates (parameters are O(1))
KEYS = ("critic/critic_loss", "actor/actor_loss", "actor/bc_flow_loss", "actor/distill_loss", "actor/q_loss")


def synthetic_dataset(n=2000, obs_dim=6, act_dim=2, seed=0):
    rng = np.random.default_rng(seed)
    obs = rng.standard_normal((n, obs_dim)).astype(np.float32)
    act = np.tanh(obs[:, :act_dim] + 0.3 * rng.standard_normal((n, act_dim))).astype(np.float32)
    return {
        "observations": obs,
        "actions": act,
        "rewards": act.sum(1).astype(np.float32),
        "masks": (rng.random(n) > 0.01).astype(np.float32),
        "next_observations": np.roll(obs, 1, axis=0),
    }


def train(backend, data):
    cfg = FiDecConfig(
        actor_hidden_dims=(32, 32),
        value_hidden_dims=(32, 32),
        flow_steps=5,
        num_fisher_samples=4,
        fisher_t=0.9,
        fisher_t_width=0.05,
        normalize_q_loss=True,
        target_divergence=0.005,
        penalty_backend=backend,
    )
    agent = make_agent("fidec", 6, 2, cfg, seed=0)
    sampler = TransitionSampler(data, seed=1)
    losses = []
    for _ in range(STEPS):
        info = agent.update(sampler.sample(32), with_metrics=False)
        losses.append([float(info[k]) for k in KEYS])
    return np.array(losses), {k: v.detach().clone() for k, v in agent.state_dict().items()}


@pytest.mark.skipif("cpu" not in available_backends(), reason="compiled extension not built")
def test_fused_penalty_trains_like_the_reference():
    data = synthetic_dataset()
    ref_losses, ref_params = train("reference", data)
    fused_losses, fused_params = train("cpu", data)
    # training did something: the flow-matching loss falls
    assert ref_losses[-20:, 2].mean() < 0.8 * ref_losses[:20, 2].mean()
    rel = np.abs(fused_losses - ref_losses) / np.maximum(np.abs(ref_losses), 1e-3)
    worst = np.unravel_index(rel.argmax(), rel.shape)
    assert rel.max() <= LOSS_RTOL, (
        f"{KEYS[worst[1]]} differs by {rel.max():.2e} (relative) at step {worst[0] + 1}"
    )
    for k, v in ref_params.items():
        torch.testing.assert_close(fused_params[k], v, rtol=0, atol=PARAM_ATOL, msg=k)
