"""Triton kernels of fisher-decorator, each beside the plain-PyTorch reference it is tested against.

Importable without Triton: the references always exist, the kernels when ``HAS_TRITON``.
"""

from fdkernels._triton import HAS_TRITON, triton_usable
from fdkernels.fisher_penalty import fisher_matrix_ref, fisher_penalty_ref, flow_score_ref

__all__ = ["HAS_TRITON", "fisher_matrix_ref", "fisher_penalty_ref", "flow_score_ref", "triton_usable"]
