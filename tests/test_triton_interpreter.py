"""Runs tests/interpreted (Triton kernels on the CPU) in a subprocess with TRITON_INTERPRET=1.

Triton chooses interpreted or compiled library functions when it is imported, so the
interpreter cannot be switched on inside this process without switching it on for every
test. One subprocess per file keeps failures pointing at the kernel they concern.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

pytest.importorskip("triton")

ROOT = pathlib.Path(__file__).resolve().parent.parent
FILES = sorted((ROOT / "tests" / "interpreted").glob("test_*.py"))


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_interpreted_kernels(path):
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(path.relative_to(ROOT))],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, (
        f"{path.name} failed under TRITON_INTERPRET=1:\n{proc.stdout[-8000:]}\n{proc.stderr[-4000:]}"
    )
    assert " passed" in proc.stdout, proc.stdout[-2000:]
