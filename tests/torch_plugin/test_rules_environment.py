"""The torch pack's process-wide settings: CUDA_VISIBLE_DEVICES and the cudnn / tf32 flags."""
from porter_torch.rules import environment

from porter.testing import assert_rewrites, assert_untouched

IMPORT = "import porter.runtime.device as porter_device\n"


def test_visible_devices_variable():
    assert_rewrites(environment.VISIBLE_DEVICES, """
        import os
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, gpus))
        seen = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", "0")
        os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        value = os.getenv("CUDA_VISIBLE_DEVICES")
        if "CUDA_VISIBLE_DEVICES" not in os.environ:
            pass
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": "1"}
        del env["CUDA_VISIBLE_DEVICES"]
    """, f"""
        import os
        {IMPORT}
        os.environ[porter_device.visible_devices_env()] = ",".join(map(str, gpus))
        seen = os.environ.get(porter_device.visible_devices_env(), "")
        os.environ.setdefault(porter_device.visible_devices_env(), "0")
        os.environ.pop(porter_device.visible_devices_env(), None)
        value = os.getenv(porter_device.visible_devices_env())
        if porter_device.visible_devices_env() not in os.environ:
            pass
        env = {{**os.environ, porter_device.visible_devices_env(): "1"}}
        del env[porter_device.visible_devices_env()]
    """)
    assert_untouched(environment.VISIBLE_DEVICES, """
        import os
        print("CUDA_VISIBLE_DEVICES")
        command = "CUDA_VISIBLE_DEVICES=0 python train.py"
        env.update(CUDA_VISIBLE_DEVICES="0")
        os.environ["CUDA_VISIBLE_DEVICES_EXTRA"] = "1"
    """)


def test_cudnn_flags():
    assert_rewrites(environment.CUDNN_FLAGS, """
        import torch
        from torch.backends import cudnn
        torch.backends.cudnn.benchmark = not args.deterministic
        cudnn.deterministic = True
        torch.backends.cuda.matmul.allow_tf32 = True; torch.backends.cudnn.allow_tf32 = True
    """, f"""
        import torch
        from torch.backends import cudnn
        {IMPORT}
        porter_device.set_determinism(benchmark=not args.deterministic)
        porter_device.set_determinism(deterministic=True)
        porter_device.set_determinism(allow_tf32=True); porter_device.set_determinism(cudnn_allow_tf32=True)
    """)
    assert_untouched(environment.CUDNN_FLAGS, """
        import torch
        torch.backends.cudnn.enabled = False
        fast = torch.backends.cudnn.benchmark
        a = torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.benchmark: bool
        config.benchmark = True
        torch.use_deterministic_algorithms(True)
    """)
