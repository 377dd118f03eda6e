"""Run in a subprocess by test_npu_dispatch.py: the patched SAT's tiny ChatGLM forward on the FAKE NPU."""
import json
import os
import sys

sys.path.insert(0, sys.argv[1])  # the patched SAT
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))  # tests/, for the fake

os.environ["DS_ACCELERATOR"] = "cpu"  # DeepSpeed would take the fake torch_npu for a real NPU
import torch  # noqa: E402
from fakes import torch_npu as fake  # noqa: E402

fake.install()
os.environ["PORTER_GELU"] = "fast"
torch.distributed.init_process_group("gloo", init_method="tcp://127.0.0.1:0", rank=0, world_size=1)

import sat  # noqa: E402
from porter_sat.parity import build_tiny_chatglm  # noqa: E402
from porter_sat.smoke import BOS, GMASK  # noqa: E402

from porter.runtime import ops  # noqa: E402

assert sat.__file__.startswith(sys.argv[1])
dtype, hidden, heads = getattr(torch, sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
model = build_tiny_chatglm(hidden=hidden, heads=heads).to(dtype).eval()
# gMASK BOS first: the mask is causal, so SAT takes its mask-free attention path
ids = torch.tensor([[GMASK, BOS] + list(range(1, 31))])
with torch.no_grad():
    logits = model(input_ids=ids)[0]
report = {"kernels": sorted({c["kernel"] for c in fake.calls}), "calls": [
    {k: (list(v) if isinstance(v, tuple) else str(v)) for k, v in c.items()} for c in fake.calls],
    "counts": dict(ops.counts), "fallbacks": dict(ops.fallbacks), "finite": bool(torch.isfinite(logits).all()),
    "shape": list(logits.shape)}
print("PORTER-NPU " + json.dumps(report))
