"""Multi-seed training of a pixel agent: seed i of a stacked update (encoders vmapped with the networks) is a
single run of seed i to fp32 rounding, by tests/test_multiseed.py's rule (as accurate against fp64 single
agents as the single fp32 run, plus a few roundings). Tiny sizes: 12 x 12 frames of 2 stacked RGB images, the
impala_small encoder (its widths are fixed), 16-wide MLPs, 2 seeds, 2 updates.

Reference rollouts: the stacked template then runs the single agents' plain Euler chain, so what differs is
only the batching (vmapped convolutions and GEMMs); the fused stacked rollouts are compared with the single
ones on state agents in tests/test_multiseed.py.

The parameters get Adam's sign-flip floor (2 lr per step, as test_multiseed's bf16 case): an encoder's weight
gradient sums B*H*W products of both signs, and an element that cancels to near its rounding error takes a
step of lr * m / sqrt(v) whose size no longer follows the gradient's (measured here: 0.02 lr on one conv
weight). The gradients themselves are held to fp32 rounding through Adam's moments (m = 0.1 g after one
step). The floor of the metrics and moments is the probabilistic rounding bound of the update's longest sum
rather than test_multiseed's 4 u: a convolution's weight gradient sums B*H*W products, and its error grows like
sqrt(n) u (Higham & Mary); vmapped and single convolutions sum in different orders (and threads), and the
2x rule alone failed by ~5 u of the largest moment on this CPU."""

from __future__ import annotations

import dataclasses

import torch

from fisher_decorator.agents import AGENTS, make_agent
from fisher_decorator.multiseed import StackedAgents, unstack_info
from tests.precision import U_FP32, assert_as_accurate
from tests.test_multiseed import ACT, FLOOR_ROUNDINGS, Runs, agent_kwargs

SHAPE, B = (12, 12, 6), 8
LONGEST_SUM = B * SHAPE[0] * SHAPE[1]  # the first convolution's weight gradient: every pixel of the batch
ROUNDINGS = LONGEST_SUM**0.5  # the floor, in roundings of the largest value (module doc)


def pixel_batches(g: torch.Generator, seeds: int) -> list[dict[str, torch.Tensor]]:
    def frames() -> torch.Tensor:
        return torch.randint(0, 256, (B, *SHAPE), generator=g, dtype=torch.uint8)

    return [
        {
            "observations": frames(),
            "actions": torch.rand(B, ACT, generator=g) * 2 - 1,
            "rewards": torch.randn(B, generator=g),
            "masks": (torch.rand(B, generator=g) > 0.2).float(),
            "next_observations": frames(),
        }
        for _ in range(seeds)
    ]


def run_pixels(name: str, steps: int, seeds=(0, 1), **cfg_kw) -> Runs:
    """tests/test_multiseed.run_both on uint8 frames: single fp32 agents, the stacked agents and fp64 single
    agents (started from the fp32 parameters, fed the same frames and noise)."""
    cfg = AGENTS[name].config_class(**agent_kwargs(name, encoder="impala_small", **cfg_kw))
    singles = [make_agent(name, SHAPE, ACT, cfg, seed=s) for s in seeds]
    stacked = StackedAgents([make_agent(name, SHAPE, ACT, cfg, seed=s) for s in seeds])
    exact_cfg = dataclasses.replace(cfg, rollout_dtype="float32")
    exact = [make_agent(name, SHAPE, ACT, exact_cfg, seed=s, dtype=torch.float64) for s in seeds]
    for e, single in zip(exact, singles):
        e.load_state_dict(single.state_dict())
    g = torch.Generator().manual_seed(123)
    single_infos, stacked_infos, exact_infos = [], [], []
    for step in range(steps):
        bs = pixel_batches(g, len(seeds))
        with_metrics = step % 2 == 0
        stacked_infos.append(unstack_info(stacked.update(bs, with_metrics=with_metrics)))
        noises = [a.sample_noise(B) for a in singles]  # what a.update(b) draws
        single_infos.append(
            [a.update(b, n, with_metrics=with_metrics) for a, b, n in zip(singles, bs, noises)]
        )
        # frames stay uint8 (the encoder scales them in its own dtype); the rest in fp64
        exact_infos.append(
            [
                e.update(
                    {k: v if v.dtype == torch.uint8 else v.double() for k, v in b.items()},
                    n.to(dtype=torch.float64),
                    with_metrics=with_metrics,
                )
                for e, b, n in zip(exact, bs, noises)
            ]
        )
    stacked.sync_to_agents()
    return Runs(singles, stacked, exact, single_infos, stacked_infos, exact_infos, steps)


def assert_pixel_matches(runs: Runs) -> None:
    """tests/test_multiseed.assert_matches with the parameters' floor of Adam's sign flips (module doc)."""
    u = U_FP32
    for step, (want_all, got_all) in enumerate(zip(runs.single_infos, runs.stacked_infos)):
        for seed, (want, got) in enumerate(zip(want_all, got_all)):
            assert list(got) == list(want), f"step {step} seed {seed}: metric names or order differ"
    for k in runs.single_infos[0][
        0
    ]:  # each metric over the steps and seeds that logged it, as assert_matches
        rows = [
            (t, i) for t, infos in enumerate(runs.single_infos) for i in range(len(infos)) if k in infos[i]
        ]
        got, want, exact = (
            torch.stack([torch.as_tensor(infos[t][i][k]).double() for t, i in rows])
            for infos in (runs.stacked_infos, runs.single_infos, runs.exact_infos)
        )
        floor = ROUNDINGS * u * exact.abs().max().item()
        assert_as_accurate(got, want, exact, floor=floor, name=f"metric {k} (steps x seeds)")
    sign_flips = 2 * runs.steps * runs.singles[0].config.lr
    for seed, (single, mine, exact) in enumerate(zip(runs.singles, runs.stacked.agents, runs.exact)):
        assert mine.num_updates == single.num_updates
        assert torch.equal(mine.noise_generator.get_state(), single.noise_generator.get_state())
        want, got, ex = single.state_dict(), mine.state_dict(), exact.state_dict()
        assert list(got) == list(want)
        for k in want:
            floor = FLOOR_ROUNDINGS * u * ex[k].abs().max().item() + sign_flips
            assert_as_accurate(got[k], want[k], ex[k], floor=floor, name=f"seed {seed} {k}")
        ow, og = single.optimizer.state_dict()["state"], mine.optimizer.state_dict()["state"]
        oe = exact.optimizer.state_dict()["state"]
        assert ow.keys() == og.keys() == oe.keys()
        for j in ow:
            assert float(og[j]["step"]) == float(ow[j]["step"])
            for k in ("exp_avg", "exp_avg_sq"):
                floor = ROUNDINGS * u * oe[j][k].abs().max().item()
                assert_as_accurate(
                    og[j][k], ow[j][k], oe[j][k], floor=floor, name=f"seed {seed} Adam {j} {k}"
                )


def test_seed_i_of_a_stacked_pixel_update_is_a_single_run_of_seed_i():
    runs = run_pixels("fidec", steps=2, rollout_backend="reference")
    assert_pixel_matches(runs)
    # the encoders are stacked and trained too, and the seeds differ (not one run compared with itself)
    enc = [
        dict(a.named_parameters())["velocity_field.encoder.stacks.0.conv.weight"] for a in runs.stacked.agents
    ]
    assert (enc[0] - enc[1]).abs().max() > 1e-2
    assert "velocity_field.encoder.stacks.0.conv.weight" in runs.stacked.names
