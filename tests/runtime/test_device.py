"""porter.runtime.device: one interface, selected once, loud when it falls back to the CPU."""
import abc
import subprocess
import sys
import types
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


def test_device_is_abstract_in_what_only_a_device_knows():
    assert device.Device.__abstractmethods__ == {"is_present", "_module"}
    with pytest.raises(TypeError, match="abstract"):
        device.Device()  # type: ignore[abstract]
    for cls in device.BUILTIN:
        assert not cls.__abstractmethods__ and not device.problems(cls), cls
    with pytest.raises(NotImplementedError):  # the CPU answers every call itself, never through a torch module
        device.CPU()._module()


def test_a_device_written_against_the_old_class_is_told_what_it_lacks_in_one_message(monkeypatch):
    monkeypatch.setattr(device, "_extra", {})

    class Old(device.Device):  # all the attributes, none of the methods Device now declares abstract
        name, torch_type, backend, visible_devices_env, deepspeed_accelerator = "old", "old", "gloo", None, "cpu"

    with pytest.raises(TypeError) as error:
        device.register(Old)
    assert str(error.value) == (
        "device 'old' lacks the method is_present() (whether this process can use the device); the method _module() "
        "(its torch.cuda-shaped module, e.g. torch.xpu; or make the device a subclass of CPU)")
    assert "old" not in device.known()

    class VendorBase(device.CUDA):  # a plugin's own abstract base: its methods are named by their docstrings
        @abc.abstractmethod
        def vendor(self) -> str:
            """The vendor's name."""

    class Vendor(VendorBase):
        name = "vendor"

    assert device.problems(Vendor) == ["the method vendor() (The vendor's name)"]


def test_the_device_files_import_without_a_cycle_and_the_names_stay_in_device():
    from porter.runtime.device import CPU, CUDA, NPU, CPUEvent, CPUStream, Device, import_torch_npu  # noqa: F401

    # cpu.py first, in a fresh process: its one use of the registry is looked up when called
    probe = "import porter.runtime.cpu as c; print(c.CPU().as_device('npu:1'), c.CPU().as_device('meta'))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["cpu", "meta"]


def test_npu_without_torch_npu_says_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_npu", None)  # `import torch_npu` fails, as without CANN
    monkeypatch.delattr(torch, "npu", raising=False)
    assert not device.NPU.is_present()
    with pytest.raises(RuntimeError, match="torch_npu cannot be imported"):
        device.NPU().device_count()


