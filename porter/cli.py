"""The `porter` command line: parses, calls the core, prints. No patching logic lives here."""
from __future__ import annotations

import argparse
import errno
import json
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__, patcher, plugins
from .errors import (
    EXIT_BROKEN_PIPE,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_OUTPUT,
    EXIT_STATE,
    NotFoundError,
    PorterError,
    UsageError,
    exit_code_help,
)
from .journal import journal_kind, read_original
from .render import Console
from .target import STATE_DIR_NAME, locate

EXIT_CODES = exit_code_help()

SCAN_INPUTS = """\
what is read (a folder, a file or a distribution):
  A folder: every *.py file under it (not in __pycache__ or porter's own .porter-state). Only regular files are read: a FIFO, a
  device or a socket named *.py is reported and never opened, and so is a file over 16 MiB. Links to
  folders are not followed. A link to a file inside the folder is scanned once (under the file's own
  name when that is scanned too); a link that leads outside the folder is reported, not followed.
  A file: read even when it is a link (you named it), if it leads to a regular file.
  A distribution: the *.py files its RECORD lists under its site-packages (--site-packages DIR picks
  the environment); a damaged RECORD row, or a file outside site-packages, is reported, not read.
  A file is read as Python reads source (UTF-8 or its coding: line; a BOM, CRLF or CR newlines are
  fine) and parsed by this Python's parser: one that cannot be read or parsed (not UTF-8, NUL bytes,
  a syntax error, nested too deeply) is a warning naming it and its line, and is counted in the
  summary as not scanned, never as 0 sites.
  Exit status: 0 when at least one file was scanned, the others being warnings; 7 when not one could
  be (the named file, or every file of the folder or distribution); 6 when the path does not exist or
  there is no Python file to scan.
"""

TARGET_HELP = ("a registered target (sat), a project folder written as a path (./my-model, /src/repo), or any "
               "installed distribution by its pip name (PyHessian)")

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


class _Formatter(argparse.RawDescriptionHelpFormatter):
    pass


def _site_packages_arg(p: argparse.ArgumentParser, verb: str = "patch") -> None:
    p.add_argument("--site-packages", type=Path, metavar="DIR",
                   help=f"{verb} the copy installed in DIR (a site-packages folder) instead of this environment's")


