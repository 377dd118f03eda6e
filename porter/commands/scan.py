"""`porter scan TARGET`: the CUDA-only sites of a registered target (after its rules), a distribution or a folder."""
from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from ..errors import EXIT_OK
from ..target import locate
from ._common import EXIT_CODES, Command, site_packages_arg

if TYPE_CHECKING:
    from ..plugins import Registry
    from ..render import Console

SCAN_INPUTS = """\
what is read (a folder, a file or a distribution):
  A folder: the *.py files `porter patch` reads in it: none in hidden folders (.git, .venv,
  .porter-state), virtual environments (a folder holding pyvenv.cfg), site-packages, node_modules or
  __pycache__, nor matching --exclude or its pyproject.toml's [tool.porter] exclude. Only regular
  files are read: a FIFO, a device or a socket named *.py is reported and never opened, and so is a
  file over 16 MiB. Links are never followed: a link to a file read under its own name is passed
  over; any other link (leading outside the folder, to a file not read, or to nothing) is reported,
  not read; so is a subfolder that cannot be listed.
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


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", help="a registered target (by its name, or its distribution's pip name), an installed "
                                  "distribution, a folder of Python source, or a file")
    p.add_argument("--all", action="store_true", help="also list the sites the plugin leaves on purpose (a target), "
                                                      "or every site (a distribution or folder)")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="every site and the summary as JSON")
    fmt.add_argument("--csv", action="store_true", help="every site as CSV rows")
    p.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                   help="a folder or distribution: leave out files matching GLOB (a path relative to its root, or one "
                        "of its folders); repeatable; a folder's pyproject.toml adds [tool.porter] exclude")
    site_packages_arg(p, 'scan')


def handle(args: argparse.Namespace, registry: Registry, con: Console) -> int:
    from .. import scan
    from ..generic import plugin_target

    found = None
    # TARGET as every command reads it (generic.resolve): a plugin's target by its name or its distribution's pip
    # name; anything else (a folder, a file, any distribution) is scanned as it is
    target = plugin_target(args.target, registry)
    installed = locate(target, args.site_packages) if target is not None else None
    if installed is not None and not installed.target.generic:  # scanned with its rules run in memory
        rules = registry.rules_for(installed.name)
        label = f"{installed.name} {installed.version}"
        sites, as_installed = scan.scan(installed, rules, progress=con.note)
    else:  # scanned as it is
        found = scan.scan_source(args.target, args.site_packages, progress=con.note, exclude=tuple(args.exclude))
        label, sites, as_installed = found.label, [], found.sites
        for left_out in found.not_scanned:
            con.note(con.paint("warning:", "yellow") + f" {left_out}")
    if args.json:
        report = {"source": label, "sites": [s.to_json() for s in as_installed],
                  "summary": [{"api": api, "sites": n, "covered": covered, "replacement": r}
                              for api, n, covered, r in scan.summary(as_installed)]}
        report.update(found.to_json() if found is not None else
                      {"open": [s.to_json() for s in sites if not s.exempt],
                       "exempt": [s.to_json() for s in sites if s.exempt]})
        con.print(json.dumps(report, indent=2))
    elif args.csv:
        _print_csv(as_installed, con)
    elif found is None:
        _print_target(args, label, sites, as_installed, con)
    else:
        _print_source(args, found, con)
    return EXIT_OK


def _print_csv(sites: list, con: Console) -> None:
    import csv
    import io

    from ..scan import CSV_FIELDS

    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for site in sites:
        writer.writerow({k: v for k, v in site.to_json().items() if k in CSV_FIELDS})
    con.print(out.getvalue().rstrip("\n"))


def _print_target(args: argparse.Namespace, label: str, sites: list, as_installed: list, con: Console) -> None:
    """A registered target's sites its rules leave (with --all, those left on purpose too), and the summary."""
    from ..scan import summary

    open_sites = [s for s in sites if not s.exempt]
    shown = sites if args.all else open_sites
    if shown:
        rows = [(f"{s.path}:{s.line}", s.scope, s.kind, s.code if not s.exempt else f"{s.code}  [{s.exempt}]")
                for s in shown]
        con.print(con.table(("site", "in", "kind", "code"), rows))
    by_api = summary(as_installed)
    if by_api:
        con.print(con.table(("api", "sites as installed", "covered by a rule", "porter runtime"),
                            [(api, str(n), str(c), r) for api, n, c, r in by_api]))
    covered = sum(s.covered_by is not None for s in as_installed)
    con.print(f"{label}: {len(as_installed)} CUDA-only site(s) as installed, {covered} covered by its rules; "
              f"{len(open_sites)} not covered by a rule, {len(sites) - len(open_sites)} left on purpose"
              + ("" if args.all else " (--all lists them)"))


def _print_source(args: argparse.Namespace, found, con: Console) -> None:
    """A distribution's or folder's sites (with --all, each one), by API, and what was not scanned."""
    from ..scan import summary

    as_installed = found.sites
    if as_installed and args.all:
        con.print(con.table(("site", "in", "api", "code"),
                            [(f"{s.path}:{s.line}", s.scope, s.api, s.code) for s in as_installed]))
    by_api = summary(as_installed)
    if by_api:
        con.print(con.table(("api", "sites", "porter runtime"), [(api, str(n), r) for api, n, _, r in by_api]))
    con.print(found.summary_line()
              + ("" if args.all or not as_installed else " (--all lists each site; --json, --csv for tools)"))


COMMAND = Command(
    "scan", help="CUDA-only sites in a target (after its rules), a distribution or a folder",
    add_arguments=add_arguments, handle=handle,
    description="List every CUDA-only and NCCL-only site (torch.cuda.*, .cuda(), 'cuda', 'nccl',\n"
                "cudnn flags, @torch.jit.script, unguarded CUDA-only imports, pin_memory=True),\n"
                "with what porter.runtime offers in its place, and a summary by API.\n"
                "A registered target is scanned with its rules run in memory: the sites they\n"
                "leave (those the plugin leaves on purpose apart, --all lists them), and how\n"
                "many of the installed sites they cover. Any other installed distribution or\n"
                "source folder is scanned as it is: what porting it would take.",
    epilog="examples:\n  porter scan sat\n  porter scan sat --all\n  porter scan deepspeed\n"
           "  porter scan ./my-model-repo --csv > sites.csv\n  porter scan sat --json\n\n"
           + SCAN_INPUTS + "\n" + EXIT_CODES,
    quick_exit=True)
