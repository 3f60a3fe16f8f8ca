"""Triton, when it is installed: the import every kernel file shares, and where kernels can run.

Triton reads ``TRITON_INTERPRET`` when a kernel is *decorated*, so kernels are jitted lazily, once per
interpreter setting (that is what lets a test switch the interpreter on for itself).
"""

from __future__ import annotations

import functools
import os

import torch

try:  # Triton is optional: the CPU wheel of torch does not bring it.
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - exercised on machines without triton
    triton = None
    tl = None
    HAS_TRITON = False


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.cache
def _jit(fn, interpret: bool):
    del interpret  # part of the cache key: triton.jit reads TRITON_INTERPRET itself
    return triton.jit(fn)


def jit_kernel(fn):
    """``triton.jit(fn)``, built once per interpreter setting."""
    return _jit(fn, _interpreting())


def triton_usable(device: torch.device) -> bool:
    """Triton runs on CUDA devices, and on the CPU only under ``TRITON_INTERPRET=1``."""
    if not HAS_TRITON:
        return False
    if device.type == "cuda":
        return True
    return device.type == "cpu" and _interpreting()
