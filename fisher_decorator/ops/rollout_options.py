"""The rollout options as one frozen object, so an agent holds them once instead of threading the backend,
the GEMM dtype and its reused buffers through agent -> flows -> ops."""

from __future__ import annotations

from dataclasses import dataclass, field

from fisher_decorator.ops._extension import BACKENDS
from fisher_decorator.ops.euler_rollout import ROLLOUT_DTYPES, RolloutWorkspace


@dataclass(frozen=True)
class RolloutOptions:
    """backend: of :func:`~fisher_decorator.ops.euler_rollout` ("auto", "reference", "cpu", "cuda", "triton");
    dtype: the rollout GEMMs' dtype ("float32", "bfloat16", "tf32"); workspace: the buffers reused across
    rollouts (mutable, one per agent; not part of the options' identity)."""

    backend: str = "auto"
    dtype: str = "float32"
    workspace: RolloutWorkspace = field(default_factory=RolloutWorkspace, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.backend not in ("auto", *BACKENDS):
            raise ValueError(
                f"rollout backend must be auto or one of {', '.join(BACKENDS)}, got {self.backend!r}"
            )
        if self.dtype not in ROLLOUT_DTYPES:
            raise ValueError(f"rollout dtype must be one of {', '.join(ROLLOUT_DTYPES)}, got {self.dtype!r}")
