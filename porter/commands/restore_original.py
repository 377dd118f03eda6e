"""`porter restore-original TARGET`: put back the files pip installed, from the release's wheel."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import EXIT_OK
from ..target import locate
from ._common import EXIT_CODES, Command, site_packages_arg

if TYPE_CHECKING:
    from ..plugins import Registry
    from ..render import Console


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target")
    p.add_argument("--wheel", type=Path, metavar="FILE", help="the release's wheel (default: pip download it)")
    p.add_argument("--dry-run", action="store_true", help="list the files that differ from RECORD; change nothing")
    site_packages_arg(p, "restore")


def handle(args: argparse.Namespace, registry: Registry, con: Console) -> int:
    from ..restore import restore_original

    installed = locate(registry.target(args.target), args.site_packages, check_version=False)
    done = restore_original(installed, args.wheel, dry_run=args.dry_run, progress=con.note)
    if not done:
        con.print(f"{installed.name} {installed.version}: every file matches its RECORD; nothing to restore")
    elif args.dry_run:
        con.print(con.table(("file", "state"), sorted(done.items())))
        con.print(f"dry run: {len(done)} file(s) differ from {installed.target.distribution}'s RECORD")
    else:
        con.print(f"{installed.name} {installed.version}: restored {len(done)} file(s) from the release's wheel; "
                  f"every file matches its RECORD")
    return EXIT_OK


COMMAND = Command(
    "restore-original", help="put back the files pip installed, from the release's wheel",
    add_arguments=add_arguments, handle=handle,
    description="Replace every file of the target's package that differs from the sha256 in its\n"
                "distribution's RECORD (hand edits, the old Ascend recipe's copied files) or is\n"
                "missing, with the release wheel's copy; each copy is checked against RECORD\n"
                "before the first write. Works on an unpatched install (revert first).",
    epilog="examples:\n  porter restore-original sat --dry-run     list what differs from RECORD\n"
           "  porter restore-original sat               pip downloads the matching wheel\n"
           "  porter restore-original sat --wheel swissarmytransformer-0.4.12-py3-none-any.whl\n\n" + EXIT_CODES,
    changes_files=True)
