"""Census: `porter scan` inputs (folders, files, links, FIFOs, devices, encodings, parser limits) and a distribution's
damaged RECORD or METADATA under status, patch, restore-original and scan.

Every case runs porter in this interpreter and checks that nothing it was pointed at changed (``tree_digest``).
A scan that succeeds in part is exit 0 with one ``warning:`` line per file it left out and the count in the summary;
one that scanned nothing is refused with one error line naming the file (and line).

Permissions: these tests usually run as root, whom file modes do not stop. A "denied" path is chmod 000 and, as
root, ``os.scandir`` / ``os.open`` are also monkeypatched to answer EACCES for that path alone (what the kernel says
to anyone else); the code under test only sees the error either way.
"""
from __future__ import annotations

import base64
import errno
import hashlib
import json
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from census import Case, assert_refused, cli, ids

from porter.testing import tree_digest

SITE = "import torch\ntorch.cuda.synchronize()\n"  # one site, on line 2


@dataclass(frozen=True)
class Refused:
    code: int
    needles: tuple[str, ...]


@dataclass(frozen=True)
class Scanned:
    """Exit 0: ``sites`` in ``files`` scanned files; one warning line holding each of ``warnings``; with ``lines``,
    --json gives exactly these (path, line) sites."""

    files: int
    sites: int
    warnings: tuple[str, ...] = ()
    lines: tuple[tuple[str, int], ...] | None = None


def refused(code: int, *needles: str) -> Refused:
    return Refused(code, needles)


def scanned(files: int, sites: int, *warnings: str, lines=None) -> Scanned:
    return Scanned(files, sites, warnings, lines)


@dataclass
class Inputs:
    """A folder of test inputs under ``root``; ``deny`` marks paths to make unreadable once the digest is taken."""

    root: Path
    denied: list[Path] = field(default_factory=list)

    def file(self, rel: str, data: bytes | str) -> str:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        return str(path)

    def folder(self, rel: str = "src", files: dict | None = None) -> str:
        (self.root / rel).mkdir(parents=True, exist_ok=True)
        for name, data in (files or {}).items():
            self.file(f"{rel}/{name}", data)
        return str(self.root / rel)

    def link(self, rel: str, to: str) -> str:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.symlink_to(to)
        return str(path)

    def fifo(self, rel: str) -> str:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        os.mkfifo(path)
        return str(path)

    def deny(self, rel: str) -> None:
        self.denied.append(self.root / rel)

    def apply_denials(self, monkeypatch) -> None:
        targets = {os.path.realpath(p) for p in self.denied}
        for path in self.denied:
            path.chmod(0)
        if not targets or os.geteuid() != 0:
            return
        real_scandir, real_open = os.scandir, os.open

        def refuse(path):
            if os.path.realpath(path) in targets:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))

        def scandir(path="."):
            refuse(path)
            return real_scandir(path)

        def open_(path, flags, *args, **kwargs):
            refuse(path)
            return real_open(path, flags, *args, **kwargs)

        monkeypatch.setattr(os, "scandir", scandir)
        monkeypatch.setattr(os, "open", open_)

    def lift_denials(self) -> None:
        for path in self.denied:
            path.chmod(0o755)


def _missing(i: Inputs) -> str:
    i.folder()
    return str(i.root / "src" / "nope.py")


def _parent_is_a_file(i: Inputs) -> str:
    i.file("src/a.py", SITE)
    return str(i.root / "src" / "a.py" / "b.py")


def _unknown_name(i: Inputs) -> str:
    i.folder()
    return "no-such-distribution-or-folder"


def _denied_folder(i: Inputs) -> str:
    i.folder("src", {"a.py": SITE})
    i.deny("src")
    return str(i.root / "src")


def _denied_subfolder(i: Inputs) -> str:
    i.folder("src", {"a.py": SITE, "private/b.py": SITE})
    i.deny("src/private")
    return str(i.root / "src")


def _denied_file(i: Inputs) -> str:
    i.folder("src", {"a.py": SITE, "b.py": SITE})
    i.deny("src/b.py")
    return str(i.root / "src")


def _every_file_fails(i: Inputs) -> str:
    i.folder("src", {"a.py": b"\0\0", "b.py": "def f(:\n", "c.py": "print 'cuda'\n", "d.py": b"x = '\xff'\n"})
    return str(i.root / "src")


