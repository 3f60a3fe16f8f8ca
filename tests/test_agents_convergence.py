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


def train(backend, data, **overrides):
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
        **overrides,
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


# bf16 rollouts round the sampled actions (critic targets, base actions, Fisher samples) to bf16
# precision: per-step losses then wander (the critic's by up to ~25%), while the flow-matching loss,
# which reads no rollout, stays put, and the run's averages and parameters stay close.
BF16_FLOW_RTOL = 2e-3  # per step, bc_flow_loss (coupled to the rest only through the global grad clip)
BF16_MEAN_RTOL = 0.1  # critic and distill losses averaged over the last 50 steps
BF16_PARAM_ATOL = 0.05  # every parameter after 200 updates


@pytest.mark.skipif("cpu" not in available_backends(), reason="compiled extension not built")
def test_bf16_rollouts_train_like_fp32():
    data = synthetic_dataset()
    ref_losses, ref_params = train("reference", data, rollout_backend="reference")
    bf_losses, bf_params = train("auto", data, rollout_dtype="bfloat16")
    flow = np.abs(bf_losses[:, 2] - ref_losses[:, 2]) / np.abs(ref_losses[:, 2])
    assert flow.max() <= BF16_FLOW_RTOL, flow.max()
    for j in (0, 3):  # critic_loss, distill_loss
        ref_mean, bf_mean = ref_losses[-50:, j].mean(), bf_losses[-50:, j].mean()
        assert abs(bf_mean - ref_mean) <= BF16_MEAN_RTOL * abs(ref_mean), (KEYS[j], bf_mean, ref_mean)
    for k, v in ref_params.items():
        torch.testing.assert_close(bf_params[k], v, rtol=0, atol=BF16_PARAM_ATOL, msg=k)
