"""What this machine and install are: the CPU, versions and op backends (benchmark rows and config.json record
it; ``fidec info`` prints it)."""

from __future__ import annotations

import os
import platform

import torch


def cpu_name() -> str:
    """The CPU model as /proc/cpuinfo names it (benchmark rows carry it)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def device_name(device: torch.device | str = "cpu") -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name()


def environment() -> dict:
    """What a benchmark row or a run's config records about the machine and the software."""
    from fisher_decorator import __version__
    from fisher_decorator.gemm_path import record as gemm_path_record
    from fisher_decorator.ops import backend_info
    from fisher_decorator.ops._extension import cpu_kernel_isa
    from fisher_decorator.threads import usable_cpus

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    flags = cpu_flags()
    return {
        "fisher_decorator": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton_version,
        "cpu": cpu_name(),
        "cpu_isa": sorted(
            f for f in flags if f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
        ),
        "cpu_kernels": cpu_kernel_isa(),
        "torch_threads": torch.get_num_threads(),
        "usable_cpus": usable_cpus(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "gemm_path": gemm_path_record(),
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "backends": backend_info(),
    }
