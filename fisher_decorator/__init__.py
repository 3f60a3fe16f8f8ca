"""fisher-decorator: Fisher Decorator (FiDec) offline RL in PyTorch, with fused kernels.

See SPEC.md of the project for the exact definition of what is computed.
"""

__version__ = "0.1.0"

from fisher_decorator.threads import prefer_passive_wait as _prefer_passive_wait

# OpenMP threads that sleep rather than spin when waiting: 5-9x faster updates when another process is busy on
# the same cores (see fisher_decorator/threads.py); read by libgomp when torch loads, so set before that.
_prefer_passive_wait()
