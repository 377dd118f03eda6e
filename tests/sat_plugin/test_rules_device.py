"""sat.device.*: source in, source out, and the cases that must stay untouched."""
from pathlib import Path

import pytest
from porter_sat.rules import device as d

from porter.errors import PlanError
from porter.testing import assert_rewrites, assert_untouched, rewrite

TORCH = "import torch\n"
IMPORT = "import porter.runtime.device as porter_device\n\n"  # AddImportsVisitor ends the import block there


def test_synchronize():
    assert_rewrites(d.SYNCHRONIZE, """
        import time
        import torch
        def start(self):
            torch.cuda.synchronize()
    """, """
        import time
        import torch
        import porter.runtime.device as porter_device

        def start(self):
            porter_device.synchronize()
    """)


def test_import_goes_after_docstring_future_and_leading_imports_once():
    assert_rewrites(d.SYNCHRONIZE, '''
        """Timers."""
        from __future__ import annotations
        import torch


        def start():
            torch.cuda.synchronize()
    ''', '''
        """Timers."""
        from __future__ import annotations
        import torch
        import porter.runtime.device as porter_device


        def start():
            porter_device.synchronize()
    ''')
    assert_rewrites(d.SYNCHRONIZE, "import porter.runtime.device as porter_device\nimport torch\ntorch.cuda.synchronize()\n",
                    "import porter.runtime.device as porter_device\nimport torch\nporter_device.synchronize()\n")


