"""porter scan finds CUDA-only sites by what the code refers to, through the file's imports."""
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
    assert "5 CUDA-only site(s) in 4 Python file(s)" in r.stdout
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
    assert r.returncode == 6 and "is not a registered target, an installed distribution or a folder" in r.stderr
