"""The rewrite engine: run an ordered set of rules over one file's text, in memory."""
from __future__ import annotations

import dataclasses
import difflib
import functools
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import libcst as cst
from libcst.metadata import MetadataWrapper

from .bindings import Bindings, BindingsProvider
from .errors import PlanError
from .rules import Match, Rule, RuleTransformer, TextRewrite, add_needed_imports
from .skeleton import Lost, Skeleton, cut

WHOLE_FILES = "PORTER_PLAN_WHOLE_FILES"


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


def _parse(path: str, text: str, rule_id: str, skeleton: Skeleton | None = None) -> MetadataWrapper:
    """``text`` parsed for the rules; when it is a cut file (or a rewrite of one), names in it resolve as in the
    whole file it stands for."""
    try:
        module = cst.parse_module(text)
    except cst.ParserSyntaxError as exc:
        line, message = _syntax_error_at(text, exc)
        raise PlanError(f"{path}:{line}: cannot parse ({message}); rule {rule_id} not applied") from None
    if skeleton is None:
        return MetadataWrapper(module, unsafe_skip_copy=True)
    if module.code != text:  # libcst drops whitespace-only lines that end a file after a top-level statement
        raise Lost("the cut file does not print back as it was parsed")
    return MetadataWrapper(module, unsafe_skip_copy=True, cache={BindingsProvider: Bindings(*skeleton.expand(text))})


def find_matches(rules: Sequence[Rule], path: str, text: str, parsed: MetadataWrapper | None = None,
                 skeleton: Skeleton | None = None) -> dict[str, list[Match]]:
    """What each of ``rules`` would change in ``text`` on its own, without rewriting anything: the Python rules
    share one walk of the original tree, each seeing only the original code (see ``_Watch``); a rule that needs
    metadata beyond the usual runs alone."""
    found = {rule.id: rule.rewrite.rewrite(text, rule.id, path)[1] for rule in rules
             if isinstance(rule.rewrite, TextRewrite)}
    python = [rule for rule in rules if not isinstance(rule.rewrite, TextRewrite)]
    if python:
        parsed = parsed or _parse(path, text, python[0].id, skeleton)
        shared = set(_Watch.get_inherited_dependencies())
        parts = [_transformer(rule, path) for rule in python]
        together = [part for part in parts if _dependencies(type(part)) <= shared]
        if together:
            parsed.visit(_Watch(together))
        for part in parts:
            if part not in together:
                parsed.visit(part)
        found.update({rule.id: part.matches for rule, part in zip(python, parts)})
    return found


def apply_rule(rule: Rule, path: str, text: str, parsed: MetadataWrapper | None = None,
               skeleton: Skeleton | None = None) -> tuple[str, list[Match]]:
    """Apply one rule to ``text`` (the contents of ``path``); return the new text and its matches.

    ``parsed`` is ``text`` already parsed: several rules over the same text share one parse and one
    position-metadata pass (CST nodes are immutable, so a transform never disturbs the shared tree).
    """
    if isinstance(rule.rewrite, TextRewrite):
        return rule.rewrite.rewrite(text, rule.id, path)
    wrapper = parsed or _parse(path, text, rule.id, skeleton)
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


