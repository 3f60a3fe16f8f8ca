"""The ``fidec`` command line: one sub-command per module, each adding itself with ``register``.

A command module defines ``register(subparsers)``, which adds its parser and sets
``func(args) -> int | None`` as the parser default. Add new modules to ``COMMAND_MODULES``.

Errors: :func:`main` is the one place that turns an exception into what the user sees, one line
``fidec <command>: error: <file or argument>: <problem>`` and exit status 2 (1 for an unexpected
error, which names itself as such). ``FIDEC_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import json
import os
import pickle
import re
import sys
import zipfile

COMMAND_MODULES = (
    "fisher_decorator.commands.info",
    "fisher_decorator.commands.data",
    "fisher_decorator.commands.train",
    "fisher_decorator.commands.finetune",
    "fisher_decorator.commands.evaluate",
    "fisher_decorator.commands.plot",
    "fisher_decorator.commands.export",
    "fisher_decorator.commands.sweep",
    "fisher_decorator.commands.report",
)
DEBUG_ENV = "FIDEC_DEBUG"


def _version() -> str:
    from fisher_decorator import __version__

    try:
        import torch

        return f"fidec {__version__} (torch {torch.__version__}, Python {sys.version.split()[0]})"
    except ImportError:  # pragma: no cover - torch is a dependency
        return f"fidec {__version__}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fidec",
        description="Fisher Decorator (FiDec): offline RL with a Fisher-penalised residual policy.",
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _os_error(exc: OSError) -> str:
    """``<file>: <problem>`` for an OSError (disk full, permissions, a directory where a file was expected)."""
    problem = exc.strerror or str(exc)
    if exc.errno == errno.ENOSPC and "no space left" not in problem.lower():
        problem = "no space left on device"
    problem = problem[:1].lower() + problem[1:]
    return f"{exc.filename}: {problem}" if exc.filename is not None else _one_line(exc)


def error_message(exc: BaseException) -> tuple[str, int]:
    """(the one-line message, the exit status) for an exception that reached :func:`main`."""
    from fisher_decorator.config import ConfigError

    chain = []
    e: BaseException | None = exc
    while e is not None and e not in chain:
        chain.append(e)
        e = e.__cause__ or e.__context__
    for e in chain:  # a full disk anywhere in the chain is what the user needs to know
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EFBIG) and e.filename is not None:
            return _os_error(e), 2
    if isinstance(exc, ImportError):
        return _one_line(exc), 2  # an optional dependency that is not installed; the message says which
    if isinstance(exc, json.JSONDecodeError):
        return f"not valid JSON ({_one_line(exc)})", 2
    if isinstance(exc, (FileNotFoundError, FileExistsError, IsADirectoryError, PermissionError)):
        if exc.filename is not None and exc.strerror and str(exc).startswith("[Errno"):
            return _os_error(exc), 2
        return _one_line(exc), 2
    if isinstance(exc, OSError):
        return _os_error(exc) if exc.filename is not None else _one_line(exc), 2
    if isinstance(exc, KeyError) and type(exc) is KeyError:
        return f"missing entry {exc}", 2
    if isinstance(exc, (ConfigError, ValueError, KeyError, zipfile.BadZipFile, pickle.UnpicklingError)):
        return _one_line(exc), 2
    if type(exc).__name__ in ("CheckpointError", "DatasetNotFoundError", "ManifestError"):
        return _one_line(exc), 2
    return f"unexpected {type(exc).__name__}: {_one_line(exc)} ({DEBUG_ENV}=1 shows the traceback)", 1


def command_name(args: argparse.Namespace) -> str:
    parts = ["fidec", args.command]
    for attr in ("data_command",):
        if getattr(args, attr, None):
            parts.append(getattr(args, attr))
    return " ".join(parts)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (
        BrokenPipeError
    ):  # `fidec data list | head`: the reader is gone; say nothing (Python's docs' recipe)
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as exc:
        if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            raise
        message, status = error_message(exc)
        print(f"{command_name(args)}: error: {re.sub(r'^error: ', '', message)}", file=sys.stderr)
        return status
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
