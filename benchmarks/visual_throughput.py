"""Pixel tasks: updates/s with the IMPALA encoder (fp32 / bf16, channels-last / NCHW), batch gathering from the
memory-mapped frames, and the peak resident memory of loading and of training.

    python -m benchmarks.visual_throughput                    # ~10 min on 2 shared cores
    python -m benchmarks.visual_throughput --frames 20000,200000 --updates 3

Timed cases (B = 256, frames 64x64x9 = 3 stacked RGB frames, the authors' visual settings: impala_small in
front of each of the critic, flow and actor, 4x512 networks, K = 8 Fisher samples, N = 10 Euler steps):

  encoder-fwd-bwd   one encoder's forward + backward on B frames: channels-last fp32 (the default), contiguous
                    NCHW fp32, channels-last bf16 (autocast)
  update            one FiDec / FQL update, encoder_dtype float32 and bfloat16
  sample            one batch of B transitions (stacked frames gathered from the memory map, crop with p_aug 0.5)

Memory, each in a fresh process over a synthetic stored .npz of F frames (1000-row episodes) written here:
``load`` (open, validate, relabel, 200 batches sampled) and ``train`` (load + agent + 2 updates of B = 256).
Rows give the process's peak resident set (VmHWM) and, at the end, its anonymous and file-backed parts
(RssAnon, RssFile): the frames are file-backed pages the kernel can drop, never anonymous memory, so RssAnon
does not grow with F. Rows go to results/visual_throughput-<machine>.json.
"""

from __future__ import annotations

# isort: off
import fisher_decorator  # noqa: F401  (first: sets OMP_WAIT_POLICY before torch loads)

# isort: on
import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

from benchmarks.common import machine, quantiles, timed, write_rows

B = 256
SHAPE = (64, 64, 9)


def _status_kib() -> dict[str, int]:
    out = {}
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0])
    return out


def write_synthetic(path: pathlib.Path, frames: int, episode_rows: int = 1000) -> None:
    """A stored OGBench-layout .npz of ``frames`` random frames, written in blocks (never held whole)."""
    from fisher_decorator.datasets.visual import RowChunks, write_npz_stream

    rng = np.random.default_rng(0)
    block = 5000
    chunks = [
        rng.integers(0, 256, (min(block, frames - i), 64, 64, 3), dtype=np.uint8)
        for i in range(0, frames, block)
    ]  # held only while writing; the measuring process never sees them
    terminals = np.zeros(frames, dtype=bool)
    terminals[episode_rows - 1 :: episode_rows] = True
    terminals[-1] = True
    write_npz_stream(
        path,
        {
            "observations": RowChunks(chunks),
            "actions": rng.uniform(-1, 1, (frames, 5)).astype(np.float32),
            "terminals": terminals,
            "qpos": rng.normal(size=(frames, 19)).astype(np.float32),
            "qvel": rng.normal(size=(frames, 19)).astype(np.float32),
        },
    )


def _load(path: str):
    from fisher_decorator.datasets.loading import make_task_env
    from fisher_decorator.datasets.visual import before_rendering, load_visual_split

    env_name = (
        "cube-single-singletask-task1-v0"  # the state env relabels a pixel dataset (as load_visual_task)
    )
    before_rendering()
    env = make_task_env(env_name)
    split = load_visual_split(
        pathlib.Path(path), env_name, env, validate=True, episode_rows=None, action_clip_eps=1e-5
    )
    env.close()
    split.frame_stack, split.p_aug = 3, 0.5
    return split


def child(mode: str, path: str) -> None:
    """One memory measurement in this (fresh) process; prints a JSON line."""
    from fisher_decorator.datasets.visual import VisualSampler

    t0 = time.perf_counter()
    split = _load(path)
    load_s = time.perf_counter() - t0
    sampler = VisualSampler(split, seed=0)
    after_load = _status_kib()
    if mode == "load":
        for _ in range(200):
            sampler.sample(B)
    else:
        from fisher_decorator.agents import make_agent
        from fisher_decorator.agents.fidec import FiDecConfig

        cfg = FiDecConfig(encoder="impala_small", num_fisher_samples=8, fisher_t=0.9, fisher_t_width=0.05)
        agent = make_agent("fidec", SHAPE, 5, cfg)
        for _ in range(2):
            agent.update(sampler.sample(B), with_metrics=False)
    print(json.dumps({"load_s": load_s, "after_load_kib": after_load, "end_kib": _status_kib()}))