def build_parser(registry: plugins.Registry) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="porter", description=MAIN_HELP, epilog=EXIT_CODES, formatter_class=_Formatter)
    parser.add_argument("--version", action="version", version=f"porter {__version__}")
    _global_args(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("patch", help="rewrite an installed library with its rules", formatter_class=_Formatter,
                       description="Plan every rule in memory, then apply them as one journaled transaction.\n"
                                   "A failed plan touches nothing. Patching a patched target is a no-op.",
                       epilog="examples:\n  porter patch sat --dry-run --report plan.json\n"
                              "  porter patch sat --only sat.imports.wandb\n"
                              "  porter patch sat --site-packages /opt/env/lib/python3.11/site-packages --verify\n\n"
                              + EXIT_CODES)
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
    _site_packages_arg(p, 'patch')

    p = sub.add_parser("exec", help="run a program with its code ported in memory; no file changes",
                       formatter_class=_Formatter,
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
    p.add_argument("--target", action="append", default=[], metavar="DIST|PATH",
                   help="also port this installed distribution (pip name) or folder (a path); repeatable")
    p.add_argument("--no-script-folder", action="store_true", help="do not port the program's own folder")
    p.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                   help="leave out files matching GLOB in the folders and distributions ported")
    _site_packages_arg(p, 'find --target distributions in')
    p.add_argument("program", nargs=argparse.REMAINDER, metavar="-- COMMAND ...",
                   help="the program and its arguments, after --")

    p = sub.add_parser("status", help="clean / patched / drifted / interrupted / orphaned / damaged", formatter_class=_Formatter,
                       description="Compare the journal with the files on disk.",
                       epilog="examples:\n  porter status\n  porter status sat --json\n\n" + EXIT_CODES)
    p.add_argument("target", nargs="?", help="one target, distribution or ./folder (default: every registered target "
                                             "that is installed, and every distribution porter patched)")
    p.add_argument("--json", action="store_true")
    _site_packages_arg(p, 'read')

    p = sub.add_parser("revert", help="restore every patched file byte for byte", formatter_class=_Formatter,
                       description="Restore the saved originals, check their sha256, drop the journal.\n"
                                   "Refuses, naming the files, when a file matches neither its original nor its\n"
                                   "patched version (hand edit, reinstall, upgrade) unless --force.",
                       epilog="examples:\n  porter revert\n  porter revert sat --force\n\n" + EXIT_CODES)
    p.add_argument("target", nargs="?", help="one target, distribution or ./folder (default: every patched target "
                                             "and distribution)")
    p.add_argument("--force", action="store_true",
                   help="restore the originals even over files changed since; with a damaged journal (unreadable, "
                        "or not listing every saved original), restore every saved original on disk instead")
    _site_packages_arg(p, 'revert')

    p = sub.add_parser("verify", help="prove a patched target: journal, compile, import, fixpoint, checks",
                       formatter_class=_Formatter,
                       description="Stages: files vs journal; compile; import of every patched module in a fresh\n"
                                   "interpreter; the rules are a fixpoint; then the target plugin's checks.",
                       epilog="examples:\n  porter verify sat\n  porter verify sat --json\n\n" + EXIT_CODES)
    p.add_argument("target", help=TARGET_HELP)
    p.add_argument("--json", action="store_true")
    p.add_argument("--test-cmd", metavar="CMD",
                   help="also run CMD (a shell command: the project's tests, a script) against the original and the "
                        "ported tree and compare: the same exit status, and with pytest the same tests passing. It "
                        "runs in porter's environment: `python` is the first on PATH (name the interpreter that has "
                        "the project's dependencies); a folder's command runs in the folder")
    p.add_argument("--timeout", type=float, default=1800, metavar="S",
                   help="--test-cmd: seconds each run may take (default 1800)")
    _site_packages_arg(p, 'verify')

    p = sub.add_parser("scan", help="CUDA-only sites in a target (after its rules), a distribution or a folder",
                       formatter_class=_Formatter,
                       description="List every CUDA-only and NCCL-only site (torch.cuda.*, .cuda(), 'cuda', 'nccl',\n"
                                   "cudnn flags, @torch.jit.script, unguarded CUDA-only imports, pin_memory=True),\n"
                                   "with what porter.runtime offers in its place, and a summary by API.\n"
                                   "A registered target is scanned with its rules run in memory: the sites they\n"
                                   "leave (those the plugin leaves on purpose apart, --all lists them), and how\n"
                                   "many of the installed sites they cover. Any other installed distribution or\n"
                                   "source folder is scanned as it is: what porting it would take.",
                       epilog="examples:\n  porter scan sat\n  porter scan sat --all\n  porter scan deepspeed\n"
                              "  porter scan ./my-model-repo --csv > sites.csv\n  porter scan sat --json\n\n"
                              + SCAN_INPUTS + "\n" + EXIT_CODES)
    p.add_argument("target", help="a registered target, an installed distribution, a folder of Python source, or a "
                                  "file")
    p.add_argument("--all", action="store_true", help="also list the sites the plugin leaves on purpose (a target), "
                                                      "or every site (a distribution or folder)")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="every site and the summary as JSON")
    fmt.add_argument("--csv", action="store_true", help="every site as CSV rows")
    _site_packages_arg(p, 'scan')

    p = sub.add_parser("restore-original", help="put back the files pip installed, from the release's wheel",
                       formatter_class=_Formatter,
                       description="Replace every file of the target's package that differs from the sha256 in its\n"
                                   "distribution's RECORD (hand edits, the old Ascend recipe's copied files) or is\n"
                                   "missing, with the release wheel's copy; each copy is checked against RECORD\n"
                                   "before the first write. Works on an unpatched install (revert first).",
                       epilog="examples:\n  porter restore-original sat --dry-run     list what differs from RECORD\n"
                              "  porter restore-original sat               pip downloads the matching wheel\n"
                              "  porter restore-original sat --wheel swissarmytransformer-0.4.12-py3-none-any.whl\n\n"
                              + EXIT_CODES)
    p.add_argument("target")
    p.add_argument("--wheel", type=Path, metavar="FILE", help="the release's wheel (default: pip download it)")
    p.add_argument("--dry-run", action="store_true", help="list the files that differ from RECORD; change nothing")
    _site_packages_arg(p, "restore")

    p = sub.add_parser("rules", help="the rule catalogue of a target, with docs", formatter_class=_Formatter,
                       epilog="examples:\n  porter rules sat\n  porter rules any      (the rules for any code: folders, "
                              "distributions, porter exec)\n  porter rules sat --json\n"
                              "  porter rules sat --markdown > docs/sat-rules.md\n")
    p.add_argument("target")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true")
    fmt.add_argument("--markdown", action="store_true", help="the catalogue as a Markdown page")

    p = sub.add_parser("run", help="run a model's recipe (train, infer, check, demo)", formatter_class=_Formatter,
                       description="Run a recipe a model plugin registers. Everything after RECIPE goes to the\n"
                                   "recipe; `porter run MODEL RECIPE --help` lists its options.",
                       epilog=_recipes_listing(registry) +
                       "examples:\n  porter run visualglm infer --image cat.png --prompt \"What's in the image?\" --english\n"
                       "  porter run visualglm train --npus 8\n  porter run visualglm        (lists its recipes)\n\n"
                       + EXIT_CODES)
    p.add_argument("model", nargs="?", help="a registered model (default: list them)")
    p.add_argument("recipe", nargs="?", help="one of the model's recipes (default: list them)")
    p.add_argument("recipe_args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)

    p = sub.add_parser("new-plugin", help="write a plugin package that installs and passes its tests at once",
                       formatter_class=_Formatter,
                       description="target: a Target for the library NAME, one documented rule with its source-in /\n"
                                   "source-out tests, a patch/revert round trip on a copy of the library, a check.\n"
                                   "model: a Model with a `train` recipe that fits a tiny network on any device, and\n"
                                   "its tests. Written to DIR/porter-NAME; `pip install -e` it to register it.",
                       epilog="examples:\n  porter new-plugin mylib --kind target\n"
                              "  porter new-plugin my-model --kind model --dir plugins\n"
                              "  cd porter-mylib && pip install -e . && python -m pytest tests\n")
    p.add_argument("name", help="the target (the library's distribution name) or the model, as users will type it")
    p.add_argument("--kind", choices=("target", "model"), required=True)
    p.add_argument("--dir", type=Path, default=Path("."), help="where porter-NAME/ is written (default: here)")

    p = sub.add_parser("plugins", help="installed plugins and what each registers", formatter_class=_Formatter,
                       epilog="examples:\n  porter plugins\n  PORTER_DISABLE_PLUGINS=visualglm porter plugins\n")
    p.add_argument("--json", action="store_true")

    for command in registry.commands.values():
        if command.name in sub.choices:
            continue
        cp = sub.add_parser(command.name, help=command.help, formatter_class=_Formatter)
        command.add_arguments(cp)
    return parser


def _recipes_listing(registry) -> str:
    lines = [f"  {r.model} {r.name:<8} {r.description}" for r in sorted(registry.recipes.values(), key=lambda r: r.key)]
    return ("recipes:\n" + "\n".join(lines) + "\n\n") if lines else ""


def _global_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                        help="load a plugin from a module or .py file (repeatable)")
    parser.add_argument("--strict", action="store_true", help="a plugin that fails to load is fatal")


