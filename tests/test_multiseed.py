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
from fisher_decorator.config import ConfigError, parse_seeds
from fisher_decorator.logger import read_csv
from fisher_decorator.multiseed import (
    MULTISEED,
    MultiSeedTrainer,
    StackedAgents,
    _recover_checkpoints,
    read_multiseed,
    unstack_info,
)
from fisher_decorator.ops import euler_rollout, stacked_euler_rollout
from fisher_decorator.ops.velocity_jvp import mlp_params
from fisher_decorator.trainer import CHECKPOINT, load_agent
from tests.precision import (
    FUSED_ROLLOUT_FACTOR,
    U_BF16,
    U_FP32,
    U_FP64,
    assert_as_accurate,
    assert_rounded_at,
    unclamped,
)
from tests.train_helpers import assert_states_equal, full_state, run_tiny, tiny_configs

OBS, ACT, B = 6, 2, 16
# gemm_path="mkl": stacked seeds run under vmap, where only ATen's GEMMs exist (gemm_path.use_onednn), so the
# single agents they are compared with take the same GEMM library; the comparison is about stacking.
SMALL = dict(actor_hidden_dims=(16, 16), value_hidden_dims=(16, 16), flow_steps=3, gemm_path="mkl")
# The stacked and the single fp32 updates differ only by rounding (batched vs unbatched GEMMs, ATen vs
# fused GELU, the reference vs the fused penalty). Both are compared with fp64 single agents started from
# the same parameters and fed the same batches and noise, by the 2x-plain rule of tests/precision.py:
# the stacked path's error is at most twice the single path's, plus a floor of a few roundings:
# - a metric: 4 u max|metric| over the steps and seeds compared;
# - a parameter: 4 u32 max|p| for its own rounding, plus, per Adam step (lr m/sqrt(v), |m/sqrt(v)| <= 1
#   in the first steps, so a gradient's relative rounding error becomes that much times lr): 4 u lr with
#   fp32 rollouts; with bf16 rollouts a gradient element within bf16 rounding of zero may change sign,
#   so the step may go either way: 2 lr;
# - Adam's moments: 4 u max|moment| for exp_avg; twice that for exp_avg_sq, whose g^2 doubles each gradient's
#   relative rounding error;
# u is the unit roundoff of the rollouts (fp32, or bf16 for bf16 rollouts).
FLOOR_ROUNDINGS = 4


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


@dataclasses.dataclass
class Runs:
    """Single fp32 agents, the stacked agents and fp64 single agents after the same updates, with the
    per-step metrics of each ([step][seed] -> {name: value})."""

    singles: list
    stacked: StackedAgents
    exact: list
    single_infos: list
    stacked_infos: list
    exact_infos: list
    steps: int


def run_both(name: str, steps: int, seeds=(0, 1, 2), *, compile_stacked=False, **cfg_kw) -> Runs:
    """``steps`` updates of single agents, of the stacked agents and of fp64 single agents on the same
    per-seed batches and noise (metrics every other step). The fp64 agents run fp32 rollouts in fp64."""
    cfg = AGENTS[name].config_class(**agent_kwargs(name, **cfg_kw))
    singles = [make_agent(name, OBS, ACT, cfg, seed=s) for s in seeds]
    stacked_cfg = dataclasses.replace(cfg, compile=True) if compile_stacked else cfg
    stacked = StackedAgents([make_agent(name, OBS, ACT, stacked_cfg, seed=s) for s in seeds])
    exact_cfg = dataclasses.replace(cfg, rollout_dtype="float32")
    exact = [make_agent(name, OBS, ACT, exact_cfg, seed=s, dtype=torch.float64) for s in seeds]
    for e, single in zip(exact, singles):
        e.load_state_dict(single.state_dict())  # the fp32 initial parameters, exactly
    g = torch.Generator().manual_seed(123)
    single_infos, stacked_infos, exact_infos = [], [], []
    for step in range(steps):
        bs = batches(g, len(seeds))
        with_metrics = step % 2 == 0
        stacked_infos.append(unstack_info(stacked.update(bs, with_metrics=with_metrics)))
        noises = [a.sample_noise(B) for a in singles]  # what a.update(b) draws
        single_infos.append(
            [a.update(b, n, with_metrics=with_metrics) for a, b, n in zip(singles, bs, noises)]
        )
        exact_infos.append(
            [
                e.update(
                    {k: v.double() for k, v in b.items()},
                    n.to(dtype=torch.float64),
                    with_metrics=with_metrics,
                )
                for e, b, n in zip(exact, bs, noises)
            ]
        )
    stacked.sync_to_agents()
    return Runs(singles, stacked, exact, single_infos, stacked_infos, exact_infos, steps)


