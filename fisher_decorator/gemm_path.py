"""Which CPU GEMM path the networks, rollouts and JVP use: chosen on each machine by measuring.

Two paths compute ``a W^T + b`` on a CPU: MKL (``torch.mm``/``F.linear``, what ATen calls) and oneDNN
(``torch.ops.mkldnn._linear_pointwise``, which can also fuse the GELU-tanh). Which one is faster depends
on the CPU: MKL takes slower code paths on AMD, and on some CPUs oneDNN's bf16 kernels lose to MKL's at
small row counts. So a short probe (about 0.2-0.5 s) times both at the update's shapes (256 and 1024 rows
of 512 x 512, fp32 and bf16, rounds interleaved so a drift of a shared machine hits all candidates alike,
best round kept) and picks, per dtype, the faster path for a plain linear and for linear + GELU.

The choice is cached per machine (CPU model, ISA flags, thread count) and torch version in
``$FIDEC_CACHE_DIR/gemm_path.json`` (default ``~/.cache/fisher_decorator``), written atomically; a probe
whose rounds spread too much (a loaded machine) is used for this process only, never cached.
``gemm_path=mkl|onednn`` (the agents' config field) skips the probe. ``$FIDEC_GEMM_CHOICE`` (the JSON of a
choice, ``{"float32": {"linear": "onednn", ...}, ...}``) replaces the probe for "auto": one choice for every
process of a cluster job or a test session. A resumed run takes the choice its config.json recorded
(:func:`pin`), so it continues on the GEMMs it started with (bit-identical resume).

Both paths compute the same sums in a different order: results agree to fp32 (or bf16) rounding, and
:func:`linear` keeps autograd (oneDNN has no backward of its own: the backward here runs the input
gradient on the chosen path and the weight gradient on ``torch.mm``).
"""

from __future__ import annotations

import functools
import json
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from fisher_decorator.atomic import write_json

GEMM_PATHS = ("auto", "mkl", "onednn")
OPS = ("linear", "linear_gelu")
DTYPES = ("float32", "bfloat16")
CACHE_ENV = "FIDEC_CACHE_DIR"
CACHE_FILE = "gemm_path.json"
CHOICE_ENV = "FIDEC_GEMM_CHOICE"
PROBE_ROWS = (256, 1024)
PROBE_WIDTH = 512
# bumped when the candidates change (2: oneDNN's linear + GELU as the rollouts run it, on a packed weight),
# so a choice cached by an older probe is measured again
PROBE_VERSION = 2
# a probe whose median round is this much slower than its best was taken on a busy machine: not cached
NOISY_SPREAD = 1.5
# oneDNN is chosen only when this much faster than MKL: a tie keeps ATen's default path
MIN_GAIN = 1.03

_state: dict = {"setting": None, "choice": None}


@functools.cache
def onednn_available() -> bool:
    """Whether this torch has oneDNN's linear (a private op) and it computes the plain chain's values."""
    op = getattr(torch.ops.mkldnn, "_linear_pointwise", None)
    if op is None or not torch.backends.mkldnn.is_available():
        return False
    try:
        g = torch.Generator().manual_seed(0)
        a, w, b = (
            torch.randn(5, 8, generator=g),
            torch.randn(16, 8, generator=g),
            torch.randn(16, generator=g),
        )
        got = op(a, w, b, "gelu", [], "tanh")
        want = F.gelu(a @ w.t() + b, approximate="tanh")
        return bool(torch.allclose(got, want, rtol=1e-5, atol=1e-5))
    except (RuntimeError, TypeError):
        return False


def cache_path() -> Path:
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "fisher_decorator"
    return Path(root) / CACHE_FILE


def machine_key() -> str:
    """CPU model, the ISA flags that select GEMM kernels, thread count and torch version."""
    from fisher_decorator.info import cpu_flags, cpu_name

    isa = sorted(f for f in cpu_flags() if f.startswith(("avx", "amx", "fma")))
    return (
        f"{cpu_name()}|{','.join(isa)}|threads={torch.get_num_threads()}|torch={torch.__version__}"
        f"|probe={PROBE_VERSION}"
    )


