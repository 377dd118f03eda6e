"""sat.device.*: source in, source out, and the cases that must stay untouched."""
import pytest

from porter.testing import assert_rewrites, assert_untouched
from porter_sat.rules import device as d

IMPORT = "import porter.runtime.device as porter_device\n"


def test_synchronize():
    assert_rewrites(d.SYNCHRONIZE, """
        import time
        def start(self):
            torch.cuda.synchronize()
    """, """
        import porter.runtime.device as porter_device
        import time
        def start(self):
            porter_device.synchronize()
    """)


def test_import_goes_after_docstring_and_future_imports():
    assert_rewrites(d.SYNCHRONIZE, '''
        """Timers."""
        from __future__ import annotations
        import torch
        torch.cuda.synchronize()
    ''', '''
        """Timers."""
        from __future__ import annotations
        import porter.runtime.device as porter_device
        import torch
        porter_device.synchronize()
    ''')


def test_current_device_keeps_arguments_context():
    assert_rewrites(d.CURRENT_DEVICE, """
        sizes = torch.tensor(sizes, dtype=torch.long, device=torch.cuda.current_device())
    """, """
        import porter.runtime.device as porter_device
        sizes = torch.tensor(sizes, dtype=torch.long, device=porter_device.current_device())
    """)


@pytest.mark.parametrize("rule, before, after", [
    (d.SET_DEVICE, "torch.cuda.set_device(args.device)", "porter_device.set_device(args.device)"),
    (d.COUNT, "n = torch.cuda.device_count()", "n = porter_device.device_count()"),
    (d.IS_AVAILABLE, "args.cuda = torch.cuda.is_available()", "args.cuda = porter_device.is_available()"),
    (d.SEED, "torch.cuda.manual_seed(seed)\ntorch.cuda.manual_seed_all(seed)",
     "porter_device.manual_seed(seed)\nporter_device.manual_seed_all(seed)"),
    (d.RNG_STATE, "sd['cuda_rng_state'] = torch.cuda.get_rng_state()\ntorch.cuda.set_rng_state(s)",
     "sd['cuda_rng_state'] = porter_device.get_rng_state()\nporter_device.set_rng_state(s)"),
    (d.MEMORY_STATS, "a = torch.cuda.memory_allocated() / mb + torch.cuda.max_memory_reserved()",
     "a = porter_device.memory_allocated() / mb + porter_device.max_memory_reserved()"),
    (d.PROFILER, "torch.cuda.cudart().cudaProfilerStart()\ntorch.cuda.nvtx.range_push('fwd')\ntorch.cuda.nvtx.range_pop()",
     "porter_device.profiler_start()\nporter_device.range_push('fwd')\nporter_device.range_pop()"),
    (d.DOT_CUDA, "x = torch.cat(parts).cuda()", "x = torch.cat(parts).to(porter_device.current_device())"),
    (d.AS_DEVICE, "correct_device = torch.device(args.device)", "correct_device = porter_device.as_device(args.device)"),
    (d.PIN_MEMORY, "DataLoader(ds, pin_memory=True, num_workers=2)",
     "DataLoader(ds, pin_memory=porter_device.pin_memory(), num_workers=2)"),
])
def test_call_rewrites(rule, before, after):
    assert_rewrites(rule, before + "\n", IMPORT + after + "\n")


@pytest.mark.parametrize("rule, source", [
    (d.SYNCHRONIZE, "torch.npu.synchronize()\nsynchronize()\n"),
    (d.CURRENT_DEVICE, "x = torch.cuda.current_stream()\n"),
    (d.DOT_CUDA, "x.cuda(1)\ny.cuda\n"),  # an explicit index says the author meant CUDA
    (d.AS_DEVICE, "torch.device('cpu')\ntorch.device(dev)\n"),
    (d.PIN_MEMORY, "DataLoader(ds, pin_memory=False)\n"),
])
def test_untouched(rule, source):
    assert_untouched(rule, source)


def test_backend_default_and_choice():
    assert_rewrites(d.BACKEND, """
        group.add_argument('--distributed-backend', default='nccl', help='which backend')
        args = Namespace(distributed_backend='nccl' if torch.distributed.is_nccl_available() and ok else 'gloo')
    """, """
        import porter.runtime.device as porter_device
        group.add_argument('--distributed-backend', default=porter_device.communication_backend(), help='which backend')
        args = Namespace(distributed_backend=porter_device.communication_backend())
    """)
    assert_untouched(d.BACKEND, "group.add_argument('--other', default='nccl')\nb = 'nccl' if x else 'mpi'\n")


def test_local_rank_check_skips_cpu():
    assert_rewrites(d.LOCAL_RANK, """
        if args.local_rank != args.device and args.mode != 'inference':
            raise ValueError('inconsistent')
    """, """
        if args.device != 'cpu' and args.local_rank != args.device and args.mode != 'inference':
            raise ValueError('inconsistent')
    """)


def test_cudnn_flags_become_one_call():
    assert_rewrites(d.CUDNN_FLAGS, """
        def set_random_seed(seed):
            torch.manual_seed(seed)
            torch.backends.cudnn.benchmark = True
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.enabled = True # False
            torch.backends.cuda.matmul.allow_tf32 = False # faster but not accurate
            print('seeded')
    """, """
        import porter.runtime.device as porter_device
        def set_random_seed(seed):
            torch.manual_seed(seed)
            porter_device.set_determinism(benchmark=True, deterministic=True, allow_tf32=False)
            print('seeded')
    """)
    # a lone flag elsewhere is a deliberate choice, not the seed-time block: left alone
    assert_untouched(d.CUDNN_FLAGS, "def f():\n    torch.backends.cudnn.benchmark = False\n")
