"""porter scan finds CUDA-only sites by what the code refers to, through the file's imports."""
import pytest

from porter.scan import find_sites


def kinds(source: str) -> list[tuple[int, str]]:
    return [(s.line, s.kind) for s in find_sites("m.py", source)]


def test_every_spelling_of_a_cuda_call_is_one_site():
    assert kinds("import torch as th\nth.cuda.synchronize()\n") == [(2, "torch.cuda")]
    assert kinds("from torch import cuda\ncuda.synchronize()\n") == [(2, "torch.cuda")]
    assert kinds("from torch.cuda import synchronize\nsynchronize()\n") == [(2, "torch.cuda")]
    assert kinds("import torch\ntorch.cuda.nvtx.range_push('x')\n") == [(2, "torch.cuda")]
    assert kinds("from torch.backends import cudnn\ncudnn.benchmark = True\n") == [(2, "cudnn flag")]
    assert kinds("import torch as t\n@t.jit.script\ndef f(x):\n    return x\n") == [(2, "jit.script")]


def test_lookalikes_are_not_sites():
    assert kinds("import mylib as torch\ntorch.cuda.synchronize()\n") == []
    assert kinds("def f(torch):\n    torch.cuda.synchronize()\n") == []
    assert kinds("import torch\nobj.synchronize()\ntorch.npu.synchronize()\n") == []


def apis(source: str) -> list[tuple[str, str | None]]:
    return [(s.api, s.replacement) for s in find_sites("m.py", source)]


def test_each_site_names_its_api_and_what_porters_runtime_offers():
    assert apis("import torch\ntorch.cuda.synchronize()\n") == [
        ("torch.cuda.synchronize", "porter.runtime.device.synchronize()")]
    assert apis("x = y.cuda()\n") == [(".cuda()", ".to(porter.runtime.device.current_device())")]
    assert apis("backend = 'nccl'\n") == [("'nccl'", "porter.runtime.device.communication_backend()")]
    assert apis("import torch\nt = torch.cuda.LongTensor([1])\n") == [
        ("torch.cuda.LongTensor", "torch.tensor(..., dtype=torch.long, device=porter.runtime.device.current_device())")]
    assert apis("import torch\ntorch.cuda.get_device_capability()\n") == [("torch.cuda.get_device_capability", None)]
    assert apis("import triton\n")[0][0] == "import triton"


def test_a_file_without_a_trigger_word_is_not_parsed():
    assert find_sites("m.py", "def broken(:\n") == []  # no trigger word: never parsed, so no syntax error either


SOURCE_TREE = {
    "model/train.py": "import torch\nimport torch.distributed as dist\n\ndef setup(rank):\n"
                      "    torch.cuda.set_device(rank)\n    dist.init_process_group('nccl')\n"
                      "    torch.backends.cudnn.benchmark = True\n",
    "model/layers.py": "import torch\n\n@torch.jit.script\ndef act(x):\n    return x.cuda()\n",
    "model/clean.py": "def add(a, b):\n    return a + b\n",
    "model/py2.py": "print 'cuda'\n",
}


def _tree(tmp_path):
    for rel, text in SOURCE_TREE.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    return tmp_path / "model"


def _porter(*args):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "porter.cli", "scan", *map(str, args)], capture_output=True,
                          text=True)


def test_scan_of_a_source_folder_prints_a_summary_by_api(tmp_path):
    r = _porter(_tree(tmp_path))
    assert r.returncode == 0, r.stderr
    # py2.py does not parse: named with its line, counted apart, never "0 sites"
    assert "5 CUDA-only site(s) in 3 Python file(s); 1 not scanned" in r.stdout
    assert "warning: py2.py:1: not scanned: not valid Python" in r.stderr
    for api in ("torch.cuda.set_device", "'nccl'", "torch.backends.cudnn.benchmark", "@torch.jit.script", ".cuda()"):
        assert api in r.stdout
    assert "porter.runtime.device.set_device()" in r.stdout


