"""`porter exec -- COMMAND ...`: run a program with its code ported in memory, through an import hook; no file
changes."""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ..errors import UsageError
from ._common import EXIT_CODES, Command, rules_for, site_packages_arg

if TYPE_CHECKING:
    from ..plugins import Registry
    from ..render import Console
    from ..target import InstalledTarget


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", action="append", default=[], metavar="DIST|PATH",
                   help="also port this installed distribution (pip name) or folder (a path); repeatable")
    p.add_argument("--no-script-folder", action="store_true", help="do not port the program's own folder")
    p.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                   help="leave out files matching GLOB in the folders and distributions ported")
    site_packages_arg(p, 'find --target distributions in')
    p.add_argument("program", nargs=argparse.REMAINDER, metavar="-- COMMAND ...",
                   help="the program and its arguments, after --")


def handle(args: argparse.Namespace, registry: Registry, con: Console) -> int:
    from .. import execute

    command = list(args.program)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise UsageError("no program to run", hint="porter exec [--target DIST|PATH] -- python SCRIPT.py ARGS")
    flag = execute.isolating_flags(command)
    if flag:
        raise UsageError(f"python {flag} ignores PYTHONPATH, through which porter exec reaches the program; nothing "
                         "was run", hint=f"drop {flag}")
    execute.require_command(command[0])  # before any planning; run() checks again with the program's environment
    targets = _targets(args, command, registry)
    prepared = execute.prepare(command, targets, lambda: rules_for(registry, targets[0]), registry.source_digest(),
                               progress=con.note)
    con.note(f"porter exec: {prepared.files} file(s) ported in memory ({', '.join(prepared.targets)})"
             + ("" if prepared.files else "; no rule changes them, so the program runs as it is"))
    return execute.run(command, prepared)


def _targets(args: argparse.Namespace, command: list[str], registry: Registry) -> list[InstalledTarget]:
    """What is ported: the program's own folder (unless --no-script-folder), then each --target."""
    from .. import execute
    from ..generic import resolve

    exclude = tuple(args.exclude)
    targets: list[InstalledTarget] = []
    folder = None if args.no_script_folder else execute.own_folder(command)
    if folder is not None:
        targets.append(resolve(str(folder), registry, exclude=exclude))
    for spec in args.target:
        installed = resolve(spec, registry, args.site_packages, exclude=exclude)
        if not installed.target.generic:
            raise UsageError(f"--target {spec}: {installed.name} is a plugin's target, patched with its own rules",
                             hint=f"`porter patch {installed.name}` patches it on disk; `porter run` ports it in "
                                  "memory for a model's recipes")
        targets.append(installed)
    if not targets:
        raise UsageError("nothing to port: the command names no *.py script and no --target was given",
                         hint="name the code with --target DIST|PATH")
    return targets


COMMAND = Command(
    "exec", help="run a program with its code ported in memory; no file changes", add_arguments=add_arguments,
    handle=handle,
    description="Run COMMAND with the rules for any code applied in memory to the program's own\n"
                "folder (the folder of the first *.py argument, or of `-m MODULE` in this folder)\n"
                "and to each --target, through an import hook that reaches every Python process\n"
                "the program starts (multiprocessing, torchrun, DeepSpeed's launcher). No file\n"
                "of theirs changes; plans and the boot file live in porter's cache. Code not\n"
                "named is not rewritten: other libraries see the machine as it is.\n"
                "Exit status and output are the program's (127: the command was not found).",
    epilog="examples:\n  porter exec -- python cli_demo.py --quant 4\n"
           "  porter exec --target PyHessian -- python examples/hessian.py\n"
           "  porter exec --target ../VisualGLM-6B -- python -m finetune --help\n"
           "  porter exec -- torchrun --nproc_per_node 2 train.py\n\n" + EXIT_CODES)
