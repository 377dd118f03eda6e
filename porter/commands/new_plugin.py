"""`porter new-plugin NAME --kind target|model`: write a plugin package that installs and passes its tests at
once."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import EXIT_OK
from ._common import Command

if TYPE_CHECKING:
    from ..plugins import Registry
    from ..render import Console


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="the target (the library's distribution name) or the model, as users will type it")
    p.add_argument("--kind", choices=("target", "model"), required=True)
    p.add_argument("--dir", type=Path, default=Path("."), help="where porter-NAME/ is written (default: here)")


def handle(args: argparse.Namespace, registry: Registry, con: Console) -> int:
    from ..scaffold import scaffold

    folder = scaffold(args.name, args.kind, args.dir)
    con.print(f"wrote the {args.kind} plugin {args.name!r} in {folder}\n"
              f"next: cd {folder} && pip install -e . && python -m pytest tests   (then see `porter plugins`)")
    return EXIT_OK


COMMAND = Command(
    "new-plugin", help="write a plugin package that installs and passes its tests at once",
    add_arguments=add_arguments, handle=handle,
    description="target: a Target for the library NAME, one documented rule with its source-in /\n"
                "source-out tests, a patch/revert round trip on a copy of the library, a check.\n"
                "model: a Model with a `train` recipe that fits a tiny network on any device, and\n"
                "its tests. Written to DIR/porter-NAME; `pip install -e` it to register it.",
    epilog="examples:\n  porter new-plugin mylib --kind target\n"
           "  porter new-plugin my-model --kind model --dir plugins\n"
           "  cd porter-mylib && pip install -e . && python -m pytest tests\n")