def _candidates(dtype: torch.dtype, rows: int, g: torch.Generator) -> dict[tuple[str, str], callable]:
    from fisher_decorator.ops.euler_rollout import PACK_MIN_ROWS, _bias_gelu_, packed_linear_available

    a = torch.randn(rows, PROBE_WIDTH, generator=g).to(dtype)
    w = torch.randn(PROBE_WIDTH, PROBE_WIDTH, generator=g).to(dtype)
    b = torch.randn(PROBE_WIDTH, generator=g).to(dtype)
    out = torch.empty(rows, PROBE_WIDTH, dtype=dtype)
    lp = torch.ops.mkldnn._linear_pointwise
    # linear + GELU on oneDNN as the rollouts run it: on a packed weight with our bias + GELU pass from
    # PACK_MIN_ROWS rows on (the pack is made once per rollout, so it is left out), else oneDNN's post-op
    if rows >= PACK_MIN_ROWS and packed_linear_available():
        packed = torch.ops.mkldnn._reorder_linear_weight(w, rows)
        onednn_gelu = lambda: _bias_gelu_(lp(a, packed, None, "none", [], "")[None], b[None])  # noqa: E731
    else:
        onednn_gelu = lambda: lp(a, w, b, "gelu", [], "tanh")  # noqa: E731
    return {
        ("linear", "mkl"): lambda: torch.addmm(b, a, w.t(), out=out),
        ("linear", "onednn"): lambda: lp(a, w, b, "none", [], ""),
        ("linear_gelu", "mkl"): lambda: _bias_gelu_(torch.mm(a, w.t(), out=out)[None], b[None]),
        ("linear_gelu", "onednn"): onednn_gelu,
    }