# --- commands ------------------------------------------------------------------------------------------


def _resolve(args, registry, check_version: bool = True):
    from .generic import resolve

    return resolve(args.target, registry, args.site_packages, check_version=check_version,
                   exclude=tuple(getattr(args, "exclude", None) or ()))


def _rules_for(registry, installed) -> list:
    """A registered target's rules; for a distribution or folder, the rules for any code."""
    from .rules import ANY_TARGET

    return registry.rules_for(ANY_TARGET if installed.target.generic else installed.name)


def cmd_patch(args, registry, con: Console) -> int:
    installed = _resolve(args, registry)
    rules = _rules_for(registry, installed)
    from .plan import expand_selection

    entries = {option: [r.strip() for r in (value or "").split(",") if r.strip()]
               for option, value in (("--only", args.only), ("--skip", args.skip))}
    for option, value in (("--only", args.only), ("--skip", args.skip)):
        if value is not None and not entries[option]:
            raise UsageError(f"{option} names no rule", hint=f"`porter rules {args.target}` lists them")
    only, said = expand_selection(installed, rules, entries["--only"], entries["--skip"])
    for line in said:
        con.note(line)
    if args.verify and args.dry_run:
        raise UsageError("--verify proves a patch on disk, and --dry-run writes none", hint="drop one of them")
    from .outputs import check_output_file

    for option, path in (("--report", args.report), ("--unsupported", args.unsupported)):
        if path:
            check_output_file(path, option)  # before the patch, not after it
            _not_in_target(installed, path, option)
    if args.dry_run:
        from .plan import make_plan

        current = patcher.status(installed)
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
                 f"({_label(installed)}, currently {current.state})")
        return EXIT_OK
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
        if outcome.plan and outcome.action in ("applied", "repatched"):
            _print_plan_table(outcome.plan, con)
        words = {"applied": f"patched {len(outcome.files)} file(s)", "repatched": f"re-patched {len(outcome.files)} file(s)",
                 "already-patched": "already patched; nothing to do", "nothing-to-change": "the rules change nothing"}
        con.print(f"{_label(installed)}: {words[outcome.action]} in {installed.package_dir}")
        if outcome.action in ("applied", "repatched"):
            con.print(f"undo with: porter revert {installed.name}" +
                      (f" --site-packages {installed.site_packages}" if args.site_packages else ""))
    if args.verify:
        return _run_verify(installed, registry, con, as_json=False)
    return EXIT_OK


