"""porter.runtime.device: one interface, selected once, loud when it falls back to the CPU."""
import subprocess
import sys
import warnings

import pytest
import torch

from porter.runtime import device


@pytest.fixture(autouse=True)
def fresh_selection(monkeypatch):
    monkeypatch.delenv("PORTER_DEVICE", raising=False)
    device.reset()
    yield
    device.reset()


def test_auto_on_a_machine_without_accelerators_warns_and_picks_cpu():
    with pytest.warns(RuntimeWarning, match="no accelerator found .*running on the CPU"):
        chosen = device.select()
    assert chosen.name == "cpu"


def test_explicit_cpu_is_silent(monkeypatch):
    monkeypatch.setenv("PORTER_DEVICE", "cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert device.current().name == "cpu"


def test_unknown_and_absent_devices_are_errors(monkeypatch):
    monkeypatch.setenv("PORTER_DEVICE", "tpu")
    with pytest.raises(ValueError, match="PORTER_DEVICE='tpu': unknown device"):
        device.select()
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no cuda device is usable"):
            device.select("cuda")
    with pytest.raises(RuntimeError, match="no npu device is usable"):
        device.select("npu")  # torch_npu is absent or cannot load without CANN here


def test_what_each_device_answers():
    assert (device.CPU.backend, device.CUDA.backend, device.NPU.backend) == ("gloo", "nccl", "hccl")
    assert device.NPU.visible_devices_env == "ASCEND_RT_VISIBLE_DEVICES"
    assert device.CUDA.visible_devices_env == "CUDA_VISIBLE_DEVICES"
    assert (device.CPU.deepspeed_accelerator, device.NPU.deepspeed_accelerator) == ("cpu", "npu")
    assert device.NPU.detect_order < device.CUDA.detect_order < device.CPU.detect_order
    assert not device.CPU.pin_memory and device.NPU.pin_memory


def test_cpu_answers_what_sat_asked_torch_cuda(cpu_device):
    assert device.is_available() is False and device.device_count() == 0
    assert device.current_device() == torch.device("cpu") and device.as_device(3) == torch.device("cpu")
    assert device.communication_backend() == "gloo" and device.pin_memory() is False
    device.synchronize()
    device.set_device(0)
    device.range_push("x")
    device.range_pop()
    device.set_determinism(benchmark=True, deterministic=True, allow_tf32=False)
    state = device.get_rng_state()
    a = torch.rand(3)
    device.set_rng_state(state)
    assert torch.equal(a, torch.rand(3))  # the CPU device's RNG state is torch's default generator
    assert device.memory_allocated() == 0 and device.max_memory_reserved() == 0


def test_npu_is_detected_before_cuda(fake_npu):
    device.reset()
    assert device.select().name == "npu"
    assert device.communication_backend() == "hccl" and device.is_available()


def test_plugin_devices_join_detection(monkeypatch):
    monkeypatch.setattr(device, "_extra", {})

    class Toy(device.CPU):
        name = "toy"
        detect_order = 1

    device.register(Toy)
    assert device.select().name == "toy"


def test_runtime_import_stays_light():
    probe = ("import sys, porter.runtime.device, porter.runtime.ops, porter.runtime.optional; "
             "heavy = [m for m in sys.modules if m.split('.')[0] in ('libcst', 'pluggy') "
             "or m in ('porter.cli', 'porter.plugins', 'porter.patcher')]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
