"""``fidec export`` of pixel agents (encoder=impala_small): the exported policy, loaded with plain PyTorch (this
package and its compiled extension unimportable), takes uint8 frame stacks and gives the agent's actions for
the same noise; FrameStacker keeps the stack the agents were trained on.

The runs are written directly (config.json + checkpoint.pt of an agent with every parameter moved off its
initial value: nonzero biases, no symmetric LayerNorm), not trained through a pixel dataset: what is tested is
the export, and rendering a dataset takes minutes (an update of a pixel agent alone takes seconds here).
The frames are 13 x 11 (odd and even sizes at different stacks: the encoder takes any size, and flax's
'SAME' max-pool pads unevenly there), not the env's 64 x 64, to keep the test fast.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fisher_decorator.agents import AGENTS, make_agent
from fisher_decorator.checkpoint import save_checkpoint
from fisher_decorator.cli import main
from fisher_decorator.config import TrainConfig, to_dict
from fisher_decorator.rundir import CHECKPOINT, CONFIG
from fisher_decorator.trainer import load_agent
from tests.precision import FUSED_ROLLOUT_FACTOR, U_BF16, U_FP32, assert_as_accurate
from tests.test_export import LOADER

H, W, FRAME_STACK, ACT, N = 13, 11, 2, 3, 32
SHAPE = (H, W, 3 * FRAME_STACK)
# gemm_path="mkl": the exported MLPs run ATen's F.linear; the bit-equal check needs the agent on the same GEMMs.
TINY = dict(
    actor_hidden_dims=(16, 16),
    value_hidden_dims=(16, 16),
    flow_steps=3,
    encoder="impala_small",
    gemm_path="mkl",
)
REFERENCE = dict(rollout_backend="reference", fused_gelu=False)


def _frames(n: int, g: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 256, (n, *SHAPE), generator=g, dtype=torch.uint8)


def _pixel_run(tmp_path: Path, name: str, **cfg_kw) -> Path:
    """A run directory holding a pixel agent with perturbed parameters, in the layout ``fidec train`` writes."""
    cfg = AGENTS[name].config_class(**{**TINY, **cfg_kw})
    agent = make_agent(name, SHAPE, ACT, cfg, seed=7)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in agent.parameters():
            p.add_(torch.randn(p.shape, generator=g), alpha=0.05)
    run = tmp_path / name
    run.mkdir(parents=True)
    train = TrainConfig(agent=name, seed=7, frame_stack=FRAME_STACK, task="visual-toy")
    config = {"train": to_dict(train), "agent": to_dict(cfg), "obs_dim": list(SHAPE), "action_dim": ACT}
    (run / CONFIG).write_text(json.dumps(config))
    save_checkpoint(run / CHECKPOINT, {"agent": agent.checkpoint_state(), "step": 1})
    return run


def _export(run: Path, fmt: str) -> Path:
    out = run.parent / f"{run.name}.{'pt' if fmt == 'torchscript' else 'safetensors'}"
    assert main(["export", "--run", str(run), "--format", fmt, "--out", str(out)]) == 0
    return out


# In a fresh interpreter where importing fisher_decorator fails: the actions of every exported file.
_PLAIN_ALL = """
import importlib.abc, importlib.util, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "fisher_decorator":
            raise ModuleNotFoundError(f"blocked: {name}")
sys.meta_path.insert(0, Block())
import torch
spec = importlib.util.spec_from_file_location("exported_policy", sys.argv[1])
loader = importlib.util.module_from_spec(spec); spec.loader.exec_module(loader)
inputs = torch.load(sys.argv[2], weights_only=True)
out = {}
for path in sys.argv[4:]:
    out[path] = loader.load_policy(path)(inputs["obs"], inputs["noise"])
    if path.endswith(".pt"):
        out[path + ":jit"] = torch.jit.load(path)(inputs["obs"], inputs["noise"])