def _not_in_target(installed, path: Path, option: str) -> None:
    """A report must not land on a file the patch is about (the target's own code, porter's state): written after
    the patch, it would leave the target drifted."""
    from .errors import OutputError
    from .target import STATE_DIR_NAME

    where = Path(path).resolve()
    roots = [installed.root / top for top in installed.tops] if installed.target.kind != "folder" else [installed.root]
    for root in [*roots, installed.root / STATE_DIR_NAME]:
        root = root.resolve()
        if where == root or root in where.parents:
            inside = where.relative_to(installed.root.resolve()).as_posix()
            if inside.startswith(STATE_DIR_NAME) or inside.endswith(".py") or installed.target.kind != "folder":
                raise OutputError(f"{option} {path}: lies in what porter patches ({inside}); nothing was written",
                                  hint="write the report outside the target")


def _label(installed) -> str:
    """How messages name a target: 'sat 0.4.12', 'PyHessian 0.1', or a folder's path."""
    if installed.target.kind == "folder":
        return str(installed.root)
    if installed.target.kind == "distribution":
        return f"{installed.target.distribution} {installed.version}"
    return f"{installed.name} {installed.version}"


def _write_unsupported(plan, path: Path, con: Console) -> None:
    from .unsupported import find_unsupported, write_csv

    found = find_unsupported(plan)
    write_csv(found, path)
    con.note(f"{len(found)} site(s) no rule can port written to {path}")


def cmd_exec(args, registry, con: Console) -> int:
    from . import execute
    from .generic import resolve

    command = list(args.program)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise UsageError("no program to run", hint="porter exec [--target DIST|PATH] -- python SCRIPT.py ARGS")
    flag = execute.isolating_flags(command)
    if flag:
        raise UsageError(f"python {flag} ignores PYTHONPATH, through which porter exec reaches the program; nothing "
                          "was run", hint=f"drop {flag}")
    program = command[0]
    if shutil.which(program) is None and not Path(program).is_file():
        raise PorterError(f"{program}: command not found; nothing was run", exit_code=execute.EXIT_NOT_FOUND)
    exclude = tuple(args.exclude)
    targets = []
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
    prepared = execute.prepare(command, targets, lambda: _rules_for(registry, targets[0]), registry.source_digest(),
                               progress=con.note)
    con.note(f"porter exec: {prepared.files} file(s) ported in memory ({', '.join(prepared.targets)})"
             + ("" if prepared.files else "; no rule changes them, so the program runs as it is"))
    return execute.run(command, prepared)


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


def _targets_for(args, registry):
    # status and revert must still work on a version the rules do not support (after an upgrade)
    if args.site_packages is not None and not Path(args.site_packages).is_dir():
        raise NotFoundError(f"--site-packages {args.site_packages}: no such directory")
    if args.target:
        orphan = [j for j in _unknown_journals(args, registry) if j.parent.name == args.target]
        if orphan:
            raise NotFoundError(f"{orphan[0]} holds a patch of {args.target!r}, but no loaded plugin registers that "
                                f"target", hint="enable its plugin (see PORTER_DISABLE_PLUGINS and `porter plugins`), "
                                                "then run this again")
        return [_resolve(args, registry, check_version=False)]
    found = []
    for target in registry.targets.values():
        try:
            found.append(locate(target, args.site_packages, check_version=False))
        except PorterError:
            continue  # not installed here: nothing to report
    from .generic import distribution_target

    for journal in _unknown_journals(args, registry, distributions=False):
        if journal_kind(journal) != "distribution":
            continue  # a plugin's patch (its plugin disabled): said as such
        try:  # a distribution porter patched by its pip name: the state folder is named for it
            installed = distribution_target(journal.parent.name, journal.parent.parent.parent)
        except PorterError:
            continue
        if installed.state_dir.resolve() == journal.parent:
            found.append(installed)
    return found


