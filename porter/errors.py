"""One family of errors, raised where the fault is found and printed once by the CLI."""
from __future__ import annotations

# Exit codes, documented in `porter --help`.
EXIT_OK = 0
EXIT_FAILED = 1  # a verify stage or check failed
EXIT_USAGE = 2  # bad arguments (argparse uses 2 as well)
EXIT_PLAN = 3  # the rules cannot be applied: required rule unmatched, conflict, bad version
EXIT_STATE = 4  # the installed files are not in a state porter may touch: drift, interrupted, locked
EXIT_PLUGIN = 5  # a plugin failed to load (fatal only under --strict)
EXIT_NOT_FOUND = 6  # unknown target, rule, model or recipe; package not installed
EXIT_INPUT = 7  # a user's input file is unusable: data set, checkpoint, tokenizer, image
EXIT_OUTPUT = 8  # a path the user asked porter to write (--save, --report, --out ...) cannot be written
EXIT_INTERRUPTED = 130  # Ctrl-C: 128 + SIGINT, as a shell reports it
EXIT_BROKEN_PIPE = 141  # the reader of stdout went away: 128 + SIGPIPE, as a shell reports a writer SIGPIPE ended


class PorterError(Exception):
    """An error a user can act on: what went wrong, and what to do about it."""

    exit_code = EXIT_FAILED

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


class InputError(PorterError):
    """A file the user brought (data, checkpoint, tokenizer) cannot be used; the message names it."""

    exit_code = EXIT_INPUT


class OutputError(PorterError):
    """A path the user named for porter to write (a run folder, a report, an output file) cannot be written; the
    message names it and the reason (errno's words)."""

    exit_code = EXIT_OUTPUT
