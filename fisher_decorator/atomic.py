"""Atomic files, the one place every writer of the package goes through (checkpoints, run records, datasets).

A write goes to ``.<name>.tmp<pid>`` in the target's directory, is fsynced, and is renamed over the target, then
the directory is fsynced: a process killed at any moment leaves the previous complete file or the new complete
one, never a partial file under the final name. After a SIGKILL the temporary stays behind;
:func:`fisher_decorator.checkpoint.remove_stale_temporaries` recognises it by its name (:data:`TMP_RE`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

TMP_RE = re.compile(r"^\.(?P<name>.+)\.tmp(?P<pid>\d+)$")


def temporary_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def fsync_dir(directory: Path) -> None:
    """fsync a directory (the rename in it), where the file system lets a directory be opened."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """``with atomic_path(p) as tmp:`` write the file ``tmp``; on success it is fsynced and renamed to ``p``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """``with atomic_write(p) as f: ...`` -> ``p`` appears complete or not at all."""
    with atomic_path(path) as tmp, open(tmp, mode) as f:
        yield f
        f.flush()


def write_json(path: str | os.PathLike, data: Any) -> None:
    """``data`` as indented JSON, atomically (objects JSON lacks are written as their ``str``)."""
    with atomic_write(path, "w") as f:
        json.dump(data, f, indent=2, sort_keys=False, default=str)
        f.write("\n")
