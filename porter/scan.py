"""`porter scan`: CUDA-only sites left in a target after its rules, so coverage is visible.

The scan runs over the *planned* source of every Python file in the target's package (the rules applied in
memory), so it reports exactly what the patch would leave behind. A plugin can mark sites it leaves on purpose
(``Target.scan_exempt``: ``fnmatch`` pattern over ``path::qualified.function`` -> why).
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Callable

import libcst as cst
from libcst.metadata import MetadataWrapper, PositionProvider

from .names import ResolvesNames
from .plan import make_plan
from .target import InstalledTarget

CUDA_STRINGS = {"nccl", "cuda"}
CUDA_ONLY_IMPORTS = {"triton", "xformers", "apex", "cpm_kernels", "bitsandbytes", "flash_attn"}


@dataclass(frozen=True)
class Site:
    path: str
    line: int
    scope: str  # enclosing qualified function or class, "<module>" at top level
    kind: str  # torch.cuda | .cuda() | backend string | cudnn flag | jit.script | cuda-only import | pin_memory
    code: str
    exempt: str | None = None  # why the target plugin leaves it

    @property
    def key(self) -> str:
        return f"{self.path}::{self.scope}"

    def to_json(self) -> dict:
        return {"path": self.path, "line": self.line, "scope": self.scope, "kind": self.kind, "code": self.code,
                "exempt": self.exempt}


class _Finder(ResolvesNames, cst.CSTVisitor):
    """Finds the sites by what the code refers to, through the file's imports: ``th.cuda.synchronize()`` after
    ``import torch as th`` and ``cuda.synchronize()`` after ``from torch import cuda`` are both torch.cuda."""

    def __init__(self, path: str, module: cst.Module):
        self.path, self.module = path, module
        self.scopes: list[str] = []
        self.try_depth = 0
        self.sites: list[Site] = []

    def _add(self, node, kind):
        line = self.get_metadata(PositionProvider, node).start.line
        text = " ".join(self.module.code_for_node(node).split())
        self.sites.append(Site(self.path, line, ".".join(self.scopes) or "<module>", kind, text[:100]))

    def visit_FunctionDef(self, node):
        self.scopes.append(node.name.value)
        for dec in node.decorators:
            if self.refers_to(dec.decorator, "torch.jit.script"):
                self._add(dec, "jit.script")

    def leave_FunctionDef(self, node):
        self.scopes.pop()

    def visit_ClassDef(self, node):
        self.scopes.append(node.name.value)

    def leave_ClassDef(self, node):
        self.scopes.pop()

    def visit_Try(self, node):
        self.try_depth += 1

    def leave_Try(self, node):
        self.try_depth -= 1

    def _name_site(self, node) -> bool:
        """Report ``node`` if it names something CUDA-only; False stops the visit below it (one site each)."""
        name = self.qualified_name(node) or ""
        if name.startswith("torch.cuda."):
            self._add(node, "torch.cuda")
            return False
        if name.startswith(("torch.backends.cudnn.", "torch.backends.cuda.")):
            self._add(node, "cudnn flag")
            return False
        return True

    def visit_Attribute(self, node):
        return self._name_site(node)

    def visit_Name(self, node):
        self._name_site(node)  # `synchronize()` after `from torch.cuda import synchronize`

    def visit_Call(self, node):
        func = node.func
        if isinstance(func, cst.Attribute) and func.attr.value == "cuda" and not node.args:
            self._add(node, ".cuda()")
        for arg in node.args:
            if arg.keyword is not None and arg.keyword.value == "pin_memory" and \
                    isinstance(arg.value, cst.Name) and arg.value.value == "True":
                self._add(arg, "pin_memory")

    def visit_SimpleString(self, node):
        try:
            value = node.evaluated_value
        except Exception:
            return
        if value in CUDA_STRINGS:
            self._add(node, "backend string" if value == "nccl" else "device string")

    def _import(self, node, names):
        if self.try_depth == 0 and not self.scopes and any(n.split(".")[0] in CUDA_ONLY_IMPORTS for n in names):
            self._add(node, "cuda-only import")

    def visit_Import(self, node):
        self._import(node, [self.module.code_for_node(a.name) for a in node.names])
        return False  # the names an import binds are not uses

    def visit_ImportFrom(self, node):
        if node.module is not None and not node.relative:
            self._import(node, [self.module.code_for_node(node.module)])
        return False


def find_sites(path: str, source: str) -> list[Site]:
    module = cst.parse_module(source)
    finder = _Finder(path, module)
    MetadataWrapper(module, unsafe_skip_copy=True).visit(finder)
    return finder.sites


def scan(installed: InstalledTarget, rules, progress: Callable[[str], None] = lambda _m: None) -> list[Site]:
    """Every CUDA-only site in the target's package as the patch would leave it."""
    from .patcher import read_original, status

    journal = status(installed).journal
    read = read_original(installed, journal)
    plan = make_plan(installed, rules, read=read)
    planned = {f.path: f.after for f in plan.files}
    exempt = getattr(installed.target, "scan_exempt", {}) or {}
    sites = []
    files = sorted(p for p in installed.package_dir.rglob("*.py") if "__pycache__" not in p.parts)
    progress(f"scanning {len(files)} files")
    for file in files:
        rel = str(file.relative_to(installed.site_packages))
        source = planned.get(rel)
        if source is None:
            source = read(rel)
        try:
            found = find_sites(rel, source)
        except cst.ParserSyntaxError:
            continue  # not Python 3 source; not importable either
        for site in found:
            why = next((w for pattern, w in exempt.items() if fnmatch.fnmatchcase(site.key, pattern)), None)
            sites.append(Site(**{**site.__dict__, "exempt": why}))
    return sites
