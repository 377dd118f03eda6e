"""One chat turn through upstream VisualGLM-6B's own inference entry, as its ``api.py`` runs it:
``model.get_infer_setting()`` (SAT's ``from_pretrained('visualglm-6b')``, the auto-regressive mixin, ``.cuda()``,
``AutoTokenizer.from_pretrained("THUDM/chatglm-6b")``), then ``model.chat(image_path, ...)`` as ``cli_demo.py``
calls it in English mode.

Run with the upstream checkout as the working directory and on ``PYTHONPATH`` (with the SAT copy to use before
it), ``SAT_HOME`` and the Hugging Face cache set (``upstream_standins``). Prints one JSON line last:
``{"response", "history", "image", "sat", "params", "ops", "checkpoints", "torchvision_ops", "seconds"}``: ``ops``
holds ``porter.runtime.ops.counts`` (the runtime's fused ops the patched SAT called, by implementation) and
``checkpoints`` whether SAT loaded the checkpoint through ``porter.runtime.checkpoints``.

    python chat_turn.py IMAGE QUERY MAX_LENGTH
"""
from __future__ import annotations

import json
import sys
import time


def import_torchvision() -> bool:
    """Import torchvision; True when its C++ ops loaded. PyPI's torchvision wheels are CUDA builds: on a CPU-only
    torch their ``_C.so`` does not load (it needs libtorch_cuda), and torchvision 0.28's import then fails
    registering a fake kernel for ``torchvision::nms``/``qnms``, ops it never defined. Upstream only uses
    ``torchvision.transforms`` (``model/blip2.py``), pure Python over Pillow: declare the two ops' schemas, without
    kernels, and import again."""
    import torch

    try:
        import torchvision  # noqa: F401

        return True
    except RuntimeError as exc:
        if "torchvision::" not in str(exc) or "does not exist" not in str(exc):
            raise
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        del sys.modules[name]
    for op in ("nms", "qnms"):
        torch.library.define(f"torchvision::{op}", "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    import torchvision  # noqa: F401,F811

    return False


def main() -> None:
    image, query, max_length = sys.argv[1], sys.argv[2], int(sys.argv[3])
    start = time.perf_counter()
    import torch

    vision_ops = import_torchvision()
    from model import chat, get_infer_setting  # as api.py imports them

    torch.manual_seed(0)
    model, tokenizer = get_infer_setting(gpu_device=0)
    with torch.no_grad():
        response, history, torch_image = chat(image, model, tokenizer, query, history=[], max_length=max_length,
                                              top_p=0.4, top_k=100, temperature=0.8, english=True,
                                              invalid_slices=[slice(63823, 130000)])
    import sat

    ops = sys.modules.get("porter.runtime.ops")
    params = sorted({f"{p.device.type}/{p.dtype}".replace("torch.", "") for p in model.parameters()})
    print(json.dumps({"response": response, "history": history, "sat": sat.__file__, "params": params,
                      "image": [list(torch_image.shape), str(torch_image.dtype), torch_image.device.type],
                      "ops": dict(ops.counts) if ops else {},
                      "checkpoints": "porter.runtime.checkpoints" in sys.modules,
                      "torchvision_ops": vision_ops, "seconds": round(time.perf_counter() - start, 1)}))


if __name__ == "__main__":
    main()