def memory_rows(frames_list: list[int], env: dict) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(dir=os.environ.get("FIDEC_BENCH_TMP")) as tmp:
        for frames in frames_list:
            path = pathlib.Path(tmp) / f"synthetic-{frames}.npz"
            write_synthetic(path, frames)
            for mode in ("load", "train"):
                proc = subprocess.run(
                    [sys.executable, "-m", "benchmarks.visual_throughput", "--child", mode, str(path)],
                    capture_output=True,
                    text=True,
                    check=True,
                    cwd=pathlib.Path(__file__).resolve().parent.parent,
                )
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                end = r["end_kib"]
                rows.append(
                    {
                        "case": {"bench": "peak_memory", "mode": mode, "frames": frames},
                        "dataset_bytes": path.stat().st_size,
                        "load_s": round(r["load_s"], 2),
                        "peak_rss_mib": round(end["VmHWM"] / 1024, 1),
                        "rss_anon_mib": round(end["RssAnon"] / 1024, 1),
                        "rss_file_mib": round(end["RssFile"] / 1024, 1),
                        "rss_after_load_mib": round(r["after_load_kib"]["VmRSS"] / 1024, 1),
                        "machine": env["device_name"],
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
            path.unlink()
    return rows


def speed_rows(updates: int, env: dict) -> list[dict]:
    from fisher_decorator.agents import make_agent
    from fisher_decorator.agents.fidec import FiDecConfig
    from fisher_decorator.agents.fql import FQLConfig
    from fisher_decorator.encoders import make_encoder

    torch.manual_seed(0)
    frames = torch.randint(0, 256, (B, *SHAPE), dtype=torch.uint8)
    cases = {}
    for name, dtype, channels_last in (
        ("fp32 channels-last", "float32", True),
        ("fp32 NCHW", "float32", False),
        ("bf16 channels-last", "bfloat16", True),
    ):
        enc = make_encoder("impala_small", SHAPE, compute_dtype=dtype)
        enc.channels_last = channels_last

        def run(enc=enc):
            enc.zero_grad(set_to_none=True)
            enc(frames).sum().backward()

        cases[("encoder-fwd-bwd", name)] = run
    batch = {
        "observations": frames,
        "next_observations": torch.randint(0, 256, (B, *SHAPE), dtype=torch.uint8),
        "actions": torch.rand(B, 5) * 2 - 1,
        "rewards": -torch.rand(B),
        "masks": torch.ones(B),
    }
    for agent_name, cls, extra in (
        ("fidec", FiDecConfig, dict(num_fisher_samples=8, fisher_t=0.9, fisher_t_width=0.05)),
        ("fql", FQLConfig, dict(alpha=300.0)),
    ):
        for dtype in ("float32", "bfloat16"):
            agent = make_agent(
                agent_name, SHAPE, 5, cls(encoder="impala_small", encoder_dtype=dtype, **extra)
            )
            cases[(f"update-{agent_name}", f"encoder {dtype}")] = lambda a=agent: a.update(
                batch, with_metrics=False
            )
    split = _synthetic_split(20_000)
    from fisher_decorator.datasets.visual import VisualSampler

    sampler = VisualSampler(split, seed=0)
    cases[("sample", "memmap gather + crop p 0.5")] = lambda: sampler.sample(B)

    samples: dict = {k: [] for k in cases}
    for fn in cases.values():  # warm-up
        fn()
    for _ in range(updates):  # round-robin: a drift of the shared machine hits every case alike
        for k, fn in cases.items():
            samples[k].append(timed(fn))
    rows = []
    for (bench, variant), s in samples.items():
        p20, p50, p80 = quantiles(s)
        rows.append(
            {
                "case": {"bench": bench, "variant": variant, "batch": B, "obs": list(SHAPE)},
                "ms_p20_p50_p80": [round(1e3 * x, 1) for x in (p20, p50, p80)],
                "per_s": round(1.0 / p50, 3),
                "n": len(s),
                "machine": env["device_name"],
                "threads": torch.get_num_threads(),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


_SPLIT_DIR: list = []


def _synthetic_split(frames: int):
    tmp = tempfile.TemporaryDirectory()
    _SPLIT_DIR.append(tmp)  # kept alive with the map
    path = pathlib.Path(tmp.name) / "synthetic.npz"
    write_synthetic(path, frames)
    return _load(str(path))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--updates", type=int, default=3, help="timed repetitions of each case (after one warm-up)"
    )
    p.add_argument("--frames", default="20000,200000", help="dataset sizes of the memory rows (comma list)")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--no-speed", action="store_true")
    p.add_argument("--child", nargs=2, metavar=("MODE", "PATH"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(*args.child)
        return
    env = machine("cpu")
    rows = []
    if not args.no_speed:
        rows += speed_rows(args.updates, env)
    if not args.no_memory:
        rows += memory_rows([int(f) for f in args.frames.split(",")], env)
    print(write_rows("visual_throughput", env, rows))


if __name__ == "__main__":
    main()
