"""The torch pack's torch.cuda.X rules: source in, source out, and the look-alikes each must leave alone."""
import pytest
from porter_torch.rules import calls

from porter.testing import assert_rewrites, assert_untouched

IMPORT = "import porter.runtime.device as porter_device\n"


@pytest.mark.parametrize("rule, api, runtime", [
    (calls.SYNCHRONIZE, "synchronize()", "synchronize()"),
    (calls.SYNCHRONIZE, "synchronize(device)", "synchronize(device)"),
    (calls.COUNT, "device_count()", "device_count()"),
    (calls.SET_DEVICE, "set_device(args.local_rank)", "set_device(args.local_rank)"),
    (calls.SEED, "manual_seed(seed)", "manual_seed(seed)"),
    (calls.SEED, "manual_seed_all(seed)", "manual_seed_all(seed)"),
    (calls.SEED, "initial_seed()", "initial_seed()"),
    (calls.RNG_STATE, "get_rng_state()", "get_rng_state()"),
    (calls.RNG_STATE, "set_rng_state(state)", "set_rng_state(state)"),
    (calls.RNG_STATE, "get_rng_state_all()", "get_rng_state_all()"),
    (calls.RNG_STATE, "set_rng_state_all(states)", "set_rng_state_all(states)"),
    (calls.MEMORY, "memory_allocated()", "memory_allocated()"),
    (calls.MEMORY, "max_memory_allocated(0)", "max_memory_allocated(0)"),
    (calls.MEMORY, "memory_cached()", "memory_reserved()"),
    (calls.MEMORY, "max_memory_cached()", "max_memory_reserved()"),
    (calls.MEMORY, "memory_stats()", "memory_stats()"),
    (calls.MEMORY, "reset_peak_memory_stats()", "reset_peak_memory_stats()"),
    (calls.MEMORY, "reset_max_memory_allocated()", "reset_peak_memory_stats()"),
    (calls.MEMORY, "empty_cache()", "empty_cache()"),
    (calls.MEMORY, "mem_get_info()", "mem_get_info()"),
    (calls.PROPERTIES, "get_device_name(0)", "get_device_name(0)"),
    (calls.PROPERTIES, "get_device_properties(0).total_memory", "get_device_properties(0).total_memory"),
    (calls.PROPERTIES, "is_bf16_supported()", "is_bf16_supported()"),
    (calls.PROFILER, 'nvtx.range_push("step")', 'range_push("step")'),
    (calls.PROFILER, "nvtx.range_pop()", "range_pop()"),
    (calls.PROFILER, "profiler.start()", "profiler_start()"),
    (calls.PROFILER, "cudart().cudaProfilerStop()", "profiler_stop()"),
    (calls.STREAMS, "Event(enable_timing=True)", "Event(enable_timing=True)"),
    (calls.STREAMS, "Stream()", "Stream()"),
    (calls.STREAMS, "current_stream().synchronize()", "current_stream().synchronize()"),
    (calls.STREAMS, "default_stream()", "default_stream()"),
])
def test_torch_cuda_calls_go_to_the_runtime(rule, api, runtime):
    assert_rewrites(rule, f"import torch\nx = torch.cuda.{api}\n", f"import torch\n{IMPORT}\nx = porter_device.{runtime}\n")


def test_with_blocks_become_the_runtime_context_managers():
    assert_rewrites(calls.SET_DEVICE, "import torch\nwith torch.cuda.device(1):\n    pass\n",
                    f"import torch\n{IMPORT}\nwith porter_device.device_context(1):\n    pass\n")
    assert_rewrites(calls.STREAMS, "import torch\nwith torch.cuda.stream(s):\n    pass\n",
                    f"import torch\n{IMPORT}\nwith porter_device.stream(s):\n    pass\n")
    assert_rewrites(calls.PROFILER, 'import torch\nwith torch.cuda.nvtx.range("fwd"):\n    pass\n',
                    f'import torch\n{IMPORT}\nwith porter_device.profile_range("fwd"):\n    pass\n')


def test_every_spelling_of_the_import_is_the_same_site():
    assert_rewrites(calls.SYNCHRONIZE, """
        import torch as th
        from torch import cuda
        from torch.cuda import synchronize as wait
        th.cuda.synchronize()
        cuda.synchronize()
        wait()
        timer = Timer(sync=th.cuda.synchronize)
    """, f"""
        import torch as th
        from torch import cuda
        from torch.cuda import synchronize as wait
        {IMPORT}
        porter_device.synchronize()
        porter_device.synchronize()
        porter_device.synchronize()
        timer = Timer(sync=porter_device.synchronize)
    """)
    assert_rewrites(calls.SEED, "import torch.cuda.random as r\nr.manual_seed(1)\n",
                    f"import torch.cuda.random as r\n{IMPORT}\nporter_device.manual_seed(1)\n")


