"""Rules: one named, documented rewrite of one or more files of a target."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Union

import libcst as cst
from libcst.metadata import PositionProvider

from .target import version_in

CATEGORIES = ("device", "imports", "rotary", "fused-op", "compat", "test")


@dataclass(frozen=True)
class RuleDocs:
    """What `porter rules` prints: the reasons a reviewer needs to trust, and later drop, a rule."""

    why: str  # what breaks without it
    how: str  # what the rewrite does
    upstream: str = ""  # the upstream code, issue or fix it answers to
    removal: str = ""  # when the rule can be deleted


@dataclass(frozen=True)
class Match:
    """One place a rule changed: file, line range (1-based, inclusive) and what it did."""

    rule_id: str
    path: str
    start_line: int
    end_line: int
    message: str
    start_col: int = 0
    end_col: int = 1 << 30

    def overlaps(self, other: "Match") -> bool:
        a0, a1 = (self.start_line, self.start_col), (self.end_line, self.end_col)
        b0, b1 = (other.start_line, other.start_col), (other.end_line, other.end_col)
        return a0 < b1 and b0 < a1

    def to_json(self) -> dict:
        return {"rule": self.rule_id, "path": self.path, "lines": [self.start_line, self.end_line],
                "message": self.message}


class RuleTransformer(cst.CSTTransformer):
    """Base for Python rules: a libcst transformer that records what it changes.

    Call ``self.record(original_node, message)`` for every rewrite, with the *original* node (the one
    libcst passes as ``original_node``): its position in the file is what the report shows.
    """

    METADATA_DEPENDENCIES: ClassVar = (PositionProvider,)

    def __init__(self, rule_id: str = "", path: str = "") -> None:
        super().__init__()
        self.rule_id = rule_id
        self.path = path
        self.matches: list[Match] = []

    def record(self, node: cst.CSTNode, message: str) -> None:
        pos = self.get_metadata(PositionProvider, node)
        self.matches.append(Match(self.rule_id, self.path, pos.start.line, pos.end.line, message,
                                  pos.start.column, pos.end.column))


class TextRewrite:
    """Base for rules over non-Python files (JSON configs shipped as package data)."""

    def rewrite(self, text: str, rule_id: str, path: str) -> tuple[str, list[Match]]:  # pragma: no cover
        raise NotImplementedError


Rewrite = Union[type[RuleTransformer], TextRewrite]


@dataclass(frozen=True)
class Rule:
    id: str  # stable, dotted: "sat.device.synchronize"; shown in diffs, reports, --only
    target: str  # the Target.name it applies to
    files: tuple[str, ...]  # paths relative to site-packages: "sat/training/utils.py"
    category: str
    summary: str  # one line
    rewrite: Rewrite
    docs: RuleDocs
    versions: str = ""  # target versions this rule applies to; "" means all the target supports
    required: bool = True  # a required rule that matches nothing in one of its files aborts the plan
    after: tuple[str, ...] = field(default=())  # ids of rules whose output this one rewrites

    def __post_init__(self) -> None:
        if isinstance(self.files, str):
            object.__setattr__(self, "files", (self.files,))
        if isinstance(self.after, str):
            object.__setattr__(self, "after", (self.after,))
        if self.category not in CATEGORIES:
            raise ValueError(f"rule {self.id}: category {self.category!r} is not one of {', '.join(CATEGORIES)}")
        python = all(f.endswith(".py") for f in self.files)
        if python and not (isinstance(self.rewrite, type) and issubclass(self.rewrite, RuleTransformer)):
            raise TypeError(f"rule {self.id}: a rule over .py files needs a RuleTransformer subclass")
        if not python and not isinstance(self.rewrite, TextRewrite):
            raise TypeError(f"rule {self.id}: a rule over data files needs a TextRewrite instance")

    @property
    def key(self) -> str:
        return self.id

    def applies_to(self, version: str) -> bool:
        return version_in(version, self.versions)