def _link_inside(i: Inputs) -> str:
    i.folder("src", {"a.py": SITE})
    i.link("src/alias.py", "a.py")
    i.link("src/sub", ".")  # a folder link back into the folder: a loop if followed
    return str(i.root / "src")


def _link_to_data_inside(i: Inputs) -> str:
    i.folder("src", {"data/code.txt": SITE})
    i.link("src/code.py", "data/code.txt")
    return str(i.root / "src")


def _link_outside(i: Inputs) -> str:
    i.file("elsewhere/secret.py", SITE)
    i.folder("src", {"a.py": SITE})
    i.link("src/secret.py", str(i.root / "elsewhere" / "secret.py"))
    i.link("src/vendored", str(i.root / "elsewhere"))
    return str(i.root / "src")


def _loop_links(i: Inputs) -> str:
    i.folder("src", {"a.py": SITE})
    i.link("src/x.py", "y.py")
    i.link("src/y.py", "x.py")
    i.link("src/gone.py", "nothing-here.py")
    return str(i.root / "src")


def _fifo_in_folder(i: Inputs) -> str:
    i.folder("src", {"a.py": SITE})
    i.fifo("src/pipe.py")
    return str(i.root / "src")


def _dev_zero_in_folder(i: Inputs) -> str:
    i.folder("src", {"a.py": SITE})
    i.link("src/x.py", "/dev/zero")
    return str(i.root / "src")


def _oversize(i: Inputs) -> str:
    i.folder("src", {"a.py": SITE})
    with open(i.root / "src" / "huge.py", "wb") as f:
        f.truncate(16 * 2 ** 20 + 1)  # sparse: no disk, but its size says 16 MiB + 1
    return str(i.root / "src")


def _non_utf8_name(i: Inputs) -> str:
    i.folder("src", {"a.py": SITE})
    with open(os.path.join(os.fsencode(i.root / "src"), b"caf\xe9.py"), "wb") as f:
        f.write(SITE.encode())
    return str(i.root / "src")


def _one(name: str, data: bytes | str) -> Callable[[Inputs], str]:
    return lambda i: i.file(f"src/{name}", data)


def _fifo_named(i: Inputs) -> str:
    return i.fifo("src/pipe.py")


def _dev_zero_named(i: Inputs) -> str:
    return i.link("src/zero.py", "/dev/zero")


def _broken_link_named(i: Inputs) -> str:
    return i.link("src/gone.py", "nothing-here.py")


def _with_bad(name: str, data: bytes | str) -> Callable[[Inputs], str]:
    return lambda i: i.folder("src", {"a.py": SITE, name: data})