class _Calls:
    """One rule transformer's ``visit_X``/``leave_X`` methods, looked up once per node type.

    libcst finds them by name (``getattr(self, f"visit_{type}")``) at every node, and the attribute hooks
    (``visit_X_attr``) at every child of every node; with several rules in one walk that lookup was a third of
    planning. Calls go through the transformer's own ``on_visit``/``on_leave`` when it overrides them.
    """

    __slots__ = ("part", "visits", "leaves", "custom_visit", "custom_leave", "attributes")

    def __init__(self, part: cst.CSTTransformer):
        cls = type(part)
        self.part = part
        self.visits: dict[type, Callable | None] = {}
        self.leaves: dict[type, Callable | None] = {}
        self.custom_visit = cls.on_visit is not cst.CSTTransformer.on_visit
        self.custom_leave = cls.on_leave is not cst.CSTTransformer.on_leave
        self.attributes = _uses_attribute_hooks(cls)

    def visit(self, node: cst.CSTNode) -> bool:
        if self.custom_visit:
            return self.part.on_visit(node)
        kind = type(node)
        try:
            method = self.visits[kind]
        except KeyError:
            method = self.visits[kind] = getattr(self.part, f"visit_{kind.__name__}", None)
        return method is None or method(node) is not False

    def handles(self, node: cst.CSTNode) -> bool:
        """Whether leaving ``node`` runs any of the rule's code (else libcst passes the updated node through)."""
        if self.custom_leave:
            return True
        kind = type(node)
        if kind not in self.leaves:
            self.leaves[kind] = getattr(self.part, f"leave_{kind.__name__}", None)
        return self.leaves[kind] is not None

    def leave(self, original_node: cst.CSTNode, updated_node: cst.CSTNode):
        if self.custom_leave:
            return self.part.on_leave(original_node, updated_node)
        kind = type(original_node)
        try:
            method = self.leaves[kind]
        except KeyError:
            method = self.leaves[kind] = getattr(self.part, f"leave_{kind.__name__}", None)
        return updated_node if method is None else method(original_node, updated_node)


@functools.cache
def _uses_attribute_hooks(cls: type) -> bool:
    """Whether a transformer class has ``visit_Node_attribute``/``leave_Node_attribute`` methods (or its own
    attribute dispatch)."""
    if getattr(cls, "on_visit_attribute", None) is not cst.CSTTransformer.on_visit_attribute or \
            getattr(cls, "on_leave_attribute", None) is not cst.CSTTransformer.on_leave_attribute:
        return True
    # libcst's own base classes declare every visit_Node_attribute/leave_Node_attribute as a no-op stub: only
    # methods a rule's own classes define count
    return any(re.fullmatch(r"(visit|leave)_[A-Z]\w*?_\w+", name)
               for klass in cls.__mro__ if klass.__module__.split(".")[0] != "libcst" for name in vars(klass))


def _dependencies(cls: type) -> set:
    """The metadata providers a rule class asks for, its bases' included. libcst's own
    ``get_inherited_dependencies`` caches its answer in a class attribute, which a subclass made after the first
    call then inherits, missing what the subclass adds."""
    return {provider for klass in cls.__mro__ for provider in vars(klass).get("METADATA_DEPENDENCIES", ())}


def _transformer(rule: Rule, path: str) -> RuleTransformer:
    """The rule's transformer for one file (a rule with a TextRewrite has none: callers filter those out)."""
    assert not isinstance(rule.rewrite, TextRewrite)
    return rule.rewrite(rule.id, path)


class _Parts:
    """What the shared walks have in common: each rule's transformer with its method lookups, which rules are
    inside a subtree they asked to skip, and the attribute hooks passed on to the rules that have them."""

    metadata: Mapping  # set by libcst on the walking visitor (a MetadataDependent) before the walk

    def _take(self, parts: list[RuleTransformer]) -> None:
        self.parts = parts
        self.calls = [_Calls(part) for part in parts]
        self.attributes = [(i, c.part) for i, c in enumerate(self.calls) if c.attributes]
        self.skipping: list[cst.CSTNode | None] = [None] * len(parts)  # the subtree a part asked to skip

    def _visit_parts(self, node: cst.CSTNode) -> bool:
        if isinstance(node, cst.Module):
            for part in self.parts:
                part.metadata = self.metadata
        for i, calls in enumerate(self.calls):
            if self.skipping[i] is None and not calls.visit(node):
                self.skipping[i] = node
        return not all(self.skipping)

    def on_visit_attribute(self, node, attribute):
        for i, part in self.attributes:
            if self.skipping[i] is None:
                part.on_visit_attribute(node, attribute)

    def on_leave_attribute(self, original_node, attribute):
        for i, part in self.attributes:
            if self.skipping[i] is None:
                part.on_leave_attribute(original_node, attribute)


