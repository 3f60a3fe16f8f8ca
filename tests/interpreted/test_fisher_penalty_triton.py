"""The Triton Fisher-penalty kernels against the reference, under the interpreter (run in a subprocess)."""

from __future__ import annotations

import pytest
import torch

from fisher_decorator.ops import fisher_penalty
from tests.test_fisher_penalty import (
    LOWP_CASES,
    check_gradcheck,
    check_reduced_precision,
    compare,
    make_inputs,
)

# The interpreter runs ~1 s per call on large inputs: a thinner grid with the same awkward sizes.
TRITON_CASES = [(1, 1, 1), (3, 2, 5), (3, 17, 21), (1, 8, 64), (37, 8, 5), (256, 2, 2)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("score", ["velocity", "tweedie"])
@pytest.mark.parametrize("t_kind", ["scalar", "B", "BK"])
@pytest.mark.parametrize("B,K,d", TRITON_CASES)
def test_triton_matches_reference(B, K, d, t_kind, score, dtype):
    v, x, t, r = make_inputs(B, K, d, dtype, t_kind, seed=B + K + d)
    compare("triton", v, x, t, r, dtype, score=score)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("B,K,d", LOWP_CASES)
def test_triton_reduced_precision(dtype, B, K, d):
    check_reduced_precision("triton", dtype, B, K, d)


def test_triton_gradcheck():
    check_gradcheck("triton")


def test_triton_opcheck():
    v, x, t, r = make_inputs(3, 4, 5, torch.float32, t_kind="BK")
    r.requires_grad_(True)
    torch.library.opcheck(
        torch.ops.fidec_triton.fisher_penalty_fwd.default, (v, x, t, r, "velocity", 1e-3, 1e-6, 1e-6)
    )
    pen, trace, scores = torch.ops.fidec_triton.fisher_penalty_fwd(v, x, t, r, "tweedie", 1e-3, 1e-6, 1e-6)
    torch.library.opcheck(
        torch.ops.fidec_triton.fisher_penalty_bwd.default, (torch.ones(3), scores, r.detach(), trace, 1e-3)
    )


def test_triton_compile_fullgraph():
    """The Triton op is opaque to inductor but traces without graph breaks."""
    torch._dynamo.reset()
    v, x, t, r = make_inputs(4, 3, 5, torch.float32, t_kind="B")
    f = lambda r_: fisher_penalty(v, x, t, r_, backend="triton")[0].sum()
    r1 = r.clone().requires_grad_(True)
    r2 = r.clone().requires_grad_(True)
    out = torch.compile(f, fullgraph=True, backend="aot_eager")(r2)
    ref = f(r1)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(torch.autograd.grad(out, r2)[0], torch.autograd.grad(ref, r1)[0])


@pytest.mark.parametrize("t", [0.999, 1.0])
def test_triton_t_near_one(t):
    v, x, _, r = make_inputs(4, 3, 5)
    compare("triton", v, x, t, r, torch.float64, score="tweedie")


def test_triton_zero_residual_and_empty_batch():
    v, x, t, r = make_inputs(4, 3, 5)
    pen, _ = fisher_penalty(v, x, t, torch.zeros_like(r), backend="triton")
    assert torch.equal(pen, torch.zeros_like(pen))
    v, x, t, r = make_inputs(0, 3, 5)
    assert fisher_penalty(v, x, t, r, backend="triton")[0].shape == (0,)
