"""Checkpoints: written atomically (fisher_decorator.atomic), read safely.

A run killed at any moment leaves either the previous complete file or the new complete one (and,
after a SIGKILL, a ``.<name>.tmp<pid>`` file, which :func:`remove_stale_temporaries` clears at the
next start). Checkpoints are read with ``torch.load(weights_only=True)``: tensors, numbers, strings
and containers only, so a crafted file cannot run code on load.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from fisher_decorator.atomic import TMP_RE as _TMP_RE
from fisher_decorator.atomic import atomic_write, fsync_dir, write_json

__all__ = [
    "CheckpointError",
    "atomic_write",
    "fsync_dir",
    "load_checkpoint",
    "remove_stale_temporaries",
    "save_checkpoint",
    "write_json",
]


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read: truncated, empty, not a checkpoint, or holding code."""


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # our own pid reused by a container restart: we have written nothing yet
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Delete the ``.<name>.tmp<pid>`` files of :func:`atomic_write` whose process is gone (a run killed
    mid-write leaves one, a full checkpoint at paper size). Returns the files removed."""
    removed = []
    directory = Path(directory)
    if not directory.is_dir():
        return removed
    for p in directory.iterdir():
        m = _TMP_RE.match(p.name)
        if m and p.is_file() and not _pid_alive(int(m["pid"])):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed.append(p)
    return removed


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """``state`` to ``path`` atomically. Serialised in memory first, so a full disk is a plain
    ``OSError(ENOSPC)`` naming ``path`` (torch's own writer reports only "unexpected pos"); the
    previous checkpoint stays in place."""
    buf = io.BytesIO()
    torch.save(state, buf)
    try:
        with atomic_write(path) as f:
            f.write(buf.getbuffer())
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            problem = "no space left on device" if exc.errno != errno.EFBIG else "file size limit exceeded"
            raise OSError(
                exc.errno, f"{problem} (the previous checkpoint, if any, is intact)", str(path)
            ) from exc
        raise


def _load_problem(path: Path, exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if isinstance(exc, pickle.UnpicklingError) and "Weights only load failed" in text:
        m = re.search(r"(?:unsupported GLOBAL|Unsupported global: GLOBAL) ([\w.]+)", text)
        what = f"it would call {m[1]}" if m else "it holds more than tensors"
        return (
            f"refused to load: {what}; a checkpoint holds only tensors, numbers and strings (nothing was run)"
        )
    if path.stat().st_size == 0 or isinstance(exc, EOFError) or "Ran out of input" in text:
        return "empty or truncated file"
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; its directory is at the end
        return "truncated or not a torch checkpoint (no complete zip archive)"
    return f"not a readable checkpoint ({type(exc).__name__}: {text[:160]})"


def load_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu", *, mmap: bool = False
) -> dict[str, Any]:
    """The state dict in ``path``, read with ``weights_only=True`` (no code from the file runs); ``mmap``
    maps the tensors instead of reading them (to look at the step of a large checkpoint)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as exc:  # a foreign, damaged or malicious file
        raise CheckpointError(f"{path}: cannot read checkpoint: {_load_problem(path, exc)}") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: cannot read checkpoint: holds a {type(state).__name__}, not a dict")
    return state
