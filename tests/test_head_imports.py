"""porter's own adder of ``import m [as a]`` (porter.rules.add_module_imports) against libcst's AddImportsVisitor,
whose placement it reproduces without building a matcher visitor per walk: same text for every head below."""
import itertools

import libcst as cst
import pytest
from fixture_plugin import DOCS
from libcst.codemod import CodemodContext
from libcst.codemod.visitors import AddImportsVisitor

from porter.rewrite import rewrite_file
from porter.rules import Rule, RuleTransformer, add_module_imports

HEADS = [
    "",
    "x = 1\n",
    '"""Doc."""\n',
    '"""Doc."""\nimport os\n',
    '"""Doc."""\n\nimport os\nimport torch\n\n\ndef f():\n    pass\n',
    "import os\n# a comment first\nx = 1\n",
    "import os\n\n# a comment after a blank line\nx = 1\n",
    "from __future__ import annotations\n\nimport torch as th\nimport porter.runtime.device as porter_device\nx = 1\n",
    "import torch\nimport torch.nn\nclass A:\n    pass\n",
    "import os; import sys\nimport torch\nx = 1\n",
    "__strict__ = True\nimport os\nx = 1\n",
    "#!/usr/bin/env python\n# coding: utf-8\nimport os\n\ntry:\n    import torch\nexcept ImportError:\n    torch = None\n",
    "'''Doc''' 'concatenated'\nimport os\nx = 1\n",
    "import porter.runtime.device as other\nx = 1\n",
    "import os\r\nx = 1\r\n",
]
WANTED = [
    [("torch", None)],
    [("porter.runtime.device", "porter_device")],
    [("porter.runtime.ops", "porter_ops"), ("torch", None), ("porter.runtime.device", "porter_device"),
     ("torch", None), ("os", None)],
    [("porter.runtime.device", "porter_device"), ("porter.runtime.device", "porter_device")],
]


def libcst_adds(source: str, wanted) -> str:
    context = CodemodContext()
    for module, alias in wanted:
        AddImportsVisitor.add_needed_import(context, module, asname=alias)
    return AddImportsVisitor(context).transform_module(cst.parse_module(source)).code


@pytest.mark.parametrize(("source", "wanted"), list(itertools.product(HEADS, WANTED)))
def test_imports_are_added_where_and_as_libcst_adds_them(source, wanted):
    assert add_module_imports(cst.parse_module(source), wanted).code == libcst_adds(source, wanted)


def test_nothing_missing_leaves_the_module_as_it_is():
    module = cst.parse_module("import torch\nimport porter.runtime.device as porter_device\nx = 1\n")
    assert add_module_imports(module, [("torch", None), ("porter.runtime.device", "porter_device")]) is module


class OptionalAnnotation(RuleTransformer):
    """Schedules a from-import through libcst's own API, beside require_import."""

    def leave_Name(self, original_node, updated_node):
        if updated_node.value != "Maybe":
            return updated_node
        AddImportsVisitor.add_needed_import(self.context, "typing", "Optional")
        self.require_import("porter.runtime.device", "porter_device")
        self.record(original_node, "Maybe -> Optional")
        return cst.Name("Optional")


def test_imports_a_rule_schedules_through_libcst_are_added_with_its_own():
    rule = Rule(id="optional", target="pkg", files=("pkg/mod.py",), category="test", summary="s",
                rewrite=OptionalAnnotation, docs=DOCS, triggers=("Maybe",))
    out = rewrite_file("pkg/mod.py", "import os\n\nx: Maybe[int] = None\n", [rule]).after
    assert out == "import os\nimport porter.runtime.device as porter_device\nfrom typing import Optional\n\n" \
                  "x: Optional[int] = None\n"
