"""The torch pack's distributed rules: the backend, and DDP / FSDP device arguments."""
from porter_torch.rules import distributed

from porter.testing import assert_rewrites, assert_untouched

IMPORT = "import porter.runtime.device as porter_device\n"


def test_nccl_where_a_backend_goes():
    assert_rewrites(distributed.BACKEND, """
        import torch
        import torch.distributed as dist
        dist.init_process_group("nccl", init_method="env://")
        torch.distributed.init_process_group(backend="nccl", rank=rank, world_size=world)
        group = dist.new_group(ranks, backend="nccl")
        deepspeed.init_distributed(dist_backend="nccl")
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        fallback = ("gloo" if cpu else "nccl")
        if dist.get_backend() == "nccl" or "nccl" != args.backend:
            pass
        def setup(rank, backend="nccl"):
            args.dist_backend = "nccl"
            options = {"backend": "nccl"}
        parser.add_argument("--dist-backend", default="nccl")
        ok = dist.is_nccl_available()
        name = dist.Backend.NCCL
    """, f"""
        import torch
        import torch.distributed as dist
        {IMPORT}
        dist.init_process_group(porter_device.communication_backend(), init_method="env://")
        torch.distributed.init_process_group(backend=porter_device.communication_backend(), rank=rank, world_size=world)
        group = dist.new_group(ranks, backend=porter_device.communication_backend())
        deepspeed.init_distributed(dist_backend=porter_device.communication_backend())
        backend = porter_device.communication_backend()
        fallback = (porter_device.communication_backend())
        if dist.get_backend() == porter_device.communication_backend() or porter_device.communication_backend() != args.backend:
            pass
        def setup(rank, backend=porter_device.communication_backend()):
            args.dist_backend = porter_device.communication_backend()
            options = {{"backend": porter_device.communication_backend()}}
        parser.add_argument("--dist-backend", default=porter_device.communication_backend())
        ok = porter_device.is_backend_available()
        name = porter_device.communication_backend()
    """)


def test_nccl_that_is_not_a_backend_is_left_alone():
    assert_untouched(distributed.BACKEND, """
        import torch.distributed as dist
        print("nccl")
        versions = {"nccl": "2.18"}
        dist.init_process_group("gloo")
        os.environ["NCCL_DEBUG"] = "INFO"
        if backend in ("nccl", "gloo"):
            pass
        parser.add_argument("--library", default="nccl")
    """)


def test_ddp_and_fsdp_devices():
    assert_rewrites(distributed.PARALLEL, """
        import torch
        from torch.nn.parallel import DistributedDataParallel as DDP
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        a = DDP(model, device_ids=[local_rank], output_device=local_rank)
        b = torch.nn.parallel.DistributedDataParallel(model, [local_rank], local_rank, broadcast_buffers=False)
        c = FSDP(model, device_id=torch.cuda.current_device())
    """, f"""
        import torch
        from torch.nn.parallel import DistributedDataParallel as DDP
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        {IMPORT}
        a = DDP(model, device_ids=porter_device.device_ids([local_rank]), output_device=porter_device.parallel_device(local_rank))
        b = torch.nn.parallel.DistributedDataParallel(model, porter_device.device_ids([local_rank]), porter_device.parallel_device(local_rank), broadcast_buffers=False)
        c = FSDP(model, device_id=porter_device.parallel_device(torch.cuda.current_device()))
    """)
    assert_untouched(distributed.PARALLEL, """
        import torch
        from torch.nn.parallel import DistributedDataParallel as DDP
        a = DDP(model, device_ids=None)
        b = DDP(model)
        c = torch.nn.DataParallel(model, device_ids=[0, 1])
        d = MyWrapper(model, device_ids=[0])
    """)


def test_backend_leaves_a_choice_between_dicts_alone():
    # found on transformers: literal() of a dict is a dict, which no set can hold
    assert_untouched(distributed.BACKEND, """
        options = {"nccl": 1} if fast else {"gloo": 2}
        other = ["nccl"] if fast else ["gloo"]
    """)
