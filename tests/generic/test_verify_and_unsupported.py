"""`porter verify PATH|DIST` (imports before and after, --test-cmd) and what no rule can port
(`porter patch --unsupported FILE.csv`)."""
from __future__ import annotations

import csv
import json
import shlex
import sys

from generic_projects import NET, write_project

from porter.testcmd import outcomes
from porter.testing import run_porter, tree_digest

CPU = {"PORTER_DEVICE": "cpu"}
# the interpreter running these tests (torch, pytest): the command is a shell's, and `python` on PATH may be another
PY = shlex.quote(sys.executable)

TESTS = '''\
from model.net import total


def test_total():
    assert total() == 3.0


def test_arithmetic():
    assert 1 + 1 == 2
'''


def test_verify_compares_the_projects_own_tests_before_and_after(tmp_path):
    project = write_project(tmp_path / "p", {"model/__init__.py": "", "model/net.py": NET,
                                             "tests/test_net.py": TESTS,
                                             "script.py": "import torch\nprint(torch.ones(1).cuda())\n"})
    assert run_porter("patch", str(project)).returncode == 0
    digest = tree_digest(project)
    r = run_porter("verify", str(project), "--json", "--test-cmd", f"{PY} -m pytest -q tests", env=CPU)
    assert r.returncode == 0, r.stdout + r.stderr
    results = {(x["stage"], x["item"]): x for x in json.loads(r.stdout)["results"]}
    assert results[("import", "model.net")]["status"] == "ok"
    assert results[("import", "script")]["status"] == "skip"  # a script: importing it would run it
    assert results[("compile", "script.py")]["status"] == "ok"
    assert results[("test-cmd", "tests")]["detail"] == "2 of 2 pass after the port, 1 of 2 before"
    assert results[("test-cmd", "pass only after the port")]["detail"] == "tests.test_net::test_total"
    assert tree_digest(project) == digest  # the original run was served in memory: nothing was reverted
    # a command that is not pytest is compared by its exit status
    r = run_porter("verify", str(project), "--json", "--test-cmd", f"{PY} script.py", env=CPU)
    results = {(x["stage"], x["item"]): x for x in json.loads(r.stdout)["results"]}
    assert results[("test-cmd", "exit status")]["status"] == "fail"
    assert r.returncode == 1
    assert run_porter("revert", str(project)).returncode == 0


def test_a_module_that_imported_before_and_not_after_fails(tmp_path):
    project = write_project(tmp_path / "p", {"pkg/__init__.py": "", "pkg/m.py": NET})
    assert run_porter("patch", str(project)).returncode == 0
    path = project / "pkg" / "m.py"
    # the ported file is changed behind porter's back so that it no longer imports: the journal stage and the
    # import stage both say so
    path.write_text(path.read_text() + "\nraise ImportError('broken after the port')\n")
    r = run_porter("verify", str(project), "--json", env=CPU)
    assert r.returncode == 1
    results = {(x["stage"], x["item"]): x for x in json.loads(r.stdout)["results"]}
    assert results[("import", "pkg.m")]["status"] == "fail"
    assert "imported before the port, not after" in results[("import", "pkg.m")]["detail"]


def test_outcomes_read_junit_xml(tmp_path):
    xml = tmp_path / "r.xml"
    xml.write_text('<testsuites><testsuite><testcase classname="t" name="a"/><testcase classname="t" name="b">'
                   '<failure message="x"/></testcase><testcase classname="t" name="c"><skipped/></testcase>'
                   '</testsuite></testsuites>')
    assert outcomes(xml) == {"t::a": "passed", "t::b": "failed", "t::c": "skipped"}
    assert outcomes(tmp_path / "missing.xml") == {}


def test_what_no_rule_can_port_is_reported(tmp_path):
    project = write_project(tmp_path / "p", {
        "ops.py": '''\
            import torch
            import triton
            from torch.utils.cpp_extension import load_inline

            def build():
                return load_inline(name="k", cpp_sources="", cuda_sources="__global__ void k() {}")

            def graphed(f, x):
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g):
                    y = f(x)
                return y
            ''',
        "kernels/k.cu": "__global__ void k() {}\n",
        "plain.py": "import torch\nx = torch.ones(2).cuda()\n"})
    before = tree_digest(project)
    report, unsupported = tmp_path / "change_list.csv", tmp_path / "unsupported_op.csv"
    r = run_porter("patch", str(project), "--dry-run", "--report", str(report), "--unsupported", str(unsupported))
    assert r.returncode == 0, r.stderr
    assert tree_digest(project) == before
    rows = list(csv.reader(unsupported.open()))
    assert rows[0] == ["File", "Start Line", "End Line", "OP", "Tips"]
    ops = {(row[0], int(row[1]), row[3]) for row in rows[1:]}
    assert ("kernels/k.cu", 1, ".cu file") in ops
    assert ("ops.py", 2, "import triton") in ops
    assert ("ops.py", 6, "torch.utils.cpp_extension.load_inline") in ops
    assert ("ops.py", 9, "torch.cuda.CUDAGraph") in ops
    assert all(row[4] for row in rows[1:])  # every site says what to use instead
    assert not any(row[0] == "plain.py" for row in rows[1:])  # what a rule ports is in the change list instead
    changes = list(csv.reader(report.open()))
    assert changes[0] == ["File", "Start Line", "End Line", "Operation Type", "Message"]
    assert any(row[0] == "plain.py" and row[1] == "2" for row in changes[1:])


def test_a_test_command_that_hangs_fails_and_leaves_nothing_running(tmp_path):
    import subprocess

    project = write_project(tmp_path / "p", {"pkg/__init__.py": "", "pkg/m.py": NET})
    assert run_porter("patch", str(project)).returncode == 0
    marker = f"porter-hang-{tmp_path.name}"
    r = run_porter("verify", str(project), "--json", "--timeout", "3", "--test-cmd",
                   f"sleep 60 && echo {marker}", env=CPU)
    assert r.returncode == 1
    results = {(x["stage"], x["item"]): x for x in json.loads(r.stdout)["results"]}
    assert results[("test-cmd", "original")]["status"] == "fail"
    assert "timed out" in results[("test-cmd", "ported")]["detail"]
    left = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True).stdout
    assert left == ""


def test_pytest_options_do_not_break_a_pipeline(tmp_path):
    project = write_project(tmp_path / "p", {"model/__init__.py": "", "model/net.py": NET,
                                             "tests/test_net.py": TESTS})
    assert run_porter("patch", str(project)).returncode == 0
    r = run_porter("verify", str(project), "--json", "--test-cmd", f"{PY} -m pytest -q tests | tail -3", env=CPU)
    results = {(x["stage"], x["item"]): x for x in json.loads(r.stdout)["results"]}
    assert results[("test-cmd", "tests")]["detail"] == "2 of 2 pass after the port, 1 of 2 before"
