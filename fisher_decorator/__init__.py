"""fisher-decorator: Fisher Decorator (FiDec) offline RL in PyTorch, with fused kernels.

See SPEC.md of the project for the exact definition of what is computed.
"""

__version__ = "0.1.0"
