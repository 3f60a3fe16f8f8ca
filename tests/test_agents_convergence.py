"""Convergence: 200 FiDec updates on a small synthetic dataset, on the plain path (reference penalty with
the authors' d x d matrices, reference rollouts), on the fused path (fused penalty kernel and fused
rollouts), with bf16 rollouts, and in fp64 from the same initial parameters, batches and noise. The fused
path is as accurate against fp64 as the plain one at every step (fp32 rounding, which reorders sums, is
the only difference); the bf16 run's rollouts are bf16 and its training outcome is the fp32 one's within
the statistics' own noise."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest
import torch

from fisher_decorator.agents import FiDecConfig, make_agent
from fisher_decorator.flows import euler_rollout
from fisher_decorator.ops import available_backends
from fisher_decorator.sampler import TransitionSampler
from tests.precision import (
    FUSED_ROLLOUT_FACTOR,
    U_BF16,
    U_FP32,
    assert_as_accurate,
    assert_rounded_at,
    unclamped,
)

STEPS = 200
KEYS = ("critic/critic_loss", "actor/actor_loss", "actor/bc_flow_loss", "actor/distill_loss", "actor/q_loss")
PLAIN = dict(penalty_backend="reference", rollout_backend="reference")
needs_ext = pytest.mark.skipif("cpu" not in available_backends(), reason="compiled extension not built")


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


def config(**overrides) -> FiDecConfig:
    return FiDecConfig(
        actor_hidden_dims=(32, 32),
        value_hidden_dims=(32, 32),
        flow_steps=5,
        num_fisher_samples=4,
        fisher_t=0.9,
        fisher_t_width=0.05,
        normalize_q_loss=True,
        target_divergence=0.005,
        **overrides,
    )


WINDOW = 50  # the last steps, over which a training outcome is averaged


@dataclasses.dataclass
class Run:
    losses: np.ndarray  # [STEPS, len(KEYS)]
    params: dict[str, torch.Tensor]  # after the last update
    window_start: dict[str, torch.Tensor]  # WINDOW updates before the last
    agent: object


def train(dtype=torch.float32, **overrides) -> Run:
    """STEPS updates from seed 0's fp32 initial parameters, on the batches of sampler seed 1 and the noise
    of the fp32 agent's generator (an fp64 agent gets both cast up: the same computation, exactly)."""
    cfg = config(**overrides)
    agent = make_agent("fidec", 6, 2, cfg, seed=0, dtype=dtype)
    twin = make_agent("fidec", 6, 2, cfg, seed=0)  # fp32: the initial parameters and the noise stream
    agent.load_state_dict(twin.state_dict())
    sampler = TransitionSampler(synthetic_dataset(), seed=1)
    losses, window_start = [], {}
    for step in range(STEPS):
        if step == STEPS - WINDOW:
            window_start = {k: v.detach().clone() for k, v in agent.state_dict().items()}
        batch = {k: v.to(dtype) for k, v in sampler.sample(32).items()}
        info = agent.update(batch, twin.sample_noise(32).to(dtype=dtype), with_metrics=False)
        losses.append([float(info[k]) for k in KEYS])
    params = {k: v.detach().clone() for k, v in agent.state_dict().items()}
    return Run(np.array(losses), params, window_start, agent)


@functools.cache
def runs(name: str) -> Run:
    """Each run once per session (two tests share them)."""
    if name == "exact":
        return train(torch.float64, **PLAIN)
    if name == "plain":
        return train(**PLAIN)
    if name == "fused":
        return train()
    return train(rollout_dtype="bfloat16")


@needs_ext
def test_fused_paths_train_like_the_plain_path():
    exact, plain, fused = runs("exact"), runs("plain"), runs("fused")
    # training did something: the flow-matching loss falls by more than 3 standard errors
    first, last = plain.losses[:20, 2], plain.losses[-20:, 2]
    assert first.mean() - last.mean() > 3 * np.sqrt((first.var(ddof=1) + last.var(ddof=1)) / 20)
    # every loss at every step, and every parameter at the end, as accurate against fp64 as the plain path
    # (FUSED_ROLLOUT_FACTOR: the fused rollouts' extra roundings; the fused penalty only reorders sums)
    for j, k in enumerate(KEYS):
        got, want, e = (torch.from_numpy(r.losses[:, j]) for r in (fused, plain, exact))
        floor = 4 * U_FP32 * e.abs().max().item()
        assert_as_accurate(got, want, e, floor=floor, factor=FUSED_ROLLOUT_FACTOR, name=f"{k} (all steps)")
    lr_steps = STEPS * config().lr
    for k, v in exact.params.items():  # floor: the parameter's rounding and each Adam step's (lr-sized)
        floor = 4 * U_FP32 * (v.abs().max().item() + lr_steps)
        assert_as_accurate(
            fused.params[k], plain.params[k], v, floor=floor, factor=FUSED_ROLLOUT_FACTOR, name=k
        )


@needs_ext
def test_bf16_rollouts_train_like_fp32():
    """bf16 rollouts round the sampled actions (critic targets, base actions, Fisher samples) to bf16
    precision; per-step losses then wander (the runs part ways), but the training outcome is the fp32
    one's within the outcome's own noise."""
    plain, bf16 = runs("plain"), runs("bf16")
    # the run's rollouts were bf16: its agent's rollouts differ from fp32 ones by bf16 rounding
    agent = bf16.agent
    g = torch.Generator().manual_seed(2)
    obs, noise = torch.randn(64, 6, generator=g), torch.randn(64, 8, 2, generator=g)
    full = euler_rollout(agent.velocity_field, obs, noise, agent.config.flow_steps, backend="reference")
    assert_rounded_at(agent.flow_actions(obs, noise), full, U_BF16, where=unclamped(full), name="actions")
    # every loss averaged over the last WINDOW steps: the same within 3 standard errors of the difference
    for j, k in enumerate(KEYS):
        a, b = plain.losses[-WINDOW:, j], bf16.losses[-WINDOW:, j]
        se = np.sqrt((a.var(ddof=1) + b.var(ddof=1)) / WINDOW)
        assert abs(b.mean() - a.mean()) <= 3 * se, (k, b.mean(), a.mean(), se)
    # the flow field and the critics end closer to the fp32 run's parameters than that run's own were
    # WINDOW steps earlier; the residual and alpha, trained on the rollouts' actions under the Lagrange-held
    # budget, part ways (their outcome is the distill and q losses above)
    for k, v in plain.params.items():
        if k.startswith(("residual.", "log_alpha")):
            continue
        wander = (v - plain.window_start[k]).norm().item()
        assert (bf16.params[k] - v).norm().item() <= wander, (k, (bf16.params[k] - v).norm().item(), wander)
