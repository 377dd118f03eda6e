"""A small CUDA training script, ported by the whole torch pack and then run: on this CPU machine (the original
dies on its first `.cuda()`), and in-process on the FAKE torch_npu (tests/fakes/torch_npu.py)."""
import os
import re
import runpy
import subprocess
import sys
import textwrap

import pytest
import torch
from porter_torch.rules import ALL_RULES

from porter.rewrite import rewrite_file
from porter.runtime import device

SCRIPT = textwrap.dedent('''\
    """Train a tiny classifier with DDP, amp and a checkpoint, the way CUDA-only scripts are written."""
    import argparse
    import os

    import torch
    import torch.distributed as dist
    import torch.nn as nn
    from torch.nn.parallel import DistributedDataParallel as DDP
    from torch.utils.data import DataLoader, TensorDataset


    def parse_args(argv=None):
        parser = argparse.ArgumentParser()
        parser.add_argument("--out", required=True)
        parser.add_argument("--device", default="cuda")
        parser.add_argument("--backend", default="nccl")
        parser.add_argument("--epochs", type=int, default=2)
        return parser.parse_args(argv)


    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 2))

        def forward(self, x):
            return self.body(x)


    def main(argv=None):
        args = parse_args(argv)
        torch.manual_seed(0)
        torch.cuda.manual_seed_all(0)
        torch.backends.cudnn.benchmark = True
        model = Net().cuda()
        os.environ["CUDA_VISIBLE_DEVICES"] = "0"
        dist.init_process_group(args.backend, init_method=f"file://{args.out}/rendezvous", rank=0, world_size=1)
        torch.cuda.set_device(0)
        if torch.cuda.is_available():
            print(f"training on {torch.cuda.get_device_name(0)}")
        model = DDP(model, device_ids=[0], output_device=0)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        scaler = torch.cuda.amp.GradScaler()
        weights = torch.cuda.FloatTensor([1.0, 1.0])
        features = torch.randn(64, 8)
        labels = (features.sum(dim=1) > 0).long()
        loader = DataLoader(TensorDataset(features, labels), batch_size=16, shuffle=True, pin_memory=True)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for epoch in range(args.epochs):
            for x, y in loader:
                x, y = x.cuda(non_blocking=True), y.cuda(non_blocking=True)
                optimizer.zero_grad()
                with torch.cuda.amp.autocast():
                    loss = nn.functional.cross_entropy(model(x), y, weight=weights)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            torch.cuda.synchronize()
            print(f"epoch {epoch} loss {loss.item():.4f} peak {torch.cuda.max_memory_allocated() / 2**20:.1f} MiB")
        end.record()
        torch.cuda.synchronize()
        path = os.path.join(args.out, "checkpoint.pt")
        torch.save({"model": model.module.state_dict(), "optimizer": optimizer.state_dict(),
                    "cuda_rng": torch.cuda.get_rng_state()}, path)
        state = torch.load(path, map_location="cuda:0")
        restored = Net().to(args.device)
        restored.load_state_dict(state["model"])
        torch.cuda.set_rng_state(state["cuda_rng"])
        device = torch.device("cuda", torch.cuda.current_device())
        probe = torch.randn(4, 8, device=device)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
            low = restored(probe)
        assert torch.allclose(restored(probe), model.module(probe))
        assert probe.is_cuda == torch.cuda.is_available()
        backend = dist.get_backend()
        dist.destroy_process_group()
        with open(os.path.join(args.out, "result.txt"), "w") as f:
            f.write(f"{backend} {probe.device} {low.dtype} {loss.item():.6f} {start.elapsed_time(end) >= 0}\\n")


    if __name__ == "__main__":
        main()
''')


@pytest.fixture(scope="module")
def ported():
    result = rewrite_file("train.py", SCRIPT, ALL_RULES, enforce_required=False)
    assert rewrite_file("train.py", result.after, ALL_RULES, enforce_required=False).after == result.after
    return result


def test_the_port_touches_every_cuda_site(ported):
    text = ported.after
    for gone in (".cuda(", "torch.cuda.", '"nccl"', "CUDA_VISIBLE_DEVICES", "pin_memory=True", "cudnn.benchmark"):
        assert gone not in text, gone
    assert not re.findall(r'(?<!device_string\()(?<!as_device\()"cuda[:"]', text)  # every device string goes through them
    assert "import porter.runtime.device as porter_device" in text
    assert {m.rule_id for m in ported.matches} >= {
        "torch.device.dot-cuda", "torch.device.backend", "torch.device.parallel-devices", "torch.device.autocast",
        "torch.device.grad-scaler", "torch.device.pin-memory", "torch.device.strings", "torch.device.visible-devices",
        "torch.device.typed-tensor", "torch.device.streams", "torch.device.rng-state", "torch.device.cudnn-flags",
        "torch.device.is-cuda", "torch.device.is-available", "torch.device.current-device"}


def _run(path, out_dir, **env):
    environment = {**os.environ, "PORTER_DEVICE": "cpu", **env}
    return subprocess.run([sys.executable, str(path), "--out", str(out_dir)], capture_output=True, text=True,
                          env=environment, timeout=300)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the original runs where CUDA is; this proves the port on a CPU")