def _unknown_journals(args, registry, distributions: bool = True) -> list[Path]:
    """Journals of targets no loaded plugin registers (disabled or uninstalled), in --site-packages or in every
    site folder of this interpreter (user site included); with ``distributions``, not those of a distribution
    porter patched by its pip name (status and revert read those as targets)."""
    import site
    import sysconfig

    if args.site_packages:
        folders = [Path(args.site_packages)]
    else:
        folders = [Path(sysconfig.get_paths()["purelib"]), Path(sysconfig.get_paths()["platlib"]),
                   *map(Path, site.getsitepackages()), Path(site.getusersitepackages())]
    journals = {j.resolve() for folder in folders for j in (folder / STATE_DIR_NAME).glob("*/journal.json")}
    unknown = sorted(j for j in journals if j.parent.name not in registry.targets)
    if not distributions:
        return unknown
    from .generic import distribution_target

    def patched_distribution(journal: Path) -> bool:
        if journal_kind(journal) != "distribution":
            return False
        try:
            return distribution_target(journal.parent.name, journal.parent.parent.parent).state_dir.resolve() \
                == journal.parent
        except PorterError:
            return False

    return [j for j in unknown if not patched_distribution(j)]


def cmd_status(args, registry, con: Console) -> int:
    statuses = [patcher.status(i) for i in _targets_for(args, registry)]
    unknown = [] if args.target else _unknown_journals(args, registry)
    if args.json:
        con.print(json.dumps([s.to_json() for s in statuses] +
                             [{"target": j.parent.name, "state": "unknown", "journal": str(j)} for j in unknown],
                             indent=2))
        return EXIT_OK
    if not statuses:
        con.print("no registered target is installed here")
    for s in statuses:
        con.print(f"{s.target}{' ' + s.version if s.version else ''}: {con.status(s.state)}" +
                  (f" (patched {s.journal.created}, {len(s.journal.rules)} rules)" if s.journal else ""))
        if s.files and s.state != "patched":
            con.print(con.table(("file", "state"), sorted(s.files.items()), status_col=1))
        if s.changed_since_install:
            con.print(f"changed since install (differ from {s.target}'s RECORD): " + ", ".join(s.changed_since_install))
        if s.state == "interrupted":
            con.print(f"repair with: porter revert {s.target} (or run porter patch {s.target} again)")
        if s.state == "orphaned":
            con.print(f"the journal is gone but the saved originals are not: porter revert {s.target} restores them")
        if s.state == "damaged":
            con.print("saved originals are missing or altered: " + ("restore the files from version control" if
                      s.target.startswith("/") else "reinstall the package to get pristine files"))
    for journal in unknown:
        con.print(f"{journal.parent.name}: {con.status('unknown')} - {journal} holds a patch, but no loaded plugin "
                  f"registers that target and no distribution of that name is installed (if you uninstalled it, the "
                  f"folder {journal.parent} can be deleted)")
    return EXIT_OK


def cmd_revert(args, registry, con: Console) -> int:
    targets = _targets_for(args, registry)
    reverted = 0
    for installed in targets:
        outcome = patcher.revert(installed, force=args.force, progress=con.note)
        if outcome.action == "reverted":
            reverted += 1
            source = "; ".join(outcome.notes) or "every journaled file matches its original sha256"
            con.print(f"{_label(installed)}: restored {len(outcome.files)} file(s); {source}")
        elif args.target:
            con.print(f"{_label(installed)}: not patched; nothing to revert")
    unknown = [] if args.target else _unknown_journals(args, registry)
    for journal in unknown:
        con.note(f"not reverted: {journal} holds a patch of {journal.parent.name!r}, but no loaded plugin registers "
                 f"that target; enable its plugin and run this again")
    if not args.target and not reverted and not unknown:
        con.print("nothing to revert")
    return EXIT_STATE if unknown else EXIT_OK


