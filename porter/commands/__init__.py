"""porter's built-in commands, one module each; each module's ``COMMAND`` says all of it (parser, handler,
whether it needs rules, whether it may exit quickly). ``BUILTIN`` is the order `porter --help` lists them in;
plugins' commands follow."""
from . import exec, new_plugin, patch, plugins, restore_original, revert, rules, run, scan, status, verify
from ._common import Command

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
