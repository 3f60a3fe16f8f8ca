"""Every vectorised variant of the C++ CPU kernels runs the op tests (csrc/cpu_isa.h).

The variant is chosen once, when the extension is imported, so each forced variant (FIDEC_CPU_ISA) runs in a
subprocess; the variant this machine picks by itself is the one the rest of the suite runs in-process.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from fisher_decorator.ops import available_backends
from fisher_decorator.ops._extension import compiled_module, cpu_kernel_isa

pytestmark = pytest.mark.skipif("cpu" not in available_backends(), reason="compiled extension not built")

ROOT = pathlib.Path(__file__).resolve().parent.parent
# The tests of the ops whose fp32 rows are compiled per ISA (GELU kernels: the MLP ops and fused rollouts).
ISA_TESTS = [
    "tests/test_gelu_ops.py",
    "tests/test_rollout_layers.py",
    "tests/test_velocity_jvp.py",
    "tests/test_euler_rollout.py",
]


def _supported() -> list[str]:
    return compiled_module().supported_cpu_isas.split(",") if "cpu" in available_backends() else []


def _python(code: str, isa: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "FIDEC_CPU_ISA": isa}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )


def test_auto_picks_the_best_supported_variant():
    forced = os.environ.get("FIDEC_CPU_ISA", "auto")
    assert cpu_kernel_isa() == (_supported()[0] if forced in ("", "auto") else forced)
    assert _supported()[-1] == "baseline"  # the portable variant always runs


@pytest.mark.parametrize("isa", ["avx512", "avx2", "baseline"])
def test_forced_variant_is_used_or_refused(isa):
    proc = _python("import torch, fisher_decorator._C as c; print(c.cpu_isa)", isa)
    if isa in _supported():
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert proc.stdout.strip() == isa
    else:  # this CPU cannot run it: a one-line error naming the variable, not a crash in a kernel
        assert proc.returncode != 0
        assert f"FIDEC_CPU_ISA={isa}: this CPU" in proc.stderr


def test_unknown_variant_is_a_one_line_error():
    proc = _python("import fisher_decorator.ops", "sse9")
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert (
        last == "RuntimeError: FIDEC_CPU_ISA=sse9: unknown variant, expected auto, avx512, avx2 or baseline"
    )


@pytest.mark.parametrize("isa", ["avx512", "avx2", "baseline"])
def test_op_tests_pass_under_variant(isa):
    if isa not in _supported():
        pytest.skip(f"this CPU cannot run the {isa} variant")
    if isa == cpu_kernel_isa():
        pytest.skip(f"{isa} is the variant this process runs: the op tests ran it in-process")
    code = (
        "import sys, torch, pytest, fisher_decorator._C as c\n"
        f"assert c.cpu_isa == {isa!r}, c.cpu_isa\n"
        f"sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', *{ISA_TESTS!r}]))\n"
    )
    proc = _python(code, isa)
    assert proc.returncode == 0, (
        f"op tests under FIDEC_CPU_ISA={isa}:\n{proc.stdout[-8000:]}\n{proc.stderr[-3000:]}"
    )
    assert " passed" in proc.stdout and " failed" not in proc.stdout
