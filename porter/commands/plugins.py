"""`porter plugins`: the installed plugins, whether each loaded, and what each registers."""
from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from ..errors import EXIT_OK
from ._common import Command, json_arg

if TYPE_CHECKING:
    from ..plugins import Registry
    from ..render import Console


def handle(args: argparse.Namespace, registry: Registry, con: Console) -> int:
    if args.json:
        con.print(json.dumps([{"name": p.name, "version": p.version, "source": p.source,
                               "registered": p.registered, "error": p.error} for p in registry.plugins], indent=2))
        return EXIT_OK
    rows = []
    for p in registry.plugins:
        what = "; ".join(f"{kind}: {', '.join(keys)}" for kind, keys in p.registered.items()) or "-"
        rows.append((p.name, p.version, p.source, "fail" if p.error else "ok", p.error or what))
    con.print(con.table(("plugin", "version", "source", "status", "registers"), rows, status_col=3))
    return EXIT_OK


COMMAND = Command(
    "plugins", help="installed plugins and what each registers", add_arguments=json_arg, handle=handle,
    epilog="examples:\n  porter plugins\n  PORTER_DISABLE_PLUGINS=visualglm porter plugins\n",
    quick_exit=True)