def test_scan_json_and_csv_parse_and_agree(tmp_path):
    import csv
    import io
    import json

    folder = _tree(tmp_path)
    report = json.loads(_porter(folder, "--json").stdout)
    rows = list(csv.DictReader(io.StringIO(_porter(folder, "--csv").stdout)))
    assert [(s["path"], s["line"], s["api"]) for s in report["sites"]] == \
        [(r["path"], int(r["line"]), r["api"]) for r in rows]
    assert {s["path"] for s in report["sites"]} == {"train.py", "layers.py"}
    assert sum(x["sites"] for x in report["summary"]) == len(rows) == 5
    assert next(x for x in report["summary"] if x["api"] == "'nccl'")["replacement"] == \
        "porter.runtime.device.communication_backend()"


def test_scan_of_an_installed_distribution_reads_its_record():
    import json

    r = _porter("deepspeed", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["source"].startswith("deepspeed ")
    assert report["sites"] and all(s["path"].startswith("deepspeed/") for s in report["sites"])
    assert sum(x["sites"] for x in report["summary"]) == len(report["sites"])


def test_scan_of_a_target_accounts_for_every_installed_site():
    import json

    report = json.loads(_porter("sat", "--json").stdout)
    covered = [s for s in report["sites"] if s["covered_by"]]
    assert covered and len(report["sites"]) == len(covered) + len(report["open"]) + len(report["exempt"])
    assert {s["covered_by"] for s in covered} >= {"sat.device.synchronize", "sat.fused.unscript"}


def test_scan_of_something_unknown_is_one_line():
    r = _porter("no-such-distribution-or-folder")
    assert r.returncode == 6 and "is not a registered target, an installed distribution, a folder or a file" in r.stderr


def test_scan_help_states_the_bound_and_the_exit_status():
    from porter.scan import MAX_SOURCE_BYTES

    r = _porter("--help")
    assert r.returncode == 0
    text = " ".join(r.stdout.split())
    assert f"a file over {MAX_SOURCE_BYTES // 2 ** 20} MiB" in text
    assert "Exit status: 0 when at least one file was scanned" in text and "7 when not one could be" in text


def test_a_file_is_read_as_python_reads_source():
    from porter.scan import decode_source

    assert decode_source(b"\xef\xbb\xbfx = 1\r\ny = 2\rz = 3\n") == "x = 1\ny = 2\nz = 3\n"
    assert decode_source("# -*- coding: latin-1 -*-\nx = 'caf\xe9'\n".encode("latin-1")).endswith("'caf\xe9'\n")
    assert decode_source(b"") == ""


@pytest.mark.parametrize("data, line, why", [
    (b"x = 1\r\ny = '\0'\n", 2, "holds a NUL byte"),
    (b"x = 1\ry = 2\rz = '\xe9'\r", 3, "not UTF-8 (byte 0xe9)"),  # CR newlines count as lines, as Python counts
    (b"x = '\xff'\n", 1, "not UTF-8 (byte 0xff)"),  # in the first two lines, where the coding: line is looked for
    (b"x = '\xed\xa0\x80'\n", 1, "not UTF-8 (byte 0xed)"),  # an encoded lone surrogate
    (b"# coding: nope\n", 1, "bad coding: line"),
    (b"#!/usr/bin/env python\n# coding: nope\n", 2, "bad coding: line"),
    (b"# coding: hex\n", 1, "bad coding: line"),  # a codec, but not of text
])
def test_source_that_cannot_be_read_says_where(data, line, why):
    from porter.scan import Unscannable, decode_source

    with pytest.raises(Unscannable) as exc:
        decode_source(data)
    assert (exc.value.line, why in exc.value.why) == (line, True), exc.value.why


@pytest.mark.parametrize("text, line, why", [
    ("x = [1,\n", 1, "not valid Python"),  # no trigger word: still parsed, still reported
    ("import torch\n\ndef f(:\n", 3, "not valid Python"),
    ("x = " + "(" * 100000 + "\n", 1, "too many nested parentheses"),
    ("x = " + "-" * 100000 + "cuda\n", None, "nested too deeply for Python's parser"),
    ("x = 1\ny = " + "a or " * 20000 + "cuda\n", 2, "over the 500 porter scans"),  # libcst would crash, not raise
    ("import torch\nx = " + "f(" * 190 + "cuda" + ")" * 190 + "\n", 2, "nested too deeply for porter's parser"),
])
def test_text_that_cannot_be_parsed_is_unscannable_never_zero_sites(text, line, why):
    from porter.scan import Unscannable, scan_text

    with pytest.raises(Unscannable) as exc:
        scan_text("m.py", text)
    assert (exc.value.line, why in exc.value.why) == (line, True), exc.value.why


def test_a_folder_scan_reads_regular_files_and_follows_no_link(tmp_path):
    import os

    from porter.scan import _inputs

    root = tmp_path / "src"
    (root / "pkg" / "__pycache__").mkdir(parents=True)
    (root / "pkg" / "__pycache__" / "a.py").write_text("")
    (root / "a.py").write_text("")
    (root / "pkg" / "b.py").write_text("")
    (root / "data.txt").write_text("")
    (tmp_path / "out.py").write_text("")
    (tmp_path / "outdir").mkdir()
    (root / "alias.py").symlink_to("a.py")  # a.py is read under its own name; the link passed over
    (root / "text.py").symlink_to("data.txt")  # inside, to a file not read: named, never read
    (root / "out.py").symlink_to(tmp_path / "out.py")
    (root / "outdir").symlink_to(tmp_path / "outdir")
    (root / "loop").symlink_to(".")
    os.mkfifo(root / "pipe.py")  # named, never opened
    _label, _root, files, skipped, _single = _inputs(str(root), None)
    assert [(rel, follow) for rel, _path, follow in files] == [("a.py", False), ("pkg/b.py", False)]
    why = {s.path: s.why for s in skipped}
    assert sorted(why) == ["out.py", "outdir", "pipe.py", "text.py"]
    assert "outside" in why["out.py"] and "outside" in why["outdir"] and "a link" in why["text.py"]
    assert "not a regular file but a FIFO" in why["pipe.py"]


SUPPORT_TREE = {
    ".venv/pyvenv.cfg": "home = /usr/bin\n",
    ".venv/lib/x.py": "import torch\ntorch.cuda.synchronize()\n",
    "node_modules/y.py": "import torch\ntorch.cuda.synchronize()\n",
    "src/z.py": "import torch\ntorch.cuda.synchronize()\n",
    "legacy/old.py": "import torch\ntorch.cuda.synchronize()\n",
}


def _supported_tree(tmp_path, pyproject: str | None = None):
    root = tmp_path / "proj"
    for rel, text in SUPPORT_TREE.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    if pyproject is not None:
        (root / "pyproject.toml").write_text(pyproject)
    return root


def _patch_dry_run(root):
    import json
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "porter.cli", "patch", str(root), "--dry-run", "--json"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.mark.parametrize("pyproject, read", [
    (None, {"src/z.py", "legacy/old.py"}),
    ('[tool.porter]\nexclude = ["legacy"]\n', {"src/z.py"}),
])
def test_scan_and_patch_read_the_same_files_of_a_folder(tmp_path, pyproject, read):
    import json

    root = _supported_tree(tmp_path, pyproject)
    r = _porter(f"{root}/", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert {s["path"] for s in report["sites"]} == read  # never .venv/ or node_modules/
    assert report["files_scanned"] == len(read) and report["not_scanned"] == []
    plan = _patch_dry_run(root)
    assert {f["path"] for f in plan["files"]} == read and plan["files_read"] == len(read)


def test_scan_exclude_leaves_out_a_folders_files(tmp_path):
    import json

    root = _supported_tree(tmp_path)
    report = json.loads(_porter(root, "--json", "--exclude", "legacy").stdout)
    assert {s["path"] for s in report["sites"]} == {"src/z.py"}


def test_scan_of_a_plugins_distribution_name_is_its_target():
    import json

    by_name = _porter("sat", "--json")
    by_distribution = _porter("SwissArmyTransformer", "--json")
    assert by_name.returncode == by_distribution.returncode == 0, by_distribution.stderr
    assert json.loads(by_distribution.stdout) == json.loads(by_name.stdout)


BAD_ROWS = [
    (b"toylib/dist.py,sha256=abc", "2 field(s) where RECORD has 3"),
    (b"toylib/dist.py,abc,1", "is not ALGORITHM=DIGEST"),
    (b"toylib/dist.py,sha256=" + b"*" * 43 + b",1", "not a sha256 in urlsafe base64"),
    (b"toylib/dist.py,sha256=" + b"A" * 42 + b",1", "not a sha256 in urlsafe base64"),
    (b"toylib/dist.py,nohash=abc,1", "hash algorithm 'nohash'"),
    (b"toylib/dist.py,,x", "size 'x' is not a number"),
    (b"toylib/../../x.py,,", "not a plain relative path"),
    (b"toylib//x.py,,", "not a plain relative path"),
    (b"toylib/d\xe9.py,,", "not UTF-8"),
    (b"toylib/d.py\0,,", "holds a NUL byte"),
    (b",,", "no path"),
]


@pytest.mark.parametrize("row, why", BAD_ROWS)
def test_each_unsound_record_row_is_named_and_the_others_kept(toylib_site, row, why):
    from porter.target import find_dist_info, read_record

    info = find_dist_info(toylib_site, "toylib")
    (info.folder / "RECORD").write_bytes(b"toylib/a.py,,\n" + row + b"\r\n../../../bin/toy,,\n/abs/x,,\n")
    record = read_record(info)
    assert len(record.problems) == 1 and record.problems[0].startswith("line 2 (") and why in record.problems[0]
    assert [r.path for r in record.rows] == ["toylib/a.py"]
    assert [r.path for r in record.outside] == ["../../../bin/toy", "/abs/x"]  # pip's forms for files outside


def test_a_damaged_record_is_refused_where_it_decides_and_trusted_less_elsewhere(toylib_site):
    from porter.errors import StateError
    from porter.target import Target, locate, record_differences, record_hashes

    installed = locate(Target("toylib", "toylib", "toylib"), toylib_site)
    assert set(record_hashes(installed)) == {"toylib/__init__.py", "toylib/dist.py", "toylib/timer.py",
                                             "toylib/config.json"}
    record = next(toylib_site.glob("toylib-*.dist-info")) / "RECORD"
    record.write_text(record.read_text().replace("toylib/dist.py,sha256=", "toylib/dist.py,sha256=!"))
    assert "toylib/dist.py" not in record_hashes(installed)  # vouches for less, never for more
    with pytest.raises(StateError, match=r"RECORD: line 2 \('toylib/dist.py,sha256=!"):
        record_differences(installed)


def test_real_records_read_as_importlib_reads_them():
    """Every RECORD of this environment (pip's own output) is sound, with the paths and hashes importlib gives."""
    import base64
    import importlib.metadata as md
    import sysconfig
    from pathlib import Path

    from porter.target import find_dist_info, read_record

    site = Path(sysconfig.get_paths()["purelib"])
    for name in ("SwissArmyTransformer", "deepspeed", "libcst"):
        info = find_dist_info(site, name)
        record = read_record(info)
        assert record is not None and not record.problems, (name, record.problems[:3])
        theirs = {str(f): f.hash for f in md.PathDistribution(info.folder).files}
        mine = {r.path: r.sha256 for r in record.rows + record.outside}
        assert set(mine) == set(theirs)
        for path, h in theirs.items():
            if h is not None and h.mode == "sha256":
                assert mine[path] == base64.urlsafe_b64decode(h.value + "=" * (-len(h.value) % 4)).hex()


def _dies_on_boom(item):
    import os

    if item[0] == "boom.py":
        os._exit(139)  # as a native crash in libcst ends a worker: no exception, no result
    return [], None


def test_a_scanning_process_that_dies_is_named_not_a_hang(monkeypatch):
    from porter import plan
    from porter.scan import _run

    monkeypatch.setattr(plan, "worker_count", lambda _files: 2)  # never in this process: boom.py would end pytest
    notes = []
    found = _run(_dies_on_boom, [(f"f{i}.py",) for i in range(5)] + [("boom.py",)], notes.append)
    assert [why for _sites, why in found[:5]] == [None] * 5
    assert str(found[5][1]) == "boom.py: not scanned: porter's parser crashed on it"
    assert any("a scanning process died" in n for n in notes)