def assert_matches(runs: Runs, u: float = U_FP32) -> None:
    """Seed i of the stacked run is single run i: same metric names, update counts and noise streams,
    and metrics, parameters and Adam moments as accurate against fp64 as the single run's."""
    for step, (want_all, got_all) in enumerate(zip(runs.single_infos, runs.stacked_infos)):
        for seed, (want, got) in enumerate(zip(want_all, got_all)):
            assert list(got) == list(want), f"step {step} seed {seed}: metric names or order differ"
    for k in runs.single_infos[0][0]:
        rows = [
            (step, seed)
            for step, infos in enumerate(runs.single_infos)
            for seed in range(len(infos))
            if k in infos[seed]
        ]
        got, want, exact = (
            torch.stack([torch.as_tensor(infos[step][seed][k]).double() for step, seed in rows])
            for infos in (runs.stacked_infos, runs.single_infos, runs.exact_infos)
        )
        floor = FLOOR_ROUNDINGS * u * exact.abs().max().item()
        assert_as_accurate(got, want, exact, floor=floor, name=f"metric {k} (steps x seeds)")
    lr_steps = runs.steps * runs.singles[0].config.lr
    step_floor = FLOOR_ROUNDINGS * u * lr_steps if u == U_FP32 else 2 * lr_steps

    def floor_of(p: torch.Tensor) -> float:
        return FLOOR_ROUNDINGS * U_FP32 * p.abs().max().item() + step_floor

    for seed, (single, mine, exact) in enumerate(zip(runs.singles, runs.stacked.agents, runs.exact)):
        assert mine.num_updates == single.num_updates
        assert torch.equal(mine.noise_generator.get_state(), single.noise_generator.get_state())
        want, got, ex = single.state_dict(), mine.state_dict(), exact.state_dict()
        assert list(got) == list(want)
        for k in want:
            assert_as_accurate(got[k], want[k], ex[k], floor=floor_of(ex[k]), name=f"seed {seed} {k}")
        ow, og = single.optimizer.state_dict()["state"], mine.optimizer.state_dict()["state"]
        oe = exact.optimizer.state_dict()["state"]
        assert ow.keys() == og.keys() == oe.keys()
        for j in ow:
            assert float(og[j]["step"]) == float(ow[j]["step"])
            for k, squares in (("exp_avg", 1), ("exp_avg_sq", 2)):
                floor = squares * FLOOR_ROUNDINGS * u * oe[j][k].abs().max().item()
                assert_as_accurate(
                    og[j][k], ow[j][k], oe[j][k], floor=floor, name=f"seed {seed} Adam {j} {k}"
                )


@pytest.mark.parametrize("name", ["fidec", "deflow", "fql"])
def test_seed_i_of_a_stacked_update_is_a_single_run_of_seed_i(name):
    runs = run_both(name, steps=20)
    assert_matches(runs)
    # The seeds really differ: the check above is not comparing one run with itself.
    p = [dict(s.named_parameters())["critic.weights.0"] for s in runs.singles]
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
    assert_matches(run_both(name, steps=8, seeds=(0, 1), **cfg))


