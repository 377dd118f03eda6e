"""What the built-in commands share: the `Command` record each command module fills, the parser helpers (TARGET's
help, `--site-packages`, the global flags) and how TARGET and its rules are found."""
from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import exit_code_help

if TYPE_CHECKING:  # annotations only: the command modules load before any rule, and stay light
    from ..plugins import Command as PluginCommand
    from ..plugins import Registry
    from ..render import Console
    from ..target import InstalledTarget

EXIT_CODES = exit_code_help()

TARGET_HELP = ("a registered target (sat), a project folder written as a path (./my-model, /src/repo), or any "
               "installed distribution by its pip name (PyHessian)")


class Formatter(argparse.RawDescriptionHelpFormatter):
    pass


@dataclass(frozen=True)
class Command:
    """A `porter` command: everything the executable needs to know of it, in one record. Each built-in command's
    module fills one (its ``COMMAND``); a plugin registers the smaller ``porter.plugins.Command``, which `porter`
    wraps in one of these (``Command.of_plugin``), so both are parsed and run the same way."""

    name: str  # what users type: `porter status`
    help: str  # its line in `porter --help`
    add_arguments: Callable[[argparse.ArgumentParser], None]
    handle: Callable[[argparse.Namespace, Registry, Console], int]  # does the work, returns the exit code
    description: str | None = None
    epilog: str | Callable[[Registry], str] | None = None  # a callable: what it lists depends on the plugins
    # False: the plugins' rule and check hooks never run (nor import libcst)
    needs_rules: bool = True
    # True (or true for the parsed arguments): nothing of the command outlives it (no temporary folder, child
    # process or log handler), so the `porter` executable may exit without the interpreter's teardown
    quick_exit: bool | Callable[[argparse.Namespace], bool] = False
    changes_files: bool = False  # an interruption leaves something for `porter status` and `porter revert`

    def add_to(self, sub: Any, registry: Registry) -> argparse.ArgumentParser:
        """Its sub-parser, under `porter`'s ``add_subparsers()``."""
        epilog = self.epilog(registry) if callable(self.epilog) else self.epilog
        parser = sub.add_parser(self.name, help=self.help, formatter_class=Formatter, description=self.description,
                                epilog=epilog)
        self.add_arguments(parser)
        return parser

    def exits_quickly(self, args: argparse.Namespace) -> bool:
        return self.quick_exit(args) if callable(self.quick_exit) else self.quick_exit

    @classmethod
    def of_plugin(cls, extra: PluginCommand) -> Command:
        """A plugin's command as this record: no description or epilog, needs the rules (it may use any), never
        exits quickly, changes no files `porter status` tracks."""

        def handle(args: argparse.Namespace, registry: Registry, con: Console) -> int:
            if registry.commands.get(extra.name) is not extra:  # its plugin failed registering rules or checks
                from ..errors import NotFoundError

                raise NotFoundError(f"command {extra.name!r} is not available: its plugin was not loaded (see the "
                                    "warning above)")
            return extra.run(args, registry)

        return cls(extra.name, help=extra.help, add_arguments=extra.add_arguments, handle=handle)


def global_args(parser: argparse.ArgumentParser) -> None:
    """The options read before the plugins load (they say which load, and how strictly)."""
    parser.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                        help="load a plugin from a module or .py file (repeatable)")
    parser.add_argument("--strict", action="store_true", help="a plugin that fails to load is fatal")


def site_packages_arg(p: argparse.ArgumentParser, verb: str = "patch") -> None:
    p.add_argument("--site-packages", type=Path, metavar="DIR",
                   help=f"{verb} the copy installed in DIR (a site-packages folder) instead of this environment's")


def json_arg(p: Any, help: str | None = None) -> None:
    p.add_argument("--json", action="store_true", help=help)


def target_of(args: argparse.Namespace, registry: Registry, check_version: bool = True) -> InstalledTarget:
    """The TARGET argument as an installed target (``--site-packages`` and ``--exclude`` where given)."""
    from ..generic import resolve

    return resolve(args.target, registry, args.site_packages, check_version=check_version,
                   exclude=tuple(getattr(args, "exclude", None) or ()))


def rules_for(registry: Registry, installed: InstalledTarget) -> list:
    """A registered target's rules; for a distribution or folder, the rules for any code."""
    from ..rules import ANY_TARGET

    return registry.rules_for(ANY_TARGET if installed.target.generic else installed.name)


def label(installed: InstalledTarget) -> str:
    """How messages name a target: 'sat 0.4.12', 'PyHessian 0.1', or a folder's path."""
    if installed.target.kind == "folder":
        return str(installed.root)
    if installed.target.kind == "distribution":
        return f"{installed.target.distribution} {installed.version}"
    return f"{installed.name} {installed.version}"