def test_current_device_keeps_arguments_context():
    assert_rewrites(d.CURRENT_DEVICE, """
        import torch
        sizes = torch.tensor(sizes, dtype=torch.long, device=torch.cuda.current_device())
    """, """
        import torch
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
    assert_rewrites(rule, TORCH + before + "\n", TORCH + IMPORT + after + "\n")


# One site, written the ways real code writes it: every spelling is the same call to the rule.
@pytest.mark.parametrize("header, call", [
    ("import torch", "torch.cuda.synchronize()"),
    ("import torch as th", "th.cuda.synchronize()"),
    ("from torch import cuda", "cuda.synchronize()"),
    ("from torch import cuda as gpu", "gpu.synchronize()"),
    ("import torch.cuda", "torch.cuda.synchronize()"),
    ("from torch.cuda import synchronize", "synchronize()"),
    ("import torch", "torch.cuda.synchronize(  # wait for the kernels\n)"),
    ("import torch", "(torch\n    .cuda\n    .synchronize)()"),
])
def test_device_calls_match_through_any_import(header, call):
    out, matches = rewrite(d.SYNCHRONIZE, f"{header}\ndef stop():\n    {call}\n")
    assert "porter_device.synchronize(" in out and len(matches) == 1, out
    assert "cuda" not in out.split("def stop", 1)[1], out


@pytest.mark.parametrize("source", [
    "def f(torch):\n    torch.cuda.synchronize()\n",  # a parameter named torch is not the module
    "import mylib as torch\ntorch.cuda.synchronize()\n",  # nor is another module imported as torch
    "from mylib import cuda\ncuda.synchronize()\n",
    "import torch\ntorch.npu.synchronize()\nsynchronize()\n",
])
def test_device_calls_that_only_look_alike_are_left(source):
    assert_untouched(d.SYNCHRONIZE, source)


def test_cudnn_flags_and_as_device_through_aliases():
    assert_rewrites(d.CUDNN_FLAGS, """
        from torch.backends import cudnn
        import torch.backends.cuda as tbc
        def seed():
            cudnn.benchmark = False
            cudnn.deterministic = True
            tbc.matmul.allow_tf32 = False
    """, """
        from torch.backends import cudnn
        import torch.backends.cuda as tbc
        import porter.runtime.device as porter_device

        def seed():
            porter_device.set_determinism(benchmark=False, deterministic=True, allow_tf32=False)
    """)
    assert_rewrites(d.AS_DEVICE, "import torch as th\ndev = th.device(opts.device)\n",
                    "import torch as th\nimport porter.runtime.device as porter_device\n\ndev = porter_device.as_device(opts.device)\n")


@pytest.mark.parametrize("rule, source", [
    (d.CURRENT_DEVICE, "import torch\nx = torch.cuda.current_stream()\n"),
    (d.DOT_CUDA, "x.cuda(1)\ny.cuda\n"),  # an explicit index says the author meant CUDA
    (d.AS_DEVICE, "import torch\ntorch.device('cpu')\ntorch.device(dev)\n"),
    (d.PIN_MEMORY, "DataLoader(ds, pin_memory=False)\n"),
])
def test_untouched(rule, source):
    assert_untouched(rule, source)


def test_backend_default_and_choice():
    assert_rewrites(d.BACKEND, """
        import torch
        group.add_argument('--distributed-backend', default='nccl', help='which backend')
        args = Namespace(distributed_backend='nccl' if torch.distributed.is_nccl_available() and ok else 'gloo')
    """, """
        import torch
        import porter.runtime.device as porter_device

        group.add_argument('--distributed-backend', default=porter_device.communication_backend(), help='which backend')
        args = Namespace(distributed_backend=porter_device.communication_backend())
    """)
    # the same, quoted and laid out otherwise
    out, matches = rewrite(d.BACKEND, '''
        parser.add_argument(
            "--distributed-backend",
            default="nccl",
        )
        backend = ("nccl"
                   if available else "gloo")
    ''')
    assert len(matches) == 2 and "nccl" not in out, out
    assert_untouched(d.BACKEND, "group.add_argument('--other', default='nccl')\nb = 'nccl' if x else 'mpi'\n")


@pytest.mark.parametrize("test, expected", [
    ("args.local_rank != args.device and args.mode != 'inference'",
     "args.device != 'cpu' and args.local_rank != args.device and args.mode != 'inference'"),
    ("opts.device != opts.local_rank and opts.mode != 'inference'",  # renamed, operands swapped
     "opts.device != 'cpu' and opts.device != opts.local_rank and opts.mode != 'inference'"),
    ("(args.local_rank\n        != args.device) and args.mode != 'inference'",
     "args.device != 'cpu' and (args.local_rank\n        != args.device) and args.mode != 'inference'"),
])
def test_local_rank_check_skips_cpu(test, expected):
    assert_rewrites(d.LOCAL_RANK, f"if {test}:\n    raise ValueError('inconsistent')\n",
                    f"if {expected}:\n    raise ValueError('inconsistent')\n")


def test_local_rank_check_leaves_other_comparisons():
    assert_untouched(d.LOCAL_RANK, "if args.local_rank != other.device:\n    pass\n"
                                   "if args.local_rank != args.device or args.mode != 'inference':\n    pass\n")


def test_cudnn_flags_become_one_call():
    assert_rewrites(d.CUDNN_FLAGS, """
        import torch
        def set_random_seed(seed):
            torch.manual_seed(seed)
            torch.backends.cudnn.benchmark = True
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.enabled = True # False
            torch.backends.cuda.matmul.allow_tf32 = False # faster but not accurate
            print('seeded')
    """, """
        import torch
        import porter.runtime.device as porter_device

        def set_random_seed(seed):
            torch.manual_seed(seed)
            porter_device.set_determinism(benchmark=True, deterministic=True, allow_tf32=False)
            print('seeded')
    """)
    # a lone flag elsewhere is a deliberate choice, not the seed-time block: left alone
    assert_untouched(d.CUDNN_FLAGS, "import torch\ndef f():\n    torch.backends.cudnn.benchmark = False\n")


def test_typed_tensor_from_a_list_only():
    assert_rewrites(d.TYPED_TENSOR, """
        import torch
        def sizes_of(keys):
            sizes = [0 for _ in range(len(keys))]
            sizes_cuda = torch.cuda.LongTensor(sizes)
            return sizes_cuda
    """, """
        import torch
        import porter.runtime.device as porter_device

        def sizes_of(keys):
            sizes = [0 for _ in range(len(keys))]
            sizes_cuda = torch.tensor(sizes, dtype=torch.long, device=porter_device.current_device())
            return sizes_cuda
    """)
    # an int (or anything not known to be a list) asks for a tensor of that size: not the same call
    assert_untouched(d.TYPED_TENSOR, "import torch\ndef f(n, xs):\n    a = torch.cuda.LongTensor(n)\n"
                                     "    xs = compute()\n    b = torch.cuda.FloatTensor(xs)\n")


def test_typed_tensor_through_from_import_adds_import_torch():
    out, matches = rewrite(d.TYPED_TENSOR, "from torch import cuda\nt = cuda.IntTensor([1, 2])\n")
    assert len(matches) == 1
    assert out == ("from torch import cuda\nimport torch\nimport porter.runtime.device as porter_device\n\n"
                   "t = torch.tensor([1, 2], dtype=torch.int, device=porter_device.current_device())\n"), out


def test_default_device_before_and_after_is_available():
    for test in ("torch.cuda.is_available()", "porter_device.is_available()"):
        out, matches = rewrite(d.DEFAULT_DEVICE, f"""
            import torch
            import porter.runtime.device as porter_device
            args.device = 'cuda' if {test} else 'cpu'
        """)
        assert len(matches) == 1 and f"args.device = porter_device.current_device() if {test} else 'cpu'" in out
    assert_untouched(d.DEFAULT_DEVICE, "import torch\nd = 'cuda' if flag else 'cpu'\n")


def test_a_file_outside_its_release_range_is_not_read():
    from porter_sat.target import SAT

    from porter.plan import make_plan
    from porter.target import InstalledTarget

    files = {"sat/mpu/data.py": "import torch\ndef f():\n    s = [1]\n    return torch.cuda.LongTensor(s)\n"}
    old = InstalledTarget(SAT, Path("/nonexistent"), "0.4.10")
    new = InstalledTarget(SAT, Path("/nonexistent"), "0.4.11")
    assert d.TYPED_TENSOR.files_for("0.4.10") == ("sat/mpu/data.py",) and d.TYPED_TENSOR.files_for("0.4.11") == ()
    plan = make_plan(old, [d.TYPED_TENSOR], read=files.__getitem__)
    assert plan.rule_counts() == {"sat.device.typed-tensor": 1}
    plan = make_plan(new, [d.TYPED_TENSOR], read=files.__getitem__)
    assert plan.rules == [] and plan.skipped == [("sat.device.typed-tensor", "0.4.11 not in the releases of its files")]
    # inside its range a required rule that finds nothing still stops the plan
    with pytest.raises(PlanError, match="required rule sat.device.typed-tensor matched nothing in sat/mpu/data.py"):
        make_plan(old, [d.TYPED_TENSOR], read={"sat/mpu/data.py": "x = 1\n"}.__getitem__)


def test_cases_a_review_found():
    # flags that are not one run of lines: the call could land before a value it uses
    assert_untouched(d.CUDNN_FLAGS, "import torch\ndef f(a):\n    torch.backends.cudnn.benchmark = False\n"
                                    "    det = a.det\n    torch.backends.cudnn.deterministic = det\n"
                                    "    torch.backends.cuda.matmul.allow_tf32 = False\n")
    # `*s` unpacks sizes: the legacy constructor, not a list of values
    assert_untouched(d.TYPED_TENSOR, "import torch\ndef f():\n    s = [4]\n    return torch.cuda.LongTensor(*s)\n")
    # a module-level name assigned in the file is not the module an import would bind
    assert_untouched(d.SYNCHRONIZE, "torch = make_fake()\ntorch.cuda.synchronize()\n")
