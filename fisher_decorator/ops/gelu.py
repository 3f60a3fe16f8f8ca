"""Fake (meta) impls of the compiled GELU ops, so torch.compile and opcheck can trace them.

``fidec::bias_gelu_(h[G, R, H], bias[G, H])``: in place, ``h <- gelu_tanh(h + bias[g])``.
``fidec::gelu_jvp(h[N, H], bias[H], th[N, H]) -> (y, ty, dy)``: GELU, its tangent and derivative.
"""

from __future__ import annotations

import torch

from fisher_decorator.ops._extension import _load

if _load()[0] is not None:  # the ops exist only when the extension is built

    @torch.library.register_fake("fidec::gelu_jvp")
    def _gelu_jvp_fake(h, bias, th):
        return torch.empty_like(h), torch.empty_like(h), torch.empty_like(h)

    @torch.library.register_fake("fidec::bias_gelu_")
    def _bias_gelu_fake(h, bias):
        return None
