"""`porter scan`: the CUDA-only and NCCL-only sites in Python code, each with what porter's runtime offers in its
place.

- For a registered target, over the *planned* source of every file in its package (the rules applied in
  memory), so it reports exactly what the patch would leave behind; and over the source as installed, each site
  marked with the rule that covers it. A plugin can mark sites it leaves on purpose (``Target.scan_exempt``:
  ``fnmatch`` pattern over ``path::qualified.function`` -> why).
- For any installed distribution or source folder, over its files as they are: what porting it would take.

Files whose text holds none of the trigger words are not parsed (a site always names one of them).
"""
from __future__ import annotations

import ast
import fnmatch
import multiprocessing
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import libcst as cst
from libcst.metadata import MetadataWrapper, PositionProvider

from .journal import read_original
from .names import ResolvesNames
from .plan import make_plan
from .target import InstalledTarget

CUDA_STRINGS = {"nccl", "cuda"}
CUDA_ONLY_IMPORTS = {"triton", "xformers", "apex", "cpm_kernels", "bitsandbytes", "flash_attn"}
TRIGGER = re.compile("|".join(["cuda", "cudnn", "nccl", "jit", "pin_memory", *sorted(CUDA_ONLY_IMPORTS)]))
RUNTIME = "porter.runtime.device"
_TYPED_TENSORS = {"LongTensor": "long", "IntTensor": "int", "FloatTensor": "float", "HalfTensor": "half",
                  "BFloat16Tensor": "bfloat16", "ByteTensor": "uint8", "BoolTensor": "bool", "DoubleTensor": "double"}


@dataclass(frozen=True)
class Site:
    path: str
    line: int
    scope: str  # enclosing qualified function or class, "<module>" at top level
    kind: str  # torch.cuda | .cuda() | backend string | cudnn flag | jit.script | cuda-only import | pin_memory
    code: str
    api: str = ""  # what it uses: torch.cuda.synchronize, .cuda(), 'nccl', import triton, ...
    exempt: str | None = None  # why the target plugin leaves it
    covered_by: str | None = None  # the rule whose change covers its lines (a registered target's source)
    end_line: int = 0  # the last line a change covering it may start on (a decorator: its function's def line)

    @property
    def key(self) -> str:
        return f"{self.path}::{self.scope}"

    @property
    def replacement(self) -> str | None:
        return replacement_for(self.api)

    def to_json(self) -> dict:
        return {"path": self.path, "line": self.line, "scope": self.scope, "kind": self.kind, "api": self.api,
                "code": self.code, "exempt": self.exempt, "covered_by": self.covered_by,
                "replacement": self.replacement}


CSV_FIELDS = ("path", "line", "scope", "kind", "api", "code", "covered_by", "exempt", "replacement")


@lru_cache(maxsize=1)
def runtime_functions() -> frozenset[str]:
    """The module-level functions of ``porter.runtime.device``, read from its source: the scan must not import
    torch to say what replaces ``torch.cuda.X``."""
    source = (Path(__file__).parent / "runtime" / "device.py").read_text()
    return frozenset(n.name for n in ast.parse(source).body if isinstance(n, ast.FunctionDef)
                     and not n.name.startswith("_"))


def replacement_for(api: str) -> str | None:
    """What porter's runtime offers in place of ``api`` (None: nothing; port it by hand)."""
    if api.startswith("torch.cuda."):
        name = api.removeprefix("torch.cuda.")
        name = {"nvtx.range_push": "range_push", "nvtx.range_pop": "range_pop", "profiler.start": "profiler_start",
                "profiler.stop": "profiler_stop", "cudart.cudaProfilerStart": "profiler_start",
                "cudart.cudaProfilerStop": "profiler_stop"}.get(name, name)
        if name in _TYPED_TENSORS:
            return f"torch.tensor(..., dtype=torch.{_TYPED_TENSORS[name]}, device={RUNTIME}.current_device())"
        return f"{RUNTIME}.{name}()" if name in runtime_functions() else None
    if api.startswith(("torch.backends.cudnn.", "torch.backends.cuda.")):
        return f"{RUNTIME}.set_determinism(benchmark=..., deterministic=..., allow_tf32=...)"
    return {".cuda()": f".to({RUNTIME}.current_device())", "'cuda'": f"{RUNTIME}.current_device()",
            "'nccl'": f"{RUNTIME}.communication_backend()", "pin_memory=True": f"pin_memory={RUNTIME}.pin_memory()",
            "@torch.jit.script": "the plain function (TorchScript fuses for CUDA; porter.runtime.ops has fused "
                                 "ops with a reference path)"}.get(api) or (
        "guard the import (try/except ImportError) with a fallback" if api.startswith("import ") else None)