LATIN1 = b"import torch\nname = 'caf\xe9'\ntorch.cuda.synchronize()\n"
SCAN_CASES = [
    (Case("scan/missing-path", "scan", "a path that does not exist: exit 6, one line naming it"),
     _missing, refused(6, "nope.py: no such file or folder")),
    (Case("scan/parent-is-a-file", "scan", "a path through a file (ENOTDIR): exit 6 saying a part of it is a file"),
     _parent_is_a_file, refused(6, "b.py: no such file or folder (a part of the path is a file)")),
    (Case("scan/unknown-name", "scan", "a name that is no path, target or distribution: exit 6, one line"),
     _unknown_name, refused(6, "'no-such-distribution-or-folder' is not a registered target")),
    (Case("scan/broken-link-named", "scan", "naming a link to nothing: exit 6 saying where it leads"),
     _broken_link_named, refused(6, "gone.py: a link to nothing", "nothing-here.py")),
    (Case("scan/empty-folder", "scan", "a folder with no *.py file: exit 6, not '0 sites'"),
     lambda i: i.folder("src", {"notes.txt": "cuda"}), refused(6, "src: no Python file (*.py) to scan")),
    (Case("scan/unreadable-folder", "scan", "a folder that cannot be listed (EACCES): exit 7 naming it"),
     _denied_folder, refused(7, "src: the folder cannot be read (Permission denied)")),
    (Case("scan/unreadable-subfolder", "scan", "a subfolder that cannot be listed: a warning naming it, the rest "
                                               "scanned, exit 0"),
     _denied_subfolder, scanned(1, 1, "private/: folder not read: Permission denied")),
    (Case("scan/unreadable-file", "scan", "a file that cannot be opened (EACCES): a warning naming it, the rest "
                                          "scanned, exit 0"),
     _denied_file, scanned(1, 1, "b.py: not read: Permission denied")),
    (Case("scan/zero-byte-file", "scan", "an empty .py file is scanned: 0 sites in 1 file, exit 0"),
     _one("empty.py", b""), scanned(1, 0)),
    (Case("scan/nul-bytes-file", "scan", "a .py file of NUL bytes: exit 7 naming it and line 1"),
     _one("nul.py", b"\0" * 64), refused(7, "nul.py:1: not scanned: holds a NUL byte")),
    (Case("scan/nul-byte-in-folder", "scan", "a NUL byte on line 3 of one file of a folder: a warning with its line,"
                                             " the summary counts it, exit 0"),
     _with_bad("b.py", b"x = 1\ny = 2\nz = '\0'\n"), scanned(1, 1, "b.py:3: not scanned: holds a NUL byte")),
    (Case("scan/syntax-error-file", "scan", "a file that does not parse is not '0 sites': exit 7 with its line"),
     _one("bad.py", "import torch\ndef f(:\n    torch.cuda.synchronize()\n"),
     refused(7, "bad.py:2: not scanned: not valid Python")),
    (Case("scan/syntax-error-without-trigger", "scan", "a file without any CUDA word is parsed too: its syntax error "
                                                       "is reported, not '0 sites'"),
     _one("plain.py", "x = [1,\n"), refused(7, "plain.py:1: not scanned: not valid Python")),
    (Case("scan/python2-in-folder", "scan", "a Python 2 file in a folder: a warning with its line, the others "
                                            "scanned, the summary counts it"),
     _with_bad("old.py", "import os\nprint 'cuda'\n"), scanned(1, 1, "old.py:2: not scanned: not valid Python")),
    (Case("scan/nested-parentheses", "scan", "'(' * 100000 (CPython's parser limit): exit 7 naming line 1, no crash"),
     _one("deep.py", "x = " + "(" * 100000 + "cuda\n"), refused(7, "deep.py:1: not scanned", "nested parentheses")),
    (Case("scan/nested-unary", "scan", "'-' * 100000 (CPython's parser runs out of stack): exit 7, no traceback"),
     _one("deep.py", "x = " + "-" * 100000 + "y.cuda()\n"), refused(7, "deep.py: not scanned: nested too deeply")),
    (Case("scan/long-and-chain", "scan", "30000 'and's (fine for CPython, a native crash in libcst): refused before "
                                         "libcst, exit 7 with its line"),
     _one("chain.py", "import os\nx = " + "a and " * 30000 + "y.cuda()\n"),
     refused(7, "chain.py:2: not scanned: nested", "over the 500 porter scans")),
    (Case("scan/long-dotted-import", "scan", "an import of a 10000-part dotted name (a native crash in libcst): "
                                             "exit 7, the process survives"),
     _one("imp.py", "import " + "a." * 10000 + "cuda\n"), refused(7, "imp.py:1: not scanned: nested")),
    (Case("scan/nested-calls", "scan", "190 nested calls (CPython parses them, libcst's visitors recurse too deep): "
                                       "exit 7 with the line, no RecursionError"),
     _one("calls.py", "import torch\n\nx = " + "f(" * 190 + "y.cuda()" + ")" * 190 + "\n"),
     refused(7, "calls.py:3: not scanned: nested too deeply for porter's parser")),
    (Case("scan/bom", "scan", "a UTF-8 BOM: read as Python reads it, the site on its own line"),
     _one("bom.py", b"\xef\xbb\xbf" + SITE.encode()), scanned(1, 1, lines=(("bom.py", 2),))),
    (Case("scan/crlf", "scan", "CRLF line endings: scanned, the site on its own line"),
     _one("crlf.py", b"# one\r\nimport torch\r\ntorch.cuda.synchronize()\r\n"), scanned(1, 1, lines=(("crlf.py", 3),))),
    (Case("scan/cr-only", "scan", "old Mac CR line endings (Python reads them): scanned, the site on its own line"),
     _one("cr.py", b"# one\rimport torch\rtorch.cuda.synchronize()\r"), scanned(1, 1, lines=(("cr.py", 3),))),
    (Case("scan/latin1-undeclared", "scan", "Latin-1 bytes without a coding: line: exit 7, 'not UTF-8' with the line"),
     _one("latin.py", LATIN1), refused(7, "latin.py:2: not scanned: not UTF-8 (byte 0xe9)")),
    (Case("scan/latin1-declared", "scan", "Latin-1 bytes under '# -*- coding: latin-1 -*-': read as Python does, "
                                          "scanned"),
     _one("latin.py", b"# -*- coding: latin-1 -*-\n" + LATIN1), scanned(1, 1, lines=(("latin.py", 4),))),
    (Case("scan/unknown-coding", "scan", "a coding: line naming no codec: exit 7 naming the line"),
     _one("enc.py", "# -*- coding: no-such-codec -*-\n" + SITE), refused(7, "enc.py:1: not scanned: bad coding: line")),
    (Case("scan/lone-surrogate-bytes", "scan", "UTF-8-encoded lone surrogates (ED A0 80): not UTF-8, exit 7 with "
                                               "the line"),
     _one("sur.py", b"import torch\nx = '\xed\xa0\x80'\n"), refused(7, "sur.py:2: not scanned: not UTF-8 (byte 0xed)")),
    (Case("scan/fifo-named", "scan", "naming a FIFO: exit 7 at once (stat before open: never waits for a writer)"),
     _fifo_named, refused(7, "pipe.py: not read: not a regular file but a FIFO")),
    (Case("scan/fifo-in-folder", "scan", "a FIFO named x.py in a folder: a warning, never opened, the rest scanned"),
     _fifo_in_folder, scanned(1, 1, "pipe.py: not read: not a regular file but a FIFO")),
    (Case("scan/link-to-dev-zero-named", "scan", "naming a link to /dev/zero: exit 7, the device never opened"),
     _dev_zero_named, refused(7, "zero.py: not read: not a regular file but a character device")),
    (Case("scan/link-to-dev-zero-in-folder", "scan", "x.py -> /dev/zero in a folder: a warning (it leads outside), "
                                                     "never opened, the rest scanned"),
     _dev_zero_in_folder, scanned(1, 1, "x.py: not read: a link to /dev/zero, outside")),
    (Case("scan/link-inside-folder", "scan", "a link to a file of the folder, and a folder link back into it: the "
                                             "file scanned once, no loop"),
     _link_inside, scanned(1, 1, lines=(("a.py", 2),))),
    (Case("scan/link-to-non-py-inside", "scan", "code.py -> data/code.txt inside the folder: not read, as patch "
                                                "never reads or writes through a link; no other file, so exit 7"),
     _link_to_data_inside, refused(7, "code.py: not read: a link")),
    (Case("scan/link-outside-folder", "scan", "links to a file and a folder outside the scanned folder: not "
                                              "followed, each a warning"),
     _link_outside, scanned(1, 1, "secret.py: not read: a link to", "vendored: not read: a link to")),
    (Case("scan/link-loop", "scan", "x.py -> y.py -> x.py and a link to nothing: warnings, the rest scanned"),
     _loop_links, scanned(1, 1, "gone.py: not read: a broken link", "x.py: not read: a broken link",
                          "y.py: not read: a broken link")),
    (Case("scan/oversize-file", "scan", "a .py file over 16 MiB: reported as not read, never read"),
     _oversize, scanned(1, 1, "huge.py: not read: 16.0 MiB, over the 16 MiB porter reads")),
    (Case("scan/every-file-fails", "scan", "a folder whose every file fails: exit 7, one line naming them"),
     _every_file_fails, refused(7, "not one Python file could be scanned", "a.py:1", "b.py:1", "and 1 more")),
    (Case("scan/non-utf8-file-name", "scan", "a file name that is not UTF-8: printed escaped (\\xe9), scanned"),
     _non_utf8_name, scanned(2, 2, lines=(("a.py", 2), ("caf\\xe9.py", 2)))),
]


