"""One family of errors, raised where the fault is found and printed once by the CLI."""
from __future__ import annotations

from enum import IntEnum


class Exit(IntEnum):
    """porter's exit codes. Their descriptions (``DESCRIPTIONS``) make the table of `porter --help` and the
    README's list (``exit_code_markdown``; a test holds the README to it): there is one place to change a code."""

    OK = 0
    FAILED = 1
    USAGE = 2  # argparse uses 2 as well
    PLAN = 3
    STATE = 4
    PLUGIN = 5
    NOT_FOUND = 6
    INPUT = 7
    OUTPUT = 8
    COMMAND_NOT_FOUND = 127  # porter exec: as a shell says a command was not found
    INTERRUPTED = 130  # Ctrl-C: 128 + SIGINT, as a shell reports it
    BROKEN_PIPE = 141  # the reader of stdout went away: 128 + SIGPIPE, as a shell reports a writer SIGPIPE ended


DESCRIPTIONS = {
    Exit.OK: "success (also: nothing to do)",
    Exit.FAILED: "a verify stage or check failed",
    Exit.USAGE: "usage error (a bad or missing option; checked before anything runs)",
    Exit.PLAN: "the rules cannot be applied (required rule unmatched, conflict, unsupported version, a file that "
               "does not parse: the message names it and its line)",
    Exit.STATE: "the installed files are in a state porter will not touch (drifted, interrupted, orphaned, damaged, "
                "locked) or cannot write (immutable, read-only, a full disk: the message names the file)",
    Exit.PLUGIN: "a plugin failed to load (with --strict)",
    Exit.NOT_FOUND: "unknown target, rule, model or recipe; package not installed; no such folder",
    Exit.INPUT: "an input file cannot be used (data set, checkpoint, tokenizer, image, pyproject.toml): the message "
                "names it",
    Exit.OUTPUT: "a path to write (--save, --report, --unsupported, ...) cannot be written: the message names it "
                 "and why",
    Exit.COMMAND_NOT_FOUND: "porter exec: the command was not found (otherwise porter exec exits with the "
                            "program's own status)",
    Exit.INTERRUPTED: "interrupted (Ctrl-C)",
    Exit.BROKEN_PIPE: "the reader of the output went away (`porter rules | head`): nothing is printed",
}


def exit_code_help(width: int = 108) -> str:
    """The table `porter --help` ends with."""
    import textwrap

    lines = ["exit codes:"]
    for code in Exit:
        lead = f"  {int(code)}  "
        first, *rest = textwrap.wrap(DESCRIPTIONS[code], width - len(lead))
        lines.append(lead + first)
        lines += [" " * len(lead) + line for line in rest]
    return "\n".join(lines) + "\n"


def exit_code_markdown() -> str:
    """The README's list of exit codes."""
    return "\n".join(f"- `{int(code)}` {DESCRIPTIONS[code]}" for code in Exit) + "\n"


# the names the code base uses
EXIT_OK = Exit.OK
EXIT_FAILED = Exit.FAILED
EXIT_USAGE = Exit.USAGE
EXIT_PLAN = Exit.PLAN
EXIT_STATE = Exit.STATE
EXIT_PLUGIN = Exit.PLUGIN
EXIT_NOT_FOUND = Exit.NOT_FOUND
EXIT_INPUT = Exit.INPUT
EXIT_OUTPUT = Exit.OUTPUT
EXIT_COMMAND_NOT_FOUND = Exit.COMMAND_NOT_FOUND
EXIT_INTERRUPTED = Exit.INTERRUPTED
EXIT_BROKEN_PIPE = Exit.BROKEN_PIPE


class PorterError(Exception):
    """An error a user can act on: what went wrong, and what to do about it."""

    exit_code: int = EXIT_FAILED

    def __init__(self, message: str, hint: str | None = None, exit_code: int | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        if exit_code is not None:
            self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):  # hint and exit code survive pickling (planning in worker processes)
        return type(self), (self.message, self.hint, self.exit_code)


class PlanError(PorterError):
    exit_code = EXIT_PLAN


class StateError(PorterError):
    exit_code = EXIT_STATE


class PluginError(PorterError):
    exit_code = EXIT_PLUGIN


class NotFoundError(PorterError):
    exit_code = EXIT_NOT_FOUND


class UsageError(PorterError):
    """Options that do not fit together or make no sense, found after argparse: exit 2, like argparse's own."""

    exit_code = EXIT_USAGE


class InputError(PorterError):
    """A file the user brought (data, checkpoint, tokenizer) cannot be used; the message names it."""

    exit_code = EXIT_INPUT


class OutputError(PorterError):
    """A path the user named for porter to write (a run folder, a report, an output file) cannot be written; the
    message names it and the reason (errno's words)."""

    exit_code = EXIT_OUTPUT
