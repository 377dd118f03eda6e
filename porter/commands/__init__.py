"""porter's built-in commands, one module each; each module's ``COMMAND`` says all of it (parser, handler,
whether it needs rules, whether it may exit quickly). ``BUILTIN`` is the order `porter --help` lists them in;
plugins' commands follow."""
from __future__ import annotations

from typing import TYPE_CHECKING

from . import exec, new_plugin, patch, plugins, restore_original, revert, rules, run, scan, status, verify
from ._common import Command

if TYPE_CHECKING:
    from ..plugins import Registry

BUILTIN: tuple[Command, ...] = (
    patch.COMMAND,
    exec.COMMAND,
    status.COMMAND,
    revert.COMMAND,
    verify.COMMAND,
    scan.COMMAND,
    restore_original.COMMAND,
    rules.COMMAND,
    run.COMMAND,
    new_plugin.COMMAND,
    plugins.COMMAND,
)

BY_NAME = {command.name: command for command in BUILTIN}


def every(registry: Registry) -> dict[str, Command]:
    """Every command by name: the built-ins (``BUILTIN``'s order), then the plugins'. ``plugins.load`` rejects a
    plugin's command named like a built-in, so none replaces one here."""
    return {**BY_NAME, **{name: Command.of_plugin(extra) for name, extra in registry.commands.items()
                          if name not in BY_NAME}}