def probe(rounds: int = 5) -> dict:
    """Time every candidate; returns {"choice": {dtype: {op: path}}, "us": {...}, "spread": float, ...}."""
    if not onednn_available():
        choice = {dt: dict.fromkeys(OPS, "mkl") for dt in DTYPES}
        return {"choice": choice, "reason": "oneDNN linear unavailable", "spread": 1.0}
    g = torch.Generator().manual_seed(0)
    cases = {(dt, rows): _candidates(getattr(torch, dt), rows, g) for dt in DTYPES for rows in PROBE_ROWS}
    times: dict[tuple, list[float]] = {}
    for fns in cases.values():
        for fn in fns.values():
            fn()  # warm-up: first-call allocations and oneDNN primitive creation
    for _ in range(rounds):
        for (dt, rows), fns in cases.items():
            for (op, path), fn in fns.items():
                t0 = time.perf_counter()
                fn()
                times.setdefault((dt, rows, op, path), []).append(time.perf_counter() - t0)
    best = {k: min(v) for k, v in times.items()}
    spread = max(sorted(v)[len(v) // 2] / min(v) for v in times.values())
    choice = {}
    for dt in DTYPES:
        choice[dt] = {}
        for op in OPS:
            mkl = sum(best[(dt, r, op, "mkl")] for r in PROBE_ROWS)
            one = sum(best[(dt, r, op, "onednn")] for r in PROBE_ROWS)
            choice[dt][op] = "onednn" if mkl > MIN_GAIN * one else "mkl"
    us = {f"{dt}/{rows}/{op}/{path}": round(1e6 * t, 1) for (dt, rows, op, path), t in best.items()}
    return {"choice": choice, "us": us, "spread": round(spread, 3), "rounds": rounds}


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def measured_choice(*, use_cache: bool = True) -> dict:
    """The probe's result for this machine: from the cache, or probed now (and cached unless noisy)."""
    pinned = os.environ.get(CHOICE_ENV)
    if pinned:
        try:
            choice = json.loads(pinned)
        except ValueError:
            choice = None
        if not _valid_choice(choice):
            raise ValueError(
                f"${CHOICE_ENV} must be the JSON of a choice per dtype {DTYPES} and op {OPS} "
                f'("mkl" or "onednn"), got {pinned!r}'
            )
        return {"choice": choice, "source": f"${CHOICE_ENV}"}
    key = machine_key()
    path = cache_path()
    if use_cache:
        hit = _read_cache(path).get(key)
        if isinstance(hit, dict) and _valid_choice(hit.get("choice")):
            return {**hit, "source": "cache"}
    t0 = time.perf_counter()
    result = probe()
    result["probe_s"] = round(time.perf_counter() - t0, 3)
    result["date"] = time.strftime("%Y-%m-%d %H:%M:%S")
    if use_cache and result["spread"] <= NOISY_SPREAD:
        try:
            data = _read_cache(path)
            data[key] = result
            write_json(path, data)
        except OSError:  # a read-only home: the choice still holds for this process
            pass
    return {**result, "source": "probe"}


def _valid_choice(choice) -> bool:
    return isinstance(choice, dict) and all(
        isinstance(choice.get(dt), dict) and all(choice[dt].get(op) in ("mkl", "onednn") for op in OPS)
        for dt in DTYPES
    )


def configure(setting: str = "auto") -> dict:
    """Set this process's GEMM path: "auto" (measured, cached), "mkl" or "onednn" (every op, every dtype).

    Returns the record config.json keeps: the setting, the choice per dtype and op, and where it came from.
    """
    if setting not in GEMM_PATHS:
        raise ValueError(f"gemm_path must be one of {GEMM_PATHS}, got {setting!r}")
    if _state["setting"] == setting and _state["choice"] is not None:
        return record()
    if setting == "auto":
        result = measured_choice()
    else:
        if setting == "onednn" and not onednn_available():
            raise RuntimeError(
                "gemm_path='onednn' needs torch's oneDNN linear (torch.ops.mkldnn._linear_pointwise)"
            )
        result = {"choice": {dt: dict.fromkeys(OPS, setting) for dt in DTYPES}, "source": "config"}
    _state.update(setting=setting, choice=result)
    return record()


def pin(recorded: dict | None) -> bool:
    """Make "auto" mean the choice a run recorded (config.json's ``environment.gemm_path``), so a resumed run
    keeps its GEMMs; returns whether a valid recorded choice was pinned (else "auto" measures as usual)."""
    if not isinstance(recorded, dict) or not _valid_choice(recorded.get("choice")):
        return False
    _state.update(
        setting="auto", choice={"choice": recorded["choice"], "source": "resumed run's config.json"}
    )
    return True


def configure_gemm_path(setting: str, device: torch.device | str) -> dict:
    """:func:`configure` for an agent on ``device`` (CPU only: GPU GEMMs have one path); returns :func:`record`."""
    if torch.device(device).type != "cpu":
        if setting not in GEMM_PATHS:
            raise ValueError(f"gemm_path must be one of {GEMM_PATHS}, got {setting!r}")
        return record()
    return configure(setting)


def record() -> dict:
    """What config.json records: the setting and the chosen path per dtype and op (None before configure)."""
    res = _state["choice"]
    if res is None:
        return {"setting": None}
    keep = ("choice", "source", "us", "spread", "probe_s", "date")
    return {"setting": _state["setting"], **{k: res[k] for k in keep if k in res}}


def path_for(dtype: torch.dtype, op: str = "linear") -> str:
    """ "onednn" or "mkl" for CPU tensors of ``dtype`` (MKL for other dtypes and before configure)."""
    res = _state["choice"]
    if res is None:
        return "mkl"
    by_dtype = res["choice"].get(str(dtype).removeprefix("torch."))
    return "mkl" if by_dtype is None else by_dtype[op]


def use_onednn(device: torch.device, dtype: torch.dtype, op: str = "linear") -> bool:
    """Whether ``op`` on ``device`` in ``dtype`` runs on oneDNN (CPU fp32/bf16, not under torch.compile or a
    functorch transform)."""
    return (
        device.type == "cpu"
        and dtype in (torch.float32, torch.bfloat16)
        and not torch.compiler.is_compiling()
        # under vmap/grad (stacked seeds) a oneDNN call has no batching rule: ATen's GEMMs there
        and torch._C._functorch.maybe_current_level() is None
        and path_for(dtype, op) == "onednn"
    )


class _OneDNNLinear(torch.autograd.Function):
    """``x W^T + b`` by oneDNN; backward: dx by oneDNN (``g (W^T)^T``), dW = g^T x and db by ATen."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = torch.ops.mkldnn._linear_pointwise(grad, weight.t(), None, "none", [], "")
        if ctx.needs_input_grad[1]:
            dw = torch.mm(grad.t(), x)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = grad.sum(0)
        return dx, dw, db


def matmul_t(a: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``a @ weight.T`` (no bias, no autograd: rollouts and the JVP's forward) on this process's GEMM path."""
    if use_onednn(a.device, a.dtype) and a.dim() == 2 and weight.dtype == a.dtype:
        return torch.ops.mkldnn._linear_pointwise(a, weight, None, "none", [], "")
    return a @ weight.t()


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear`` on this process's GEMM path (x: [N, in] or [..., in]); autograd and CPU autocast kept.

    oneDNN is used for 2-D+ CPU fp32/bf16 inputs when the path says so, and when a second derivative is not
    needed (the backward is once differentiable); everything else is ``F.linear``.
    """
    dtype = x.dtype
    if dtype == torch.float32 and x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        dtype = torch.get_autocast_dtype("cpu")
    if not use_onednn(x.device, dtype):
        return F.linear(x, weight, bias)
    with torch.autocast("cpu", enabled=False):
        x, weight = x.to(dtype), weight.to(dtype)
        bias = None if bias is None else bias.to(dtype)
        lead = x.shape[:-1]
        y = _OneDNNLinear.apply(x.reshape(-1, x.shape[-1]), weight, bias)
        return y.reshape(*lead, y.shape[-1])