def _check_scanned(spec: str, expect: Scanned) -> None:
    r = cli("scan", spec)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    assert f"{expect.sites} CUDA-only site(s) in {expect.files} Python file(s)" in r.stdout, r.stdout
    warnings = [line for line in r.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == len(expect.warnings), r.stderr
    for needle in expect.warnings:
        assert sum(needle in w for w in warnings) == 1, f"{needle!r} in one of:\n{r.stderr}"
    assert (f"; {len(expect.warnings)} not scanned" in r.stdout) == bool(expect.warnings), r.stdout
    if expect.lines is not None:
        r = cli("scan", spec, "--json")
        report = json.loads(r.stdout)
        assert sorted((s["path"], s["line"]) for s in report["sites"]) == sorted(expect.lines)
        assert report["files_scanned"] == expect.files and len(report["not_scanned"]) == len(expect.warnings)


@pytest.mark.parametrize("case, build, expect", SCAN_CASES, ids=ids(SCAN_CASES))
def test_scan_input(case, build, expect, tmp_path, monkeypatch):
    inputs = Inputs(tmp_path / "in")
    spec = build(inputs)
    before = tree_digest(inputs.root)
    inputs.apply_denials(monkeypatch)
    try:
        if isinstance(expect, Refused):
            assert_refused(cli("scan", spec), expect.code, *expect.needles)
        else:
            _check_scanned(spec, expect)
    finally:
        monkeypatch.undo()
        inputs.lift_denials()
    assert tree_digest(inputs.root) == before


# --- a distribution's RECORD and METADATA ---------------------------------------------------------------------------
# toylib's RECORD (porter.testing.make_distribution): line 1 toylib/__init__.py, 2 toylib/dist.py, 3 toylib/timer.py,
# 4 toylib/config.json, then METADATA and RECORD without hashes.

def _record(site: Path) -> Path:
    return site / "toylib-1.0.dist-info" / "RECORD"


def _replace_row(line: int, row: bytes) -> Callable[[Path], None]:
    def damage(site: Path) -> None:
        rows = _record(site).read_bytes().split(b"\n")
        rows[line - 1] = row
        _record(site).write_bytes(b"\n".join(rows))
    return damage


def _append_rows(*rows: bytes) -> Callable[[Path], None]:
    def damage(site: Path) -> None:
        with open(_record(site), "ab") as f:
            f.write(b"".join(r + b"\n" for r in rows))
    return damage


def _sha256_field(data: bytes) -> bytes:
    return b"sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")


