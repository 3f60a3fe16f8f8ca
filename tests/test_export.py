"""``fidec export``: the exported policy, loaded with plain PyTorch (this package and its compiled extension
unimportable), gives the agent's actions for the same noise."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fisher_decorator.cli import main
from fisher_decorator.trainer import load_agent

ROOT = Path(__file__).resolve().parent.parent
LOADER = ROOT / "fisher_decorator" / "exported_policy.py"
TINY_SETS = [
    *("--set", "actor_hidden_dims=16,16", "--set", "value_hidden_dims=16,16", "--set", "flow_steps=4"),
    *("--set", "batch_size=16", "--set", "tensorboard=false"),
]

# Runs in a fresh interpreter where importing fisher_decorator fails: only torch (and safetensors).
_PLAIN = """
import importlib.abc, importlib.util, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "fisher_decorator":
            raise ModuleNotFoundError(f"blocked: {name}")
sys.meta_path.insert(0, Block())
import torch
spec = importlib.util.spec_from_file_location("exported_policy", sys.argv[1])
loader = importlib.util.module_from_spec(spec); spec.loader.exec_module(loader)
policy = loader.load_policy(sys.argv[2])
inputs = torch.load(sys.argv[3], weights_only=True)
out = {"actions": policy(inputs["obs"], inputs["noise"]),
       "scripted_directly": torch.jit.load(sys.argv[2])(inputs["obs"], inputs["noise"])
       if sys.argv[2].endswith(".pt") else None}
assert not [m for m in sys.modules if m.startswith("fisher_decorator")]
torch.save(out, sys.argv[4])
"""


def _run_dir(tmp_path: Path, agent: str, *sets: str) -> Path:
    out = tmp_path / agent
    argv = ["train", "--agent", agent, "--out", str(out), "--steps", "30", "--log-interval", "10"]
    argv += ["--eval-interval", "0", "--save-interval", "30", "--no-progress", "--no-plot", *TINY_SETS]
    argv += [x for s in sets for x in ("--set", s)]
    assert main(argv) == 0
    return out


def _plain_pytorch_actions(tmp_path: Path, policy_file: Path, obs, noise) -> dict:
    (tmp_path / "inputs.pt").unlink(missing_ok=True)
    torch.save({"obs": obs, "noise": noise}, tmp_path / "inputs.pt")
    proc = subprocess.run(
        [sys.executable, "-c", _PLAIN, str(LOADER), str(policy_file), str(tmp_path / "inputs.pt"), str(tmp_path / "o.pt")],
        cwd=tmp_path, capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(tmp_path / "o.pt", weights_only=True)


def _inputs(agent, n=64, seed=3):
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(n, agent.obs_dim, generator=g)
    return obs, torch.randn(n, agent.action_dim, generator=g)


@pytest.mark.parametrize("fmt", ["safetensors", "torchscript"])
@pytest.mark.parametrize(
    "agent, sets",
    [
        ("fidec", ["num_fisher_samples=2"]),
        ("deflow", []),
        ("fql", ["actor_layer_norm=true"]),  # LayerNorm in the exported MLPs
    ],
)
def test_exported_policy_acts_like_the_agent_on_the_reference_path(tmp_path, fmt, agent, sets):
    """An agent on the reference path (plain rollout, ATen GELU and GEMMs) and its export: the same operations
    in the same order, so the same actions bit for bit."""
    if fmt == "safetensors":
        pytest.importorskip("safetensors")
    # gemm_path=mkl: the export runs ATen's F.linear; where this machine's probe picks oneDNN for the agent's
    # linears, the same operations in the same order need the agent on ATen's GEMMs too.
    run = _run_dir(tmp_path, agent, "rollout_backend=reference", "fused_gelu=false", "gemm_path=mkl", *sets)
    out = tmp_path / f"policy.{'pt' if fmt == 'torchscript' else 'safetensors'}"
    assert main(["export", "--run", str(run), "--format", fmt, "--out", str(out)]) == 0
    trained, _, step = load_agent(run)
    assert step == 30
    obs, noise = _inputs(trained)
    expected = trained.sample_actions(obs, noise=noise)
    got = _plain_pytorch_actions(tmp_path, out, obs, noise)
    assert torch.equal(got["actions"], expected)
    if fmt == "torchscript":
        assert torch.equal(got["scripted_directly"], expected)
    from fisher_decorator.exported_policy import load_policy

    policy = load_policy(str(out))
    assert torch.equal(policy(obs, noise), expected)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(policy.act(obs, g1), trained.sample_actions(obs, generator=g2))


def test_exported_policy_matches_the_fused_agent_to_rounding(tmp_path):
    """The default agent (fused rollout, GELU kernel) and its plain export differ only by fp32 rounding:
    the fused agent's error against an fp64 evaluation is at most twice the plain fp32 export's, plus the
    rounding of one action (flash-attention's rule)."""
    pytest.importorskip("safetensors")
    run = _run_dir(tmp_path, "fidec", "num_fisher_samples=2")
    out = tmp_path / "p.safetensors"
    assert main(["export", "--run", str(run), "--out", str(out)]) == 0
    trained, _, _ = load_agent(run)
    obs, noise = _inputs(trained, n=256)
    fused = trained.sample_actions(obs, noise=noise)
    from fisher_decorator.exported_policy import load_policy

    plain = load_policy(str(out))
    exact = plain.double()(obs.double(), noise.double())
    plain32 = load_policy(str(out))(obs, noise)
    err_plain = (plain32.double() - exact).abs().max().item()
    err_fused = (fused.double() - exact).abs().max().item()
    assert err_fused <= 2 * err_plain + torch.finfo(torch.float32).eps, (err_fused, err_plain)


def test_export_errors_are_one_line(tmp_path, capsys):
    assert main(["export", "--run", str(tmp_path / "none"), "--out", str(tmp_path / "p.pt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fidec export: error: ") and "no config.json" in err and err.count("\n") == 1
