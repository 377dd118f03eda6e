"""`porter revert [TARGET]`: restore every patched file byte for byte from the saved originals."""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from .. import patcher
from ..errors import EXIT_OK, EXIT_STATE
from ._common import EXIT_CODES, Command, label, site_packages_arg

if TYPE_CHECKING:
    from ..plugins import Registry
    from ..render import Console


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", nargs="?", help="one target, distribution or ./folder (default: every patched target "
                                             "and distribution)")
    p.add_argument("--force", action="store_true",
                   help="restore the originals even over files changed since; with a damaged journal (unreadable, "
                        "or not listing every saved original), restore every saved original on disk instead")
    site_packages_arg(p, 'revert')


def handle(args: argparse.Namespace, registry: Registry, con: Console) -> int:
    from ..generic import status_targets, unknown_journals

    reverted = 0
    for installed in status_targets(args.target, registry, args.site_packages):
        outcome = patcher.revert(installed, force=args.force, progress=con.note)
        if outcome.action == "reverted":
            reverted += 1
            source = "; ".join(outcome.notes) or "every journaled file matches its original sha256"
            con.print(f"{label(installed)}: restored {len(outcome.files)} file(s); {source}")
        elif args.target:
            con.print(f"{label(installed)}: not patched; nothing to revert")
    unknown = [] if args.target else unknown_journals(registry, args.site_packages)
    for journal in unknown:
        con.note(f"not reverted: {journal} holds a patch of {journal.parent.name!r}, but no loaded plugin registers "
                 f"that target; enable its plugin and run this again")
    if not args.target and not reverted and not unknown:
        con.print("nothing to revert")
    return EXIT_STATE if unknown else EXIT_OK


COMMAND = Command(
    "revert", help="restore every patched file byte for byte", add_arguments=add_arguments, handle=handle,
    description="Restore the saved originals, check their sha256, drop the journal.\n"
                "Refuses, naming the files, when a file matches neither its original nor its\n"
                "patched version (hand edit, reinstall, upgrade) unless --force.",
    epilog="examples:\n  porter revert\n  porter revert sat --force\n\n" + EXIT_CODES,
    needs_rules=False, quick_exit=True, changes_files=True)
