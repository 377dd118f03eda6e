"""`porter exec`: a program run with its code ported in memory. No file of the program changes; its child
processes are ported too; code that was not named sees the machine as it is."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from generic_projects import NET, write_project

from porter.testing import make_distribution, tree_digest

CPU = {"PORTER_DEVICE": "cpu"}

MAIN = '''\
import multiprocessing as mp
import subprocess
import sys

import torch

import helper
from model.net import total


def child(queue):
    queue.put(float(torch.ones(2).cuda().sum()))


if __name__ == "__main__":
    print("argv", sys.argv[1:], "file", __file__.endswith("main.py"))
    print("total", total())
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=child, args=(queue,))
    proc.start()
    print("spawned child", queue.get())
    proc.join()
    out = subprocess.run([sys.executable, "-c", "from model.net import total; print(total())"],
                         capture_output=True, text=True)
    print("subprocess", out.stdout.strip(), out.stderr.strip()[-80:])
    print("unnamed code sees cuda", helper.cuda_available(), "jit is torch's", helper.jit_is_torchs())
    sys.exit(5)
'''


def porter_exec(*args, cwd: Path, env=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "porter.cli", "exec", *args], cwd=cwd, capture_output=True,
                          text=True, env={**os.environ, **CPU, **(env or {})}, timeout=timeout)


@pytest.fixture
def program(tmp_path) -> tuple[Path, Path]:
    """A project (main.py, model/) and, outside it, an unnamed helper library on PYTHONPATH."""
    project = write_project(tmp_path / "project", {"main.py": MAIN, "model/__init__.py": "", "model/net.py": NET})
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "helper.py").write_text(textwrap.dedent('''\
        import torch


        def cuda_available():
            return torch.cuda.is_available()


        def jit_is_torchs():
            import torch.jit
            return torch.jit.script.__module__
        '''))
    return project, lib


def test_a_script_its_children_and_the_truth_for_unnamed_code(program):
    project, lib = program
    before = tree_digest(project)
    plain = subprocess.run([sys.executable, "main.py"], cwd=project, capture_output=True, text=True,
                           env={**os.environ, **CPU, "PYTHONPATH": str(lib)}, timeout=120)
    assert plain.returncode != 0 and "Torch not compiled with CUDA" in plain.stderr
    r = porter_exec("--", sys.executable, "main.py", "a", "--b", cwd=project, env={"PYTHONPATH": str(lib)})
    assert r.returncode == 5, r.stderr  # the program's own exit status
    lines = r.stdout.splitlines()
    assert lines[0] == "argv ['a', '--b'] file True"
    assert "total 3.0" in lines
    assert "spawned child 2.0" in lines  # multiprocessing spawn re-imports the ported main by name
    assert any(line.startswith("subprocess 3.0") for line in lines), r.stdout  # a child interpreter is ported too
    assert "unnamed code sees cuda False jit is torch's torch.jit._script" in lines
    assert tree_digest(project) == before
    assert not (project / ".porter-state").exists()


def test_module_mode_and_a_named_distribution(program, tmp_path):
    project, lib = program
    site = make_distribution(tmp_path / "site", "tinylib", "1.0", {"tinylib/__init__.py": NET})
    (project / "runner.py").write_text("import tinylib\nprint('lib total', tinylib.total())\n")
    before = tree_digest(site)
    env = {"PYTHONPATH": f"{site}{os.pathsep}{lib}"}
    r = porter_exec("--target", "tinylib", "--site-packages", str(site), "--", sys.executable, "-m", "runner",
                    cwd=project, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "lib total 3.0"
    assert tree_digest(site) == before
    r = porter_exec("--no-script-folder", "--", sys.executable, "-m", "runner", cwd=project, env=env)
    assert r.returncode == 2 and "nothing to port" in r.stderr


def test_torchrun_workers_are_ported(tmp_path):
    project = write_project(tmp_path / "p", {"dist_main.py": '''\
        import os
        import sys

        import torch
        import torch.distributed as dist

        dist.init_process_group("nccl")
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        t = torch.ones(1).cuda() * (dist.get_rank() + 1)
        dist.all_reduce(t)
        # one write per line: the two ranks share the terminal
        sys.stdout.write(f"rank {dist.get_rank()} backend {dist.get_backend()} sum {float(t)}\\n")
        sys.stdout.flush()
        dist.destroy_process_group()
        '''})
    torchrun = Path(sys.executable).with_name("torchrun")
    r = porter_exec("--", str(torchrun), "--standalone", "--nproc_per_node", "2", "dist_main.py", cwd=project,
                    timeout=240)
    assert r.returncode == 0, r.stderr[-2000:]
    assert sorted(line for line in r.stdout.splitlines() if line.startswith("rank")) == \
        ["rank 0 backend gloo sum 3.0", "rank 1 backend gloo sum 3.0"]


def test_a_command_that_is_not_there(tmp_path):
    project = write_project(tmp_path / "p")
    r = porter_exec("--", "no-such-program-porter", "train.py", cwd=project)
    assert r.returncode == 127 and "command not found" in r.stderr
    r = porter_exec(cwd=project)
    assert r.returncode == 2 and "no program to run" in r.stderr


def test_a_script_named_as_no_module_spawns_ported_children(tmp_path):
    project = write_project(tmp_path / "p", {"my-train.py": '''\
        import multiprocessing as mp

        import torch


        def work(i):
            return float(torch.ones(i + 1).cuda().sum())


        if __name__ == "__main__":
            with mp.get_context("spawn").Pool(2) as pool:
                print("results", pool.map(work, range(3)))
        '''})
    r = porter_exec("--", sys.executable, "my-train.py", cwd=project, timeout=180)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "results [1.0, 2.0, 3.0]" in r.stdout


def test_flags_that_ignore_pythonpath_are_refused(tmp_path):
    project = write_project(tmp_path / "p")
    for flag in ("-I", "-E", "-BI"):
        r = porter_exec("--", sys.executable, flag, "train.py", cwd=project)
        assert r.returncode == 2 and "ignores PYTHONPATH" in r.stderr, (flag, r.stderr)


def test_a_script_in_a_subfolder_ports_its_project(tmp_path):
    project = write_project(tmp_path / "p", {"pyproject.toml": "[project]\nname = 'p'\n",
                                             "model/__init__.py": "", "model/net.py": NET,
                                             "scripts/run.py": "import sys\nsys.path.insert(0, '.')\n"
                                                               "from model.net import total\nprint('total', total())\n"})
    r = porter_exec("--", sys.executable, "scripts/run.py", cwd=project)
    assert r.returncode == 0, r.stderr
    assert "total 3.0" in r.stdout


def test_a_damaged_cached_plan_is_planned_again(program, tmp_path):
    """porter's own plan cache is read as untrusted: an entry naming a file outside the program is not served."""
    project, lib = program
    cache = tmp_path / "cache"
    env = {"PYTHONPATH": str(lib), "PORTER_CACHE": str(cache)}
    assert porter_exec("--", sys.executable, "main.py", cwd=project, env=env).returncode == 5
    entries = list((cache / "memory-patch").glob("*-port-*.json"))
    assert entries
    assert not list(project.parent.glob("*-port-*.json")), "the port was cached outside porter's cache"
    for plan in entries:
        plan.write_text('{"sources": {"/etc/elsewhere.py": "print(1)"}}')
    r = porter_exec("--", sys.executable, "main.py", cwd=project, env=env)
    assert r.returncode == 5 and "total 3.0" in r.stdout, r.stderr[-1000:]
    assert "planning" in r.stderr
