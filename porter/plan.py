"""Planning: every rule over every file, in memory, before anything on disk changes."""
from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from .diskio import read_source
from .errors import NotFoundError, PlanError
from . import plancache
from .rewrite import FileRewrite, rewrite_file
from .rules import Rule, fingerprint
from .target import InstalledTarget


@dataclass
class Plan:
    installed: InstalledTarget
    rules: list[Rule]  # the rules that ran
    skipped: list[tuple[str, str]]  # (rule id, reason) for rules left out
    files: list[FileRewrite] = field(default_factory=list)

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
        chunks = []
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
            "matches": [m.to_json() for m in self.matches()],
            "diff": self.diff(),
        }

    def write_report(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2) + "\n")


def select_rules(installed: InstalledTarget, rules: Sequence[Rule], only: Sequence[str] = ()) -> tuple[list[Rule], list[tuple[str, str]]]:
    """The target's rules that apply to the installed version (and to ``--only``), and why others don't."""
    mine = [r for r in rules if r.target == installed.name]
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
    cached = plancache.enabled()
    rules_fingerprint = fingerprint(chosen) if cached else ""
    for rel in sorted(by_file):
        text = read(rel)
        entry = plancache.key(rules_fingerprint, [r.id for r in by_file[rel]], rel, text) if cached else ""
        hit = plancache.load(entry) if cached else None
        if hit is not None:
            plan.files.append(FileRewrite(path=rel, before=text, after=hit[0], matches=hit[1]))
            continue
        done = rewrite_file(rel, text, by_file[rel])
        plan.files.append(done)
        if cached:
            plancache.store(entry, done.after, done.matches)
    return plan
