"""What every benchmark row records, and where rows are written.

A row names the machine (CPU model and ISA, or the GPU), the versions and the commit, so figures
from different machines are never compared by accident: compare only ratios timed in one run.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import time

import torch

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
                             cwd=pathlib.Path(__file__).parent)  # fmt: skip
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, check=False, cwd=pathlib.Path(__file__).parent).stdout.strip()  # fmt: skip
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine(device: str = "cpu") -> dict:
    from fisher_decorator.info import environment

    env = environment()
    env["device"] = device
    env["device_name"] = env["cuda_device"] if device == "cuda" else env["cpu"]
    env["commit"] = git_commit()
    env["date"] = time.strftime("%Y-%m-%d %H:%M:%S")
    return env


def machine_slug(env: dict) -> str:
    """File-name tag of a machine: device name plus the ISA that changes the numbers (AMX, bf16)."""
    name = env["device_name"] or "unknown"
    tag = re.sub(r"\((r|tm)\)|processor|cpu|@.*", "", name, flags=re.I)
    tag = re.sub(r"[^a-z0-9]+", "-", tag.lower()).strip("-")
    if env["device"] == "cpu":
        isa = env.get("cpu_isa", [])
        tag += "-amx" if "amx_bf16" in isa else ("-avx512bf16" if "avx512_bf16" in isa else "")
        tag += f"-{env.get('torch_threads')}t"
    return tag


def sync() -> None:
    """Wait for queued GPU work, so a timer around it measures the work, not its launch."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn) -> float:
    """Seconds of one call of ``fn`` (GPU work included)."""
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def quantiles(samples: list[float], qs=(0.2, 0.5, 0.8)) -> list[float]:
    t = torch.tensor(samples, dtype=torch.float64)
    return [float(torch.quantile(t, q)) for q in qs]


def cpu_peak_bytes(fn) -> int:
    """Peak bytes of tensors alive during ``fn()`` beyond those alive before it (torch's memory profile)."""
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import Action

    with profile(
        activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True
    ) as p:
        fn()
    cur = peak = 0
    for _, action, _, size in p._memory_profile().timeline:
        if action == Action.CREATE:
            cur += size
        elif action == Action.DESTROY:
            cur -= size
        peak = max(peak, cur)
    return int(peak)


def cuda_peak_bytes(fn) -> int:
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return int(torch.cuda.max_memory_allocated() - base)


def write_rows(name: str, env: dict, rows: list[dict]) -> pathlib.Path:
    """Write (merge by key) rows into results/<name>-<machine>.json; returns the path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}-{machine_slug(env)}.json"
    old = json.loads(path.read_text())["rows"] if path.exists() else []
    key = lambda r: json.dumps(r["case"], sort_keys=True)
    merged = {key(r): r for r in old}
    merged.update({key(r): r for r in rows})
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"machine": env, "rows": list(merged.values())}, indent=1))
    os.replace(tmp, path)
    return path
