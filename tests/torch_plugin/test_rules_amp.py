"""The torch pack's amp rules: autocast and GradScaler on the selected device."""
from porter_torch.rules import amp

from porter.testing import assert_rewrites, assert_untouched

IMPORT = "import porter.runtime.device as porter_device\n"


def test_autocast():
    assert_rewrites(amp.AUTOCAST, """
        import torch
        from torch.cuda.amp import autocast
        with torch.cuda.amp.autocast():
            pass
        with autocast(enabled=use_amp, dtype=torch.bfloat16):
            pass
        with torch.autocast("cuda", torch.bfloat16):
            pass
        with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=True):
            pass
        with torch.amp.autocast("cuda"):
            pass
        @torch.cuda.amp.autocast()
        def forward(x):
            return x
        cast = torch.cuda.amp.autocast
    """, f"""
        import torch
        from torch.cuda.amp import autocast
        {IMPORT}
        with porter_device.autocast():
            pass
        with porter_device.autocast(enabled=use_amp, dtype=torch.bfloat16):
            pass
        with porter_device.autocast(dtype=torch.bfloat16):
            pass
        with porter_device.autocast(dtype=torch.float16, enabled=True):
            pass
        with porter_device.autocast():
            pass
        @porter_device.autocast()
        def forward(x):
            return x
        cast = porter_device.autocast
    """)


def test_autocast_for_other_devices_is_left_alone():
    assert_untouched(amp.AUTOCAST, """
        import torch
        with torch.autocast("cpu", dtype=torch.bfloat16):
            pass
        with torch.autocast(device_type=device.type):
            pass
        with torch.autocast(device_type="cuda:0"):
            pass
        with torch.autocast(*args):
            pass
        with torch.autocast():
            pass
        with my.autocast("cuda"):
            pass
    """)


def test_grad_scaler():
    assert_rewrites(amp.GRAD_SCALER, """
        import torch
        from torch.cuda.amp import GradScaler
        a = torch.cuda.amp.GradScaler()
        b = GradScaler(init_scale=1024, enabled=args.fp16)
        c = torch.amp.GradScaler("cuda", 2.0 ** 10)
        d = torch.amp.GradScaler(device="cuda", growth_interval=100)
        e = torch.amp.GradScaler()
    """, f"""
        import torch
        from torch.cuda.amp import GradScaler
        {IMPORT}
        a = porter_device.grad_scaler()
        b = porter_device.grad_scaler(init_scale=1024, enabled=args.fp16)
        c = porter_device.grad_scaler(init_scale=2.0 ** 10)
        d = porter_device.grad_scaler(growth_interval=100)
        e = porter_device.grad_scaler()
    """)
    assert_untouched(amp.GRAD_SCALER, """
        import torch
        a = torch.amp.GradScaler("cpu")
        b = torch.amp.GradScaler(device=device_type)
        ok = isinstance(s, torch.cuda.amp.GradScaler)
    """)
