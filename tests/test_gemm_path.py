"""The GEMM path: the oneDNN linear (forward and its autograd backward) as accurate against fp64 as ATen's,
the networks, rollouts and JVP on it, the probe's choice, its per-machine cache and the config override."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from fisher_decorator import gemm_path
from fisher_decorator.networks import MLP, CriticEnsemble
from fisher_decorator.ops import euler_rollout, velocity_jvp
from tests.mlp_cases import make_batch, make_mlp
from tests.precision import U_FP32, assert_as_accurate

needs_onednn = pytest.mark.skipif(not gemm_path.onednn_available(), reason="this torch has no oneDNN linear")


@pytest.fixture
def path_state(monkeypatch):
    """Restore the process's GEMM path after a test sets one; "auto" measures (the session's pinned choice,
    $FIDEC_GEMM_CHOICE from conftest, is lifted)."""
    monkeypatch.delenv(gemm_path.CHOICE_ENV, raising=False)
    saved = dict(gemm_path._state)
    yield
    gemm_path._state.update(saved)


def _floor(t: torch.Tensor) -> float:
    return 4 * U_FP32 * t.abs().max().item()


def _grads(fn, *tensors):
    out = fn(*tensors)
    g = torch.Generator().manual_seed(7)
    out.backward(torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.dtype))
    return [out.detach(), *[t.grad.detach() for t in tensors]]


def _leaves(dtype, *tensors):
    return [t.detach().to(dtype).requires_grad_() for t in tensors]


@needs_onednn
@pytest.mark.parametrize("rows", [1, 37, 256])
def test_onednn_linear_and_backward_as_accurate_as_aten(path_state, rows):
    g = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, 96, generator=g, dtype=torch.float64)
    w = torch.randn(80, 96, generator=g, dtype=torch.float64) / 10
    b = torch.randn(80, generator=g, dtype=torch.float64)
    exact = _grads(F.linear, *_leaves(torch.float64, x, w, b))
    plain = _grads(F.linear, *_leaves(torch.float32, x, w, b))
    gemm_path.configure("onednn")
    assert gemm_path.path_for(torch.float32) == "onednn"
    got = _grads(gemm_path.linear, *_leaves(torch.float32, x, w, b))
    for name, a, p, e in zip(("y", "dx", "dw", "db"), got, plain, exact):
        assert a.dtype == torch.float32 and a.shape == e.shape
        assert_as_accurate(a, p, e, floor=_floor(e), name=name)


@needs_onednn
def test_networks_on_onednn_match_fp64(path_state):
    """MLP and critic heads (forward, every parameter's gradient) on oneDNN vs the same networks in fp64."""
    g = torch.Generator().manual_seed(0)
    nets = {
        "mlp": MLP(20, (64, 64), 3, layer_norm=True, generator=g),
        "critic": CriticEnsemble(14, 6, (64, 64), num_heads=2, generator=g),
    }
    inputs = {"mlp": (torch.randn(50, 20, generator=g),), "critic": (torch.randn(50, 14, generator=g), torch.rand(50, 6, generator=g))}  # fmt: skip
    for name, net in nets.items():
        results = {}
        for tag, dtype, path in (("exact", torch.float64, "mkl"), ("plain", torch.float32, "mkl"), ("onednn", torch.float32, "onednn")):  # fmt: skip
            gemm_path.configure(path)
            net64 = net.to(dtype)
            net64.zero_grad(set_to_none=True)
            out = net64(*(t.to(dtype) for t in inputs[name]))
            out.backward(torch.ones_like(out))
            results[tag] = [out.detach().double()] + [p.grad.double() for p in net64.parameters()]
            net.to(torch.float32)
        for i, (a, p, e) in enumerate(zip(results["onednn"], results["plain"], results["exact"])):
            assert_as_accurate(a, p, e, floor=_floor(e), name=f"{name}[{i}]")


@needs_onednn
@pytest.mark.parametrize("K", [1, 8])
def test_rollout_and_jvp_follow_the_path(path_state, K):
    """Rollout hidden layers and JVP GEMMs on oneDNN: as accurate against fp64 as the MKL path."""
    params64 = make_mlp(7, 3, (64, 64))
    s, x, t, tangent = make_batch(16, 7, 3)
    noise = torch.randn(16, K, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    p32 = [(w.float(), b.float()) for w, b in params64]
    exact = euler_rollout(params64, s, noise, 5, backend="reference")
    gemm_path.configure("mkl")
    plain = euler_rollout(p32, s.float(), noise.float(), 5, backend="cpu")
    jv_plain = velocity_jvp(p32, s.float(), x.float(), t.float(), tangent.float(), backend="cpu")
    gemm_path.configure("onednn")
    got = euler_rollout(p32, s.float(), noise.float(), 5, backend="cpu")
    forced = euler_rollout(p32, s.float(), noise.float(), 5, backend="cpu", hidden_impl="onednn")
    assert torch.equal(got, forced)  # "auto" took the configured path
    assert_as_accurate(got, plain, exact, floor=4 * U_FP32, factor=2.0, name="rollout")
    jv_exact = velocity_jvp(params64, s, x, t, tangent, backend="reference")
    jv_got = velocity_jvp(p32, s.float(), x.float(), t.float(), tangent.float(), backend="cpu")
    for a, p, e, name in zip(jv_got, jv_plain, jv_exact, ("v", "jv")):
        assert_as_accurate(a, p, e, floor=_floor(e), name=name)


@needs_onednn
def test_vmap_and_grad_fall_back_to_aten(path_state):
    """The multi-seed update vmaps grad(loss) over stacked parameters: the MLP still runs (on ATen there)."""
    from torch.func import functional_call, grad, vmap

    gemm_path.configure("onednn")
    net = MLP(4, (8,), 2, fused_gelu=False, generator=torch.Generator().manual_seed(0))
    params = {k: torch.stack([v.detach(), v.detach() + 0.1]) for k, v in net.named_parameters()}
    x = torch.randn(2, 5, 4, generator=torch.Generator().manual_seed(1))

    def loss(p, x):
        return functional_call(net, p, (x,)).square().sum()

    got = vmap(grad(loss))(params, x)
    for s in range(2):  # each seed's gradient as the eager (oneDNN) one, to fp32 rounding of these sizes
        p = {k: v[s].clone().requires_grad_() for k, v in params.items()}
        loss(p, x[s]).backward()
        for k in params:
            torch.testing.assert_close(got[k][s], p[k].grad, rtol=1e-4, atol=1e-5)


def test_probe_picks_a_path_per_dtype_and_op():
    result = gemm_path.probe(rounds=1)
    assert gemm_path._valid_choice(result["choice"])
    if gemm_path.onednn_available():
        assert len(result["us"]) == len(gemm_path.DTYPES) * len(gemm_path.PROBE_ROWS) * 4
        for dt in gemm_path.DTYPES:  # the choice is the faster one by the probe's own timings (ties: mkl)
            for op in gemm_path.OPS:
                t = {p: sum(result["us"][f"{dt}/{r}/{op}/{p}"] for r in gemm_path.PROBE_ROWS) for p in ("mkl", "onednn")}  # fmt: skip
                want = "onednn" if t["mkl"] > gemm_path.MIN_GAIN * t["onednn"] else "mkl"
                assert result["choice"][dt][op] == want


def _fake_probe(choice, spread):
    calls = []

    def probe(rounds=5):
        calls.append(rounds)
        return {
            "choice": {dt: dict.fromkeys(gemm_path.OPS, choice) for dt in gemm_path.DTYPES},
            "spread": spread,
        }

    return probe, calls


def test_cache_per_machine_and_noisy_probes_not_cached(tmp_path, monkeypatch, path_state):
    monkeypatch.setenv(gemm_path.CACHE_ENV, str(tmp_path))
    probe, calls = _fake_probe("onednn", spread=1.1)
    monkeypatch.setattr(gemm_path, "probe", probe)
    first = gemm_path.measured_choice()
    second = gemm_path.measured_choice()
    assert (first["source"], second["source"], len(calls)) == ("probe", "cache", 1)
    data = json.loads((tmp_path / gemm_path.CACHE_FILE).read_text())
    assert data[gemm_path.machine_key()]["choice"]["float32"]["linear"] == "onednn"
    assert not list(tmp_path.glob(".*tmp*"))  # written through a temporary, renamed
    # another machine key (other thread count / CPU / torch) probes again
    monkeypatch.setattr(gemm_path, "machine_key", lambda: "other-cpu")
    assert gemm_path.measured_choice()["source"] == "probe" and len(calls) == 2
    # a loaded machine's probe is used, not cached
    noisy, noisy_calls = _fake_probe("mkl", spread=3.0)
    monkeypatch.setattr(gemm_path, "probe", noisy)
    monkeypatch.setattr(gemm_path, "machine_key", lambda: "busy-cpu")
    assert gemm_path.measured_choice()["choice"]["float32"]["linear"] == "mkl"
    assert "busy-cpu" not in json.loads((tmp_path / gemm_path.CACHE_FILE).read_text())
    # a corrupt cache is ignored and rewritten
    (tmp_path / gemm_path.CACHE_FILE).write_text("{not json")
    monkeypatch.setattr(gemm_path, "probe", probe)
    assert gemm_path.measured_choice()["source"] == "probe"
    assert "busy-cpu" in json.loads((tmp_path / gemm_path.CACHE_FILE).read_text())


def test_configure_override_and_record(tmp_path, monkeypatch, path_state):
    monkeypatch.setenv(gemm_path.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(gemm_path, "probe", _fake_probe("onednn", 1.0)[0])
    rec = gemm_path.configure("mkl")  # a fixed path never probes
    assert rec["setting"] == "mkl" and rec["source"] == "config"
    assert not (tmp_path / gemm_path.CACHE_FILE).exists()
    assert gemm_path.path_for(torch.float32, "linear_gelu") == "mkl"
    assert gemm_path.path_for(torch.float64) == "mkl"  # only fp32/bf16 have a choice
    with pytest.raises(ValueError, match="gemm_path must be one of"):
        gemm_path.configure("blas")
    if gemm_path.onednn_available():
        assert gemm_path.configure("auto")["choice"]["bfloat16"]["linear"] == "onednn"


def test_agent_config_sets_and_records_the_path(tmp_path, monkeypatch, path_state):
    from fisher_decorator.agents import FiDecConfig, make_agent
    from fisher_decorator.info import environment

    monkeypatch.setenv(gemm_path.CACHE_ENV, str(tmp_path))
    cfg = FiDecConfig(actor_hidden_dims=(16,), value_hidden_dims=(16,), num_fisher_samples=2, gemm_path="mkl")
    make_agent("fidec", 4, 2, cfg, seed=0)
    assert environment()["gemm_path"]["setting"] == "mkl"
    assert environment()["gemm_path"]["choice"]["float32"] == {"linear": "mkl", "linear_gelu": "mkl"}


def test_pinned_choice_from_the_environment_and_from_a_resumed_run(monkeypatch, path_state):
    """$FIDEC_GEMM_CHOICE replaces the probe (one choice for every process of a job); a bad one is refused;
    pin() makes "auto" the choice a run recorded, and ignores a record without one."""
    choice = {dt: {"linear": "onednn", "linear_gelu": "mkl"} for dt in gemm_path.DTYPES}
    monkeypatch.setattr(gemm_path, "probe", lambda: pytest.fail("probed although a choice was pinned"))
    monkeypatch.setenv(gemm_path.CHOICE_ENV, json.dumps(choice))
    got = gemm_path.measured_choice()
    assert got["choice"] == choice and got["source"] == "$FIDEC_GEMM_CHOICE"
    monkeypatch.setenv(gemm_path.CHOICE_ENV, '{"float32": "fast"}')
    with pytest.raises(ValueError, match="FIDEC_GEMM_CHOICE must be the JSON of a choice"):
        gemm_path.measured_choice()
    monkeypatch.delenv(gemm_path.CHOICE_ENV)
    gemm_path.configure("mkl")
    assert not gemm_path.pin({"setting": "auto"}) and gemm_path.path_for(torch.float32) == "mkl"
    assert gemm_path.pin({"setting": "auto", "choice": choice})
    assert gemm_path.configure("auto")["choice"] == choice  # an agent built now keeps the pinned choice
    assert (
        gemm_path.path_for(torch.float32) == "onednn"
        and gemm_path.path_for(torch.float32, "linear_gelu") == "mkl"
    )