def test_look_alikes_are_left_alone():
    assert_untouched(calls.SYNCHRONIZE, """
        import torch
        def run(timer, torch):
            timer.synchronize()          # an attribute of something else
            torch.cuda.synchronize()     # a parameter named torch is not the module
            start(synchronize=True)      # a keyword argument's name
        def synchronize():
            pass
        synchronize()
        torch.mps.synchronize()
    """)
    assert_untouched(calls.STREAMS, """
        import torch
        ok = isinstance(s, torch.cuda.Stream) or isinstance(e, torch.cuda.Event)
    """)
    assert_untouched(calls.COUNT, "import os\nn = os.cpu_count()\nm = device_count()\n")
    assert_untouched(calls.SYNCHRONIZE, """
        import torch
        def step(cuda, args):
            cuda.synchronize()           # a local named cuda is not torch.cuda
            cuda = args.cuda
            return cuda.synchronize
    """)


def test_current_device_is_a_device_where_a_device_goes_and_an_int_elsewhere():
    assert_rewrites(calls.CURRENT_DEVICE, """
        import torch
        x = torch.zeros(3, device=torch.cuda.current_device())
        y = x.to(torch.cuda.current_device())
        z = y.cuda(torch.cuda.current_device())
        state = torch.load(path, map_location=torch.cuda.current_device())
        model = DDP(model, device_ids=[torch.cuda.current_device()])
        rank = torch.cuda.current_device()
        print(f"on cuda:{torch.cuda.current_device()}")
        name = torch.cuda.get_device_name(torch.cuda.current_device())
    """, f"""
        import torch
        {IMPORT}
        x = torch.zeros(3, device=porter_device.current_device())
        y = x.to(porter_device.current_device())
        z = y.cuda(porter_device.current_device())
        state = torch.load(path, map_location=porter_device.current_device())
        model = DDP(model, device_ids=[porter_device.current_device()])
        rank = porter_device.current_index()
        print(f"on cuda:{{porter_device.current_index()}}")
        name = torch.cuda.get_device_name(porter_device.current_index())
    """)


def test_is_available_becomes_any_accelerator():
    assert_rewrites(calls.IS_AVAILABLE, """
        import torch
        if torch.cuda.is_available():
            model.cuda()
            torch.cuda.synchronize()
        else:
            model.cpu()
        device = "cuda" if torch.cuda.is_available() else "cpu"
        if not torch.cuda.is_available():
            raise SystemExit("needs an accelerator")
        use_amp = args.amp and torch.cuda.is_available()
    """, f"""
        import torch
        {IMPORT}
        if porter_device.is_available():
            model.cuda()
            torch.cuda.synchronize()
        else:
            model.cpu()
        device = "cuda" if porter_device.is_available() else "cpu"
        if not porter_device.is_available():
            raise SystemExit("needs an accelerator")
        use_amp = args.amp and porter_device.is_available()
    """)


def test_is_available_guarding_cuda_only_code_is_left_alone():
    # the guarded branch cannot run on an NPU or the CPU; the else-branch (device-neutral) is what ran there
    # before the port, and still must
    assert_untouched(calls.IS_AVAILABLE, """
        import torch
        from apex import amp
        def setup(model, optimizer):
            if torch.cuda.is_available():
                import pynvml
                pynvml.nvmlInit()
            if torch.cuda.is_available():
                model, optimizer = amp.initialize(model, optimizer)
            else:
                model = model.float()
            if not torch.cuda.is_available():
                capability = (0, 0)
            else:
                capability = torch.cuda.get_device_capability()
            bf16 = torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8
            graphs = torch.cuda.CUDAGraph() if torch.cuda.is_available() else None
            return model, optimizer, capability, bf16, graphs
    """)


def test_is_available_reads_the_whole_guard():
    # the CUDA-only import is statements below the test, in a function the cut file must show whole
    assert_rewrites(calls.IS_AVAILABLE, """
        import torch
        def pick():
            if torch.cuda.is_available():
                x = 1
                y = 2
                from flash_attn import flash_attn_func
                return flash_attn_func
            return None
        def count():
            if torch.cuda.is_available():
                x = 1
                return torch.cuda.device_count()
            return 0
    """, f"""
        import torch
        {IMPORT}
        def pick():
            if torch.cuda.is_available():
                x = 1
                y = 2
                from flash_attn import flash_attn_func
                return flash_attn_func
            return None
        def count():
            if porter_device.is_available():
                x = 1
                return torch.cuda.device_count()
            return 0
    """)