def test_stacked_update_in_float64_agrees_to_fp64_rounding():
    """In fp64 the stacked and single updates differ by fp64 rounding: rounding errors propagate
    linearly while they are small, so their difference is the fp32 single run's error against fp64
    scaled by u64 / u32 = 2^-29 (twice that, plus a few roundings of each value)."""
    cfg = AGENTS["fidec"].config_class(**agent_kwargs("fidec"))
    singles32 = [make_agent("fidec", OBS, ACT, cfg, seed=s) for s in (0, 1)]
    singles, stack = (
        [make_agent("fidec", OBS, ACT, cfg, seed=s, dtype=torch.float64) for s in (0, 1)] for _ in "ab"
    )
    for a, b, a32 in zip(singles, stack, singles32):
        a.load_state_dict(a32.state_dict())
        b.load_state_dict(a32.state_dict())
    stacked = StackedAgents(stack)
    g = torch.Generator().manual_seed(0)
    got, want, ref32 = [], [], []
    for _ in range(6):
        bs = [{k: v.double() for k, v in b.items()} for b in batches(g, 2)]
        got += unstack_info(stacked.update(bs))
        noises = [a.sample_noise(B) for a in singles]  # the noise the stacked update drew, seed by seed
        want += [a.update(b, n) for a, b, n in zip(singles, bs, noises)]
        ref32 += [a.update({k: v.float() for k, v in b.items()}, n.to(dtype=torch.float32))
                  for a, b, n in zip(singles32, bs, noises)]  # fmt: skip
    for k in want[0]:
        mine, w, r = (torch.stack([i[k].double() for i in infos]) for infos in (got, want, ref32))
        tol = (
            2 * U_FP64 / U_FP32 * (r - w).abs().max().item() + FLOOR_ROUNDINGS * U_FP64 * w.abs().max().item()
        )
        assert (mine - w).abs().max().item() <= tol, (k, (mine - w).abs().max().item(), tol)


@pytest.mark.slow
def test_compiled_stacked_update_matches_eager_single_agents():
    # compile=True compiles the whole vmapped loss + gradient (fullgraph), the rollouts in their traced
    # form; ~1 min of inductor on 2 cores. The single agents stay eager.
    torch._dynamo.reset()
    assert_matches(run_both("fidec", steps=4, seeds=(0, 1), compile_stacked=True))


def test_bf16_rollouts_stay_close_to_the_single_agent():
    """bf16 rollouts: the stacked update's rollouts really run in bf16 (they differ from fp32 rollouts
    by bf16 rounding), and the stacked and single bf16 runs are equally close to fp64."""
    runs = run_both("fidec", steps=6, seeds=(0, 1), rollout_dtype="bfloat16")
    assert_matches(runs, u=U_BF16)
    st = runs.stacked
    g = torch.Generator().manual_seed(1)
    obs, noise = torch.randn(2, B, OBS, generator=g), torch.randn(2, B, 8, ACT, generator=g)
    got = stacked_flow_actions(st, obs, noise)
    for i, agent in enumerate(st.agents):  # synced: the stacked parameters
        full = euler_rollout(agent.velocity_field, obs[i], noise[i], SMALL["flow_steps"], backend="reference")
        assert_rounded_at(got[i], full, U_BF16, where=unclamped(full), name=f"seed {i} stacked rollouts")


