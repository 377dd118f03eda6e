"""The `porter` executable: builds the parser from the commands (``porter.commands``, then plugins', each wrapped
in the same ``Command``), runs the one named, and prints what it raises as a message and an exit code. Each
command's own work lives in its module."""
from __future__ import annotations

import argparse
import errno
import os
import sys
from collections.abc import Sequence

from . import __version__, plugins
from .commands import BUILTIN, BY_NAME, every
from .commands._common import EXIT_CODES, Command, Formatter, global_args
from .errors import EXIT_BROKEN_PIPE, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_OUTPUT, PorterError
from .render import Console

MAIN_HELP = """\
porter ports PyTorch model code to new accelerators by rewriting installed libraries with documented rules,
as one journaled transaction that `porter revert` undoes byte for byte.

examples:
  porter patch sat --dry-run          show the diff and the per-rule table, change nothing
  porter patch sat --verify           patch the installed SwissArmyTransformer and prove the result
  porter patch ./my-model             port a project folder's CUDA-only code (any installed distribution too)
  porter exec -- python train.py      run a program with its folder ported in memory; no file changes
  porter status                       clean / patched / drifted / interrupted / orphaned / damaged
  porter revert                       put every byte back
  porter scan sat                     CUDA-only sites no rule covers, by file:line
  porter scan deepspeed               what porting any installed library (or a folder) would take
  porter rules sat                    the rule catalogue with why / how / upstream / removal
  porter plugins                      installed plugins and what each registers
  porter new-plugin mylib --kind target   a plugin package that installs and passes its tests at once
"""

def build_parser(registry: plugins.Registry,
                 known: dict[str, Command] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="porter", description=MAIN_HELP, epilog=EXIT_CODES, formatter_class=Formatter)
    parser.add_argument("--version", action="version", version=f"porter {__version__}")
    global_args(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in (every(registry) if known is None else known).values():
        command.add_to(sub, registry)
    return parser


def run() -> None:
    """The `porter` executable: ``main()``, then exit with its code."""
    outcome: dict[str, bool] = {}
    code = _flush_output(main(outcome=outcome))
    if outcome.get("quick"):  # a command that leaves nothing to the interpreter's teardown (Command.quick_exit)
        os._exit(code)
    sys.exit(code)


def _flush_output(code: int) -> int:
    """Flush what is still buffered for stdout here, where a failure can still change the exit code: output lost
    to a full disk (`> /dev/full`) is not a success."""
    try:
        if sys.stdout is not None:
            sys.stdout.flush()
    except BrokenPipeError:  # the reader went away (`porter rules | head`): nothing more to tell it
        _silence_stdout()
        code = code or EXIT_BROKEN_PIPE
    except OSError as exc:
        _silence_stdout()
        print(f"error: cannot write standard output ({exc.strerror or exc})", file=sys.stderr, flush=True)
        code = code or EXIT_OUTPUT
    try:
        sys.stderr.flush()
    except (OSError, AttributeError):
        pass
    return code


def _silence_stdout() -> None:
    """Later writes (the final flush included) go nowhere instead of failing on the closed pipe again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout replaced by something without a file descriptor (tests)
        pass


def main(argv: Sequence[str] | None = None, outcome: dict[str, bool] | None = None) -> int:
    """porter's command line; returns the exit code. ``outcome["quick"]`` says whether the process may exit
    without the interpreter's teardown (``run``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if sys.stdout is None:  # started with stdout closed (`porter rules >&-`): every answer would be lost
        print("error: standard output is closed, so porter's answer would be lost; nothing was done", file=sys.stderr)
        return EXIT_OUTPUT
    con = Console()
    pre = argparse.ArgumentParser(add_help=False)
    global_args(pre)
    early, _ = pre.parse_known_args(argv)
    try:
        registry = plugins.load(extra=early.plugin, strict=early.strict, lazy=True, builtin_commands=BY_NAME)
        known = every(registry)
        parser = build_parser(registry, known)
        args = parser.parse_args(argv)
        command = known.get(args.command)
        if outcome is not None:
            outcome["quick"] = command is not None and command.exits_quickly(args)
        if command is not None and command.needs_rules:
            registry.load_lazy(early.strict)
        for info in registry.errors:
            con.note(con.paint("warning:", "yellow") + f" plugin {info.name!r} was not loaded: {info.error}")
        if command is None:
            parser.print_help()
            return EXIT_OK
        return command.handle(args, registry, con)
    except PorterError as exc:
        con.note(con.paint("error:", "red") + f" {exc.message}")
        if exc.hint:
            con.note(f"hint: {exc.hint}")
        return exc.exit_code
    except BrokenPipeError:  # the reader went away (`porter rules | head`): as a writer SIGPIPE ends, in silence
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except OSError as exc:  # a read-only site-packages, a full disk, a vanished file: say which
        return _os_error(exc, con)
    except KeyboardInterrupt:
        changing = {c.name for c in BUILTIN if c.changes_files}.intersection(argv)
        con.note("interrupted" + (f"; `porter status` says what state the files are in, and `porter revert` repairs an "
                                  f"interrupted {next(iter(changing))}" if changing else ""))
        return EXIT_INTERRUPTED


def _os_error(exc: OSError, con: Console) -> int:
    if exc.filename is None and exc.errno in (errno.ENOSPC, errno.EIO, errno.EFBIG, errno.EBADF):
        _silence_stdout()  # writing the answer failed (`> /dev/full`)
        con.note(con.paint("error:", "red") + f" cannot write standard output ({exc.strerror or exc})")
        return EXIT_OUTPUT
    con.note(con.paint("error:", "red") + f" {exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""))
    return EXIT_FAILED


if __name__ == "__main__":
    run()