def _random_bytes(site: Path) -> None:
    _record(site).write_bytes(random.Random(23).randbytes(4096))


def _fifo_record(site: Path) -> None:
    _record(site).unlink()
    os.mkfifo(_record(site))


def _crlf(site: Path) -> None:
    _record(site).write_bytes(_record(site).read_bytes().replace(b"\n", b"\r\n"))


def _folder_link_out(site: Path) -> None:
    outside = site.parent / "elsewhere"
    outside.mkdir()
    (outside / "x.py").write_text("x = 1\n")
    (site / "toylib" / "sub").symlink_to(outside)
    _append_rows(b"toylib/sub/x.py," + _sha256_field(b"x = 1\n") + b",6")(site)


def _metadata(text: bytes) -> Callable[[Path], None]:
    return lambda site: (site / "toylib-1.0.dist-info" / "METADATA").write_bytes(text)


DIST_ROW = b"toylib/dist.py," + b"sha256=" + b"A" * 43 + b",40"
# status shows the damage (exit 0) as it shows any other state, and a dry run (which writes nothing) still previews
REFUSED_4 = ("patch", "restore")


def _bad_row(line: int, *needles: str, scan_files: int = 2) -> dict:
    """A RECORD whose row ``line`` is damaged: patch (--dry-run too) and restore-original refuse (exit 4) naming
    RECORD and the line, status shows it and a dry run previews the patch; scanning toylib as a target does not need RECORD; scanning it as a distribution
    warns about the row and scans the files the other rows list."""
    want = {cmd: (4, f"RECORD: line {line} (", *needles) for cmd in REFUSED_4}
    want["status"] = (0, f"RECORD: line {line} (", *needles)
    want["dry-run"] = (0, "would change")
    want["scan-target"] = (0,)
    want["scan-dist"] = (0, f"in {scan_files} Python file(s)", f"RECORD: line {line} (")
    return want