assert not [m for m in sys.modules if m.startswith("fisher_decorator")]
torch.save(out, sys.argv[3])
"""
FORMATS = ("safetensors", "torchscript")
AGENT_NAMES = ("fidec", "deflow", "fql")


@pytest.fixture(scope="module")
def reference_exports(tmp_path_factory):
    """The three agents on the reference path, each exported in both formats, and the actions of every file
    computed in one plain-PyTorch process (one interpreter start instead of six)."""
    pytest.importorskip("safetensors")
    tmp = tmp_path_factory.mktemp("pixel_exports")
    runs = {name: _pixel_run(tmp, name, **REFERENCE) for name in AGENT_NAMES}
    files = {(name, fmt): _export(run, fmt) for name, run in runs.items() for fmt in FORMATS}
    g = torch.Generator().manual_seed(3)
    obs, noise = _frames(N, g), torch.randn(N, ACT, generator=g)
    torch.save({"obs": obs, "noise": noise}, tmp / "inputs.pt")
    proc = subprocess.run(
        [sys.executable, "-c", _PLAIN_ALL, str(LOADER), str(tmp / "inputs.pt"), str(tmp / "out.pt"),
         *map(str, files.values())],
        cwd=tmp, capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return runs, files, obs, noise, torch.load(tmp / "out.pt", weights_only=True)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", AGENT_NAMES)
def test_exported_pixel_policy_acts_like_the_agent_on_the_reference_path(reference_exports, fmt, name):
    """Reference rollout, ATen GELU, ATen GEMMs: the export runs the agent's operations in the same order
    (encoders included), so the actions are equal bit for bit, in a process without fisher_decorator."""
    runs, files, obs, noise, plain = reference_exports
    out = files[name, fmt]
    agent, _, _ = load_agent(runs[name])
    expected = agent.sample_actions(obs, noise=noise)
    assert torch.equal(plain[str(out)], expected)
    if fmt == "torchscript":
        assert torch.equal(plain[f"{out}:jit"], expected)

    from fisher_decorator.exported_policy import load_policy

    policy = load_policy(str(out))
    assert list(policy.obs_shape) == list(SHAPE) and policy.frame_stack == FRAME_STACK
    assert torch.equal(policy(obs, noise), expected)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(policy.act(obs, g1), agent.sample_actions(obs, generator=g2))
    # FQL acts with its one-step policy: only the actor's encoder is exported; never the critic's
    names = {k.split(".")[0] for k in policy.state_dict()}
    want = (
        {"policy", "actor_encoder"}
        if name == "fql"
        else {"velocity_field", "residual", "flow_encoder", "actor_encoder"}
    )
    assert names == want
    with pytest.raises(
        (ValueError, torch.jit.Error), match="frames must be"
    ):  # jit.Error: TorchScript raised
        policy(obs[:, :-1], noise)  # a frame of the wrong size (or a missing frame stack) is refused


def _as_accurate(tmp_path, name: str, u: float, **cfg_kw) -> None:
    """The default agent (fused GELU and rollout, or a bf16 encoder) against its fp32 export and an fp64
    evaluation of the export: no less accurate than the plain export, within the fused rollout's factor
    (tests/precision.py) plus a few roundings of an action (|a| <= 1) in the encoder's precision ``u``."""
    pytest.importorskip("safetensors")
    run = _pixel_run(tmp_path, name, **cfg_kw)
    out = _export(run, "safetensors")
    agent, _, _ = load_agent(run)
    g = torch.Generator().manual_seed(4)
    obs, noise = _frames(128, g), torch.randn(128, ACT, generator=g)
    from fisher_decorator.exported_policy import load_policy

    plain = load_policy(str(out))
    exact = load_policy(str(out)).double()(obs, noise.double())
    assert_as_accurate(
        agent.sample_actions(obs, noise=noise),
        plain(obs, noise),
        exact,
        factor=FUSED_ROLLOUT_FACTOR,
        floor=4 * u,
        name=f"{name} actions",
    )


def test_exported_pixel_policy_matches_the_fused_agent_to_rounding(tmp_path):
    _as_accurate(tmp_path, "fidec", U_FP32, gemm_path="auto")  # the default agent, on this machine's GEMMs


def test_exported_bf16_encoder_matches_the_agent(tmp_path):
    """encoder_dtype=bfloat16: the agent's autocast and the export's explicit bf16 casts are the same ops on
    the same bf16-rounded operands, so equal actions bit for bit; and the fp64 export is the bf16-free
    reference both are measured against."""
    pytest.importorskip("safetensors")
    run = _pixel_run(tmp_path / "reference", "fidec", encoder_dtype="bfloat16", **REFERENCE)
    out = _export(run, "safetensors")
    agent, _, _ = load_agent(run)
    g = torch.Generator().manual_seed(6)
    obs, noise = _frames(N, g), torch.randn(N, ACT, generator=g)
    from fisher_decorator.exported_policy import load_policy

    assert torch.equal(load_policy(str(out))(obs, noise), agent.sample_actions(obs, noise=noise))
    _as_accurate(tmp_path / "default", "fidec", U_BF16, encoder_dtype="bfloat16", gemm_path="auto")


def test_frame_stacker_repeats_the_first_frame_then_shifts():
    from fisher_decorator.datasets.visual import FrameStack
    from fisher_decorator.exported_policy import FrameStacker

    g = torch.Generator().manual_seed(0)
    frames = [torch.randint(0, 256, (1, H, W, 3), generator=g, dtype=torch.uint8) for _ in range(4)]
    mine, env = FrameStacker(FRAME_STACK), FrameStack(FRAME_STACK)  # the evaluation env's stack
    assert torch.equal(mine.reset(frames[0]), torch.as_tensor(env.reset(frames[0].numpy())))
    for f in frames[1:]:
        got = mine.step(f)
        assert got.shape == (1, *SHAPE) and got.dtype == torch.uint8
        assert torch.equal(got, torch.as_tensor(env.step(f.numpy())))
    assert torch.equal(got, torch.cat(frames[-FRAME_STACK:], dim=-1))  # oldest first