def _run_verify(installed, registry, con: Console, as_json: bool, test_cmd: str | None = None,
                timeout: float = 1800) -> int:
    from .verify import verify

    report = verify(installed, _rules_for(registry, installed), registry.checks_for(installed.name),
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


def cmd_verify(args, registry, con: Console) -> int:
    if args.timeout <= 0 or args.timeout != args.timeout:
        raise UsageError(f"--timeout {args.timeout}: must be a positive number of seconds")
    return _run_verify(_resolve(args, registry), registry, con, args.json, args.test_cmd, args.timeout)


def cmd_restore_original(args, registry, con: Console) -> int:
    from .restore import restore_original

    installed = locate(registry.target(args.target), args.site_packages, check_version=False)
    done = restore_original(installed, args.wheel, dry_run=args.dry_run, progress=con.note)
    if not done:
        con.print(f"{installed.name} {installed.version}: every file matches its RECORD; nothing to restore")
    elif args.dry_run:
        con.print(con.table(("file", "state"), sorted(done.items())))
        con.print(f"dry run: {len(done)} file(s) differ from {installed.target.distribution}'s RECORD")
    else:
        con.print(f"{installed.name} {installed.version}: restored {len(done)} file(s) from the release's wheel; "
                  f"every file matches its RECORD")
    return EXIT_OK


def cmd_scan(args, registry, con: Console) -> int:
    from . import scan

    if args.target in registry.items["targets"]:
        installed = locate(registry.target(args.target), args.site_packages)
        rules = registry.rules_for(installed.name)
        label = f"{installed.name} {installed.version}"
        sites, as_installed = scan.scan(installed, rules, progress=con.note)
    else:
        found = scan.scan_source(args.target, args.site_packages, progress=con.note)
        label, sites, as_installed = found.label, [], found.sites
        for left_out in found.not_scanned:
            con.note(con.paint("warning:", "yellow") + f" {left_out}")
    open_sites = [s for s in sites if not s.exempt]
    target = args.target in registry.items["targets"]
    if args.json:
        report = {"source": label, "sites": [s.to_json() for s in as_installed],
                  "summary": [{"api": api, "sites": n, "covered": covered, "replacement": r}
                              for api, n, covered, r in scan.summary(as_installed)]}
        if target:
            report.update({"open": [s.to_json() for s in open_sites],
                           "exempt": [s.to_json() for s in sites if s.exempt]})
        else:
            report.update(found.to_json())
        con.print(json.dumps(report, indent=2))
        return EXIT_OK
    if args.csv:
        import csv
        import io

        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=scan.CSV_FIELDS, lineterminator="\n")
        writer.writeheader()
        for site in as_installed:
            writer.writerow({k: v for k, v in site.to_json().items() if k in scan.CSV_FIELDS})
        con.print(out.getvalue().rstrip("\n"))
        return EXIT_OK
    summary = scan.summary(as_installed)
    if target:
        shown = sites if args.all else open_sites
        if shown:
            rows = [(f"{s.path}:{s.line}", s.scope, s.kind, s.code if not s.exempt else f"{s.code}  [{s.exempt}]")
                    for s in shown]
            con.print(con.table(("site", "in", "kind", "code"), rows))
        if summary:
            con.print(con.table(("api", "sites as installed", "covered by a rule", "porter runtime"),
                                [(api, str(n), str(c), r) for api, n, c, r in summary]))
        covered = sum(s.covered_by is not None for s in as_installed)
        con.print(f"{label}: {len(as_installed)} CUDA-only site(s) as installed, {covered} covered by its rules; "
                  f"{len(open_sites)} not covered by a rule, {len(sites) - len(open_sites)} left on purpose"
                  + ("" if args.all else " (--all lists them)"))
        return EXIT_OK
    if as_installed and args.all:
        con.print(con.table(("site", "in", "api", "code"),
                            [(f"{s.path}:{s.line}", s.scope, s.api, s.code) for s in as_installed]))
    if summary:
        con.print(con.table(("api", "sites", "porter runtime"), [(api, str(n), r) for api, n, _, r in summary]))
    con.print(found.summary_line()
              + ("" if args.all or not as_installed else " (--all lists each site; --json, --csv for tools)"))
    return EXIT_OK


