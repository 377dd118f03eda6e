"""porter's name resolution (Python's symbol tables) against libcst's scope analysis, name by name: on tricky
snippets, and on every attribute chain, called name and decorator of the installed SAT."""
from __future__ import annotations

import textwrap
from importlib import metadata
from pathlib import Path

import libcst as cst
import pytest
from libcst.metadata import MetadataWrapper
from names_reference import disagreements

from porter.names import ResolvesNames

SNIPPETS = {
    "aliases": """
        import torch as th
        from torch import cuda as gpu
        from torch.cuda import synchronize
        import torch.nn.functional
        th.cuda.synchronize(); gpu.current_device(); synchronize(); torch.nn.functional.gelu(x)
    """,
    "parameter and local shadow the module": """
        import torch
        def f(torch):
            torch.cuda.synchronize()
        def g():
            torch = make()
            torch.cuda.synchronize()
        def h():
            return torch.cuda.synchronize()
    """,
    "closures skip class bodies": """
        import torch
        def outer():
            import numpy as torch
            class C:
                torch = 3
                def m(self):
                    return torch.cuda.synchronize()
            return C
        class D:
            import torch as t
            def m(self):
                return t.cuda.synchronize()
            x = t.cuda.is_available()
    """,
    "comprehensions and lambdas": """
        import torch
        a = [torch.cuda.x(i) for i in torch.cuda.ids()]
        b = [torch.y for torch in range(3)]
        c = lambda torch=torch.cuda.z: torch.cuda.w()
        d = {k: torch.cuda.v for k in range(2)}
    """,
    "try/except imports, in order": """
        try:
            from apex.normalization import FusedLayerNorm as LayerNorm
            LayerNorm(3)
        except ImportError:
            from torch.nn import LayerNorm
            LayerNorm(3)
        LayerNorm(4)
        def f():
            return LayerNorm(5)
    """,
    "global, decorators, relative imports, star": """
        from . import mpu
        from .ops import fused as fz
        from torch.cuda import *
        import torch
        @torch.jit.script
        def f(x: torch.Tensor = torch.zeros(1)) -> torch.Tensor:
            global later
            later = 1
            return mpu.get_rank() + fz.op(x) + synchronize()
        def g():
            later.cuda.x(); print(len([]))
    """,
    "non-ASCII before a name on the line": """
        import torch as 火
        s = "中文字符串"; 火.cuda.synchronize()
        def f(火):
            t = "中文"; 火.cuda.synchronize()
    """,
}


@pytest.mark.parametrize("name", SNIPPETS)
def test_snippets_read_as_libcst_reads_them(name):
    wrong, compared = disagreements(textwrap.dedent(SNIPPETS[name]))
    assert compared > 3
    assert wrong == []


def test_every_name_in_the_installed_sat_reads_as_libcst_reads_it():
    root = Path(metadata.distribution("SwissArmyTransformer").locate_file("sat"))
    compared, wrong = 0, []
    for path in sorted(root.rglob("*.py")):
        found, count = disagreements(path.read_text(encoding="utf-8"))
        compared += count
        wrong += [(path.name, *w) for w in found]
    assert compared > 5000
    assert wrong == []


class _Names(ResolvesNames, cst.CSTVisitor):
    def __init__(self):
        super().__init__()
        self.read = {}

    def visit_Call(self, node):
        self.read[cst.Module([]).code_for_node(node.func)] = self.qualified_name(node.func)


def _read(code: str) -> dict:
    names = _Names()
    MetadataWrapper(cst.parse_module(textwrap.dedent(code))).visit(names)
    return names.read


def test_what_the_rules_see():
    read = _read("""
        import torch as th
        from torch import cuda as gpu
        def f(torch):
            torch.cuda.a()
        th.cuda.b(); gpu.c(); never_bound.d(); print()
        try:
            from x import f2
        except ImportError:
            from y import f2
        def g():
            f2()
    """)
    assert read == {"torch.cuda.a": None, "th.cuda.b": "torch.cuda.b", "gpu.c": "torch.cuda.c",
                    "never_bound.d": "never_bound.d", "print": "builtins.print", "f2": None}
