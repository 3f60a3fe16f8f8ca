"""Build of fisher_decorator._C: the C++ CPU kernels always, the CUDA kernels wherever nvcc is.

Environment knobs
    FIDEC_FORCE_CUDA=1   build the CUDA kernels or fail (a missing nvcc is an error)
    FIDEC_SKIP_CUDA=1    never build the CUDA kernels
    FIDEC_CUDA_ARCHS     e.g. "8.0;9.0+PTX" (default "8.0;8.6;8.9;9.0+PTX")
    MAX_JOBS             parallel compile jobs (ninja and nvcc)
    CUDA_HOME            where to look for nvcc first

The CUDA sources include no torch headers (the CPU wheel of torch lacks its CUDA headers), so
they compile against any torch. They are built with nvcc into objects, linked into the same
extension together with a static CUDA runtime: importing never needs libcudart on the path.
Install with ``pip install --no-build-isolation .`` so the build uses the torch already installed.
"""

from __future__ import annotations

import concurrent.futures
import glob
import os
import re
import shutil
import subprocess
import sys

from setuptools import setup

try:
    import torch  # noqa: F401
    from torch.utils.cpp_extension import BuildExtension, CppExtension
except ImportError:
    sys.exit(
        "fisher-decorator builds against an installed torch. Install torch first "
        "(CPU: `pip install torch==2.13.0`; GPU: the CUDA wheel from pytorch.org), then "
        "`pip install --no-build-isolation .`"
    )

ROOT = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(ROOT, "csrc")
DEFAULT_ARCHS = "8.0;8.6;8.9;9.0+PTX"


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def _max_jobs() -> int:
    try:
        return max(1, int(os.environ.get("MAX_JOBS", "")))
    except ValueError:
        return max(1, os.cpu_count() or 1)


def _find_nvcc() -> str | None:
    for var in ("CUDA_HOME", "CUDA_PATH"):
        home = os.environ.get(var)
        if home and os.path.exists(os.path.join(home, "bin", "nvcc")):
            return os.path.join(home, "bin", "nvcc")
    return shutil.which("nvcc")


def _cudart_static(nvcc: str) -> str:
    """libcudart_static.a from the library directories nvcc itself links against."""
    dirs = []
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            dirs += [os.path.join(os.environ[var], d) for d in ("lib64", "lib", "targets/x86_64-linux/lib")]
    probe = subprocess.run(
        [nvcc, "-dryrun", "-c", "x.cu", "-o", "x.o"], capture_output=True, text=True, check=False
    )
    dirs += re.findall(r'-L"?([^"\s]+)"?', probe.stdout + probe.stderr)
    dirs.append(os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))), "lib64"))
    for d in dirs:
        lib = os.path.join(d, "libcudart_static.a")
        if os.path.exists(lib):
            return os.path.normpath(lib)
    raise RuntimeError(f"nvcc found at {nvcc} but no libcudart_static.a in {dirs}; set CUDA_HOME")


def _gencode_flags(spec: str) -> list[str]:
    flags = []
    for item in filter(None, re.split(r"[;,\s]+", spec)):
        ptx = item.endswith("+PTX")
        num = item.replace("+PTX", "").replace(".", "")
        if not num.isdigit():
            raise RuntimeError(
                f"FIDEC_CUDA_ARCHS: cannot read architecture {item!r} (expected e.g. 8.0 or 9.0+PTX)"
            )
        flags.append(f"-gencode=arch=compute_{num},code=sm_{num}")
        if ptx:
            flags.append(f"-gencode=arch=compute_{num},code=compute_{num}")
    if not flags:
        raise RuntimeError("FIDEC_CUDA_ARCHS is empty")
    return flags


def _cuda_plan() -> dict | None:
    if _flag("FIDEC_SKIP_CUDA"):
        if _flag("FIDEC_FORCE_CUDA"):
            raise RuntimeError("FIDEC_FORCE_CUDA=1 and FIDEC_SKIP_CUDA=1 contradict each other")
        return None
    nvcc = _find_nvcc()
    if nvcc is None:
        if _flag("FIDEC_FORCE_CUDA"):
            raise RuntimeError(
                "FIDEC_FORCE_CUDA=1 but nvcc was not found (set CUDA_HOME or put nvcc on PATH)"
            )
        print("fisher-decorator: nvcc not found, building the CPU kernels only", file=sys.stderr)
        return None
    archs = os.environ.get("FIDEC_CUDA_ARCHS", DEFAULT_ARCHS)
    return {"nvcc": nvcc, "archs": archs, "gencode": _gencode_flags(archs), "cudart": _cudart_static(nvcc)}


class FidecBuildExt(BuildExtension):
    """Compiles csrc/*.cu with nvcc into objects first, then lets torch's ninja build do the rest."""

    def build_extensions(self):
        plan = CUDA_PLAN
        if shutil.which(os.environ.get("CXX", "c++")) is None:
            raise RuntimeError("no C++ compiler found (install g++ or set CXX)")
        if plan is not None:
            out_dir = os.path.join(os.path.abspath(self.build_temp), "cuda")
            os.makedirs(out_dir, exist_ok=True)
            sources = sorted(glob.glob(os.path.join(CSRC, "*.cu")))

            def compile_one(src: str) -> str:
                obj = os.path.join(out_dir, os.path.basename(src) + ".o")
                # No --use_fast_math: it turns every fp32 division of the shared row headers
                # (csrc/*_row.h) into div.approx (2 ulp) and flushes denormals to zero (PTX of
                # sm_90: 39 + 15 div.rn become div.approx/div.full), so the CPU tests of those
                # headers would no longer reproduce the GPU's arithmetic. The kernels use no libm
                # fp32 functions that fast-math would speed up (GELU's exp is our own polynomial).
                cmd = [
                    plan["nvcc"],
                    "-std=c++17",
                    "-O3",
                    "-Xcompiler",
                    "-fPIC",
                    f"-I{CSRC}",
                    "-c",
                    src,
                    "-o",
                    obj,
                    *plan["gencode"],
                ]
                print(" ".join(cmd), file=sys.stderr)
                proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
                if proc.returncode != 0:
                    raise RuntimeError(f"nvcc failed on {src}:\n{proc.stdout}\n{proc.stderr}")
                return obj

            with concurrent.futures.ThreadPoolExecutor(_max_jobs()) as pool:
                objects = list(pool.map(compile_one, sources))
            for ext in self.extensions:
                ext.extra_objects = [*objects, *ext.extra_objects]
        super().build_extensions()


def _extension():
    plan = _cuda_plan()
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    if plan is None:
        sources = [s for s in sources if not s.endswith("_cuda_binding.cpp")]
    cxx_flags = ["-O3", "-fopenmp"]
    link_args = ["-fopenmp"]
    macros = []
    if plan is not None:
        macros += [("FIDEC_WITH_CUDA", None), ("FIDEC_CUDA_ARCHS", f'"{plan["archs"]}"')]
        link_args += [plan["cudart"], "-lrt", "-lpthread", "-ldl"]
    ext = CppExtension(
        "fisher_decorator._C",
        sources,
        include_dirs=[CSRC],
        define_macros=macros,
        extra_compile_args={"cxx": cxx_flags},
        extra_link_args=link_args,
    )
    return ext, plan


EXTENSION, CUDA_PLAN = _extension()

setup(
    ext_modules=[EXTENSION],
    cmdclass={"build_ext": FidecBuildExt.with_options(use_ninja=True)},
)
