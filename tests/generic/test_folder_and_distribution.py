"""`porter patch PATH|DIST`: a project folder or any installed distribution by its pip name, through the same
journaled transaction as a plugin's target, with the rules for any code (plugins/torch)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from generic_projects import NET, write_project

from porter.testing import make_distribution, run_porter, tree_digest

CPU = {"PORTER_DEVICE": "cpu"}


def run_script(folder: Path, script: str = "train.py", **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, script], cwd=folder, capture_output=True, text=True,
                          env={**os.environ, **CPU}, timeout=120, **kw)


def test_a_folder_is_patched_run_and_reverted_byte_for_byte(project):
    before = tree_digest(project)
    assert "Torch not compiled with CUDA" in run_script(project).stderr  # the unported project dies on CUDA
    r = run_porter("patch", str(project))
    assert r.returncode == 0, r.stderr
    assert f"undo with: porter revert {project}" in r.stdout
    assert "porter_device" in (project / "train.py").read_text()
    assert "porter_device" in (project / "model" / "net.py").read_text()
    ran = run_script(project)
    assert ran.returncode == 0, ran.stderr
    assert "total 3.0" in ran.stdout
    state = project / ".porter-state"
    assert (state / "_folder" / "journal.json").is_file()
    assert (state / ".gitignore").read_text().splitlines()[-1] == "*"
    status = json.loads(run_porter("status", str(project), "--json").stdout)
    assert status[0]["state"] == "patched" and sorted(status[0]["files"]) == ["model/net.py", "train.py"]
    again = run_porter("patch", str(project))
    assert again.returncode == 0 and "already patched" in again.stdout
    r = run_porter("revert", str(project))
    assert r.returncode == 0, r.stderr
    assert tree_digest(project) == before
    assert not state.exists()


def test_git_never_sees_porters_state(project):
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], cwd=project, check=True)
    subprocess.run([*git, "add", "-A"], cwd=project, check=True)
    subprocess.run([*git, "commit", "-qm", "x"], cwd=project, check=True)
    assert run_porter("patch", str(project)).returncode == 0
    changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=project,
                             capture_output=True, text=True, check=True).stdout.split("\n")
    assert sorted(line[3:] for line in changed if line) == ["model/net.py", "train.py"]
    assert run_porter("revert", str(project)).returncode == 0
    assert subprocess.run(["git", "status", "--porcelain"], cwd=project, capture_output=True, text=True).stdout == ""


def test_opt_outs_a_project_commits(tmp_path):
    project = write_project(tmp_path / "p", {
        "keep.py": "import torch\nx = torch.ones(2).cuda()  # porter: skip\ny = torch.ones(2).cuda()\n",
        "whole.py": "# porter: skip-file\nimport torch\nx = torch.ones(2).cuda()\n",
        "legacy/old.py": "import torch\nx = torch.ones(2).cuda()\n",
        "vendor/lib.py": "import torch\nx = torch.ones(2).cuda()\n",
        "pyproject.toml": '[project]\nname = "p"\n\n[tool.porter]\nexclude = ["legacy"]\n',
    })
    originals = {rel: (project / rel).read_text() for rel in ("whole.py", "legacy/old.py", "vendor/lib.py")}
    r = run_porter("patch", str(project), "--exclude", "vendor/*", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["files"] == ["keep.py"]
    keep = (project / "keep.py").read_text().splitlines()
    assert "x = torch.ones(2).cuda()  # porter: skip" in keep
    assert "porter_device" in keep[-1]
    for rel, text in originals.items():
        assert (project / rel).read_text() == text
    dry = json.loads(run_porter("patch", str(project), "--dry-run", "--json").stdout)
    assert "whole.py" in dry["files_opted_out"]


def test_an_installed_distribution_by_its_pip_name(tmp_path):
    site = make_distribution(tmp_path / "site", "Tiny-Lib", "1.0", {
        "tinylib/__init__.py": NET, "tiny_helpers.py": "import torch\n\ndef two():\n    return torch.ones(2).cuda()\n",
        "tinylib/data.json": "{}\n"})
    before = tree_digest(site)
    r = run_porter("patch", "tiny-lib", site_packages=site)
    assert r.returncode == 0, r.stderr
    assert "porter_device" in (site / "tinylib" / "__init__.py").read_text()
    assert "porter_device" in (site / "tiny_helpers.py").read_text()
    assert (site / ".porter-state" / "tiny-lib" / "journal.json").is_file()
    ran = subprocess.run([sys.executable, "-c", "import tinylib, tiny_helpers; print(tinylib.total(), "
                          "float(tiny_helpers.two().sum()))"], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, **CPU, "PYTHONPATH": str(site)}, timeout=120)
    assert ran.stdout.split() == ["3.0", "2.0"], ran.stderr
    listed = json.loads(run_porter("status", "--json", site_packages=site).stdout)
    assert {"target": "tiny-lib", "state": "patched"}.items() <= next(s for s in listed
                                                                      if s["target"] == "tiny-lib").items()
    r = run_porter("revert", site_packages=site)  # no name: every patched target and distribution
    assert r.returncode == 0, r.stderr
    assert tree_digest(site) == before


def test_a_distribution_changed_since_install_is_refused(tmp_path):
    site = make_distribution(tmp_path / "site", "tinylib", "1.0", {"tinylib/__init__.py": NET})
    path = site / "tinylib" / "__init__.py"
    path.write_text(path.read_text() + "# edited by hand\n")
    r = run_porter("patch", "tinylib", site_packages=site)
    assert r.returncode == 4 and "tinylib/__init__.py" in r.stderr and "RECORD" in r.stderr
    assert not (site / ".porter-state").exists()
    assert run_porter("patch", "tinylib", "--accept-modified", site_packages=site).returncode == 0


@pytest.mark.parametrize("case", ["missing", "file", "no-python", "syntax", "no-record", "bad-pyproject"])
def test_bad_inputs_are_one_line_and_write_nothing(tmp_path, case):
    folder = tmp_path / "p"
    folder.mkdir()
    spec, code, words, site = str(folder), None, None, None
    if case == "missing":
        spec, code, words = str(tmp_path / "nope"), 6, "no such folder"
    elif case == "file":
        (folder / "a.py").write_text("x = 1\n")
        spec, code, words = str(folder / "a.py"), 7, "not a folder"
    elif case == "no-python":
        (folder / "README.md").write_text("hi\n")
        code, words = 6, "holds no Python file"
    elif case == "syntax":
        write_project(folder)
        (folder / "broken.py").write_text("import torch\n\nx = torch.ones(2).cuda(\n")
        code, words = 3, "broken.py:3"
    elif case == "no-record":
        site = make_distribution(tmp_path / "site", "tinylib", "1.0", {"tinylib/__init__.py": NET})
        next(site.glob("tinylib-*.dist-info")).joinpath("RECORD").unlink()
        spec, code, words = "tinylib", 4, "has no RECORD"
    elif case == "bad-pyproject":
        write_project(folder)
        (folder / "pyproject.toml").write_text("[tool.porter]\nexclude = 'legacy'\n")
        code, words = 7, "exclude must be a list"
    before = tree_digest(tmp_path)
    r = run_porter("patch", spec, site_packages=site)
    assert r.returncode == code, r.stderr
    assert words in r.stderr and r.stderr.startswith("error: ") and r.stderr.count("\n") <= 2, r.stderr
    assert "Traceback" not in r.stderr
    assert tree_digest(tmp_path) == before


def test_the_rules_for_any_code_are_listed():
    r = run_porter("rules", "any")
    assert r.returncode == 0
    assert r.stdout.count("torch.") >= 10 and "rules for any" in r.stdout


def test_what_a_folder_holds_that_porter_must_not_read(tmp_path):
    """A FIFO named *.py (an open would wait for a writer forever), a link, a file over 16 MiB and a file that is
    not UTF-8 are left as they are and named; the rest is ported."""
    project = write_project(tmp_path / "p")
    os.mkfifo(project / "pipe.py")
    (project / "link.py").symlink_to(project / "train.py")
    (project / "big.py").write_bytes(b"# x\n" * (4 * 2 ** 20 + 1))
    (project / "latin.py").write_bytes(b"# -*- coding: latin-1 -*-\nimport torch\nname = '\xe9'\nx = torch.ones(1).cuda()\n")
    r = run_porter("patch", str(project), "--dry-run", "--json", timeout=120)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    not_read = {item["path"]: item["why"] for item in data["files_not_read"]}
    assert set(not_read) == {"pipe.py", "link.py", "big.py", "latin.py"}
    assert "FIFO" in not_read["pipe.py"] and "link" in not_read["link.py"] and "MiB" in not_read["big.py"]
    assert "UTF-8" in not_read["latin.py"]
    assert sorted(f["path"] for f in data["files"] if f["changed"]) == ["model/net.py", "train.py"]
    r = run_porter("patch", str(project), timeout=120)
    assert r.returncode == 0 and "warning: pipe.py not read" in r.stderr


def test_a_report_never_lands_on_what_is_patched(project):
    before = tree_digest(project)
    for path in (project / "train.py", project / "model" / "net.py"):
        r = run_porter("patch", str(project), "--report", str(path))
        assert r.returncode == 8 and "lies in what porter patches" in r.stderr, r.stderr
    assert run_porter("patch", str(project), "--unsupported", str(project / ".porter-state" / "x.csv")).returncode == 8
    assert tree_digest(project) == before and not (project / ".porter-state").exists()


def test_skip_file_in_a_docstring_is_not_an_opt_out(tmp_path):
    project = write_project(tmp_path / "p", {"doc.py": '"""Usage:\n# porter: skip-file\n"""\nimport torch\n'
                                                       'x = torch.ones(1).cuda()\n'})
    data = json.loads(run_porter("patch", str(project), "--dry-run", "--json").stdout)
    assert data["files_opted_out"] == [] and [f["path"] for f in data["files"] if f["changed"]] == ["doc.py"]


