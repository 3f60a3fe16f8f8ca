"""Public ops of fisher-decorator, each with several backends (see ``available_backends()``)."""

from fisher_decorator.ops._extension import BACKENDS, available_backends, backend_info, compiled_module
from fisher_decorator.ops.euler_rollout import (
    ROLLOUT_DTYPES,
    RolloutWorkspace,
    euler_rollout,
    euler_rollout_groups,
    stacked_euler_rollout,
)
from fisher_decorator.ops.fisher_penalty import fisher_matrix, fisher_penalty, flow_score
from fisher_decorator.ops.gelu import gelu_tanh
from fisher_decorator.ops.rollout_options import RolloutOptions
from fisher_decorator.ops.velocity_jvp import fisher_quadratic_jacobian, mlp_params, velocity_jvp

__all__ = [
    "BACKENDS",
    "ROLLOUT_DTYPES",
    "RolloutOptions",
    "RolloutWorkspace",
    "available_backends",
    "backend_info",
    "compiled_module",
    "euler_rollout",
    "euler_rollout_groups",
    "fisher_matrix",
    "fisher_penalty",
    "fisher_quadratic_jacobian",
    "flow_score",
    "gelu_tanh",
    "mlp_params",
    "stacked_euler_rollout",
    "velocity_jvp",
]
