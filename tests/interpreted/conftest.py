"""Triton kernels on the CPU, through Triton's interpreter.

Triton decides at import whether its own library functions are interpreted, so these tests
need TRITON_INTERPRET=1 before triton is first imported: tests/test_triton_interpreter.py runs
this directory in a subprocess with it set (the main test process never has it). Directly:
``TRITON_INTERPRET=1 pytest tests/interpreted``.
"""

import os

import pytest

if os.environ.get("TRITON_INTERPRET") != "1":
    raise pytest.UsageError(
        "tests/interpreted needs TRITON_INTERPRET=1 (see tests/test_triton_interpreter.py)"
    )
pytest.importorskip("triton")