class _Together(_Parts, cst.CSTTransformer):
    """Several rules' transformers in one walk of one tree, sharing its metadata.

    At each node every rule's ``visit_``/``leave_`` runs in order; a rule that asked not to visit a subtree is
    left out below it. A rule's ``leave_`` may then see, below the node, what the other rules changed, which it
    never does when it runs alone. So the walk notes which rules changed something under each node, and when a
    rule rewrites a node under which another rule changed something, the walk is marked ``entangled`` and its
    result is not used (the caller falls back to one rule at a time). Without that, the result is the one the
    rules give one after another.
    """

    METADATA_DEPENDENCIES = RuleTransformer.METADATA_DEPENDENCIES

    def __init__(self, parts: list[RuleTransformer]):
        super().__init__()
        self._take(parts)
        self.changed_below: list[set[int]] = [set()]  # per open node: the parts that changed something in it
        self.entangled = False
        # parts whose leave_ code ran on a node another part had changed (itself or below): their matches may
        # differ from what they read alone
        self.influenced: set[int] = set()

    def on_visit(self, node: cst.CSTNode) -> bool:
        self.changed_below.append(set())
        return self._visit_parts(node)

    def on_leave(self, original_node, updated_node):
        below = self.changed_below.pop()
        result = same_type = updated_node
        changed_here = set()
        for i, calls in enumerate(self.calls):
            if self.skipping[i] is not None and self.skipping[i] is not original_node:
                continue  # inside a subtree this part skips
            self.skipping[i] = None
            if (below - {i} or changed_here) and calls.handles(original_node):
                self.influenced.add(i)
            if type(result) is not type(original_node):
                # an earlier part replaced this node: this part still leaves it (its own bookkeeping stays in
                # step), on the node as it was before the replacement; if it would rewrite it too, the two
                # rules meet here and the walk's result is not used
                if calls.leave(original_node, same_type) is not same_type:
                    self.entangled = True
                continue
            new = calls.leave(original_node, result)
            if new is not result:
                changed_here.add(i)
                if below - {i}:
                    self.entangled = True
            result = new
            if type(result) is type(original_node):
                same_type = result
        self.changed_below[-1] |= below | changed_here
        return result


class _Watch(_Parts, cst.CSTVisitor):
    """Several rules' transformers over one tree, each told only what it would match: every ``leave_`` gets the
    original node as both the original and the updated one, and what it returns is dropped. A rule that rewrote
    code nested in its own earlier rewrite would see that rewrite when it runs for real; no rule reads its own
    output (each is a fixpoint) so the matches are the same. For first-layer rules ``_in_layers`` compares them
    with the real run; for ``after`` rules they serve the conflict check only."""

    METADATA_DEPENDENCIES = RuleTransformer.METADATA_DEPENDENCIES

    def __init__(self, parts: list[RuleTransformer]):
        super().__init__()
        self._take(parts)

    def on_visit(self, node: cst.CSTNode) -> bool:
        return self._visit_parts(node)

    def on_leave(self, original_node: cst.CSTNode) -> None:
        for i, calls in enumerate(self.calls):
            if self.skipping[i] is None or self.skipping[i] is original_node:
                self.skipping[i] = None
                calls.leave(original_node, original_node)


@dataclass
class _Walked:
    """One shared walk's outcome: the new text, each rule's matches, and which rules' matches may differ from
    what they read alone (their code ran on nodes another rule had changed)."""

    text: str
    matches: dict[str, list[Match]]
    influenced: set[str]


def _together(rules: Sequence[Rule], path: str, wrapper: MetadataWrapper) -> _Walked | None:
    """Every rule of ``rules`` over one parsed file in a single walk; None when they cannot share a walk (a rule
    needs metadata the walk does not compute, or one rule rewrote code another had changed)."""
    parts = [_transformer(rule, path) for rule in rules]
    if any(not _dependencies(type(p)) <= set(_Together.get_inherited_dependencies()) for p in parts):
        return None
    walk = _Together(parts)
    module = wrapper.visit(walk)
    if walk.entangled:
        return None
    return _Walked(add_needed_imports(module, parts).code,
                   {rule.id: part.matches for rule, part in zip(rules, parts)},
                   {rules[i].id for i in walk.influenced})


