"""Public ops of fisher-decorator, each with several backends (see ``available_backends()``)."""

from fisher_decorator.ops._extension import BACKENDS, available_backends, backend_info, compiled_module
from fisher_decorator.ops.fisher_penalty import fisher_matrix, fisher_penalty, flow_score

__all__ = [
    "BACKENDS",
    "available_backends",
    "backend_info",
    "compiled_module",
    "fisher_matrix",
    "fisher_penalty",
    "flow_score",
]
