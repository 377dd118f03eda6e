"""`porter verify TARGET`: prove a patched target (journal, compile, import, fixpoint, the plugin's checks)."""
from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from ..errors import EXIT_FAILED, EXIT_OK, UsageError
from ._common import EXIT_CODES, TARGET_HELP, Command, json_arg, rules_for, site_packages_arg, target_of

if TYPE_CHECKING:
    from ..plugins import Registry
    from ..render import Console
    from ..target import InstalledTarget


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", help=TARGET_HELP)
    json_arg(p)
    p.add_argument("--test-cmd", metavar="CMD",
                   help="also run CMD (a shell command: the project's tests, a script) against the original and the "
                        "ported tree and compare: the same exit status, and with pytest the same tests passing. It "
                        "runs in porter's environment: `python` is the first on PATH (name the interpreter that has "
                        "the project's dependencies); a folder's command runs in the folder")
    p.add_argument("--timeout", type=float, default=1800, metavar="S",
                   help="--test-cmd: seconds each run may take (default 1800)")
    site_packages_arg(p, 'verify')


def handle(args: argparse.Namespace, registry: Registry, con: Console) -> int:
    if args.timeout <= 0 or args.timeout != args.timeout:
        raise UsageError(f"--timeout {args.timeout}: must be a positive number of seconds")
    return report_verify(target_of(args, registry), registry, con, args.json, args.test_cmd, args.timeout)


def report_verify(installed: InstalledTarget, registry: Registry, con: Console, as_json: bool,
                  test_cmd: str | None = None, timeout: float = 1800) -> int:
    """Verify, print the stages' results (a table, or JSON), and return the exit code (`porter patch --verify`
    too)."""
    from ..verify import verify

    report = verify(installed, rules_for(registry, installed), registry.checks_for(installed.name),
                    progress=con.note, test_cmd=test_cmd, timeout=timeout)
    if as_json:
        con.print(json.dumps(report.to_json(), indent=2))
    else:
        rows = [(r.stage, r.item, r.status, r.detail) for r in report.results]
        con.print(con.table(("stage", "item", "result", "detail"), rows, status_col=2))
        failed = sum(r.status == "fail" for r in report.results)
        con.print(f"verify {installed.name}: " + (con.paint("passed", "green") if report.ok
                                                   else con.paint(f"{failed} failed", "red")))
    return EXIT_OK if report.ok else EXIT_FAILED


COMMAND = Command(
    "verify", help="prove a patched target: journal, compile, import, fixpoint, checks", add_arguments=add_arguments,
    handle=handle,
    description="Stages: files vs journal; compile; import of every patched module in a fresh\n"
                "interpreter; the rules are a fixpoint; then the target plugin's checks.",
    epilog="examples:\n  porter verify sat\n  porter verify sat --json\n\n" + EXIT_CODES)
