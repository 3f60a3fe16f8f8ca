"""The ``fidec`` command line: one sub-command per module, each adding itself with ``register``.

A command module defines ``register(subparsers)``, which adds its parser and sets
``func(args) -> int | None`` as the parser default. Add new modules to ``COMMAND_MODULES``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = (
    "fisher_decorator.info",
    "fisher_decorator.datasets.cli",
    "fisher_decorator.commands.train",
    "fisher_decorator.commands.evaluate",
    "fisher_decorator.commands.plot",
    "fisher_decorator.commands.sweep",
    "fisher_decorator.commands.report",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fidec",
        description="Fisher Decorator (FiDec): offline RL with a Fisher-penalised residual policy.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
