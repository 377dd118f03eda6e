"""Planning: every rule over every file, in memory, before anything on disk changes."""
from __future__ import annotations

import difflib
import gc
import json
import multiprocessing
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import plancache
from .diskio import read_source
from .errors import NotFoundError, PlanError, PorterError
from .rewrite import FileRewrite, rewrite_file
from .rules import Rule, fingerprint
from .target import InstalledTarget


@dataclass
class Plan:
    installed: InstalledTarget
    rules: list[Rule]  # the rules that ran
    skipped: list[tuple[str, str]]  # (rule id, reason) for rules left out
    files: list[FileRewrite] = field(default_factory=list)
    files_read: int = 0  # a target no plugin registered: Python files read (those with a trigger word are parsed)
    files_opted_out: list[str] = field(default_factory=list)  # `# porter: skip-file`
    files_not_read: list[tuple[str, str]] = field(default_factory=list)  # (file, why): a FIFO, a link, too big, not UTF-8

    @property
    def changed(self) -> list[FileRewrite]:
        return [f for f in self.files if f.changed]

    def matches(self):
        return [m for f in self.files for m in f.matches]

    def rule_counts(self) -> dict[str, int]:
        counts = {r.id: 0 for r in self.rules}
        for m in self.matches():
            counts[m.rule_id] += 1
        return counts

    def diff(self) -> str:
        chunks: list[str] = []
        for f in self.changed:
            chunks.extend(difflib.unified_diff(
                f.before.splitlines(keepends=True), f.after.splitlines(keepends=True),
                fromfile=f"a/{f.path}", tofile=f"b/{f.path}"))
        return "".join(c if c.endswith("\n") else c + "\n" for c in chunks)

    def to_json(self) -> dict:
        return {
            "target": self.installed.name,
            "distribution": self.installed.target.distribution,
            "version": self.installed.version,
            "site_packages": str(self.installed.site_packages),
            "rules": self.rule_counts(),
            "skipped": [{"rule": r, "reason": why} for r, why in self.skipped],
            "files": [{"path": f.path, "changed": f.changed, "rules": f.rule_ids} for f in self.files],
            "files_read": self.files_read or len(self.files),
            "files_parsed": len(self.files),
            "files_opted_out": self.files_opted_out,
            "files_not_read": [{"path": rel, "why": why} for rel, why in self.files_not_read],
            "files_planned_by_reference": [f.path for f in self.files if f.by_reference],
            "matches": [m.to_json() for m in self.matches()],
            "diff": self.diff(),
        }

    def write_report(self, path: Path) -> None:
        """The plan as JSON, or, for a name ending in .csv, the change list in the columns of msFmkTransplt's
        change_list.csv (so a user of that tool can lay the two side by side)."""
        from .outputs import write_output

        text = self.change_list_csv() if Path(path).suffix.lower() == ".csv" else json.dumps(self.to_json(), indent=2) + "\n"
        write_output(path, text.encode(), "--report")

    def change_list_csv(self) -> str:
        """One row per change: File (relative to site-packages), Start Line, End Line (1-based, inclusive, as
        installed), Operation Type (the rule id, whose docs `porter rules` shows), Message (what it did)."""
        import csv
        import io

        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(CHANGE_LIST_COLUMNS)
        for m in sorted(self.matches(), key=lambda m: (m.path, m.start_line, m.end_line, m.rule_id)):
            writer.writerow([m.path, m.start_line, m.end_line, m.rule_id, m.message])
        return out.getvalue()


CHANGE_LIST_COLUMNS = ("File", "Start Line", "End Line", "Operation Type", "Message")


def rules_of(installed: InstalledTarget, rules: Sequence[Rule]) -> list[Rule]:
    """The rules for this target: its own, and for a target no plugin registered, the rules for any code."""
    return [r for r in rules if r.target == installed.name or (installed.target.generic and r.any_code)]


