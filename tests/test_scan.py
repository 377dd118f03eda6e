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