def stacked_flow_actions(stacked: StackedAgents, obs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The rollouts of the stacked update: its template agent's ``flow_actions``, vmapped over the seed
    stack as in :meth:`StackedAgents.update`; obs [S, B, obs_dim], noise [S, B, K, d]."""

    class Flow(torch.nn.Module):
        def __init__(self, agent):
            super().__init__()
            self.agent = agent

        def forward(self, o, z):
            return self.agent.flow_actions(o, z)

    flow = Flow(stacked.template)
    tensors = {"agent." + n: t for n, t in stacked.tensors.items()}
    return torch.vmap(lambda p, o, z: torch.func.functional_call(flow, p, (o, z)))(tensors, obs, noise)


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
    for i, f in enumerate(fields):  # as accurate against fp64 as the plain fp32 rollout of each agent
        want = euler_rollout(f, s[i], noise[i], 4, backend="reference")
        p64 = [(w.detach().double(), b.detach().double()) for w, b in mlp_params(f)]
        exact = euler_rollout(p64, s[i].double(), noise[i].double(), 4, backend="reference")
        floor = FLOOR_ROUNDINGS * U_FP32 * exact.abs().max().item()
        assert_as_accurate(got[i], want, exact, floor=floor, factor=FUSED_ROLLOUT_FACTOR, name=f"seed {i}")
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


# The files of seed i hold seed i's run: every value is within this fraction of the distance between the two
# seeds' single runs of single run i's (a fraction < 1/2 tells the seeds apart; 2^-10 also rules out a
# mixture), plus a floor of a few fp32 roundings. That stacked == single to rounding is
# test_seed_i_of_a_stacked_update_is_a_single_run_of_seed_i's claim, against fp64.
SEED_FRACTION = 2.0**-10


def test_stacked_run_writes_single_run_directories_that_match_single_runs(tmp_path):
    multiseed_tiny(tmp_path / "stacked", seeds=(0, 1), steps=10, log_interval=5, eval_interval=5)
    meta = read_multiseed(tmp_path / "stacked")
    assert meta["seeds"] == [0, 1] and meta["checkpoint_step"] == 10 and meta["summary"]["steps"] == 10
    for seed in (0, 1):
        run_tiny(tmp_path / f"single{seed}", "fidec", seed=seed, steps=10, log_interval=5, eval_interval=5)
    lr_steps = 10 * tiny_configs("fidec")[1].lr
    for seed in (0, 1):
        single, mine = tmp_path / f"single{seed}", tmp_path / "stacked" / f"seed{seed}"
        other = tmp_path / f"single{1 - seed}"
        assert sorted(p.name for p in mine.iterdir()) == sorted(p.name for p in single.iterdir())
        cs, cm = (json.loads((d / "config.json").read_text()) for d in (single, mine))
        assert set(cm) - set(cs) == {"multiseed"} and set(cs) <= set(cm)
        assert cm["train"] == cs["train"] and cm["agent"] == cs["agent"]
        assert cm["multiseed"]["seeds"] == [0, 1] and cm["multiseed"]["index"] == seed
        for name in ("train.csv", "eval.csv"):
            want, got, theirs = read_csv(single / name), read_csv(mine / name), read_csv(other / name)
            assert [list(r) for r in got] == [list(r) for r in want], name  # same columns, same order
            for w, o, t in zip(*(_strip_time(rows) for rows in (want, got, theirs))):
                for k in w:  # 64 evaluation episodes: rounding may flip one episode's success
                    tol = SEED_FRACTION * abs(t[k] - w[k]) + FLOOR_ROUNDINGS * U_FP32 * abs(w[k])
                    if k.startswith("evaluation/"):
                        tol = max(tol, 1.5 / 64)
                    assert abs(o[k] - w[k]) <= tol, (name, k, w[k], o[k], t[k])
        ks, km = load_checkpoint(single / CHECKPOINT), load_checkpoint(mine / CHECKPOINT)
        kt = load_checkpoint(other / CHECKPOINT)
        assert ks.keys() == km.keys() and ks["agent"].keys() == km["agent"].keys()
        assert ks["step"] == km["step"] == 10 and torch.equal(ks["sampler"], km["sampler"])
        assert torch.equal(ks["agent"]["noise_generator"], km["agent"]["noise_generator"])
        for k, v in ks["agent"]["model"].items():
            spread = (kt["agent"]["model"][k] - v).abs().max().item()
            tol = SEED_FRACTION * spread + FLOOR_ROUNDINGS * U_FP32 * (v.abs().max().item() + lr_steps)
            torch.testing.assert_close(km["agent"]["model"][k], v, rtol=0, atol=tol, msg=k)
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
        (("--seeds", "0,x"), "'x' is not a seed"),
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
    with pytest.raises(ConfigError, match=r"seed\(s\) \[1\] more than once"):
        parse_seeds("1,2,1")
