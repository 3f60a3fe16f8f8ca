"""Loading of the compiled extension and the report of which backends this machine has."""

from __future__ import annotations

import functools
import importlib
import warnings

import torch

from fdkernels._triton import HAS_TRITON, triton_usable

BACKENDS = ("reference", "cpu", "cuda", "triton")

_BUILD_HINT = (
    "build it with `pip install --no-build-isolation -e .` from the project root "
    "(see the README: torch must be installed first)"
)


def _import_compiled():
    """The compiled module, or the ImportError that says why it is missing."""
    try:
        return importlib.import_module("fisher_decorator._C"), None
    except ImportError as exc:  # not built, or built against another torch, or FIDEC_CPU_ISA refused
        first = (str(exc).strip().splitlines() or [""])[0]
        if first.startswith("FIDEC_CPU_ISA"):  # a user error: said in one line, never a silent fallback
            raise RuntimeError(first) from None
        return None, exc


# Loaded once at import: backend resolution then reads plain constants, which torch.compile traces.
_COMPILED, _COMPILED_ERROR = _import_compiled()
_WITH_CUDA = bool(_COMPILED is not None and _COMPILED.with_cuda)


def _load():
    return _COMPILED, _COMPILED_ERROR


def compiled_module():
    """fisher_decorator._C; raises a RuntimeError saying how to build it when it is missing."""
    mod, err = _load()
    if mod is None:
        raise RuntimeError(
            f"the compiled extension fisher_decorator._C is not available ({err}); {_BUILD_HINT}"
        )
    return mod


def cpu_kernel_isa() -> str | None:
    """The vectorised variant the C++ CPU kernels run ('avx512', 'avx2' or 'baseline'; FIDEC_CPU_ISA forces
    one), or None without the compiled extension."""
    mod, _ = _load()
    return None if mod is None else mod.cpu_isa


def backend_info() -> dict[str, str]:
    """Every backend with 'available' or the reason it is not."""
    mod, err = _load()
    info = {"reference": "available"}
    info["cpu"] = "available" if mod is not None else f"compiled extension missing: {err}"
    if mod is None:
        info["cuda"] = f"compiled extension missing: {err}"
    elif not mod.with_cuda:
        info["cuda"] = "extension built without CUDA kernels (no nvcc at build time, or FIDEC_SKIP_CUDA=1)"
    elif not torch.cuda.is_available():
        info["cuda"] = f"CUDA kernels compiled (archs {mod.cuda_archs}) but no CUDA device is visible"
    else:
        info["cuda"] = "available"
    if not HAS_TRITON:
        info["triton"] = "triton is not installed (pip install triton)"
    elif torch.cuda.is_available() or triton_usable(torch.device("cpu")):
        info["triton"] = "available"
    else:
        info["triton"] = "no CUDA device; on CPU triton runs only under TRITON_INTERPRET=1 (for tests)"
    return info


def available_backends() -> list[str]:
    """Names of the backends usable on this machine now, e.g. ['reference', 'cpu']."""
    return [name for name, state in backend_info().items() if state == "available"]


def resolve_backend(backend: str, device: torch.device) -> str:
    """The concrete backend for ``backend`` on ``device``; 'auto' picks the fastest usable one."""
    if backend not in (*BACKENDS, "auto"):
        raise ValueError(f"backend must be one of {('auto', *BACKENDS)}, got {backend!r}")
    if backend == "auto":
        if device.type == "cpu":
            if _COMPILED is None:
                _warn_missing(_COMPILED_ERROR)
                return "reference"
            return "cpu"
        if device.type == "cuda":
            if _WITH_CUDA:
                return "cuda"
            if HAS_TRITON:
                return "triton"
        return "reference"
    if backend in ("cpu", "cuda"):
        if _COMPILED is None:
            compiled_module()  # raises, saying how to build it
        if backend != device.type:
            raise ValueError(f"backend {backend!r} needs {backend} tensors, got tensors on {device}")
        if backend == "cuda" and not _WITH_CUDA:
            raise RuntimeError(f"backend 'cuda': {backend_info()['cuda']}")
    if backend == "triton" and not triton_usable(device):
        raise RuntimeError(f"backend 'triton' cannot run on {device}: {backend_info()['triton']}")
    return backend


@functools.cache
def _warn_missing(err) -> None:
    warnings.warn(
        f"fisher_decorator._C is not built ({err}); backend='auto' falls back to the slow reference. "
        f"{_BUILD_HINT}",
        RuntimeWarning,
        stacklevel=3,
    )
