"""``fidec info``: versions, the CPU, and which op backends this install can use."""

from __future__ import annotations

import argparse
import json

from fisher_decorator.info import environment


def _run(args: argparse.Namespace) -> int:
    env = environment()
    if args.json:
        print(json.dumps(env, indent=2))
        return 0
    for key, value in env.items():
        if key == "backends":
            print("backends:")
            for name, state in value.items():
                print(f"  {name:<10} {state}")
        else:
            print(f"{key}: {value}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("info", help="versions, CPU and the op backends available here")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(func=_run)
