"""Test-only plugin: the `toylib` target and three small rules, loaded with --plugin / PORTER_PLUGINS.

toylib is a fixture package that tests install into a temporary site-packages (see ``TOYLIB_FILES``).
"""
from __future__ import annotations

import libcst as cst

import porter
from porter.rules import Match, Rule, RuleDocs, RuleTransformer, TextRewrite
from porter.target import Target

TOYLIB_FILES = {
    "toylib/__init__.py": """
        from .dist import BACKEND
        from .timer import Timer
    """,
    "toylib/dist.py": """
        BACKEND = 'nccl'  # the default every rank uses
    """,
    "toylib/timer.py": """
        import time


        def cuda_synchronize():
            raise RuntimeError("no CUDA here")


        def device_synchronize():
            pass


        class Timer:
            def start(self):
                cuda_synchronize()
                self.t = time.time()
    """,
    "toylib/config.json": """
        {"min_loss_scale": 0.01, "steps": 3}
    """,
}

TOYLIB = Target(name="toylib", distribution="toylib", package="toylib", versions=">=1,<2")
DOCS = RuleDocs(why="test", how="test", upstream="none", removal="never")


def replace_string(old: str, new: str) -> type[RuleTransformer]:
    class ReplaceString(RuleTransformer):
        def leave_SimpleString(self, original_node, updated_node):
            if updated_node.evaluated_value == old:
                self.record(original_node, f"{old!r} -> {new!r}")
                return updated_node.with_changes(value=repr(new))
            return updated_node

    return ReplaceString


def rename_call(old: str, new: str) -> type[RuleTransformer]:
    class RenameCall(RuleTransformer):
        def leave_Call(self, original_node, updated_node):
            if isinstance(updated_node.func, cst.Name) and updated_node.func.value == old:
                self.record(original_node, f"{old}() -> {new}()")
                return updated_node.with_changes(func=cst.Name(new))
            return updated_node

    return RenameCall


class ReplaceText(TextRewrite):
    def __init__(self, old: str, new: str):
        self.old, self.new = old, new

    def rewrite(self, text, rule_id, path):
        if self.old not in text:
            return text, []
        line = text[: text.index(self.old)].count("\n") + 1
        return text.replace(self.old, self.new), [Match(rule_id, path, line, line, f"{self.old} -> {self.new}")]


RULES = [
    Rule(id="toylib.backend", target="toylib", files=("toylib/dist.py",), category="test",
         summary="nccl -> gloo", rewrite=replace_string("nccl", "gloo"), docs=DOCS),
    Rule(id="toylib.sync", target="toylib", files=("toylib/timer.py",), category="test",
         summary="cuda_synchronize() -> device_synchronize()",
         rewrite=rename_call("cuda_synchronize", "device_synchronize"), docs=DOCS),
    Rule(id="toylib.config", target="toylib", files=("toylib/config.json",), category="test",
         summary="min_loss_scale 0.01 -> 1", rewrite=ReplaceText('"min_loss_scale": 0.01', '"min_loss_scale": 1'),
         docs=DOCS),
]


@porter.hookimpl
def porter_register_targets(register):
    register(TOYLIB)


@porter.hookimpl
def porter_register_rules(register):
    for rule in RULES:
        register(rule)