def expand_selection(installed: InstalledTarget, rules: Sequence[Rule], only: Sequence[str] = (),
                     skip: Sequence[str] = ()) -> tuple[list[str], list[str]]:
    """``--only`` and ``--skip`` entries (a rule id, or a dotted prefix: ``sat.device`` is every ``sat.device.*``
    rule, as TorchFix selects by code prefix) as the exact ids to apply ([] means all), and a line per prefix saying
    what it selected. An entry that selects nothing is a ``NotFoundError`` naming it."""
    mine = sorted(r.id for r in rules_of(installed, rules))

    def expand(entries: Sequence[str], option: str) -> tuple[set[str], list[str]]:
        chosen, said = set(), []
        for entry in entries:
            hits = [rid for rid in mine if rid == entry or rid.startswith(entry.rstrip(".") + ".")]
            if not hits:
                raise NotFoundError(f"{option} {entry}: no rule for {installed.name} is or starts with it",
                                    hint=f"`porter rules {installed.name if not installed.target.generic else 'any'}` "
                                         "lists them")
            if hits != [entry]:
                said.append(f"{option} {entry}: {', '.join(hits)}")
            chosen.update(hits)
        return chosen, said

    wanted, said = expand(only, "--only") if only else (set(mine), [])
    dropped, said_skip = expand(skip, "--skip")
    if not only and not skip:
        return [], []
    ids = sorted(wanted - dropped)
    if not ids:
        raise NotFoundError("--only and --skip leave no rule to apply", hint="name fewer rules in --skip")
    return ids, said + said_skip


def select_rules(installed: InstalledTarget, rules: Sequence[Rule], only: Sequence[str] = ()) -> tuple[list[Rule], list[tuple[str, str]]]:
    """The target's rules that apply to the installed version (and to ``--only``: exact ids, as
    ``expand_selection`` gives them; an unknown one, such as a journal's rule no plugin has now, is an error), and why
    others don't."""
    mine = rules_of(installed, rules)
    known = {r.id for r in mine}
    unknown = [r for r in only if r not in known]
    if unknown:
        raise NotFoundError(f"--only names unknown rule(s) for {installed.name}: {', '.join(unknown)}",
                            hint=f"`porter rules {installed.name}` lists them")
    chosen, skipped = [], []
    for rule in sorted(mine, key=lambda r: r.id):
        if only and rule.id not in only:
            skipped.append((rule.id, "not in --only"))
        elif not rule.applies_to(installed.version):
            skipped.append((rule.id, f"{installed.version} not in {rule.versions or 'the releases of its files'}"))
        else:
            chosen.append(rule)
    return chosen, skipped


def make_plan(installed: InstalledTarget, rules: Sequence[Rule], only: Sequence[str] = (),
              read: Callable[[str], str] | None = None) -> Plan:
    """Run the rules over the target's files. ``read(path)`` supplies sources (default: the files on disk)."""
    chosen, skipped = select_rules(installed, rules, only)
    if read is None:
        def read(rel: str) -> str:
            path = installed.path(rel)
            try:
                return read_source(path)
            except FileNotFoundError:
                raise PlanError(f"{path}: file not found; rules "
                                f"{', '.join(r.id for r in chosen if rel in r.files_for(installed.version))} "
                                f"expect it in {installed.target.distribution} {installed.version}") from None
    by_file: dict[str, list[Rule]] = {}
    for rule in chosen:
        for rel in rule.files_for(installed.version):
            by_file.setdefault(rel, []).append(rule)
    plan = Plan(installed=installed, rules=chosen, skipped=skipped)
    texts: dict[str, str] = {}
    if installed.target.generic:
        found = _any_code_files(installed, [r for r in chosen if r.any_code], read)
        texts = found.texts
        for rel, wanted in found.rules.items():
            by_file.setdefault(rel, []).extend(wanted)
        plan.files_read, plan.files_opted_out, plan.files_not_read = found.read, found.opted_out, found.not_read
    cached = plancache.enabled()
    rules_fingerprint = fingerprint(chosen) if cached else ""
    done: dict[str, FileRewrite] = {}
    todo: list[tuple[str, str, str]] = []  # (file, text, cache entry) still to plan
    for rel in sorted(by_file):
        text = texts[rel] if rel in texts else read(rel)
        entry = plancache.key(rules_fingerprint, [r.id for r in by_file[rel]], rel, text) if cached else ""
        hit = plancache.load(entry) if cached else None
        if hit is not None:
            done[rel] = FileRewrite(path=rel, before=text, after=hit[0], matches=hit[1], by_reference=hit[2])
        else:
            todo.append((rel, text, entry))
    for (rel, _, entry), rewritten in zip(todo, plan_files([(rel, text, by_file[rel]) for rel, text, _ in todo])):
        done[rel] = rewritten
        if cached:
            plancache.store(entry, rewritten.after, rewritten.matches, rewritten.by_reference)
    plan.files = [done[rel] for rel in sorted(by_file)]
    return plan


@dataclass
class _Found:
    """What reading a folder's or distribution's Python files found for the rules for any code."""

    texts: dict[str, str]  # the files holding a rule's trigger, by path
    rules: dict[str, list[Rule]]  # for each of those files, the rules whose triggers (and requires) it holds
    read: int  # Python files read
    opted_out: list[str]  # `# porter: skip-file`
    not_read: list[tuple[str, str]]  # (file, why): a FIFO, a link, too big, not UTF-8