def test_a_pyproject_whose_tool_is_not_a_table(tmp_path):
    project = write_project(tmp_path / "p")
    (project / "pyproject.toml").write_text("tool = 3\n")
    r = run_porter("patch", str(project), "--dry-run")
    assert r.returncode == 7 and "tool is not a table" in r.stderr and "Traceback" not in r.stderr


def test_revert_removes_the_gitignore_porter_made_and_never_a_users(project):
    """The journal records what the patch made beside its state; a `.porter-state/.gitignore` the user already had,
    even with porter's very text, is theirs and outlives patch and revert."""
    from porter.generic import GITIGNORE

    assert run_porter("patch", str(project)).returncode == 0
    journal = json.loads((project / ".porter-state" / "_folder" / "journal.json").read_text())
    assert journal["made"] == [".porter-state/.gitignore"]
    assert run_porter("revert", str(project)).returncode == 0
    assert not (project / ".porter-state").exists()
    (project / ".porter-state").mkdir()
    (project / ".porter-state" / ".gitignore").write_text(GITIGNORE)
    before = tree_digest(project)
    assert run_porter("patch", str(project)).returncode == 0
    assert json.loads((project / ".porter-state" / "_folder" / "journal.json").read_text())["made"] == []
    assert run_porter("revert", str(project)).returncode == 0
    assert (project / ".porter-state" / ".gitignore").read_text() == GITIGNORE
    assert tree_digest(project) == before


def test_a_journal_naming_something_porter_never_makes_is_refused(project):
    assert run_porter("patch", str(project)).returncode == 0
    path = project / ".porter-state" / "_folder" / "journal.json"
    journal = json.loads(path.read_text())
    path.write_text(json.dumps({**journal, "made": ["train.py"]}))
    r = run_porter("revert", str(project))
    assert r.returncode != 0 and "journal.made names 'train.py'" in r.stderr
    assert "porter_device" in (project / "train.py").read_text()  # nothing was touched
