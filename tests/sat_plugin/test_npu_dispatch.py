"""The patched SAT on the FAKE torch_npu: which kernels the model's forward reaches, with which arguments.

This proves dispatch and argument layout against torch_npu's documented limits, not the NPU kernels.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

PROBE = Path(__file__).with_name("npu_forward_probe.py")


def probe(site, dtype, hidden, heads):
    env = {k: v for k, v in os.environ.items() if k != "PORTER_DEVICE"}
    proc = subprocess.run([sys.executable, str(PROBE), str(site), dtype, str(hidden), str(heads)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(text for text in proc.stdout.splitlines() if text.startswith("PORTER-NPU "))
    return json.loads(line.split(" ", 1)[1])


def test_patched_chatglm_forward_reaches_the_npu_kernels(sat_patched):
    # head dim 128: ChatGLM-6B's, so each 2-D rotary half is 64 wide, as npu_rotary_mul requires
    report = probe(sat_patched, "float16", 256, 2)
    assert report["finite"] and report["shape"] == [1, 32, 160]
    assert report["kernels"] == ["fast_gelu", "npu_fusion_attention", "npu_rotary_mul"]
    rotary = [c for c in report["calls"] if c["kernel"] == "npu_rotary_mul"]
    # 2 layers x (q, k) x (position, block position), each [sq, b, np, 64] with cos/sin [sq, b, 1, 64]
    assert len(rotary) == 8
    assert all(c["x"] == [32, 1, 2, 64] and c["r"] == [32, 1, 1, 64] and "SBND" in c["layouts"] for c in rotary)
    attention = [c for c in report["calls"] if c["kernel"] == "npu_fusion_attention"]
    assert len(attention) == 2 and all(c["layout"] == "BNSD" and c["mask"] == [32, 32] for c in attention)
    assert report["counts"]["gelu/fast_gelu"] == 2 and not report["fallbacks"]


def test_shapes_outside_the_kernel_limits_take_the_reference_path(sat_patched):
    # head dim 16: rotary halves of 8, which npu_rotary_mul does not take; bf16 goes to npu_fast_gelu
    report = probe(sat_patched, "bfloat16", 64, 4)
    assert report["finite"]
    assert "npu_rotary_mul" not in report["kernels"] and report["counts"]["rotary_mul/reference"] == 8
    assert report["fallbacks"] == {"rotary_mul/npu_rotary_mul: last dim 8 is not a multiple of 64": 8}
    assert report["kernels"] == ["npu_fast_gelu", "npu_fusion_attention"]