def cmd_rules(args, registry, con: Console) -> int:
    from .rules import ANY_TARGET

    if args.target != ANY_TARGET:
        registry.target(args.target)
    rules = registry.rules_for(args.target)
    if args.json:
        con.print(json.dumps([{"id": r.id, "category": r.category, "summary": r.summary, "files": list(r.files), "file_versions": dict(r.file_versions),
                               "required": r.required, "versions": r.versions, "after": list(r.after),
                               "triggers": list(r.triggers), "reads": r.reads,
                               "why": r.docs.why, "how": r.docs.how, "upstream": r.docs.upstream,
                               "removal": r.docs.removal} for r in rules], indent=2))
        return EXIT_OK
    if args.markdown:
        if args.target == ANY_TARGET:
            con.print("# Rules for any code (`porter patch PATH|DIST`, `porter exec`)\n")
        else:
            target = registry.target(args.target)
            con.print(f"# Rules for `{target.name}` ({target.distribution} {target.versions})\n")
        con.print(f"Generated by `porter rules {args.target} --markdown`; a test keeps it equal to the code.\n")
        for r in rules:
            con.print(f"## `{r.id}`\n\n{r.summary}.\n")
            con.print(f"- category: {r.category}{'' if r.required else ' (optional)'}")
            for label, text in _rule_fields(r, quote="`"):
                con.print(f"- {label}: {text}")
            con.print()
        return EXIT_OK
    for r in rules:
        con.print(con.paint(r.id, "bold") + f"  [{r.category}{', optional' if not r.required else ''}]  {r.summary}")
        for label, text in _rule_fields(r):
            con.print(f"  {label + ':':9} {text}")
        con.print()
    con.print(f"{len(rules)} rules for {args.target}")
    return EXIT_OK


def cmd_run(args, registry, con: Console) -> int:
    from .recipes import find_recipe, recipe_parser

    if args.model is None:
        rows = [(m.name, ", ".join(sorted(r.name for r in registry.recipes.values() if r.model == m.name)),
                 ", ".join(m.presets) or "-",
                 m.description) for m in registry.models.values()]
        con.print(con.table(("model", "recipes", "presets", "description"), rows) if rows else "no model plugins installed")
        return EXIT_OK
    recipe = find_recipe(registry, args.model, args.recipe)
    if recipe is None:
        recipes = [(r.name, r.description) for r in registry.recipes.values() if r.model == args.model]
        con.print(con.table(("recipe", "description"), recipes))
        formats = [(d.name, d.description) for d in registry.items["datasets"].values() if d.model == args.model]
        if formats:  # what its recipes' --data reads (the plugin's porter_register_datasets)
            con.print("\n" + con.table(("data format", "description"), formats))
        return EXIT_OK
    if not recipe.launch:
        parsed = recipe_parser(recipe).parse_args(args.recipe_args)
        if recipe.preflight:
            recipe.preflight(parsed)
        return recipe.run(parsed)
    from .launch import add_launch_arguments, launch, plan_launch

    parser = recipe_parser(recipe)
    launch_dests = add_launch_arguments(parser)
    parsed = parser.parse_args(args.recipe_args)  # every option checked here, before any worker starts
    recipe_argv = _strip_launch_args(args.recipe_args, parser, launch_dests)
    plan = plan_launch(parsed, recipe, recipe_argv, registry)  # runs the recipe's preflight, dry run or not
    for note in plan.notes:
        con.note(note)
    if parsed.dry_run:
        con.print(plan.render())
        return EXIT_OK
    con.note("launching: " + plan.render())
    return launch(plan)


def _strip_launch_args(argv, parser, launch_dests) -> list[str]:
    """The recipe's own arguments: argv without porter's launch options (and their values)."""
    by_flag = {}
    for action in parser._actions:
        for flag in action.option_strings:
            by_flag[flag] = action
    out, i = [], 0
    while i < len(argv):
        flag = argv[i].split("=", 1)[0]
        action = by_flag.get(flag)
        if action is not None and action.dest in launch_dests:
            takes_value = action.nargs != 0 and "=" not in argv[i]
            i += 2 if takes_value else 1
            continue
        out.append(argv[i])
        i += 1
    return out


def _rule_fields(rule, quote: str = "") -> list[tuple[str, str]]:
    """What `porter rules` shows of a rule beyond its id and summary, in order, empty fields left out."""
    def names(items):
        return ", ".join(f"{quote}{i}{quote}" for i in items)
    files = [f"{f} ({rule.file_versions[f]})" if f in rule.file_versions else f for f in rule.files]
    triggers = names(rule.triggers) + (" (reads the statements around them)" if rule.triggers and rule.reads == "function"
                                       else "")
    fields = [("files", names(files)), ("versions", rule.versions), ("after", names(rule.after)),
              ("triggers", triggers)]
    fields += [(label, getattr(rule.docs, label)) for label in ("why", "how", "upstream", "removal")]
    return [(label, text) for label, text in fields if text]


