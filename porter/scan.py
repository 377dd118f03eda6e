"""`porter scan`: the CUDA-only and NCCL-only sites in Python code, each with what porter's runtime offers in its
place.

- For a registered target, over the *planned* source of every file in its package (the rules applied in
  memory), so it reports exactly what the patch would leave behind; and over the source as installed, each site
  marked with the rule that covers it. A plugin can mark sites it leaves on purpose (``Target.scan_exempt``:
  ``fnmatch`` pattern over ``path::qualified.function`` -> why).
- For any installed distribution or source folder, over its files as they are: what porting it would take.

Every file is read as CPython reads source (its coding, a BOM, any newlines) and parsed by CPython's parser first;
only files whose text holds a trigger word then go through libcst (a site always names one of them). A file that
cannot be read or parsed is never "0 sites": it is a ``NotScanned`` with its line. Which files are read at all
(regular files only, at most MAX_SOURCE_BYTES; links) and the exit status are in `porter scan --help`, and in
``scan_source`` here; a folder's files are those `porter patch` reads (``generic.files_of``).
"""
from __future__ import annotations

import ast
import fnmatch
import io
import multiprocessing
import os
import re
import stat
import tokenize
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import libcst as cst
from libcst.metadata import MetadataWrapper, PositionProvider

from .errors import InputError, NotFoundError
from .generic import LINK_INSIDE, MAX_SOURCE_BYTES, excluded, files_of, folder_target
from .journal import read_original
from .names import ResolvesNames
from .plan import make_plan
from .target import InstalledTarget, NotRegular, file_kind, find_dist_info, read_record, read_regular

CUDA_STRINGS = {"nccl", "cuda"}
CUDA_ONLY_IMPORTS = {"triton", "xformers", "apex", "cpm_kernels", "bitsandbytes", "flash_attn"}
# torch.utils.cpp_extension's builders of compiled extensions: their kernels are CUDA (or C++) code no rule ports
CUDA_EXTENSION_BUILDERS = {"load", "load_inline", "CUDAExtension"}
TRIGGER = re.compile("|".join(["cuda", "cudnn", "nccl", "jit", "pin_memory", "cpp_extension",
                               *sorted(CUDA_ONLY_IMPORTS)]))
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
        if name.startswith("torch.utils.cpp_extension.") and name.rpartition(".")[2] in CUDA_EXTENSION_BUILDERS:
            self._add(node, "cuda extension", name)
            return False
        return True

    def visit_Attribute(self, node):
        return self._name_site(node)

    def visit_Name(self, node):
        self._name_site(node)  # `synchronize()` after `from torch.cuda import synchronize`

    def visit_Call(self, node):
        if (self.qualified_name(node.func) or "").startswith(RUNTIME + "."):
            return False  # ported already: porter_device.as_device("cuda") names the device it stands for
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


MAX_NESTING = 500  # libcst's native parser crashes the process (no exception) on a few thousand levels


@dataclass(frozen=True)
class NotScanned:
    """A file (or folder, or RECORD row) the scan left out, and why."""

    path: str
    why: str
    line: int | None = None

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.why}" if self.line else f"{self.path}: {self.why}"

    def to_json(self) -> dict:
        return {"path": self.path, "line": self.line, "why": self.why}


class Unscannable(Exception):
    """A file's bytes or text that cannot be scanned: why, and the line where that is known."""

    def __init__(self, why: str, line: int | None = None):
        super().__init__(why)
        self.why, self.line = why, line