def test_runtime_import_stays_light():
    probe = ("import sys, porter.runtime.device, porter.runtime.ops, porter.runtime.optional; "
             "heavy = [m for m in sys.modules if m.split('.')[0] in ('libcst', 'pluggy') "
             "or m in ('porter.cli', 'porter.plugins', 'porter.patcher')]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# -- the torch.cuda-shaped API the torch rule pack (plugins/torch) rewrites code to call --------------------------


def test_cpu_reads_cuda_devices_as_the_cpu_and_keeps_other_types(cpu_device):
    assert device.current_index() == 0 and device.device_type() == "cpu"
    assert device.as_device("cuda:1") == device.as_device("cuda", 1) == device.as_device(torch.device("cuda", 2)) \
        == torch.device("cpu")
    assert device.as_device("meta") == torch.device("meta") and device.as_device("cpu") == torch.device("cpu")
    assert device.device_string("cuda:0") == "cpu" and isinstance(device.device_string("cuda"), str)
    assert not device.on_accelerator(torch.zeros(1)) and not device.on_accelerator("cuda")
    assert device.device_ids([0, 1]) is None and device.device_ids(None) is None
    assert device.parallel_device(0) is None and device.parallel_device(None) is None
    with device.device_context(1):
        assert device.current_index() == 0


def test_cpu_seeds_states_and_memory(cpu_device):
    device.seed()
    device.seed_all()
    device.synchronize(0)
    assert device.initial_seed() == torch.initial_seed()
    assert device.get_rng_state_all() == []
    device.set_rng_state_all([torch.zeros(16, dtype=torch.uint8)])  # a GPU checkpoint's states: nothing to restore
    state = device.get_rng_state("cuda")
    a = torch.rand(2)
    device.set_rng_state(state, "cuda")
    assert torch.equal(a, torch.rand(2))
    assert device.memory_stats() == {} and device.memory_allocated(0) == device.max_memory_reserved("cuda:0") == 0
    device.reset_peak_memory_stats()
    device.empty_cache()
    free, total = device.mem_get_info()
    assert 0 <= free <= total


def test_cpu_properties_and_typed_tensors(cpu_device):
    assert isinstance(device.get_device_name(), str) and device.get_device_name()
    properties = device.get_device_properties(0)
    assert properties.total_memory >= 0 and properties.multi_processor_count >= 1 and properties.major == 0
    assert device.is_bf16_supported()
    assert device.tensor_type("FloatTensor") is torch.FloatTensor
    longs = device.tensor_type("LongTensor")([1, 2])
    assert longs.dtype == torch.long and longs.device.type == "cpu" and device.tensor_type("HalfTensor")(2, 3).shape == (2, 3)
    assert torch.ones(2).type(device.tensor_type("DoubleTensor")).dtype == torch.float64


def test_cpu_events_and_streams(cpu_device):
    start, end = device.Event(enable_timing=True), device.Event(enable_timing=True)
    start.record()
    end.record()
    end.synchronize()
    assert start.query() and start.elapsed_time(end) >= 0
    with pytest.raises(RuntimeError, match="enable_timing"):
        device.Event().elapsed_time(device.Event())
    side = device.Stream()
    with device.stream(side):
        x = torch.ones(2) * 2
    device.current_stream().wait_stream(side)
    device.default_stream().synchronize()
    assert side.query() and side.record_event().query() and x.sum() == 4
    with device.profile_range("step"):
        pass


def test_cpu_amp_runs_float32_unless_a_dtype_is_given(cpu_device):
    a = torch.ones(4, 4)
    with device.autocast():
        assert (a @ a).dtype == torch.float32
    with device.autocast(dtype=torch.bfloat16):
        assert (a @ a).dtype == torch.bfloat16
    with device.autocast(enabled=False, dtype=torch.bfloat16):
        assert (a @ a).dtype == torch.float32

    @device.autocast(dtype=torch.bfloat16)
    def matmul(x):
        return x @ x

    assert matmul(a).dtype == torch.bfloat16
    scaler = device.grad_scaler(init_scale=1024.0)
    loss = (a * 2).sum()
    assert not scaler.is_enabled() and scaler.scale(loss) is loss


def test_cpu_environment_backend_and_pinning(cpu_device):
    import torch.distributed as dist

    assert device.visible_devices_env() == "CUDA_VISIBLE_DEVICES"
    assert device.is_backend_available() == dist.is_gloo_available()
    t = torch.ones(2)
    assert device.pinned(t) is t
    before = torch.backends.cudnn.benchmark
    device.set_determinism(benchmark=not before)
    assert torch.backends.cudnn.benchmark == before  # the CPU ignores cudnn switches


def test_cuda_reads_device_strings_as_its_own(monkeypatch):
    cuda = device.CUDA()
    assert cuda.as_device("cuda:1") == torch.device("cuda", 1) and cuda.as_device(2) == torch.device("cuda", 2)
    assert cuda.as_device("cuda") == torch.device("cuda") and cuda.as_device("cpu") == torch.device("cpu")
    assert cuda.as_device("meta") == torch.device("meta")
    flags = {name: getattr(torch.backends.cudnn, name) for name in ("benchmark", "deterministic", "enabled")}
    for name, value in flags.items():
        monkeypatch.setattr(torch.backends.cudnn, name, value)
    cuda.set_determinism(benchmark=True)  # only what is given
    assert torch.backends.cudnn.benchmark and torch.backends.cudnn.deterministic == flags["deterministic"]


def test_an_accelerator_answers_with_its_own_devices(monkeypatch):
    monkeypatch.setattr(device, "_extra", {})

    class PretendCUDA(device.CUDA):  # device arithmetic only: nothing here touches torch.cuda
        name = "pretend"

        @classmethod
        def is_present(cls):
            return True

    device.register(PretendCUDA)
    device.select("pretend")
    assert device.device_ids([0, "cuda:1"]) == [torch.device("cuda", 0), torch.device("cuda", 1)]
    assert device.parallel_device("cuda:1") == torch.device("cuda", 1) and device.device_string("cuda", 3) == "cuda:3"
    assert device.on_accelerator("cuda:0") and device.on_accelerator(torch.device("cuda"))
    assert not device.on_accelerator(torch.zeros(1)) and not device.on_accelerator("cpu")
    packed = torch.nn.utils.rnn.pack_sequence([torch.zeros(2)])  # .is_cuda of something holding tensors
    assert not device.on_accelerator(packed) and not device.on_accelerator(object())
    assert device.on_accelerator(types.SimpleNamespace(device=torch.device("cuda", 1)))
    assert device.device_type() == "cuda" and device.visible_devices_env() == "CUDA_VISIBLE_DEVICES"


@pytest.fixture
def npu_for_rules(fake_npu, monkeypatch):
    """The FAKE torch_npu with the rest of torch.npu the rule pack's runtime calls (tests/fakes/torch_npu.py): these
    tests prove which torch.npu function each runtime call reaches and with what, not NPU behaviour."""
    from fakes import torch_npu as fake

    monkeypatch.setattr(torch, "npu", fake.torch_npu_module_for_rules())
    fake.npu_calls.clear()
    return fake


def test_npu_dispatch_of_the_rule_packs_runtime(npu_for_rules):
    fake = npu_for_rules
    assert device.device_type() == "npu" and device.communication_backend() == "hccl"
    assert device.visible_devices_env() == "ASCEND_RT_VISIBLE_DEVICES" and device.is_backend_available()
    assert device.tensor_type("LongTensor") is torch.LongTensor  # the fake's torch.npu.LongTensor
    assert device.tensor_type("DoubleTensor") is torch.FloatTensor  # torch_npu has none: its FloatTensor
    assert device.on_accelerator(torch.zeros(1)) and device.on_accelerator("cuda") and device.on_accelerator("npu:0")
    with device.autocast(dtype=torch.bfloat16):
        pass
    device.grad_scaler(init_scale=8.0)
    device.synchronize()
    device.empty_cache()
    device.reset_peak_memory_stats()
    assert device.get_device_name() == fake.chip and device.is_bf16_supported()
    assert device.memory_stats() == {"allocated_bytes.all.current": 0} and device.mem_get_info() == (1, 2)
    assert len(device.get_rng_state_all()) == 1 and device.current_index() == 0
    device.Event(enable_timing=True)
    with device.stream(device.Stream()):
        pass
    with device.device_context("cuda:0"):
        pass
    assert device.get_device_properties().total_memory == 2**36
    device.seed_all()
    device.set_rng_state_all(device.get_rng_state_all())
    calls = {name: kwargs for name, _, kwargs in fake.npu_calls}
    assert calls["amp.autocast"] == {"enabled": True, "dtype": torch.bfloat16}
    assert calls["amp.GradScaler"] == {"init_scale": 8.0, "growth_factor": 2.0, "backoff_factor": 0.5,
                                       "growth_interval": 2000, "enabled": True}
    for name in ("synchronize", "empty_cache", "reset_peak_memory_stats", "get_device_name", "memory_stats",
                 "mem_get_info", "get_rng_state_all", "current_device", "Event", "Stream", "stream", "device",
                 "get_device_properties", "seed_all", "set_rng_state_all"):
        assert name in calls, name