class _Finder(ResolvesNames, cst.CSTVisitor):
    """Finds the sites by what the code refers to, through the file's imports: ``th.cuda.synchronize()`` after
    ``import torch as th`` and ``cuda.synchronize()`` after ``from torch import cuda`` are both torch.cuda."""

    def __init__(self, path: str, module: cst.Module):
        self.path, self.module = path, module
        self.scopes: list[str] = []
        self.try_depth = 0
        self.sites: list[Site] = []

    def _add(self, node, kind, api, until=None):
        span = self.get_metadata(PositionProvider, node)
        end = self.get_metadata(PositionProvider, until).start.line if until is not None else span.end.line
        text = " ".join(self.module.code_for_node(node).split())
        self.sites.append(Site(self.path, span.start.line, ".".join(self.scopes) or "<module>", kind, text[:100], api,
                               end_line=end))

    def visit_FunctionDef(self, node):
        self.scopes.append(node.name.value)
        for dec in node.decorators:
            if self.refers_to(dec.decorator, "torch.jit.script"):
                self._add(dec, "jit.script", "@torch.jit.script", until=node.name)

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
            self._add(node, "torch.cuda", name)
            return False
        if name.startswith(("torch.backends.cudnn.", "torch.backends.cuda.")):
            self._add(node, "cudnn flag", name)
            return False
        return True

    def visit_Attribute(self, node):
        return self._name_site(node)

    def visit_Name(self, node):
        self._name_site(node)  # `synchronize()` after `from torch.cuda import synchronize`

    def visit_Call(self, node):
        func = node.func
        if isinstance(func, cst.Attribute) and func.attr.value == "cuda" and not node.args:
            self._add(node, ".cuda()", ".cuda()")
        for arg in node.args:
            if arg.keyword is not None and arg.keyword.value == "pin_memory" and \
                    isinstance(arg.value, cst.Name) and arg.value.value == "True":
                self._add(arg, "pin_memory", "pin_memory=True")

    def visit_SimpleString(self, node):
        try:
            value = node.evaluated_value
        except Exception:
            return
        if value in CUDA_STRINGS:
            self._add(node, "backend string" if value == "nccl" else "device string", repr(value))

    def _import(self, node, names):
        tops = [n.split(".")[0] for n in names if n.split(".")[0] in CUDA_ONLY_IMPORTS]
        if self.try_depth == 0 and not self.scopes and tops:
            self._add(node, "cuda-only import", f"import {tops[0]}")

    def visit_Import(self, node):
        self._import(node, [self.module.code_for_node(a.name) for a in node.names])
        return False  # the names an import binds are not uses

    def visit_ImportFrom(self, node):
        if node.module is not None and not node.relative:
            self._import(node, [self.module.code_for_node(node.module)])
        return False


def find_sites(path: str, source: str) -> list[Site]:
    if not TRIGGER.search(source):
        return []
    module = cst.parse_module(source)
    finder = _Finder(path, module)
    MetadataWrapper(module, unsafe_skip_copy=True).visit(finder)
    return finder.sites


def sites_in(sources: list[tuple[str, str]], progress: Callable[[str], None] = lambda _m: None) -> list[Site]:
    """The sites of every (path, source), in order; files that do not parse as Python 3 are skipped. Several
    files are scanned in forked processes, as planning is."""
    from .plan import worker_count

    progress(f"scanning {len(sources)} files")
    workers = worker_count(len(sources))
    if workers < 2:
        return [site for item in sources for site in _sites_or_none(item)]
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        found = pool.map(_sites_or_none, sources, chunksize=8)
    return [site for sites in found for site in sites]


def _sites_or_none(item: tuple[str, str]) -> list[Site]:
    try:
        return find_sites(*item)
    except cst.ParserSyntaxError:
        return []  # not Python 3 source; not importable either


def python_files(root: Path) -> list[Path]:
    return sorted(p for p in Path(root).rglob("*.py") if "__pycache__" not in p.parts)


def scan(installed: InstalledTarget, rules, progress: Callable[[str], None] = lambda _m: None
         ) -> tuple[list[Site], list[Site]]:
    """A target's CUDA-only sites, from one plan of its rules: (those the patch would leave, each with the
    plugin's reason where it leaves it on purpose; those in the files as installed, each with the rule whose
    change covers its lines, or None)."""
    from .patcher import status

    read = read_original(installed, status(installed).journal)
    plan = make_plan(installed, rules, read=read)
    planned = {f.path: f.after for f in plan.files}
    matches: dict[str, list] = {}
    for m in plan.matches():
        matches.setdefault(m.path, []).append(m)
    exempt = getattr(installed.target, "scan_exempt", {}) or {}
    rels = [str(f.relative_to(installed.site_packages)) for f in python_files(installed.package_dir)]
    left = sites_in([(rel, planned[rel] if rel in planned else read(rel)) for rel in rels], progress)
    before = sites_in([(rel, read(rel)) for rel in rels])
    left = [replace(s, exempt=next((w for pattern, w in exempt.items() if fnmatch.fnmatchcase(s.key, pattern)), None))
            for s in left]
    before = [replace(s, covered_by=next((m.rule_id for m in matches.get(s.path, ())
                                          if m.start_line <= s.end_line and s.line <= m.end_line), None))
              for s in before]
    return left, before


def source_of(spec: str) -> tuple[str, Path, list[Path]]:
    """(label, root, files) for a source folder or file, or an installed distribution's Python files (from its
    RECORD); ``NotFoundError`` when ``spec`` is neither."""
    from importlib import metadata

    from .errors import NotFoundError

    path = Path(spec)
    if path.is_dir():
        return str(path), path, python_files(path)
    if path.is_file() and path.suffix == ".py":
        return str(path), path.parent, [path]
    try:
        dist = metadata.distribution(spec)
    except metadata.PackageNotFoundError:
        raise NotFoundError(f"{spec!r} is not a registered target, an installed distribution or a folder",
                            hint="`porter plugins` lists the targets; `pip list` the distributions") from None
    root = Path(str(dist.locate_file("")))
    files = sorted(root / f for f in dist.files or () if f.suffix == ".py" and "__pycache__" not in f.parts
                   and (root / f).is_file())
    return f"{dist.metadata['Name']} {dist.version}", root, files


def summary(sites: list[Site]) -> list[tuple[str, int, int, str]]:
    """(api, sites, covered by a rule, what replaces it) per API, most used first."""
    counts: dict[str, list[int]] = {}
    for s in sites:
        c = counts.setdefault(s.api, [0, 0])
        c[0] += 1
        c[1] += s.covered_by is not None
    return [(api, n, covered, replacement_for(api) or "-")
            for api, (n, covered) in sorted(counts.items(), key=lambda kv: (-kv[1][0], kv[0]))]