def test_the_original_fails_on_cuda_and_the_port_runs_on_the_cpu(ported, tmp_path):
    original, port = tmp_path / "original", tmp_path / "ported"
    original.mkdir()
    port.mkdir()
    (original / "train.py").write_text(SCRIPT)
    (port / "train.py").write_text(ported.after)

    failed = _run(original / "train.py", original)
    assert failed.returncode != 0
    assert "model = Net().cuda()" in failed.stderr and "Torch not compiled with CUDA enabled" in failed.stderr

    ran = _run(port / "train.py", port)
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert "epoch 1 loss" in ran.stdout and "training on" not in ran.stdout  # no accelerator: the guard says so
    backend, where, dtype, loss, timed = (port / "result.txt").read_text().split()
    assert (backend, where, dtype, timed) == ("gloo", "cpu", "torch.bfloat16", "True")
    assert 0 < float(loss) < 5
    assert torch.load(port / "checkpoint.pt", weights_only=True)["model"]["body.0.weight"].device.type == "cpu"


@pytest.mark.filterwarnings("ignore:'pin_memory' argument is set as true")  # the fake NPU pins; this torch cannot
def test_the_port_dispatches_to_the_npu_on_the_fake_torch_npu(ported, tmp_path, monkeypatch):
    # FAKE torch_npu (tests/fakes/torch_npu.py): this proves that the ported script reaches the NPU device, its
    # torch.npu API and its hccl backend, with the arguments that layer expects, not what an NPU computes (its
    # "NPU tensors" are CPU tensors and its amp computes nothing in fp16).
    from fakes import torch_npu as fake

    monkeypatch.setattr(device, "_extra", {})
    monkeypatch.delenv("PORTER_DEVICE", raising=False)
    monkeypatch.delenv(device.BACKEND_ENV, raising=False)
    fake.reset()
    assert fake.install_for_rules(monkeypatch).name == "npu"
    backends = []
    real_init = torch.distributed.init_process_group

    real_destroy = torch.distributed.destroy_process_group
    created = []

    def init_process_group(backend, **kwargs):
        backends.append(backend)  # hccl needs the real torch_npu: the fake run's group is gloo
        if torch.distributed.is_initialized():  # another test's group lives in this process (SAT's model parallel
            return None  # groups hang off it): the script uses it, and leaves it
        created.append(backend)
        return real_init("gloo", **kwargs)

    def destroy_process_group(*args, **kwargs):
        if created:
            real_destroy(*args, **kwargs)

    monkeypatch.setattr(torch.distributed, "init_process_group", init_process_group)
    monkeypatch.setattr(torch.distributed, "destroy_process_group", destroy_process_group)
    monkeypatch.setitem(os.environ, "CUDA_VISIBLE_DEVICES", "untouched")
    # set, then removed: monkeypatch then restores the variable's absence after the script sets it (a delenv of an
    # absent variable records nothing to undo, and the next test would see the script's value)
    monkeypatch.setenv("ASCEND_RT_VISIBLE_DEVICES", "")
    monkeypatch.delenv("ASCEND_RT_VISIBLE_DEVICES")
    script = tmp_path / "train.py"
    script.write_text(ported.after)
    monkeypatch.setattr(sys, "argv", [str(script), "--out", str(tmp_path)])
    try:
        runpy.run_path(str(script), run_name="__main__")
    finally:
        device.reset()

    assert backends == ["hccl"]  # --backend's default, ported: the NPU's backend
    assert os.environ["ASCEND_RT_VISIBLE_DEVICES"] == "0" and os.environ["CUDA_VISIBLE_DEVICES"] == "untouched"
    called = [name for name, _, _ in fake.npu_calls]
    for name in ("manual_seed_all", "set_device", "get_device_name", "amp.GradScaler", "amp.autocast",
                 "synchronize", "max_memory_allocated", "get_rng_state", "set_rng_state", "current_device"):
        assert name in called, name
    autocasts = [kwargs for name, _, kwargs in fake.npu_calls if name == "amp.autocast"]
    assert autocasts[0] == {"enabled": True} and autocasts[-1] == {"enabled": True, "dtype": torch.bfloat16}
    assert (tmp_path / "result.txt").read_text().startswith("gloo cpu")  # the fake's group and its CPU "NPU"


@pytest.mark.skipif(torch.cuda.is_available(), reason="proves the port on a machine without CUDA")
def test_porter_patch_and_revert_a_project_folder(tmp_path):
    from porter.testing import run_porter, tree_digest

    project = tmp_path / "project"
    project.mkdir()
    (project / "train.py").write_text(SCRIPT)
    (project / "notes.py").write_text('MESSAGE = "runs on cuda"\n')  # no device: no file change
    before = tree_digest(project)
    patched = run_porter("patch", str(project))
    assert patched.returncode == 0, patched.stderr
    assert "torch.device.dot-cuda" in patched.stdout and (project / "notes.py").read_text() == 'MESSAGE = "runs on cuda"\n'
    ran = _run(project / "train.py", project)
    assert ran.returncode == 0, ran.stderr[-3000:]
    for name in ("checkpoint.pt", "result.txt", "rendezvous"):
        (project / name).unlink(missing_ok=True)
    reverted = run_porter("revert", str(project))
    assert reverted.returncode == 0, reverted.stderr
    assert tree_digest(project) == before
