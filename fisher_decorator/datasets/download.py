"""``fidec data download``: the official dataset files, resumable, verified before they get their name.

OGBench files come from the URL OGBench's own ``ogbench.download_datasets`` uses
(``https://rail.eecs.berkeley.edu/datasets/ogbench/<dataset>.npz`` and ``-val.npz``), D4RL AntMaze/Adroit files
from D4RL's URLs (``d4rl/infos.py``). A file is downloaded to ``.<name>.part`` in the dataset directory;
an interrupted download resumes from there (an HTTP Range request; a server that ignores it sends the
whole file again and the partial file is restarted), and a complete file is verified (readable,
OGBench's keys and shapes, finite values, whole episodes; D4RL: the transitions) before it is renamed to
its final name. So a file under a dataset's name is always complete, and a bad download never gets one.
"""

from __future__ import annotations

import http.client
import os
import pathlib
import re
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

from tqdm import tqdm

from fisher_decorator.atomic import fsync_dir
from fisher_decorator.datasets.errors import DatasetError, UnknownDatasetError
from fisher_decorator.datasets.fileio import sha256_file
from fisher_decorator.datasets.registry import D4RL_DATASETS, OGBENCH_RECIPES, OGBENCH_URL

CHUNK_BYTES = 1 << 20
TIMEOUT_S = 60.0


class DownloadError(DatasetError):
    """A download that did not complete (network) or whose file is not the dataset (verification)."""


@dataclass(frozen=True)
class DownloadFile:
    url: str
    name: str
    """File name in the dataset directory."""
    verify: Callable[[pathlib.Path], str]
    """Checks a complete download (raises DatasetError); returns a one-line summary."""


def _paper_datasets() -> list[str]:
    from fisher_decorator.presets import ogbench_families

    return [f"{family}-v0" for family in ogbench_families()]


def resolve_names(names: list[str]) -> list[str]:
    """Datasets named by ``names``: dataset names, OGBench families (``cube-single-play``), ``paper``
    (the paper's 10 OGBench datasets), ``d4rl`` (the six AntMaze v2 and twelve Adroit v1 datasets; ``d4rl-antmaze`` / ``d4rl-adroit`` one group). Order kept, no repeats."""
    out: list[str] = []
    for name in names:
        if name == "paper":
            found = _paper_datasets()
        elif name == "d4rl":
            found = list(D4RL_DATASETS)
        elif name in ("d4rl-antmaze", "d4rl-adroit"):
            found = [n for n, spec in D4RL_DATASETS.items() if spec.family == name]
        elif name in OGBENCH_RECIPES or name in D4RL_DATASETS:
            found = [name]
        elif f"{name}-v0" in OGBENCH_RECIPES:
            found = [f"{name}-v0"]
        else:
            raise UnknownDatasetError(
                f"unknown dataset {name!r}; give an OGBench dataset or family ({', '.join(sorted(OGBENCH_RECIPES))}, "
                f"or without -v0), a D4RL dataset ({', '.join(D4RL_DATASETS)}), 'paper', 'd4rl', 'd4rl-antmaze' or 'd4rl-adroit'"
            )
        out.extend(d for d in found if d not in out)
    return out


def dataset_files(dataset: str, *, mirror: str | None = None) -> list[DownloadFile]:
    """The files of ``dataset`` and where they come from (``mirror``: a base URL serving the same names)."""
    from fisher_decorator.datasets.validation import read_npz, validate_ogbench_arrays, validate_transitions

    if dataset in OGBENCH_RECIPES:
        recipe = OGBENCH_RECIPES[dataset]
        base = (mirror or OGBENCH_URL).rstrip("/")

        def verify_ogbench(path: pathlib.Path, shown: str) -> str:
            lengths = validate_ogbench_arrays(read_npz(path), shown, recipe)
            return f"{len(lengths)} episodes, {int(lengths.sum() - len(lengths))} transitions"

        return [DownloadFile(f"{base}/{f}", f, lambda p, f=f: verify_ogbench(p, f)) for f in recipe.files]
    spec = D4RL_DATASETS[dataset]
    url = f"{mirror.rstrip('/')}/{spec.official_file}" if mirror else spec.url

    def verify_d4rl(path: pathlib.Path) -> str:
        from fisher_decorator.datasets.d4rl import load_d4rl

        data = load_d4rl(path, spec)
        validate_transitions(data, f"{spec.official_file}")
        return f"{data['observations'].shape[0]} transitions"

    return [DownloadFile(url, spec.official_file, verify_d4rl)]


