"""Benchmark session plumbing: rows collected per benchmark file, written to results/ at the end."""

from __future__ import annotations

import collections
import pathlib

import pytest
import torch

from benchmarks.common import machine, write_rows

_ROWS: dict[str, list[dict]] = collections.defaultdict(list)


@pytest.fixture
def bench_rows(request):
    """Append rows here; they are written to results/<file stem without bench_>-<machine>.json."""
    return _ROWS[pathlib.Path(str(request.fspath)).stem.removeprefix("bench_")]


@pytest.fixture(scope="session")
def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def pytest_sessionfinish(session, exitstatus):
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    for name, rows in _ROWS.items():
        if rows:
            path = write_rows(name, machine(dev), rows)
            session.config.pluginmanager.get_plugin("terminalreporter").write_line(
                f"benchmark rows: {len(rows)} written to {path}"
            )