RECORD_CASES = [
    (Case("state/record-random-bytes", "state", "RECORD of random bytes: patch and restore-original exit 4 naming "
                                                "RECORD and line 1, status shows it; a scan of the distribution finds no file: exit 7"),
     _random_bytes, {**{cmd: (4, "RECORD: line 1 (") for cmd in REFUSED_4}, "status": (0, "RECORD: line 1 ("),
                     "dry-run": (0, "would change"),
                     "scan-target": (0,),
                     "scan-dist": (7, "not one Python file could be scanned", "RECORD: line 1")}),
    (Case("state/record-not-utf8-row", "state", "one RECORD row of Latin-1 bytes: exit 4 naming its line; the scan "
                                                "warns and goes on"),
     _replace_row(2, b"toylib/d\xe9st.py,,"), _bad_row(2, "not UTF-8")),
    (Case("state/record-short-row", "state", "a RECORD row of 2 fields: exit 4 naming the row"),
     _replace_row(2, b"toylib/dist.py,sha256=abc"), _bad_row(2, "2 field(s) where RECORD has 3")),
    (Case("state/record-long-row", "state", "a RECORD row of 4 fields: exit 4 naming the row"),
     _replace_row(2, DIST_ROW + b",extra"), _bad_row(2, "4 field(s) where RECORD has 3")),
    (Case("state/record-hash-without-algorithm", "state", "a hash field that is not ALGORITHM=DIGEST: exit 4"),
     _replace_row(2, b"toylib/dist.py,deadbeef,40"), _bad_row(2, "is not ALGORITHM=DIGEST")),
    (Case("state/record-bad-base64", "state", "a sha256 that is not urlsafe base64 (urlsafe_b64decode would drop the "
                                              "bad characters and read garbage): exit 4"),
     _replace_row(2, b"toylib/dist.py,sha256=" + b"!@#$" * 11 + b",40"), _bad_row(2, "not a sha256 in urlsafe base64")),
    (Case("state/record-short-digest", "state", "a sha256 of 16 bytes: exit 4, not a digest that never matches"),
     _replace_row(2, b"toylib/dist.py,sha256=" + b"A" * 22 + b",40"), _bad_row(2, "(43 characters)")),
    (Case("state/record-unknown-algorithm", "state", "a hash algorithm Python does not know: exit 4"),
     _replace_row(2, b"toylib/dist.py,whirlpool9=abc,40"), _bad_row(2, "hash algorithm 'whirlpool9'")),
    (Case("state/record-bad-size", "state", "a size that is not a number: exit 4"),
     _replace_row(2, DIST_ROW[:-3] + b",-1e3"), _bad_row(2, "size '-1e3' is not a number")),
    (Case("state/record-nul-byte", "state", "a NUL byte in a row (the csv module refuses the rest of the file): "
                                            "exit 4 naming that row only"),
     _replace_row(2, b"toylib/dist.py\0,,"), _bad_row(2, "holds a NUL byte")),
    (Case("state/record-duplicate-row", "state", "a file listed twice with different hashes: exit 4 naming both lines"),
     _append_rows(DIST_ROW), _bad_row(7, "names toylib/dist.py again", "first on line 2", scan_files=3)),
    (Case("state/record-path-escapes-package", "state", "toylib/../../evil.py in RECORD: refused (exit 4), nothing "
                                                        "read or written outside the package"),
     _append_rows(b"toylib/../../evil.py," + _sha256_field(b"") + b",0"),
     _bad_row(7, "not a plain relative path", scan_files=3)),
    (Case("state/record-paths-outside-site-packages", "state", "absolute and ../ rows (pip writes ../../../bin/NAME): "
                                                               "ignored by status and restore, reported by scan"),
     _append_rows(b"../../../bin/toy,,", b"/etc/hostname," + _sha256_field(b"x") + b",1", b"../outside.py,,"),
     {"status": (0,), "dry-run": (0,), "restore": (0, "every file matches its RECORD"), "scan-target": (0,),
      "scan-dist": (0, "in 3 Python file(s)", "../outside.py: not read: RECORD line 9 places it outside")}),
    (Case("state/record-crlf", "state", "a RECORD written with CRLF line endings is sound: status clean"),
     _crlf, {"status": (0, "clean"), "dry-run": (0,), "restore": (0,), "scan-dist": (0, "in 3 Python file(s)")}),
    (Case("state/record-is-a-fifo", "state", "RECORD is a FIFO: exit 4 at once (never opened), the scan exit 7"),
     _fifo_record, {**{cmd: (4, "RECORD: cannot be read: not a regular file but a FIFO") for cmd in REFUSED_4},
                    "scan-target": (0,), "scan-dist": (7, "RECORD: cannot be read")}),
    (Case("state/record-folder-link-out", "state", "a RECORD row under toylib/sub, a link out of the package: "
                                                   "restore-original (which writes there) and status refuse, exit 4"),
     _folder_link_out, {cmd: (4, "toylib/sub/x.py lies in a folder that leads out of the package") for cmd in
                        REFUSED_4}),
    (Case("state/metadata-random-bytes", "state", "METADATA of random bytes: exit 4 naming METADATA, not a traceback"),
     _metadata(random.Random(5).randbytes(512)),
     {cmd: (4, "METADATA: not UTF-8") for cmd in (*REFUSED_4, "scan-target")}),
    (Case("state/metadata-without-version", "state", "METADATA without a Version: exit 4 naming it"),
     _metadata(b"Metadata-Version: 2.1\nName: toylib\n"),
     {cmd: (4, "METADATA: names no Version") for cmd in (*REFUSED_4, "scan-target")}),
    (Case("state/metadata-invalid-version", "state", "a Version PEP 440 cannot parse: status works (it needs no "
                                                     "version check), patch refuses with exit 4"),
     _metadata(b"Metadata-Version: 2.1\nName: toylib\nVersion: not a version!\n"),
     {"status": (0, "toylib not a version!: clean"), "patch": (4, "is not a version porter can compare"),
      "dry-run": (4, "is not a version porter can compare")}),
]


