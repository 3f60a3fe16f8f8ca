"""Byte-reproducible dataset files and hashing; written atomically by fisher_decorator.atomic.

``.npz`` files are written with a fixed zip timestamp so that the same arrays always give the same bytes (and the
same SHA-256); the layout is otherwise exactly ``numpy.savez_compressed``'s, which OGBench's loader reads.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from collections.abc import Mapping

import numpy as np

from fisher_decorator.atomic import atomic_path, write_json

__all__ = ["atomic_path", "sha256_file", "write_json", "write_npz"]

_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def write_npz(path: str | os.PathLike, arrays: Mapping[str, np.ndarray], *, compress: bool = True) -> None:
    """Write ``arrays`` as an ``.npz`` (deflated like ``np.savez_compressed``, or stored), atomically and
    reproducibly: the same arrays in the same key order always give the same bytes."""
    compression = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, mode="w", compression=compression, allowZip64=True) as zf:
            for key, value in arrays.items():
                info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_EPOCH)
                info.compress_type = compression
                info.external_attr = 0o644 << 16
                with zf.open(info, mode="w", force_zip64=True) as f:
                    np.lib.format.write_array(f, np.asanyarray(value), allow_pickle=False)


def sha256_file(path: str | os.PathLike, chunk_bytes: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            h.update(chunk)
    return h.hexdigest()
