"""Multi-seed training: seed i of a stacked run is a single run of seed i (to rounding), the stacked
rollout against the single-agent rollout, per-seed output in the single-run format, resume of a
killed stacked run, and the ``fidec train --seeds`` entry point with its errors."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from fisher_decorator.agents import AGENTS, make_agent
from fisher_decorator.checkpoint import load_checkpoint
from fisher_decorator.cli import main
from fisher_decorator.config import ConfigError
from fisher_decorator.logger import read_csv
from fisher_decorator.multiseed import (
    MULTISEED,
    MultiSeedTrainer,
    StackedAgents,
    _recover_checkpoints,
    parse_seeds,
    read_multiseed,
    unstack_info,
)
from fisher_decorator.ops import euler_rollout, stacked_euler_rollout
from fisher_decorator.trainer import CHECKPOINT, load_agent
from tests.train_helpers import assert_states_equal, full_state, run_tiny, tiny_configs

OBS, ACT, B = 6, 2, 16
SMALL = dict(actor_hidden_dims=(16, 16), value_hidden_dims=(16, 16), flow_steps=3)
# fp32, 25 updates of 16-wide nets: the stacked and the single updates differ only by the rounding of
# batched vs unbatched GEMMs and ATen vs fused GELU (measured: parameters within ~2e-7, metrics ~1e-4
# relative at worst, on values near zero).
RTOL, ATOL, PARAM_ATOL = 1e-4, 1e-5, 1e-5


def close(got, want, where: str, **tol) -> None:
    torch.testing.assert_close(got, want, msg=lambda m: f"{where}: {m}", **tol)


def agent_kwargs(name: str, **kw) -> dict:
    return {**SMALL, **({"num_fisher_samples": 2} if name == "fidec" else {}), **kw}


def batches(g: torch.Generator, seeds: int) -> list[dict[str, torch.Tensor]]:
    return [
        {
            "observations": torch.randn(B, OBS, generator=g),
            "actions": torch.rand(B, ACT, generator=g) * 2 - 1,
            "rewards": torch.randn(B, generator=g),
            "masks": (torch.rand(B, generator=g) > 0.2).float(),
            "next_observations": torch.randn(B, OBS, generator=g),
        }
        for _ in range(seeds)
    ]


def run_both(name: str, steps: int, seeds=(0, 1, 2), **cfg_kw):
    """``steps`` updates of single agents and of the stacked agents on the same per-seed batches;
    returns (singles, stacked, per-step single metrics, per-step stacked metrics)."""
    cfg = AGENTS[name].config_class(**agent_kwargs(name, **cfg_kw))
    singles = [make_agent(name, OBS, ACT, cfg, seed=s) for s in seeds]
    stacked = StackedAgents([make_agent(name, OBS, ACT, cfg, seed=s) for s in seeds])
    g = torch.Generator().manual_seed(123)
    single_infos, stacked_infos = [], []
    for step in range(steps):
        bs = batches(g, len(seeds))
        with_metrics = step % 2 == 0
        stacked_infos.append(unstack_info(stacked.update(bs, with_metrics=with_metrics)))
        single_infos.append([a.update(b, with_metrics=with_metrics) for a, b in zip(singles, bs)])
    stacked.sync_to_agents()
    return singles, stacked, single_infos, stacked_infos


def assert_matches(
    singles, stacked, single_infos, stacked_infos, *, rtol=RTOL, atol=ATOL, param_atol=PARAM_ATOL
):
    for step, (want_all, got_all) in enumerate(zip(single_infos, stacked_infos)):
        for seed, (want, got) in enumerate(zip(want_all, got_all)):
            assert list(got) == list(want), f"step {step} seed {seed}: metric names or order differ"
            for k in want:
                close(got[k], want[k], f"step {step} seed {seed} {k}", rtol=rtol, atol=atol)
    for seed, (single, mine) in enumerate(zip(singles, stacked.agents)):
        assert mine.num_updates == single.num_updates
        assert torch.equal(mine.noise_generator.get_state(), single.noise_generator.get_state())
        want, got = single.state_dict(), mine.state_dict()
        assert list(got) == list(want)
        for k in want:
            close(got[k], want[k], f"seed {seed} {k}", rtol=0, atol=param_atol)
        ow, og = single.optimizer.state_dict()["state"], mine.optimizer.state_dict()["state"]
        assert ow.keys() == og.keys()
        for j in ow:
            assert float(og[j]["step"]) == float(ow[j]["step"])
            for k in ("exp_avg", "exp_avg_sq"):
                torch.testing.assert_close(og[j][k], ow[j][k], rtol=1e-3, atol=1e-7)


@pytest.mark.parametrize("name", ["fidec", "deflow", "fql"])
def test_seed_i_of_a_stacked_update_is_a_single_run_of_seed_i(name):
    singles, stacked, a, b = run_both(name, steps=25)
    assert_matches(singles, stacked, a, b)
    # The seeds really differ: the check above is not comparing one run with itself.
    p = [dict(s.named_parameters())["critic.weights.0"] for s in singles]
    assert (p[0] - p[1]).abs().max() > 1e-2


@pytest.mark.parametrize(
    "name, cfg",
    [
        ("fidec", dict(rollout_backend="reference", fisher_t_width=0.05, q_agg="min")),
        ("fidec", dict(fisher_estimator="jacobian", fisher_score="tweedie", normalize_q_loss=True)),
        ("fidec", dict(actor_layer_norm=True, use_lagrange=False)),
        ("deflow", dict(grad_clip=None, num_critics=3)),
    ],
    ids=["reference-rollouts", "jacobian-tweedie", "layernorm-fixed-alpha", "no-clip-3-critics"],
)
def test_stacked_update_variants(name, cfg):
    assert_matches(*run_both(name, steps=8, seeds=(0, 1), **cfg))


def test_stacked_update_in_float64_agrees_to_fp64_rounding():
    cfg = AGENTS["fidec"].config_class(**agent_kwargs("fidec"))
    singles = [make_agent("fidec", OBS, ACT, cfg, seed=s, dtype=torch.float64) for s in (0, 1)]
    stacked = StackedAgents([make_agent("fidec", OBS, ACT, cfg, seed=s, dtype=torch.float64) for s in (0, 1)])
    g = torch.Generator().manual_seed(0)
    for _ in range(6):
        bs = [{k: v.double() for k, v in b.items()} for b in batches(g, 2)]
        got = unstack_info(stacked.update(bs))
        for want, mine in zip([a.update(b) for a, b in zip(singles, bs)], got):
            for k in want:
                close(mine[k], want[k], k, rtol=1e-10, atol=1e-12)


@pytest.mark.slow
def test_compiled_stacked_update_matches_eager_single_agents():
    # compile=True compiles the whole vmapped loss + gradient (fullgraph), the rollouts in their traced
    # form; ~1 min of inductor on 2 cores. The single agents stay eager.
    cfg = AGENTS["fidec"].config_class(**agent_kwargs("fidec"))
    singles = [make_agent("fidec", OBS, ACT, cfg, seed=s) for s in (0, 1)]
    compiled = dataclasses.replace(cfg, compile=True)
    stacked = StackedAgents([make_agent("fidec", OBS, ACT, compiled, seed=s) for s in (0, 1)])
    g = torch.Generator().manual_seed(0)
    a, b = [], []
    for step in range(4):
        bs = batches(g, 2)
        b.append(unstack_info(stacked.update(bs, with_metrics=step % 2 == 0)))
        a.append([s.update(x, with_metrics=step % 2 == 0) for s, x in zip(singles, bs)])
    stacked.sync_to_agents()
    assert_matches(singles, stacked, a, b)


def test_bf16_rollouts_stay_close_to_the_single_agent():
    # bf16 GEMMs round at ~4e-3: the stacked and the single (oneDNN) rollouts differ at that level.
    singles, stacked, a, b = run_both("fidec", steps=6, seeds=(0, 1), rollout_dtype="bfloat16")
    for single, mine in zip(singles, stacked.agents):
        for k, v in single.state_dict().items():
            torch.testing.assert_close(mine.state_dict()[k], v, rtol=0, atol=5e-3)


@pytest.mark.parametrize("K", [None, 3])
@pytest.mark.parametrize("functional", [False, True], ids=["fused", "traced-form"])
def test_stacked_rollout_equals_each_agents_rollout(K, functional, monkeypatch):
    if functional:  # the branch torch.compile traces, run eagerly
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    S, n, obs, d = 3, 5, 7, 3
    fields = [
        make_agent("deflow", obs, d, AGENTS["deflow"].config_class(**SMALL), seed=s).velocity_field
        for s in range(S)
    ]
    g = torch.Generator().manual_seed(0)
    s = torch.randn(S, n, obs, generator=g)
    noise = torch.randn(S, n, *([K] if K else []), d, generator=g)
    ws = [torch.stack([f.linears[i].weight for f in fields]).detach() for i in range(len(fields[0].linears))]
    bs = [torch.stack([f.linears[i].bias for f in fields]).detach() for i in range(len(fields[0].linears))]
    got = stacked_euler_rollout(ws, bs, s, noise, 4)
    for i, f in enumerate(fields):
        want = euler_rollout(f, s[i], noise[i], 4, backend="reference")
        torch.testing.assert_close(got[i], want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="tf32"):
        stacked_euler_rollout(ws, bs, s, noise, 4, rollout_dtype="tf32")


def test_stacked_agents_refuse_mismatched_agents_and_batches():
    cfg = AGENTS["fql"].config_class(**SMALL)
    other = AGENTS["fql"].config_class(**{**SMALL, "discount": 0.9})
    with pytest.raises(ValueError, match="share class, config"):
        StackedAgents([make_agent("fql", OBS, ACT, cfg, seed=0), make_agent("fql", OBS, ACT, other, seed=1)])
    stacked = StackedAgents([make_agent("fql", OBS, ACT, cfg, seed=s) for s in (0, 1)])
    g = torch.Generator().manual_seed(0)
    bs = batches(g, 2)
    with pytest.raises(ValueError, match="one batch per seed"):
        stacked.update(bs[:1])
    bs[1] = {k: v[:8] for k, v in bs[1].items()}
    with pytest.raises(ValueError, match="same size"):
        stacked.update(bs)


# ------------------------------------------------------------------------------ the trainer
def multiseed_tiny(root, agent="fidec", seeds=(0, 1), *, resume=False, callback=None, **train):
    train_cfg, agent_cfg, record = tiny_configs(agent, **train)
    trainer = MultiSeedTrainer(
        train_cfg, agent_cfg, seeds, root, resume=resume, record=record, callback=callback
    )
    return trainer, trainer.run()


def _strip_time(rows):
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


def test_stacked_run_writes_single_run_directories_that_match_single_runs(tmp_path):
    multiseed_tiny(tmp_path / "stacked", seeds=(0, 1), steps=10, log_interval=5, eval_interval=5)
    meta = read_multiseed(tmp_path / "stacked")
    assert meta["seeds"] == [0, 1] and meta["checkpoint_step"] == 10 and meta["summary"]["steps"] == 10
    for seed in (0, 1):
        run_tiny(tmp_path / f"single{seed}", "fidec", seed=seed, steps=10, log_interval=5, eval_interval=5)
        single, mine = tmp_path / f"single{seed}", tmp_path / "stacked" / f"seed{seed}"
        assert sorted(p.name for p in mine.iterdir()) == sorted(p.name for p in single.iterdir())
        cs, cm = (json.loads((d / "config.json").read_text()) for d in (single, mine))
        assert set(cm) - set(cs) == {"multiseed"} and set(cs) <= set(cm)
        assert cm["train"] == cs["train"] and cm["agent"] == cs["agent"]
        assert cm["multiseed"]["seeds"] == [0, 1] and cm["multiseed"]["index"] == seed
        for name in ("train.csv", "eval.csv"):
            want, got = read_csv(single / name), read_csv(mine / name)
            assert [list(r) for r in got] == [list(r) for r in want], name  # same columns, same order
            for w, o in zip(_strip_time(want), _strip_time(got)):
                for k in w:  # 64 evaluation episodes: rounding may flip one episode's success
                    tol = 1.5 / 64 if k.startswith("evaluation/") else 1e-3 * abs(w[k]) + 1e-5
                    assert abs(o[k] - w[k]) <= tol, (name, k, w[k], o[k])
        ks, km = load_checkpoint(single / CHECKPOINT), load_checkpoint(mine / CHECKPOINT)
        assert ks.keys() == km.keys() and ks["agent"].keys() == km["agent"].keys()
        assert ks["step"] == km["step"] == 10 and torch.equal(ks["sampler"], km["sampler"])
        assert torch.equal(ks["agent"]["noise_generator"], km["agent"]["noise_generator"])
        for k, v in ks["agent"]["model"].items():
            torch.testing.assert_close(km["agent"]["model"][k], v, rtol=0, atol=PARAM_ATOL)
        # each file holds its own seed's tensors, not views into the whole stack
        assert (mine / CHECKPOINT).stat().st_size < 1.2 * (single / CHECKPOINT).stat().st_size
        agent, cfg, step = load_agent(mine)  # the single-seed loader (fidec eval --run)
        assert step == 10 and cfg.seed == seed and agent.seed == seed


def test_killed_stacked_run_resumes_to_the_straight_run(tmp_path, monkeypatch):
    import fisher_decorator.multiseed as multiseed

    class Crash(RuntimeError):
        pass

    N = 10
    kw = dict(steps=2 * N, save_interval=N, eval_interval=N)
    straight, _ = multiseed_tiny(tmp_path / "straight", "deflow", **kw)
    killed = tmp_path / "killed"

    def crash(step, trainer):
        if step == N + 6:  # after the checkpoint at N, with 6 steps (and a log row) past it
            raise Crash

    with pytest.raises(Crash):
        multiseed_tiny(killed, "deflow", callback=crash, **kw)
    assert read_multiseed(killed)["checkpoint_step"] == N
    assert read_csv(killed / "seed1" / "train.csv")[-1]["step"] == N + 5

    # Resumed, then killed again after committing step 2N but before seed 1's checkpoint was renamed.
    recover = multiseed._recover_checkpoints

    def commit_then_die(root, seeds, committed):
        if committed == 2 * N and seeds and (root / "seed0" / f".checkpoint-{2 * N}.pt.pending").exists():
            recover(root, seeds[:1], committed)
            raise Crash
        recover(root, seeds, committed)

    monkeypatch.setattr(multiseed, "_recover_checkpoints", commit_then_die)
    with pytest.raises(Crash):
        multiseed_tiny(killed, "deflow", resume=True, **kw)
    monkeypatch.setattr(multiseed, "_recover_checkpoints", recover)
    assert load_checkpoint(killed / "seed0" / CHECKPOINT)["step"] == 2 * N
    assert load_checkpoint(killed / "seed1" / CHECKPOINT)["step"] == N  # its step-2N file is pending

    resumed, summary = multiseed_tiny(killed, "deflow", resume=True, **kw)  # rolls seed 1 forward
    assert summary["steps"] == 2 * N
    for a, b in zip(straight.trainers, resumed.trainers):
        assert_states_equal(full_state(a), full_state(b))
        for name in ("train.csv", "eval.csv"):
            ra, rb = read_csv(a.run_dir / name), read_csv(b.run_dir / name)
            assert _strip_time(ra) == _strip_time(rb), name
    assert json.loads((killed / "seed1" / "config.json").read_text())["resumed_at"] == [N, 2 * N]
    with pytest.raises(ConfigError, match="seeds"):
        MultiSeedTrainer(*tiny_configs("deflow", steps=30)[:2], (0, 2), killed, resume=True)
    with pytest.raises(FileExistsError, match="--resume"):
        MultiSeedTrainer(*tiny_configs("deflow")[:2], (0, 1), killed)


def test_interrupted_checkpoint_commit_is_rolled_forward_or_back(tmp_path):
    root = tmp_path / "r"
    for seed in (0, 1):
        (root / f"seed{seed}").mkdir(parents=True)
        (root / f"seed{seed}" / CHECKPOINT).write_text("step 10")
    # killed after the commit of step 20, before seed 1's rename
    (root / "seed0" / CHECKPOINT).write_text("step 20")
    (root / "seed1" / ".checkpoint-20.pt.pending").write_text("step 20")
    _recover_checkpoints(root, (0, 1), committed=20)
    assert [(root / f"seed{s}" / CHECKPOINT).read_text() for s in (0, 1)] == ["step 20", "step 20"]
    # killed before the commit of step 30: seed 0's pending file is dropped, both stay at 20
    (root / "seed0" / ".checkpoint-30.pt.pending").write_text("step 30")
    _recover_checkpoints(root, (0, 1), committed=20)
    assert [(root / f"seed{s}" / CHECKPOINT).read_text() for s in (0, 1)] == ["step 20", "step 20"]
    assert sorted(p.name for p in (root / "seed0").iterdir()) == [CHECKPOINT]


# ------------------------------------------------------------------------------ the command line
TINY = ["--set", "actor_hidden_dims=16,16", "--set", "value_hidden_dims=16,16", "--set", "flow_steps=3"]
TINY += ["--set", "batch_size=8", "--set", "num_fisher_samples=2", "--no-progress", "--no-plot"]


def cli(out, *args):
    return main(
        ["train", "--task", "toy-bandit", "--agent", "fidec", "--steps", "4", "--log-interval", "2"]
        + [
            "--eval-interval",
            "4",
            "--eval-episodes",
            "16",
            "--save-interval",
            "2",
            "--out",
            str(out),
            *TINY,
            *args,
        ]
    )


def test_cli_seeds_smoke_eval_resume_and_errors(tmp_path, capsys):
    out = tmp_path / "runs"
    assert cli(out, "--seeds", "3,1") == 0
    printed = capsys.readouterr().out
    assert "2 seeds stacked" in printed and "fidec seed 3" in printed
    assert sorted(p.name for p in out.iterdir()) == [MULTISEED, "seed1", "seed3"]
    for seed in (1, 3):
        assert [r["step"] for r in read_csv(out / f"seed{seed}" / "train.csv")] == [2, 4]
        cfg = json.loads((out / f"seed{seed}" / "config.json").read_text())
        assert cfg["train"]["seed"] == seed and "--seeds 3,1" in cfg["command"]
    assert main(["eval", "--run", str(out / "seed3"), "--episodes", "8"]) == 0
    # extend the stacked run (seeds read from multiseed.json), then one seed alone as a single run
    assert cli(out, "--steps", "6", "--resume") == 0
    assert load_checkpoint(out / "seed1" / CHECKPOINT)["step"] == 6
    single = ["train", "--task", "toy-bandit", "--agent", "fidec", "--seed", "1", "--steps", "8"]
    assert main([*single, "--out", str(out / "seed1"), "--resume", *TINY]) == 0
    assert load_checkpoint(out / "seed1" / CHECKPOINT)["step"] == 8
    capsys.readouterr()
    assert cli(out, "--steps", "10", "--resume") == 2  # seed 1 is now ahead of seed 3
    assert "different steps {3: 6, 1: 8}" in capsys.readouterr().err
    for args, message in (
        (("--seeds", "0,1,0"), "more than once"),
        (("--seeds", "0,x"), "comma list of integers"),
        (("--seeds", "0,1", "--seed", "2"), "either --seed"),
        (("--seeds", "0,1", "--set", "seed=4"), "--set seed"),
        (("--seeds", "3,1"), "already holds a multi-seed run"),
        (("--seeds", "1,2", "--resume"), "has [3, 1]"),
    ):
        assert cli(out, *args) == 2, args
        assert message in capsys.readouterr().err, args


def test_parse_seeds():
    assert parse_seeds("0,1, 2,3") == [0, 1, 2, 3]
    assert parse_seeds("7") == [7]
    with pytest.raises(ConfigError, match=r"\[1\]"):
        parse_seeds("1,2,1")
