"""The rewrite engine: run an ordered set of rules over one file's text, in memory."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import dataclasses
import difflib

import libcst as cst
from libcst.metadata import MetadataWrapper

from .errors import PlanError
from .rules import Match, Rule, TextRewrite


@dataclass
class FileRewrite:
    """One file's text before and after its rules, and what each rule changed."""

    path: str
    before: str
    after: str
    matches: list[Match] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return self.before != self.after

    @property
    def rule_ids(self) -> list[str]:
        return sorted({m.rule_id for m in self.matches})


def _syntax_error_at(text: str, exc: cst.ParserSyntaxError) -> tuple[int, str]:
    """The line and message of a syntax error as Python's own parser reports them (libcst's native parser often
    points at the next token's line); libcst's when Python accepts the text (a newer syntax than libcst knows)."""
    try:
        compile(text, "<target>", "exec", dont_inherit=True)
    except SyntaxError as err:
        return err.lineno or exc.raw_line, err.msg
    except ValueError:  # e.g. null bytes
        pass
    return exc.raw_line, exc.message


def _parse(path: str, text: str, rule_id: str) -> MetadataWrapper:
    try:
        module = cst.parse_module(text)
    except cst.ParserSyntaxError as exc:
        line, message = _syntax_error_at(text, exc)
        raise PlanError(f"{path}:{line}: cannot parse ({message}); rule {rule_id} not applied") from None
    return MetadataWrapper(module, unsafe_skip_copy=True)


def apply_rule(rule: Rule, path: str, text: str, parsed: MetadataWrapper | None = None) -> tuple[str, list[Match]]:
    """Apply one rule to ``text`` (the contents of ``path``); return the new text and its matches.

    ``parsed`` is ``text`` already parsed: several rules over the same text share one parse and one
    position-metadata pass (CST nodes are immutable, so a transform never disturbs the shared tree).
    """
    if isinstance(rule.rewrite, TextRewrite):
        return rule.rewrite.rewrite(text, rule.id, path)
    wrapper = parsed or _parse(path, text, rule.id)
    transformer = rule.rewrite(rule.id, path)
    return transformer.finish(wrapper.visit(transformer)).code, transformer.matches


def order_rules(rules: Sequence[Rule]) -> list[Rule]:
    """Topological order by ``after`` (ties by id, so runs are reproducible); cycles are errors."""
    by_id = {r.id: r for r in rules}
    order: list[Rule] = []
    state: dict[str, str] = {}

    def visit(rule: Rule, chain: tuple[str, ...]) -> None:
        if state.get(rule.id) == "done":
            return
        if state.get(rule.id) == "visiting":
            raise PlanError("rule ordering cycle: " + " -> ".join(chain + (rule.id,)))
        state[rule.id] = "visiting"
        for dep in sorted(rule.after):
            if dep in by_id:  # a dependency left out by --only or a version range simply does not run
                visit(by_id[dep], chain + (rule.id,))
        state[rule.id] = "done"
        order.append(rule)

    for rule in sorted(rules, key=lambda r: r.id):
        visit(rule, ())
    return order


def _ordered_pairs(rules: Sequence[Rule]) -> set[frozenset[str]]:
    """Pairs of rules related through ``after`` (transitively): they compose on purpose."""
    by_id = {r.id: r for r in rules}
    ancestors: dict[str, set[str]] = {}

    def collect(rid: str) -> set[str]:
        if rid not in ancestors:
            ancestors[rid] = set()
            for dep in by_id[rid].after:
                if dep in by_id:
                    ancestors[rid] |= {dep} | collect(dep)
        return ancestors[rid]

    return {frozenset((a, b)) for a in by_id for b in collect(a)}


def rewrite_file(path: str, text: str, rules: Iterable[Rule], *, enforce_required: bool = True) -> FileRewrite:
    """Run ``rules`` over one file.

    Each rule is first run alone on the original text, so two rules that rewrite the same code are caught
    as a conflict (unless one is declared ``after`` the other). Then the rules run in order, each on the
    previous one's output, and a required rule that matches nothing is an error naming rule and file.
    """
    ordered = order_rules(list(rules))
    related = _ordered_pairs(ordered)
    parsed = _parse(path, text, ordered[0].id) if ordered and path.endswith(".py") else None
    solo_runs = {rule.id: apply_rule(rule, path, text, parsed) for rule in ordered}
    solo = {rid: found for rid, (_, found) in solo_runs.items()}
    for i, a in enumerate(ordered):
        for b in ordered[i + 1:]:
            if frozenset((a.id, b.id)) in related:
                continue
            for ma in solo[a.id]:
                for mb in solo[b.id]:
                    if ma.overlaps(mb):
                        raise PlanError(
                            f"{path}:{ma.start_line}: rules {a.id} and {b.id} both rewrite the same code",
                            hint=f"declare one rule `after` the other, or narrow one of them "
                                 f"(lines {ma.start_line}-{ma.end_line} and {mb.start_line}-{mb.end_line})",
                        )
    current = text
    matches: list[Match] = []
    for rule in ordered:
        rule_input = current
        if current == text:
            current, found = solo_runs[rule.id]  # same input as its solo run
        elif not solo[rule.id] and not rule.after:
            found = []  # independent of the others and matched nothing in the original: still nothing
        else:
            current, found = apply_rule(rule, path, current)
        if enforce_required and rule.required and not found:
            raise PlanError(
                f"required rule {rule.id} matched nothing in {path}",
                hint="the installed file no longer has the code this rule rewrites (an upstream change?); "
                     "update the rule, or leave it out with --only",
            )
        matches.extend(_to_original_lines(found, text, rule_input))
    matches.sort(key=lambda m: (m.start_line, m.start_col, m.rule_id))
    return FileRewrite(path=path, before=text, after=current, matches=matches)


def _to_original_lines(matches: list[Match], original: str, seen: str) -> list[Match]:
    """Report lines of the file as installed, not of the intermediate text a later rule saw."""
    if not matches or seen == original:
        return matches
    line_of = {}
    ops = difflib.SequenceMatcher(None, original.splitlines(), seen.splitlines(), autojunk=False).get_opcodes()
    for tag, i1, i2, j1, j2 in ops:
        for j in range(j1, j2):
            line_of[j + 1] = (i1 + (j - j1) + 1) if tag == "equal" else min(i1 + 1, max(i2, 1))
    return [dataclasses.replace(m, start_line=line_of.get(m.start_line, m.start_line),
                                end_line=line_of.get(m.end_line, m.end_line)) for m in matches]
