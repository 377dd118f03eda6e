"""The torch pack's tensor rules: .cuda(), .is_cuda, torch.cuda.FloatTensor, pinned memory."""
from porter_torch.rules import tensors

from porter.testing import assert_rewrites, assert_untouched

IMPORT = "import porter.runtime.device as porter_device\n"


def test_dot_cuda_moves_to_the_selected_device():
    assert_rewrites(tensors.DOT_CUDA, """
        import torch
        model = Net().cuda()
        x = x.cuda(non_blocking=True)
        y = y.cuda(1)
        z = z.cuda(args.local_rank, True)
        w = w.cuda(device=rank, memory_format=torch.channels_last)
        v = torch.nn.Linear(2, 2).cuda()
        u = u.cuda(None)
        load = lambda storage, loc: storage.cuda(rank)
    """, f"""
        import torch
        {IMPORT}
        model = Net().to(porter_device.current_device())
        x = x.to(porter_device.current_device(), non_blocking=True)
        y = y.to(porter_device.as_device(1))
        z = z.to(porter_device.as_device(args.local_rank), non_blocking=True)
        w = w.to(porter_device.as_device(rank), memory_format=torch.channels_last)
        v = torch.nn.Linear(2, 2).to(porter_device.current_device())
        u = u.to(porter_device.current_device())
        load = lambda storage, loc: storage.to(porter_device.as_device(rank))
    """)


def test_dot_cuda_look_alikes_are_left_alone():
    assert_untouched(tensors.DOT_CUDA, """
        import torch
        from numba import cuda
        import cupy
        cuda.to_device(a)
        cupy.cuda(0)
        torch.cuda
        fn = x.cuda
        y = x.cuda(0, True, extra=1)
        z = x.cuda(1, 2, 3)
    """)


def test_is_cuda_asks_the_runtime():
    assert_rewrites(tensors.IS_CUDA, """
        if x.is_cuda and not (a + b).is_cuda:
            pass
        flags = [t.is_cuda for t in tensors]
    """, f"""
        {IMPORT}
        if porter_device.on_accelerator(x) and not porter_device.on_accelerator((a + b)):
            pass
        flags = [porter_device.on_accelerator(t) for t in tensors]
    """)
    assert_untouched(tensors.IS_CUDA, "import torch\nx.is_cuda_graph = 1\nis_cuda = torch.cuda.is_available()\n")


def test_typed_tensors_are_the_selected_devices():
    assert_rewrites(tensors.TYPED_TENSOR, """
        import torch
        dtype = torch.cuda.FloatTensor if cuda else torch.FloatTensor
        sizes = torch.cuda.LongTensor([1, 2])
        empty = torch.cuda.HalfTensor(2, 3)
        y = x.type("torch.cuda.ByteTensor")
        torch.set_default_tensor_type("torch.cuda.FloatTensor")
        ok = isinstance(x, torch.cuda.FloatTensor)
    """, f"""
        import torch
        {IMPORT}
        dtype = porter_device.tensor_type("FloatTensor") if cuda else torch.FloatTensor
        sizes = porter_device.tensor_type("LongTensor")([1, 2])
        empty = porter_device.tensor_type("HalfTensor")(2, 3)
        y = x.type(porter_device.tensor_type("ByteTensor"))
        torch.set_default_tensor_type(porter_device.tensor_type("FloatTensor"))
        ok = isinstance(x, porter_device.tensor_type("FloatTensor"))
    """)
    assert_untouched(tensors.TYPED_TENSOR, """
        import torch
        a = torch.FloatTensor([1.0])
        b = x.type("torch.FloatTensor")
        print("torch.cuda.FloatTensor")
    """)


def test_pin_memory_follows_the_device():
    assert_rewrites(tensors.PIN_MEMORY, """
        loader = DataLoader(dataset, batch_size=8, pin_memory=True)
        buffer = torch.empty(10, pin_memory=True)
        batch = batch.pin_memory()
    """, f"""
        {IMPORT}
        loader = DataLoader(dataset, batch_size=8, pin_memory=porter_device.pin_memory())
        buffer = torch.empty(10, pin_memory=porter_device.pin_memory())
        batch = porter_device.pinned(batch)
    """)
    assert_untouched(tensors.PIN_MEMORY, """
        loader = DataLoader(dataset, pin_memory=False)
        loader = DataLoader(dataset, pin_memory=args.pin_memory)
        class Batch:
            def pin_memory(self):
                return self
        x = x.pin_memory(device)
    """)