def _any_code_files(installed: InstalledTarget, rules: list[Rule], read: Callable[[str], str]) -> _Found:
    """Rules for any code over a distribution's or folder's Python files: each file is read, and only one holding a
    rule's trigger word (a whole word) goes to that rule; the rest are never parsed."""
    import re

    from .generic import files_of, skips_file

    words = {rule.id: re.compile(r"\b(?:" + "|".join(map(re.escape, rule.triggers)) + r")\b") for rule in rules}
    needs = {rule.id: re.compile(r"\b(?:" + "|".join(map(re.escape, rule.requires)) + r")\b") for rule in rules
             if rule.requires}
    anything = re.compile(r"\b(?:" + "|".join(sorted({re.escape(w) for r in rules for w in r.triggers})) + r")\b") \
        if rules else None
    files, not_read = files_of(installed)
    found = _Found({}, {}, 0, [], not_read)
    if not files:
        raise NotFoundError(f"{installed.root}: holds no Python file to port"
                            + (f" (--exclude / [tool.porter] exclude: {', '.join(installed.target.exclude)})"
                               if installed.target.exclude else ""),
                            hint="porter reads *.py files outside hidden folders, virtual environments and "
                                 "__pycache__")
    for rel in files:
        try:
            text = read(rel)
        except PlanError as exc:  # not UTF-8: named, and left as it is (porter writes source back as UTF-8 only)
            found.not_read.append((rel, exc.message.removeprefix(f"{installed.path(rel)}: ")))
            continue
        found.read += 1
        if anything is None or not anything.search(text):
            continue
        if skips_file(text):
            found.opted_out.append(rel)
            continue
        wanted = [rule for rule in rules if words[rule.id].search(text)
                  and (rule.id not in needs or needs[rule.id].search(text))]
        if wanted:
            found.rules[rel] = wanted
            found.texts[rel] = text
    return found


def plan_files(jobs: list[tuple[str, str, list[Rule]]], workers: int | None = None) -> list[FileRewrite]:
    """``rewrite_file`` over each (file, text, rules), in ``workers`` processes (default: see ``worker_count``);
    the first error in file order is raised, as one process would."""
    if workers is None:
        workers = worker_count(len(jobs))
    elif "fork" not in multiprocessing.get_all_start_methods():
        workers = 1
    if workers < 2:
        return [rewrite_file(rel, text, rules) for rel, text, rules in jobs]
    global _JOB_RULES
    _JOB_RULES = {rule.id: rule for _, _, rules in jobs for rule in rules}  # the forked workers inherit them
    biggest_first = sorted(range(len(jobs)), key=lambda i: -len(jobs[i][1]))
    # the workers' garbage collector would trace every object inherited from here (libcst's module graph) on
    # each full collection, and touching them copies their pages: frozen, it leaves them be
    frozen_here = gc.get_freeze_count() == 0
    gc.freeze()
    try:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            out = pool.map(_plan_job, [(jobs[i][0], jobs[i][1], [r.id for r in jobs[i][2]]) for i in biggest_first],
                           chunksize=1)
    except Exception:  # noqa: BLE001  the pool could not run (limits, a killed worker) or a rule has a bug:
        # plan here instead, which gives the same plan, or the rule's error with its own traceback
        return [rewrite_file(rel, text, rules) for rel, text, rules in jobs]
    finally:
        _JOB_RULES = {}
        if frozen_here:  # a caller that froze its own heap keeps it frozen
            gc.unfreeze()
    results: list = [None] * len(jobs)
    for i, result in zip(biggest_first, out):
        results[i] = result
    for result in results:
        if isinstance(result, PorterError):
            raise result
    return results


_JOB_RULES: dict[str, Rule] = {}


def _plan_job(job: tuple[str, str, list[str]]) -> FileRewrite | PorterError:
    rel, text, ids = job
    try:
        return rewrite_file(rel, text, [_JOB_RULES[i] for i in ids])
    except PorterError as exc:
        return exc


def worker_count(files: int) -> int:
    """How many processes plan (and scan) ``files`` files: PORTER_PLAN_WORKERS, or one per core up to 4. They are
    forked, so the work stays in this process where fork is unavailable or unsafe (torch loaded: its thread pools
    do not survive a fork)."""
    wanted = os.environ.get("PORTER_PLAN_WORKERS", "")
    count = int(wanted) if wanted.isdigit() else min(os.cpu_count() or 1, 4)
    if files < 3 or "fork" not in multiprocessing.get_all_start_methods() or "torch" in sys.modules:
        return 1
    return min(count, files)
