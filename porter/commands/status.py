"""`porter status [TARGET]`: the journal compared with the files on disk (clean, patched, drifted, interrupted,
orphaned, damaged), and patches no loaded plugin can read."""
from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from .. import state
from ..errors import EXIT_OK
from ._common import EXIT_CODES, Command, json_arg, site_packages_arg

if TYPE_CHECKING:
    from ..plugins import Registry
    from ..render import Console


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", nargs="?", help="one target, distribution or ./folder (default: every registered target "
                                             "that is installed, and every distribution porter patched)")
    json_arg(p)
    site_packages_arg(p, 'read')


def handle(args: argparse.Namespace, registry: Registry, con: Console) -> int:
    from ..generic import status_targets, unknown_journals

    statuses = [state.status(i) for i in status_targets(args.target, registry, args.site_packages)]
    unknown = [] if args.target else unknown_journals(registry, args.site_packages)
    if args.json:
        con.print(json.dumps([s.to_json() for s in statuses] +
                             [{"target": j.parent.name, "state": "unknown", "journal": str(j)} for j in unknown],
                             indent=2))
        return EXIT_OK
    if not statuses:
        con.print("no registered target is installed here")
    for s in statuses:
        _print_status(s, con)
    for journal in unknown:
        con.print(f"{journal.parent.name}: {con.status('unknown')} - {journal} holds a patch, but no loaded plugin "
                  f"registers that target and no distribution of that name is installed (if you uninstalled it, the "
                  f"folder {journal.parent} can be deleted)")
    return EXIT_OK


def _print_status(s, con: Console) -> None:
    """One target's state, its files where they are not simply patched, and what to do about it."""
    con.print(f"{s.target}{' ' + s.version if s.version else ''}: {con.status(s.state)}" +
              (f" (patched {s.journal.created}, {len(s.journal.rules)} rules)" if s.journal else ""))
    if s.files and s.state != "patched":
        con.print(con.table(("file", "state"), sorted(s.files.items()), status_col=1))
    if s.changed_since_install:
        con.print(f"changed since install (differ from {s.target}'s RECORD): " + ", ".join(s.changed_since_install))
    if s.state == "interrupted":
        con.print(f"repair with: porter revert {s.target} (or run porter patch {s.target} again)")
    if s.state == "orphaned":
        con.print(f"the journal is gone but the saved originals are not: porter revert {s.target} restores them")
    if s.state == "damaged":
        con.print("saved originals are missing or altered: " + ("restore the files from version control" if
                  s.target.startswith("/") else "reinstall the package to get pristine files"))


COMMAND = Command(
    "status", help="clean / patched / drifted / interrupted / orphaned / damaged", add_arguments=add_arguments,
    handle=handle, description="Compare the journal with the files on disk.",
    epilog="examples:\n  porter status\n  porter status sat --json\n\n" + EXIT_CODES,
    needs_rules=False, quick_exit=True)