def cmd_new_plugin(args, registry, con: Console) -> int:
    from .scaffold import scaffold

    folder = scaffold(args.name, args.kind, args.dir)
    con.print(f"wrote the {args.kind} plugin {args.name!r} in {folder}\n"
              f"next: cd {folder} && pip install -e . && python -m pytest tests   (then see `porter plugins`)")
    return EXIT_OK


def cmd_plugins(args, registry, con: Console) -> int:
    if args.json:
        con.print(json.dumps([{"name": p.name, "version": p.version, "source": p.source,
                               "registered": p.registered, "error": p.error} for p in registry.plugins], indent=2))
        return EXIT_OK
    rows = []
    for p in registry.plugins:
        what = "; ".join(f"{kind}: {', '.join(keys)}" for kind, keys in p.registered.items()) or "-"
        rows.append((p.name, p.version, p.source, "fail" if p.error else "ok", p.error or what))
    con.print(con.table(("plugin", "version", "source", "status", "registers"), rows, status_col=3))
    return EXIT_OK


COMMANDS = {"exec": cmd_exec, "run": cmd_run, "scan": cmd_scan, "restore-original": cmd_restore_original, "patch": cmd_patch, "status": cmd_status, "revert": cmd_revert, "verify": cmd_verify,
            "rules": cmd_rules, "plugins": cmd_plugins, "new-plugin": cmd_new_plugin}


# Commands that need no rule or check: their plugins' rule and check hooks never run (nor import libcst).
NO_RULES_NEEDED = (None, "status", "revert")


# Commands whose own code leaves nothing to the interpreter's teardown (no temporary folder, child process or
# log handler outlives them): the `porter` executable exits straight after them, skipping atexit handlers too
# (a plugin's rule or target hooks run in them: they must not rely on one). Freeing libcst's module graph at
# exit was a tenth of a `patch --dry-run`.
QUICK_EXIT = ("patch", "status", "revert", "rules", "plugins", "scan")


def run() -> None:
    """The `porter` executable: ``main()``, then exit with its code."""
    outcome: dict[str, bool] = {}
    code = main(outcome=outcome)
    code = _flush_output(code)
    if outcome.get("quick"):
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
    _global_args(pre)
    early, _ = pre.parse_known_args(argv)
    try:
        registry = plugins.load(extra=early.plugin, strict=early.strict, lazy=True)
        parser = build_parser(registry)
        args = parser.parse_args(argv)
        if outcome is not None:
            outcome["quick"] = args.command in QUICK_EXIT and not getattr(args, "verify", False)
        if args.command not in NO_RULES_NEEDED:
            registry.load_lazy(early.strict)
        for info in registry.errors:
            con.note(con.paint("warning:", "yellow") + f" plugin {info.name!r} was not loaded: {info.error}")
        if not args.command:
            parser.print_help()
            return EXIT_OK
        if args.command in COMMANDS:
            return COMMANDS[args.command](args, registry, con)
        if args.command not in registry.commands:  # its plugin failed registering rules or checks: dropped
            raise NotFoundError(f"command {args.command!r} is not available: its plugin was not loaded (see the "
                                "warning above)")
        return registry.commands[args.command].run(args, registry)
    except PorterError as exc:
        con.note(con.paint("error:", "red") + f" {exc.message}")
        if exc.hint:
            con.note(f"hint: {exc.hint}")
        return exc.exit_code
    except BrokenPipeError:  # the reader went away (`porter rules | head`): as a writer SIGPIPE ends, in silence
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except OSError as exc:  # a read-only site-packages, a full disk, a vanished file: say which
        if exc.filename is None and exc.errno in (errno.ENOSPC, errno.EIO, errno.EFBIG, errno.EBADF):
            _silence_stdout()  # writing the answer failed (`> /dev/full`)
            con.note(con.paint("error:", "red") + f" cannot write standard output ({exc.strerror or exc})")
            return EXIT_OUTPUT
        con.note(con.paint("error:", "red") + f" {exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""))
        return EXIT_FAILED
    except KeyboardInterrupt:
        changing = {"patch", "revert", "restore-original"}.intersection(argv)
        con.note("interrupted" + (f"; `porter status` says what state the files are in, and `porter revert` repairs an "
                                  f"interrupted {next(iter(changing))}" if changing else ""))
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    run()