def _depths(rules: Sequence[Rule]) -> dict[str, int]:
    """0 for a rule that rewrites the installed code, 1 + the deepest of its ``after`` rules otherwise."""
    by_id = {r.id: r for r in rules}
    depth: dict[str, int] = {}

    def of(rid: str) -> int:
        if rid not in depth:
            depth[rid] = 1 + max((of(d) for d in by_id[rid].after if d in by_id), default=-1)
        return depth[rid]

    for rule in rules:
        of(rule.id)
    return depth


def rewrite_file(path: str, text: str, rules: Iterable[Rule], *, enforce_required: bool = True) -> FileRewrite:
    """Run ``rules`` over one file: on the file cut down to what they can match (``porter.skeleton``) when every
    rule names its triggers, else, or when the cut file fails in any way, on the whole file (``_rewrite``). Both
    give the same result; PORTER_PLAN_WHOLE_FILES=1 always plans whole files."""
    rules = list(rules)
    try:
        planned = plan_cut(path, text, rules, enforce_required=enforce_required)
    except Exception:  # noqa: BLE001  a lost placeholder, a plan error, a rule that trips over a placeholder:
        planned = None  # planned again whole, which gives the plan, or the error with the file's own lines
    return planned or _rewrite(path, text, rules, enforce_required=enforce_required)


def plan_cut(path: str, text: str, rules: list[Rule], *, enforce_required: bool = True) -> FileRewrite | None:
    """``rules`` over the file cut down to what they can match, reported against the file as it is; None where
    the file is not cut (see ``_cut``). Raises ``Lost`` where a rewrite lost a placeholder, and whatever the
    rules raise; ``rewrite_file`` then plans the whole file."""
    skeleton = _cut(path, text, rules)
    return None if skeleton is None else _on_skeleton(path, text, rules, skeleton, enforce_required)


def _cut(path: str, text: str, rules: list[Rule]) -> Skeleton | None:
    """The file cut down for ``rules``; None where it must be planned whole: a data file, a rule without
    triggers, a rule over its text (TextRewrite) or one that asks for metadata beyond positions and bindings (which
    would be computed on the cut tree), or PORTER_PLAN_WHOLE_FILES."""
    if not path.endswith(".py") or not rules or os.environ.get(WHOLE_FILES, "") not in ("", "0"):
        return None
    shared = _dependencies(RuleTransformer)
    for rule in rules:
        if not rule.triggers or not isinstance(rule.rewrite, type) or not _dependencies(rule.rewrite) <= shared:
            return None
    return cut(text, [w for r in rules if r.reads == "statement" for w in r.triggers],
               [w for r in rules if r.reads == "function" for w in r.triggers])


def _on_skeleton(path: str, text: str, rules: list[Rule], skeleton: Skeleton, enforce_required: bool) -> FileRewrite:
    planned = _rewrite(path, skeleton.text, rules, enforce_required=enforce_required, skeleton=skeleton)
    after, _ = skeleton.expand(planned.after)
    lines, ends = skeleton.original
    matches = [dataclasses.replace(m, start_line=lines[m.start_line - 1][0],
                                   end_line=ends[m.end_line][0] if m.end_line in ends else lines[m.end_line - 1][1],
                                   end_col=ends[m.end_line][1] if m.end_line in ends else m.end_col)
               for m in planned.matches]
    return FileRewrite(path=path, before=text, after=after, matches=matches)