def decode_source(data: bytes) -> str:
    """``data`` as CPython reads a source file: the encoding from a BOM or a coding: line (UTF-8 otherwise), every
    newline made LF (CPython's own translation, so line numbers are the interpreter's); ``Unscannable`` with the
    line when it cannot be."""
    if b"\0" in data:  # CPython refuses source with NUL bytes: this is not a Python file
        raise Unscannable("holds a NUL byte: not Python source", _line_at(data, data.index(b"\0")))
    try:
        encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
    except SyntaxError as exc:
        # for bytes that are not UTF-8 in the first two lines it says "invalid or missing encoding declaration":
        # the byte's own line is the useful answer
        _strict_decode(data, "utf-8")
        raise Unscannable(f"bad coding: line ({exc.msg})", _cookie_line(data)) from None
    text = _strict_decode(data, encoding)
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _strict_decode(data: bytes, encoding: str) -> str:
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        what = "UTF-8" if encoding.startswith("utf-8") else encoding
        raise Unscannable(f"not {what} (byte 0x{data[exc.start]:02x})", _line_at(data, exc.start)) from None
    except LookupError as exc:  # a codec that exists but is no text encoding: "# coding: hex"
        raise Unscannable(f"bad coding: line ({exc})", _cookie_line(data)) from None


def _cookie_line(data: bytes) -> int:
    """The line of the coding: declaration (Python looks in the first two)."""
    return 1 if tokenize.cookie_re.match(data.split(b"\n", 1)[0].decode("latin-1")) else 2


def _line_at(data: bytes, offset: int) -> int:
    head = data[:offset]
    return head.count(b"\n") + head.count(b"\r") - head.count(b"\r\n") + 1


