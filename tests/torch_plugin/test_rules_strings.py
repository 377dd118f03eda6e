"""The torch pack's device-string rules: "cuda" where it names a device, and "is this CUDA?" questions."""
from porter_torch.rules import strings

from porter.testing import assert_rewrites, assert_untouched

IMPORT = "import porter.runtime.device as porter_device\n"


def test_device_arguments():
    assert_rewrites(strings.STRINGS, """
        import torch
        x = x.to("cuda:0")
        y = torch.zeros(3, device="cuda")
        z = x.new_ones(2, device="cuda:1")
        g = torch.Generator(device="cuda")
        h = torch.Generator("cuda")
        torch.set_default_device("cuda")
        m = model.to_empty(device="cuda")
        state = torch.load(path, map_location="cuda:0")
        state = torch.load(path, "cuda")
        moved = torch.load(path, map_location={"cuda:1": "cuda:0"})
        loader = DataLoader(ds, pin_memory=True, pin_memory_device="cuda")
        fsdp = FSDP(model, device_id=f"cuda:{rank}")
        w = x.to("cuda:%d" % rank)
        v = x.to("cuda:" + str(rank))
        u = x.to("cuda:{}".format(rank))
    """, f"""
        import torch
        {IMPORT}
        x = x.to(porter_device.device_string("cuda:0"))
        y = torch.zeros(3, device=porter_device.device_string("cuda"))
        z = x.new_ones(2, device=porter_device.device_string("cuda:1"))
        g = torch.Generator(device=porter_device.device_string("cuda"))
        h = torch.Generator(porter_device.device_string("cuda"))
        torch.set_default_device(porter_device.device_string("cuda"))
        m = model.to_empty(device=porter_device.device_string("cuda"))
        state = torch.load(path, map_location=porter_device.device_string("cuda:0"))
        state = torch.load(path, porter_device.device_string("cuda"))
        moved = torch.load(path, map_location={{"cuda:1": porter_device.device_string("cuda:0")}})
        loader = DataLoader(ds, pin_memory=True, pin_memory_device=porter_device.device_string("cuda"))
        fsdp = FSDP(model, device_id=porter_device.device_string(f"cuda:{{rank}}"))
        w = x.to(porter_device.device_string("cuda:%d" % rank))
        v = x.to(porter_device.device_string("cuda:" + str(rank)))
        u = x.to(porter_device.device_string("cuda:{{}}".format(rank)))
    """)


def test_torch_device_stays_a_torch_device():
    assert_rewrites(strings.STRINGS, """
        import torch
        a = torch.device("cuda")
        b = torch.device("cuda:1")
        c = torch.device("cuda", local_rank)
        d = torch.device("cuda", index=0)
        e = torch.device(f"cuda:{local_rank}")
        f = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    """, f"""
        import torch
        {IMPORT}
        a = porter_device.as_device("cuda")
        b = porter_device.as_device("cuda:1")
        c = porter_device.as_device("cuda", local_rank)
        d = porter_device.as_device("cuda", index=0)
        e = porter_device.as_device(f"cuda:{{local_rank}}")
        f = torch.device(porter_device.device_string("cuda") if torch.cuda.is_available() else "cpu")
    """)


def test_defaults_variables_options_and_choices():
    assert_rewrites(strings.STRINGS, """
        import argparse
        DEVICE = "cuda"
        def evaluate(model, device="cuda", *, map_location: str = "cuda:0"):
            self.device = "cuda:0"
            train_device: str = "cuda"
            config = {"device": "cuda", "batch": 8}
            kind = "cpu" if args.cpu else "cuda"
        parser = argparse.ArgumentParser()
        parser.add_argument("--device", type=str, default="cuda")
        build(device="cuda")
    """, f"""
        import argparse
        {IMPORT}
        DEVICE = porter_device.device_string("cuda")
        def evaluate(model, device=porter_device.device_string("cuda"), *, map_location: str = porter_device.device_string("cuda:0")):
            self.device = porter_device.device_string("cuda:0")
            train_device: str = porter_device.device_string("cuda")
            config = {{"device": porter_device.device_string("cuda"), "batch": 8}}
            kind = "cpu" if args.cpu else porter_device.device_string("cuda")
        parser = argparse.ArgumentParser()
        parser.add_argument("--device", type=str, default=porter_device.device_string("cuda"))
        build(device=porter_device.device_string("cuda"))
    """)


def test_cuda_that_is_not_a_device_is_left_alone():
    assert_untouched(strings.STRINGS, """
        import torch
        import logging
        logging.info("cuda")
        print("moving to", "cuda")
        counts = {"cuda": 0, "cpu": 1}
        name = "cuda"
        backend = "cuda"
        if device == "cuda":
            pass
        parser.add_argument("--mode", default="cuda")
        x = x.to(device)
        y = torch.zeros(3, device="cpu")
        m = torch.autocast(device_type="cuda")
        s = torch.amp.GradScaler(device="cuda")
        def f(cuda="cuda"):
            cuda = "cuda:0"
            return cuda
        t = torch.device(type="cuda")
        u = torch.device("cudagraph")
    """)


def test_type_checks_ask_about_the_accelerator():
    assert_rewrites(strings.TYPE_CHECK, """
        if x.device.type == "cuda":
            pass
        if "cuda" == self.device.type or args.device != "cuda":
            pass
        on_gpu = (device == "cuda")
    """, f"""
        {IMPORT}
        if porter_device.on_accelerator(x.device.type):
            pass
        if porter_device.on_accelerator(self.device.type) or not porter_device.on_accelerator(args.device):
            pass
        on_gpu = (porter_device.on_accelerator(device))
    """)
    assert_untouched(strings.TYPE_CHECK, """
        if name == "cuda" or x.device.type == "cuda:0" or x.device.type in ("cuda", "npu"):
            pass
        if backend == "cuda" and args.device == "cpu":
            pass
    """)