def _rewrite(path: str, text: str, rules: Iterable[Rule], *, enforce_required: bool = True,
             skeleton: Skeleton | None = None) -> FileRewrite:
    """Run ``rules`` over one file's text (a cut file's, with ``skeleton``).

    The installed text is parsed once, with one metadata pass (each later layer parses what the one before it
    made). The rules apply in layers: the rules that rewrite installed
    code together in one walk of that tree, then each further layer of ``after`` rules together over the
    previous layer's output. Each rule's matches as if it ran alone on the original are known too: from the
    first walk for a rule whose code never ran on a node another rule had changed, else from one more walk in
    which every rule reads only the original (``find_matches``). Two rules whose solo matches overlap are a
    conflict (unless one is declared ``after`` the other). A rule whose matches in the shared walk differ from
    its solo ones sends the file through the rules one at a time. Rules that rewrite code another rule produces
    must say so with ``after`` (then they are in a later layer). A required rule that matches nothing is an
    error naming rule and file.
    """
    ordered = order_rules(list(rules))
    related = _ordered_pairs(ordered)
    python = path.endswith(".py")
    parsed = _parse(path, text, ordered[0].id, skeleton) if ordered and python else None
    depth = _depths(ordered)
    first_layer = [r for r in ordered if depth[r.id] == 0]
    walked = _together(first_layer, path, parsed) if parsed is not None and first_layer else None
    # where the first layer's shared walk ran no rule's code on another's change, its matches are the rules'
    # solo readings; the rest (later layers, or all when it did) read the original in one more walk
    solo = {rid: found for rid, found in walked.matches.items() if rid not in walked.influenced} if walked else {}
    solo.update(find_matches([r for r in ordered if r.id not in solo], path, text, parsed, skeleton))
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
    layered = _in_layers(path, text, ordered, depth, parsed, solo, walked, skeleton) if python else None
    current, found_by_rule = layered if layered is not None else \
        _one_at_a_time(path, text, ordered, solo, parsed, skeleton)
    matches: list[Match] = []
    for rule in ordered:
        found = found_by_rule[rule.id]
        if enforce_required and rule.required and not found:
            raise PlanError(
                f"required rule {rule.id} matched nothing in {path}",
                hint="the installed file no longer has the code this rule rewrites (an upstream change?); "
                     "update the rule, or leave it out with --only",
            )
        matches.extend(found)
    matches.sort(key=lambda m: (m.start_line, m.start_col, m.rule_id))
    return FileRewrite(path=path, before=text, after=current, matches=matches)


def _one_at_a_time(path, text, ordered, solo, parsed, skeleton) -> tuple[str, dict[str, list[Match]]]:
    """The rules in order, each over the previous one's output (matches reported at installed lines)."""
    current, found_by_rule = text, {}
    for rule in ordered:
        rule_input = current
        if current == text:
            current, found = apply_rule(rule, path, current, parsed)  # the original: its parse is reused
        elif not solo[rule.id] and not rule.after:
            found = []  # independent of the others and matched nothing in the original: still nothing
        else:
            current, found = apply_rule(rule, path, current, skeleton=skeleton)
        found_by_rule[rule.id] = _to_original_lines(found, text, rule_input)
    return current, found_by_rule


def _in_layers(path, text, ordered, depth, parsed, solo, walked: _Walked | None, skeleton: Skeleton | None
               ) -> tuple[str, dict[str, list[Match]]] | None:
    """The rules applied layer by layer (``depth``: each rule's layer), each layer in one walk (the first is
    ``walked``, already done over the original); None to fall back to one at a time."""
    current, found_by_rule = text, {}
    for level in range(max(depth.values(), default=-1) + 1):
        layer = [r for r in ordered if depth[r.id] == level]
        if level == 0:
            together = walked
            if together is None or any(together.matches[r.id] != solo[r.id] for r in layer):
                return None  # entangled, or one rule saw another's change: not the same as the rules alone
        else:
            wrapper = parsed if current == text else _parse(path, current, layer[0].id, skeleton)
            together = _together(layer, path, wrapper)
            if together is None:
                return None
        rule_input, current = current, together.text
        for rule in layer:
            found_by_rule[rule.id] = _to_original_lines(together.matches[rule.id], text, rule_input)
    return current, found_by_rule


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
