"""`porter patch TARGET`: plan every rule in memory, then apply them as one journaled transaction."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from .. import patcher, state
from ..errors import EXIT_OK, UsageError
from ..journal import read_original
from ._common import EXIT_CODES, TARGET_HELP, Command, label, rules_for, site_packages_arg, target_of
from .verify import report_verify

if TYPE_CHECKING:
    from ..plugins import Registry
    from ..render import Console
    from ..target import InstalledTarget


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", help=TARGET_HELP)
    p.add_argument("--dry-run", action="store_true", help="print the diff and the per-rule table; write nothing")
    p.add_argument("--report", type=Path, metavar="FILE.json|FILE.csv",
                   help="write the plan (diff, matches) as JSON, or for a .csv name the change list in "
                        "msFmkTransplt's columns (File, Start Line, End Line, Operation Type = rule id, Message); it "
                        "patches too unless --dry-run is given")
    p.add_argument("--only", metavar="RULE,...", help="apply only these rules: ids, or dotted prefixes (sat.device: "
                                                      "every sat.device.* rule); on a patched target, with --force: "
                                                      "replace the patch with just these")
    p.add_argument("--skip", metavar="RULE,...", help="leave out these rules (ids or dotted prefixes)")
    p.add_argument("--force", action="store_true", help="let --only replace a patch made with other rules")
    p.add_argument("--accept-modified", action="store_true",
                   help="patch files that differ from what pip installed (their RECORD sha256), e.g. files an older "
                        "recipe copied over; revert then restores those modified files")
    p.add_argument("--verify", action="store_true", help="run `porter verify` after patching")
    p.add_argument("--json", action="store_true", help="print the outcome as JSON")
    p.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                   help="a folder or distribution: leave out files matching GLOB (a path relative to its root, or one "
                        "of its folders); repeatable; a folder's pyproject.toml adds [tool.porter] exclude")
    p.add_argument("--unsupported", type=Path, metavar="FILE.csv",
                   help="write what no rule can port (custom CUDA extensions, triton, CUDA graphs, ...) in "
                        "msFmkTransplt's unsupported_op.csv columns (File, Start Line, End Line, OP, Tips)")
    site_packages_arg(p, 'patch')


def handle(args: argparse.Namespace, registry: Registry, con: Console) -> int:
    installed = target_of(args, registry)
    rules = rules_for(registry, installed)
    only = _selection(args, installed, rules, con)
    if args.verify and args.dry_run:
        raise UsageError("--verify proves a patch on disk, and --dry-run writes none", hint="drop one of them")
    from ..outputs import check_output_file

    for option, path in (("--report", args.report), ("--unsupported", args.unsupported)):
        if path:
            check_output_file(path, option)  # before the patch, not after it
            _not_in_target(installed, path, option)
    if args.dry_run:
        return _dry_run(args, installed, rules, only, con)
    outcome = patcher.apply_patch(installed, rules, only, progress=con.note,
                                  need_plan=bool(args.report or args.unsupported),
                                  force=args.force, accept_modified=args.accept_modified)
    if args.report and outcome.plan:
        outcome.plan.write_report(args.report)
    if args.unsupported and outcome.plan:
        _write_unsupported(outcome.plan, args.unsupported, con)
    for note in outcome.notes:
        con.note(note)
    if args.json:
        con.print(json.dumps({"action": outcome.action, "files": outcome.files, "target": installed.name,
                              "version": installed.version, "site_packages": str(installed.site_packages)}, indent=2))
    else:
        _print_outcome(args, installed, outcome, con)
    if args.verify:
        return report_verify(installed, registry, con, as_json=False)
    return EXIT_OK


def _selection(args: argparse.Namespace, installed: InstalledTarget, rules: list, con: Console):
    """The rules --only and --skip leave, each entry an id or a dotted prefix; what was made of them is said."""
    from ..plan import expand_selection

    entries = {option: [r.strip() for r in (value or "").split(",") if r.strip()]
               for option, value in (("--only", args.only), ("--skip", args.skip))}
    for option, value in (("--only", args.only), ("--skip", args.skip)):
        if value is not None and not entries[option]:
            raise UsageError(f"{option} names no rule", hint=f"`porter rules {args.target}` lists them")
    only, said = expand_selection(installed, rules, entries["--only"], entries["--skip"])
    for line in said:
        con.note(line)
    return only


def _dry_run(args: argparse.Namespace, installed: InstalledTarget, rules: list, only, con: Console) -> int:
    from ..plan import make_plan

    current = state.status(installed)
    plan = make_plan(installed, rules, only, read=read_original(installed, current.journal))
    if args.report:
        plan.write_report(args.report)
    if args.unsupported:
        _write_unsupported(plan, args.unsupported, con)
    if args.json:
        con.print(json.dumps(plan.to_json(), indent=2))
        return EXIT_OK
    con.print(con.diff(plan.diff()))
    _print_plan_table(plan, con)
    con.note(f"dry run: {len(plan.changed)} file(s) would change in {installed.package_dir} "
             f"({label(installed)}, currently {current.state})")
    return EXIT_OK


def _print_outcome(args: argparse.Namespace, installed: InstalledTarget, outcome, con: Console) -> None:
    if outcome.plan and outcome.action in ("applied", "repatched"):
        _print_plan_table(outcome.plan, con)
    words = {"applied": f"patched {len(outcome.files)} file(s)", "repatched": f"re-patched {len(outcome.files)} file(s)",
             "already-patched": "already patched; nothing to do", "nothing-to-change": "the rules change nothing"}
    con.print(f"{label(installed)}: {words[outcome.action]} in {installed.package_dir}")
    if outcome.action in ("applied", "repatched"):
        con.print(f"undo with: porter revert {installed.name}" +
                  (f" --site-packages {installed.site_packages}" if args.site_packages else ""))


def _not_in_target(installed: InstalledTarget, path: Path, option: str) -> None:
    """A report must not land on a file the patch is about (the target's own code, porter's state): written after
    the patch, it would leave the target drifted."""
    from ..errors import OutputError
    from ..target import STATE_DIR_NAME

    where = Path(path).resolve()
    roots = [installed.root / top for top in installed.tops] if installed.target.kind != "folder" else [installed.root]
    for root in [*roots, installed.root / STATE_DIR_NAME]:
        root = root.resolve()
        if where == root or root in where.parents:
            inside = where.relative_to(installed.root.resolve()).as_posix()
            if inside.startswith(STATE_DIR_NAME) or inside.endswith(".py") or installed.target.kind != "folder":
                raise OutputError(f"{option} {path}: lies in what porter patches ({inside}); nothing was written",
                                  hint="write the report outside the target")


def _write_unsupported(plan, path: Path, con: Console) -> None:
    from ..unsupported import find_unsupported, write_csv

    found = find_unsupported(plan)
    write_csv(found, path)
    con.note(f"{len(found)} site(s) no rule can port written to {path}")


def _print_plan_table(plan, con: Console) -> None:
    for rel, why in plan.files_not_read:
        con.note(con.paint("warning:", "yellow") + f" {rel} not read: {why}")
    rows = [(m.path, f"{m.start_line}-{m.end_line}" if m.end_line != m.start_line else str(m.start_line), m.rule_id, m.message)
            for m in plan.matches()]
    counts = plan.rule_counts()
    unmatched = [rid for rid, n in counts.items() if n == 0]
    con.print(con.table(("file", "lines", "rule", "change"), rows))
    if unmatched:
        con.print("optional rules with no match: " + ", ".join(unmatched))
    for rid, why in plan.skipped:
        con.print(f"skipped {rid}: {why}")


COMMAND = Command(
    "patch", help="rewrite an installed library with its rules", add_arguments=add_arguments, handle=handle,
    description="Plan every rule in memory, then apply them as one journaled transaction.\n"
                "A failed plan touches nothing. Patching a patched target is a no-op.",
    epilog="examples:\n  porter patch sat --dry-run --report plan.json\n"
           "  porter patch sat --only sat.imports.wandb\n"
           "  porter patch sat --site-packages /opt/env/lib/python3.11/site-packages --verify\n\n" + EXIT_CODES,
    # --verify runs `porter verify`, which is no quick exit
    quick_exit=lambda args: not args.verify, changes_files=True)