def _run(command: str, site: Path):
    where = ("--site-packages", str(site))
    return {"status": lambda: cli("status", "toylib", *where),
            "dry-run": lambda: cli("patch", "toylib", "--dry-run", *where),
            "patch": lambda: cli("patch", "toylib", *where),
            "restore": lambda: cli("restore-original", "toylib", "--dry-run", *where),
            "scan-target": lambda: cli("scan", "toylib", *where),
            # without the fixture plugin toylib is no target: scanned as a distribution, from its RECORD
            "scan-dist": lambda: cli("scan", "toylib", *where, env={"PORTER_PLUGINS": ""})}[command]()


@pytest.mark.parametrize("case, damage, want", RECORD_CASES, ids=ids(RECORD_CASES))
def test_damaged_record_or_metadata(case, damage, want, toylib_site, porter_env):
    damage(toylib_site)
    before = tree_digest(toylib_site.parent)
    for command, (code, *needles) in want.items():
        r = _run(command, toylib_site)
        if code:
            assert_refused(r, code, *needles)
        else:
            assert r.returncode == 0, f"{command}: {r.stderr}"
            assert "Traceback" not in r.stderr + r.stdout
            for needle in needles:
                assert needle in r.stdout + r.stderr, f"{command}: {needle!r} not in:\n{r.stdout}\n{r.stderr}"
    assert tree_digest(toylib_site.parent) == before


ESCAPE_HATCH = Case("state/record-damaged-accept-modified", "state", "with a damaged RECORD, patch "
                    "--accept-modified (which does not consult RECORD) patches, and revert puts every byte back")


@pytest.mark.parametrize("case", [ESCAPE_HATCH], ids=ids([ESCAPE_HATCH]))
def test_accept_modified_patches_past_a_damaged_record(case, toylib_site, porter_env):
    _replace_row(2, b"toylib/dist.py,sha256=!!,40")(toylib_site)
    before = tree_digest(toylib_site)
    where = ("--site-packages", str(toylib_site))
    assert_refused(cli("patch", "toylib", *where), 4, "RECORD: line 2")
    r = cli("patch", "toylib", "--accept-modified", *where)
    assert r.returncode == 0, r.stderr
    assert tree_digest(toylib_site) != before
    r = cli("revert", "toylib", *where)
    assert r.returncode == 0, r.stderr
    assert tree_digest(toylib_site) == before


CASES = [row[0] for row in SCAN_CASES + RECORD_CASES] + [ESCAPE_HATCH]  # what census.all_cases reads