def part_path(dest: pathlib.Path) -> pathlib.Path:
    return dest.with_name(f".{dest.name}.part")


def _content_range_start(value: str | None) -> int | None:
    m = re.match(r"bytes (\d+)-", value or "")
    return int(m[1]) if m else None


def fetch(url: str, part: pathlib.Path, *, progress: bool = True, desc: str | None = None) -> int:
    """Bring ``part`` to the complete content of ``url``, resuming from its current size. Returns the size.

    Raises :class:`DownloadError` (the partial file kept, to resume) when the transfer stops short.
    """
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "fisher-decorator", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # the partial file is not a prefix of what the server has: restart
            part.unlink()
            return fetch(url, part, progress=progress, desc=desc)
        raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(f"{url}: cannot connect ({reason})") from None
    with resp:
        start = _content_range_start(resp.headers.get("Content-Range")) if resp.status == 206 else 0
        if start not in (0, offset):
            raise DownloadError(f"{url}: the server resumed at byte {start}, not at {offset}")
        if offset and start == 0:
            print(f"{part.name}: the server does not resume downloads; starting it again", flush=True)
        length = resp.headers.get("Content-Length")
        total = start + int(length) if length is not None else None
        bar = tqdm(
            total=total,
            initial=start,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=desc or part.name,
            disable=not progress,
            dynamic_ncols=True,
        )
        size = start
        try:
            with open(part, "r+b" if start else "wb") as f:
                f.seek(start)
                f.truncate()
                while chunk := resp.read(CHUNK_BYTES):
                    f.write(chunk)
                    size += len(chunk)
                    bar.update(len(chunk))
                f.flush()
                os.fsync(f.fileno())
        except (TimeoutError, OSError, http.client.HTTPException) as exc:
            if isinstance(exc, OSError) and exc.filename is not None:
                raise  # our side (a full disk): the handler names the file
            raise DownloadError(
                f"{url}: download interrupted after {size} of {total if total is not None else '?'} bytes "
                f"({exc or type(exc).__name__}); {part} is kept: run the same command to resume"
            ) from None
        finally:
            bar.close()
    if total is not None and size != total:  # http.client returns short reads without an error
        raise DownloadError(
            f"{url}: download interrupted after {size} of {total} bytes (connection closed); {part} is kept: "
            "run the same command to resume"
        )
    return size


def download_dataset(
    dataset: str, directory: str | os.PathLike, *, mirror: str | None = None, progress: bool = True
) -> list[dict]:
    """Download, verify and name the files of ``dataset`` in ``directory``; files already there are kept.

    Returns one record per file: name, status (``downloaded`` or ``present``), bytes, sha256, summary.
    """
    directory = pathlib.Path(directory).expanduser()
    directory.mkdir(parents=True, exist_ok=True)
    records = []
    for item in dataset_files(dataset, mirror=mirror):
        dest = directory / item.name
        if dest.exists():
            records.append({"name": item.name, "status": "present", "bytes": dest.stat().st_size})
            continue
        part = part_path(dest)
        size = fetch(item.url, part, progress=progress, desc=item.name)
        try:
            summary = item.verify(part)
        except DatasetError as exc:
            part.unlink(missing_ok=True)
            raise DownloadError(
                f"{item.url}: the downloaded file is not {dataset}'s {item.name} and was deleted ({exc})"
            ) from None
        digest = sha256_file(part, CHUNK_BYTES)
        os.replace(part, dest)
        fsync_dir(directory)
        records.append(
            {"name": item.name, "status": "downloaded", "bytes": size, "sha256": digest, "summary": summary}
        )
    return records
