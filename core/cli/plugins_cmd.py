"""``diffcomp plugins``: what is installed and what each plug-in registered."""

from __future__ import annotations

import argparse
import json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plugins", help="list installed plug-ins and what each registered",
                       description="List installed diffcomp plug-ins (built-ins included), their "
                                   "distribution and version, and what each registered.")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..registry import get_registry

    infos = get_registry().plugins()  # a broken plug-in is a warning (one line, see cli.clean_warnings), not fatal
    if args.json:
        print(json.dumps([info.as_dict() for info in infos], indent=2))
        return 0
    for info in infos:
        origin = f"{info.distribution} {info.version}" if info.distribution else "(from Python)"
        print(f"{info.name}  [{origin}]")
        if info.error:
            print(f"    FAILED TO LOAD: {info.error}")
        for kind, names in info.registered.items():
            print(f"    {kind}s: {', '.join(names)}")
    return 0