def _nesting(tree: ast.AST) -> tuple[int, int]:
    """(depth, line) of the most deeply nested node, counted as libcst nests them: ``a and b and c`` and the
    generators of a comprehension are one node each in CPython's tree, but a chain in libcst's, as are the dots of
    an imported name."""
    best, stack = (0, 1), [(tree, 0, 1)]
    while stack:
        node, depth, line = stack.pop()
        line = getattr(node, "lineno", line)
        if isinstance(node, ast.BoolOp):
            depth += len(node.values) - 1
        elif isinstance(node, (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
            depth += len(node.generators) - 1
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            depth += max([a.name.count(".") for a in node.names] + [(getattr(node, "module", "") or "").count(".")])
        depth += 1
        if depth > best[0]:
            best = (depth, line)
        stack.extend((child, depth, line) for child in ast.iter_child_nodes(node))
    return best


def scan_text(path: str, text: str) -> list[Site]:
    """The sites of one file's text (newlines already LF); ``Unscannable`` when CPython's parser refuses it, or it
    is nested deeper than libcst can take."""
    try:
        tree = ast.parse(text, filename=path)
    except SyntaxError as exc:  # IndentationError and TabError too
        raise Unscannable(f"not valid Python ({exc.msg})", exc.lineno) from None
    except (RecursionError, MemoryError):  # the parser's own stack: "(" * 100000, "-" * 100000 + "x"
        raise Unscannable("nested too deeply for Python's parser") from None
    except ValueError as exc:
        raise Unscannable(f"not valid Python ({exc})") from None
    if not TRIGGER.search(text):
        return []
    depth, line = _nesting(tree)
    if depth > MAX_NESTING:  # checked first: libcst would crash the whole process, not raise
        raise Unscannable(f"nested {depth} levels deep, over the {MAX_NESTING} porter scans", line)
    try:
        return find_sites(path, text)
    except cst.ParserSyntaxError as exc:  # grammar CPython takes and libcst does not
        raise Unscannable(f"libcst cannot parse it ({exc.message})", exc.raw_line) from None
    except Exception as exc:  # noqa: BLE001 - one unreadable file must not end the scan of the others
        cause: BaseException | None = exc
        while cause is not None and not isinstance(cause, RecursionError):
            cause = cause.__context__
        if cause is not None:  # libcst's visitors recurse once per level: they stop at a few hundred
            raise Unscannable("nested too deeply for porter's parser", line) from None
        raise Unscannable(f"porter's parser failed on it ({type(exc).__name__}: {exc})") from None


def sites_in(sources: list[tuple[str, str]], progress: Callable[[str], None] = lambda _m: None) -> list[Site]:
    """The sites of every (path, source), in order. A file that cannot be scanned is reported through
    ``progress`` as a warning naming it and its line. Several files are scanned in forked processes, as planning
    is."""
    found = _run(_scan_text_item, sources, progress)
    for _sites, skipped in found:
        if skipped is not None:
            progress(f"warning: {skipped}")
    return [site for sites, _ in found for site in sites]


def _run(work, items: list, progress: Callable[[str], None]) -> list:
    """``work`` over ``items`` (each a tuple whose first field is the path shown), in forked workers when there are
    several files and cores. A worker that dies (libcst's native parser can crash on input the nesting check did
    not foresee) is not a hang or a traceback: the files are scanned again one process each, and the one that
    kills its process is reported as not scanned."""
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    from .plan import worker_count

    progress(f"scanning {len(items)} files")
    workers = worker_count(len(items))
    if workers < 2:
        return [work(item) for item in items]
    fork = multiprocessing.get_context("fork")
    try:
        with ProcessPoolExecutor(workers, mp_context=fork) as pool:
            return list(pool.map(work, items, chunksize=8))
    except BrokenProcessPool:
        progress("warning: a scanning process died; scanning each file in a process of its own to find which")
    found = []
    for item in items:
        with ProcessPoolExecutor(1, mp_context=fork) as one:
            try:
                found.append(one.submit(work, item).result())
            except BrokenProcessPool:
                found.append(([], NotScanned(item[0], "not scanned: porter's parser crashed on it")))
    return found


def _scan_text_item(item: tuple[str, str]) -> tuple[list[Site], NotScanned | None]:
    path, text = item
    try:
        return scan_text(path, text.replace("\r\n", "\n").replace("\r", "\n")), None
    except Unscannable as exc:
        return [], NotScanned(path, f"not scanned: {exc.why}", exc.line)


def _scan_file_item(item: tuple[str, str, bool]) -> tuple[list[Site], NotScanned | None]:
    """(sites, None), or ([], why not) for one file on disk, read as ``read_regular`` reads (never a FIFO or a
    device, at most MAX_SOURCE_BYTES)."""
    rel, path, follow = item
    try:
        data = read_regular(path, MAX_SOURCE_BYTES, follow=follow)
        return scan_text(rel, decode_source(data)), None
    except Unscannable as exc:
        return [], NotScanned(rel, f"not scanned: {exc.why}", exc.line)
    except NotRegular as exc:
        return [], NotScanned(rel, f"not read: {exc}")
    except OSError as exc:
        return [], NotScanned(rel, f"not read: {_oserror(exc)}")


def _oserror(exc: OSError) -> str:
    import errno

    if exc.errno == errno.ELOOP:
        return "a link that leads in a loop, or a file that became a link during the scan"
    return exc.strerror or str(exc)


def _shown(name: str) -> str:
    """A file name as it can be printed on one line: bytes that are not UTF-8 (kept by the OS as lone surrogates,
    which stdout cannot encode) shown as \\xNN, and control characters (a newline in a name would forge a line of
    output) escaped as Python escapes them."""
    name = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in name)


def python_files(root: Path) -> list[Path]:
    """The *.py files under ``root`` porter reads, by the rules `porter patch` and `porter scan FOLDER` read a
    folder with (``generic.files_of``): no hidden folder, virtual environment or __pycache__, no link, only regular
    files of at most MAX_SOURCE_BYTES."""
    from .generic import _unreadable, _walk

    return [root / rel for rel in _walk(root)[0] if _unreadable(root / rel, root) is None]


def scan(installed: InstalledTarget, rules, progress: Callable[[str], None] = lambda _m: None
         ) -> tuple[list[Site], list[Site]]:
    """A target's CUDA-only sites, from one plan of its rules: (those the patch would leave, each with the
    plugin's reason where it leaves it on purpose; those in the files as installed, each with the rule whose
    change covers its lines, or None). A file that cannot be scanned is a warning through ``progress``."""
    from .state import load_journal

    # the journal alone says where the installed sources are (the saved originals when patched); status() would
    # also check RECORD, which a scan does not need
    read = read_original(installed, load_journal(installed))
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


@dataclass
class SourceScan:
    """What `porter scan FOLDER|FILE|DISTRIBUTION` found: the sites, how many files were scanned, and every file
    (or RECORD row) that was not, with why."""

    label: str
    sites: list[Site]
    scanned: int
    not_scanned: list[NotScanned]

    def summary_line(self) -> str:
        line = f"{self.label}: {len(self.sites)} CUDA-only site(s) in {self.scanned} Python file(s)"
        if self.not_scanned:
            line += f"; {len(self.not_scanned)} not scanned"
        return line

    def to_json(self) -> dict:
        return {"files_scanned": self.scanned, "not_scanned": [n.to_json() for n in self.not_scanned]}


def scan_source(spec: str, site_packages: Path | None = None,
                progress: Callable[[str], None] = lambda _m: None, exclude: tuple[str, ...] = ()) -> SourceScan:
    """Scan a folder, a file or an installed distribution (in ``site_packages`` when given), leaving out a folder's
    or distribution's files matching ``exclude`` (and a folder's ``[tool.porter] exclude``). ``NotFoundError``
    (exit 6) when ``spec`` is none of them or holds no Python file; ``InputError`` (exit 7), naming the file and
    line, when not one file could be scanned."""
    label, _root, candidates, skipped, single = _inputs(spec, site_packages, exclude)
    results = _run(_scan_file_item, candidates, progress) if candidates else []
    failed = [why for _sites, why in results if why is not None]
    scanned = len(results) - len(failed)
    if not scanned:
        if single and failed:
            raise InputError(f"{spec}:{failed[0].line}: {failed[0].why}" if failed[0].line
                             else f"{spec}: {failed[0].why}")
        everything = skipped + failed
        if not everything:
            raise NotFoundError(f"{label}: no Python file (*.py) to scan")
        listed = "; ".join(map(str, everything[:3])) + (f"; and {len(everything) - 3} more" if len(everything) > 3
                                                       else "")
        raise InputError(f"{label}: not one Python file could be scanned: {listed}")
    return SourceScan(label, [site for sites, _ in results for site in sites], scanned,
                      sorted(skipped + failed, key=lambda n: n.path))


def _inputs(spec: str, site_packages: Path | None, exclude: tuple[str, ...] = ()
            ) -> tuple[str, Path, list[tuple[str, str, bool]], list[NotScanned], bool]:
    """(label, the folder paths are shown relative to, files to read as (name shown, path, follow a link), what
    was left out already, whether ``spec`` named one file)."""
    try:
        st = os.stat(spec)
    except FileNotFoundError:
        if os.path.lexists(spec):
            raise NotFoundError(f"{spec}: a link to nothing ({os.path.realpath(spec)})") from None
        if os.sep in spec or spec.startswith("."):  # a path: no distribution's name looks like this
            raise NotFoundError(f"{spec}: no such file or folder") from None
        try:
            return _distribution_inputs(spec, site_packages, exclude)
        except NotFoundError:
            if spec.endswith(".py"):
                raise NotFoundError(f"{spec}: no such file or folder") from None
            raise
    except NotADirectoryError:
        raise NotFoundError(f"{spec}: no such file or folder (a part of the path is a file)") from None
    except OSError as exc:
        raise InputError(f"{spec}: cannot be read ({_oserror(exc)})") from None
    if stat.S_ISDIR(st.st_mode):  # the files `porter patch` reads: one walker, one set of rules
        try:
            with os.scandir(spec):
                pass
        except OSError as exc:
            raise InputError(f"{spec}: the folder cannot be read ({_oserror(exc)})") from None
        installed = folder_target(Path(spec), tuple(exclude))
        rels, left_out = files_of(installed)
        files = [(_shown(rel), str(installed.root / rel), False) for rel in rels]
        if any(why == LINK_INSIDE for _rel, why in left_out):  # one to a file scanned under its own name: passed over
            real = {os.path.realpath(path) for _rel, path, _follow in files}
            left_out = [(rel, why) for rel, why in left_out
                        if why != LINK_INSIDE or os.path.realpath(installed.root / rel) not in real]
        skipped = [NotScanned(_shown(rel), why if rel.endswith("/") else f"not read: {why}") for rel, why in left_out]
        return spec, Path(spec), files, skipped, False
    if not stat.S_ISREG(st.st_mode):  # before any open: a FIFO's would wait for a writer
        raise InputError(f"{spec}: not read: not a regular file but {file_kind(st.st_mode)}")
    return spec, Path(spec).parent, [(Path(spec).name, spec, True)], [], True


def _distribution_inputs(spec: str, site_packages: Path | None, exclude: tuple[str, ...] = ()
                         ) -> tuple[str, Path, list[tuple[str, str, bool]], list[NotScanned], bool]:
    """An installed distribution's *.py files, from its RECORD: each row that is not sound, and each file it
    names outside site-packages, is left out and reported."""
    from importlib import metadata

    unknown = NotFoundError(f"{spec!r} is not a registered target, an installed distribution, a folder or a file",
                            hint="`porter plugins` lists the targets; `pip list` the distributions")
    if site_packages is not None and not Path(site_packages).is_dir():
        raise NotFoundError(f"--site-packages {site_packages}: no such directory")
    if site_packages is None:
        try:
            dist = metadata.distribution(spec)
        except (metadata.PackageNotFoundError, ValueError):
            raise unknown from None
        site_packages = Path(str(dist.locate_file("")))
    info = find_dist_info(Path(site_packages), spec)
    if info is None:
        raise unknown
    root = Path(site_packages)
    label = f"{info.name or spec} {info.version}"
    record = read_record(info)
    skipped: list[NotScanned] = []
    if record is not None:
        where = f"{info.folder.name}/RECORD"
        skipped += [NotScanned(where, f"{problem}: row ignored") for problem in record.problems]
        skipped += [NotScanned(_shown(row.path), f"not read: RECORD line {row.line} places it outside {root}")
                    for row in record.outside if row.path.endswith(".py")]
        rels = [row.path for row in record.rows]
    else:  # an egg: the files its metadata lists
        try:
            rels = [str(f) for f in metadata.PathDistribution(info.folder).files or ()]
        except Exception as exc:  # noqa: BLE001 - importlib's reading of a damaged file list
            raise InputError(f"{info.folder}: its list of files cannot be read ({exc})") from None
    real_root = os.path.realpath(root)
    files = []
    for rel in sorted(set(rels)):
        parts = rel.split("/")
        if not rel.endswith(".py") or "__pycache__" in parts or excluded(rel, exclude):
            continue
        path = os.path.join(root, rel)
        target = os.path.realpath(path)
        if not target.startswith(real_root.rstrip(os.sep) + os.sep):
            skipped.append(NotScanned(_shown(rel), f"not read: it leads to {_shown(target)}, outside {root}"))
        elif not os.path.lexists(path):
            skipped.append(NotScanned(_shown(rel), "not read: RECORD lists it, but it is missing"))
        else:
            files.append((_shown(rel), path, True))
    return label, root, files, skipped, False


def source_of(spec: str, site_packages: Path | None = None) -> tuple[str, Path, list[Path]]:
    """(label, root, files) for a source folder or file, or an installed distribution's Python files (from its
    RECORD): only files ``scan_source`` would read (regular, at most MAX_SOURCE_BYTES); ``NotFoundError`` when
    ``spec`` is none of them. ``scan_source`` also reports what it leaves out."""
    label, root, files, _skipped, _single = _inputs(spec, site_packages)
    kept = []
    for _rel, path, follow in files:
        try:
            st = os.stat(path, follow_symlinks=follow)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_size <= MAX_SOURCE_BYTES:
            kept.append(Path(path))
    return label, root, kept


def summary(sites: list[Site]) -> list[tuple[str, int, int, str]]:
    """(api, sites, covered by a rule, what replaces it) per API, most used first."""
    counts: dict[str, list[int]] = {}
    for s in sites:
        c = counts.setdefault(s.api, [0, 0])
        c[0] += 1
        c[1] += s.covered_by is not None
    return [(api, n, covered, replacement_for(api) or "-")
            for api, (n, covered) in sorted(counts.items(), key=lambda kv: (-kv[1][0], kv[0]))]
