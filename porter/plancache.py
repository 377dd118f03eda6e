"""A cache of planned files: what the rules make of one file's text, kept by (the file's path and text, the
rules' fingerprint: their code, porter's engine and libcst's version).

A file whose text and rules are unchanged plans to the same result, so `porter patch sat --dry-run` followed by
`porter patch sat` (or `verify`, or `scan`) plans once. Failures are never cached: a conflict or an unmatched
required rule is found again each time.
PORTER_PLAN_CACHE=0 turns it off; entries live under $PORTER_CACHE (default ~/.cache/porter)/plans.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

from .diskio import cache_dir
from .rules import Match

ENV = "PORTER_PLAN_CACHE"


def enabled() -> bool:
    return os.environ.get(ENV, "1") != "0"


def root() -> Path:
    return cache_dir("plans")


def key(rules_fingerprint: str, rule_ids: list[str], path: str, text: str) -> str:
    h = hashlib.sha256(f"{rules_fingerprint}\0{','.join(sorted(rule_ids))}\0{path}\0".encode())
    h.update(text.encode("utf-8", "surrogatepass"))
    return h.hexdigest()


def load(entry: str) -> tuple[str, list[Match], bool] | None:
    """The rewritten text, matches and whether the fallback planned it, stored under ``entry``; None when missing or
    unreadable (plan again)."""
    try:
        data = json.loads((root() / entry[:2] / f"{entry}.json").read_text())
        after, matches = data["after"], [Match(**m) for m in data["matches"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    # a cache entry is read as untrusted as any file: only what porter writes is used
    if not isinstance(after, str) or not all(isinstance(m.path, str) and isinstance(m.rule_id, str)
                                             and isinstance(m.start_line, int) and isinstance(m.end_line, int)
                                             for m in matches):
        return None
    return after, matches, data.get("by_reference") is True


def store(entry: str, after: str, matches: list[Match], by_reference: bool = False) -> None:
    """Keep a result; a cache that cannot be written (read-only home, full disk) is simply not used."""
    folder = root() / entry[:2]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{entry}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps({"after": after, "matches": [dataclasses.asdict(m) for m in matches],
                                   "by_reference": by_reference}))
        os.replace(tmp, folder / f"{entry}.json")  # readers see the old entry or the new one, never half
    except OSError:
        pass
