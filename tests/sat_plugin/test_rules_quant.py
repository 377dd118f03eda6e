"""sat.quant.* (and sat.device.current-device in kernels.py): source in, source out; then SAT's own quantize() ported
and run on the CPU, against upstream's quantize code path run on the CPU too."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from porter_sat.rules import device, quant
from porter_sat.target import SAT

from porter.testing import assert_rewrites, assert_untouched

KERNELS = "sat/quantization/kernels.py"
QUANT = "import porter.runtime.quant as porter_quant\n"


# --- golden fixtures -------------------------------------------------------------------------------------------

def test_cpm_kernels_loader_becomes_kernels_none():
    assert_rewrites(quant.CPM_KERNELS, """
        import torch
        from sat.helpers import print_all

        try:
            from cpm_kernels.kernels.base import LazyKernelCModule, KernelFunction, round_up

            class Kernel:
                def __init__(self, code: bytes, function_names: List[str]):
                    self._cmodule = LazyKernelCModule(code)

            quantization_code = "$QlpoOTFBWSZTWU9yuJUAQHN"

            kernels = Kernel(bz2.decompress(base64.b64decode(quantization_code)), ["int4WeightCompression"])
        except Exception as exception:
            kernels = None
            print_all("Failed to load cpm_kernels:" + str(exception), level='WARNING')


        class W8A16Linear(torch.autograd.Function):
            pass
    """, f"""
        import torch
        from sat.helpers import print_all

        {quant.STUB_COMMENT}
        kernels = None


        class W8A16Linear(torch.autograd.Function):
            pass
    """)


def test_cpm_kernels_loader_keeps_every_name_its_failure_path_defines():
    assert_rewrites(quant.CPM_KERNELS, """
        try:
            import cpm_kernels
            kernels, code = load(), "x"
        except (ImportError, RuntimeError):
            kernels = None
            code = None
        x = 1
    """, f"""
        {quant.STUB_COMMENT}
        kernels = None
        code = None
        x = 1
    """)


def test_cpm_kernels_look_alikes_are_left_alone():
    assert_untouched(quant.CPM_KERNELS, """
        try:
            from bitsandbytes.nn import LinearNF4
        except ImportError:
            LinearNF4 = None
        try:
            from cpm_kernels.kernels.base import round_up
        except ImportError:
            raise RuntimeError("install cpm_kernels")
        try:
            from cpm_kernels.kernels.base import round_up
        except ImportError:
            round_up = None
            raise
        try:
            from cpm_kernels.kernels.base import round_up
        except ImportError:
            round_up = None
        finally:
            done = True
        def load():
            try:
                from cpm_kernels import kernels
            except ImportError:
                kernels = None
            return kernels
    """)


def test_compress_int4_weight_becomes_pack_int4():
    assert_rewrites(quant.PACK_INT4, """
        import torch
        import ctypes

        def compress_int4_weight(weight: torch.Tensor):  # (n, m)
            with torch.cuda.device(weight.device):
                n, m = weight.size(0), weight.size(1)
                out = torch.empty(n, m // 2, dtype=torch.int8, device="cuda")
                kernels.int4WeightCompression((n, 1, 1), (32, 1, 1), 0, torch.cuda.current_stream(), [])
                return out
    """, """
        import torch
        import ctypes
        import porter.runtime.quant as porter_quant

        def compress_int4_weight(weight: torch.Tensor):  # (n, m)
            return porter_quant.pack_int4(weight)
    """)


def test_dequantize_keeps_a_docstring_and_the_parameter_names():
    assert_rewrites(quant.DEQUANTIZE, '''
        import torch

        def extract_weight_to_half(w: torch.Tensor, scales: torch.Tensor, bits: int):
            """int8 or int4 weights -> half."""
            if bits == 8:
                func = kernels.int8WeightExtractionHalf
            else:
                func = kernels.int4WeightExtractionHalf
            with torch.cuda.device(w.device):
                out = torch.empty(w.size(0), w.size(1) * (8 // bits), dtype=torch.half, device="cuda")
                func((1, 1, 1), (32, 1, 1), 0, torch.cuda.current_stream(), [])
                return out
    ''', '''
        import torch
        import porter.runtime.quant as porter_quant

        def extract_weight_to_half(w: torch.Tensor, scales: torch.Tensor, bits: int):
            """int8 or int4 weights -> half."""
            return porter_quant.dequantize(w, scales, bits)
    ''')


@pytest.mark.parametrize("rule, name", [(quant.PACK_INT4, "compress_int4_weight"),
                                        (quant.DEQUANTIZE, "extract_weight_to_half")])
def test_kernel_wrapper_look_alikes_are_left_alone(rule, name):
    assert_untouched(rule, f"""
        def {name}_other(weight, scale=None, bits=8):
            return kernels.run(weight)
        class Packer:
            def {name}(self, weight, scale, bits, extra):
                return kernels.run(weight)
        def {name}(*weights):
            return kernels.run(weights)
    """)


def test_kernel_wrappers_already_ported_are_left_alone():
    """However the runtime is imported: a second patch, or code ported by hand."""
    assert_untouched(quant.PACK_INT4, """
        from porter.runtime import quant as q
        def compress_int4_weight(weight):
            return q.pack_int4(weight.contiguous())
    """)


def test_w8a16_apply_becomes_weight_quant_linear_at_every_site():
    assert_rewrites(quant.LINEAR, """
        import torch

        class W8A16Linear(torch.autograd.Function):
            @staticmethod
            def forward(ctx, inp, quant_w, scale_w, weight_bit_width):
                return inp

        class QuantizedLinear(Linear):
            def forward(self, input):
                output = W8A16Linear.apply(input, self.weight, self.weight_scale, self.weight_bit_width)
                if self.bias is not None:
                    output = output + self.bias
                return output

        class QuantizedRowParallelLinear(RowParallelLinear):
            def forward(self, input_):
                output_parallel = W8A16Linear.apply(
                    input_parallel, self.weight, self.weight_scale, self.weight_bit_width
                )
                return reduce_from_model_parallel_region(output_parallel)
    """, """
        import torch
        import porter.runtime.quant as porter_quant

        class W8A16Linear(torch.autograd.Function):
            @staticmethod
            def forward(ctx, inp, quant_w, scale_w, weight_bit_width):
                return inp

        class QuantizedLinear(Linear):
            def forward(self, input):
                output = porter_quant.weight_quant_linear(input, self.weight, self.weight_scale, self.weight_bit_width)
                if self.bias is not None:
                    output = output + self.bias
                return output

        class QuantizedRowParallelLinear(RowParallelLinear):
            def forward(self, input_):
                output_parallel = porter_quant.weight_quant_linear(
                    input_parallel, self.weight, self.weight_scale, self.weight_bit_width
                )
                return reduce_from_model_parallel_region(output_parallel)
    """)


def test_w8a16_imported_from_sat_is_the_same_site():
    assert_rewrites(quant.LINEAR, """
        from sat.quantization.kernels import W8A16Linear
        y = W8A16Linear.apply(x, w, s, 4)
    """, """
        from sat.quantization.kernels import W8A16Linear
        import porter.runtime.quant as porter_quant

        y = porter_quant.weight_quant_linear(x, w, s, 4)
    """)


def test_w8a16_look_alikes_are_left_alone():
    assert_untouched(quant.LINEAR, """
        from mylib import W8A16Linear
        y = W8A16Linear.apply(x, w, s, 4)
    """)
    assert_untouched(quant.LINEAR, """
        from mylib import W8A16Linear as Other
        y = W8A16Linear.apply(x, w, s)
        y = W8A16Linear.apply(x, w, s, bits=4)
        y = W8A16Linear.apply(*args)
        y = W8A16Linear.forward(ctx, x, w, s, 4)
        y = Other.apply(x, w, s, 4)
        y = MyFunction.apply(x, w, s, 4)
    """)


def test_quantize_moves_weights_to_the_selected_device():
    assert KERNELS in device.CURRENT_DEVICE.files
    assert_rewrites(device.CURRENT_DEVICE, """
        import torch
        def replace_linear(module):
            setattr(module, name, QuantizedColumnParallelLinear(
                weight_bit_width=weight_bit_width,
                weight=sub_module.weight.to(torch.cuda.current_device()),
                device=sub_module.weight.device,
                )
            )
    """, """
        import torch
        import porter.runtime.device as porter_device

        def replace_linear(module):
            setattr(module, name, QuantizedColumnParallelLinear(
                weight_bit_width=weight_bit_width,
                weight=sub_module.weight.to(porter_device.current_device()),
                device=sub_module.weight.device,
                )
            )
    """, path=KERNELS)


def test_selected_cpu_is_a_device_tensor_to_accepts(cpu_device):
    import torch

    from porter.runtime import device as porter_device

    assert torch.ones(2, dtype=torch.half).to(porter_device.current_device()).device.type == "cpu"


def test_kernels_py_is_no_longer_exempt_from_the_scan():
    assert not [pattern for pattern in SAT.scan_exempt if pattern.startswith(KERNELS)]


# --- the installed SAT ported, and run on the CPU ---------------------------------------------------------------

def test_installed_kernels_py_planned_every_site_and_nothing_else():
    """The installed release's kernels.py through the whole catalogue: every site once, no other rule, no CUDA site
    left for porter scan, and the file compiles."""
    import importlib.util

    from porter_sat.rules import ALL_RULES

    from porter.rewrite import rewrite_file
    from porter.scan import find_sites

    source = Path(importlib.util.find_spec("sat").origin).parent.joinpath("quantization/kernels.py").read_text()
    rules = [r for r in ALL_RULES if KERNELS in r.files]
    out = rewrite_file(KERNELS, source, rules)
    found = {}
    for match in out.matches:
        found[match.rule_id] = found.get(match.rule_id, 0) + 1
    assert found == {"sat.quant.cpm-kernels": 1, "sat.quant.pack-int4": 1, "sat.quant.dequantize": 1,
                     "sat.quant.linear": 3, "sat.device.current-device": 2}
    assert find_sites(KERNELS, source) and find_sites(KERNELS, out.after) == []
    compile(out.after, KERNELS, "exec")
    assert "cpm_kernels" not in out.after.replace(quant.STUB_COMMENT, "")
    assert not rewrite_file(KERNELS, out.after, rules, enforce_required=False).changed


# One script for both trees: SAT's model parallelism for one process (gloo), a tiny module tree of fp16
# ColumnParallelLinear / RowParallelLinear layers with the weights the test wrote, then quantize(model, bits) for
# 8 and 4 bits. "ported": the patched copy first on sys.path, forward and backward on the CPU. "original": the
# installed, unpatched SAT, its torch.cuda.current_device() answering "cpu" and, for 4 bits, compress_int4_weight
# (a CUDA kernel) capturing the int8 tensor it is given and returning it unpacked.
QUANTIZE_SCRIPT = textwrap.dedent("""
    import json, os, sys
    mode, site, weights_file, out_file = sys.argv[1:5]
    if mode == "ported":
        sys.path.insert(0, site)
    import torch
    print("PORTER-IMPORT-START", flush=True)
    import sat.quantization.kernels as k
    print("PORTER-IMPORT-END", flush=True)
    assert k.__file__.startswith(site) == (mode == "ported"), k.__file__
    if mode == "original":
        torch.cuda.current_device = lambda: "cpu"
        captured = []
        def capture(weight):
            captured.append(weight.clone())
            return weight
        k.compress_int4_weight = capture
    torch.distributed.init_process_group("gloo", init_method="tcp://127.0.0.1:0", rank=0, world_size=1)
    from sat import mpu
    from sat.mpu import ColumnParallelLinear, RowParallelLinear
    mpu.initialize_model_parallel(1)

    weights = torch.load(weights_file)

    def tiny():
        model = torch.nn.Module()
        model.up = ColumnParallelLinear(64, 96, bias=True, gather_output=True, params_dtype=torch.half, skip_init=True)
        model.block = torch.nn.Module()
        model.block.down = RowParallelLinear(96, 64, bias=True, input_is_parallel=False, params_dtype=torch.half,
                                             skip_init=True)
        model.block.head = ColumnParallelLinear(64, 32, bias=False, gather_output=True, params_dtype=torch.half,
                                                skip_init=True)
        model.block.norm = torch.nn.LayerNorm(64)
        with torch.no_grad():
            for name, tensor in weights.items():
                model.get_parameter(name).copy_(tensor)
        return model

    results = {}
    for bits in (8, 4):
        model = k.quantize(tiny(), bits)
        layers = {n: m for n, m in model.named_modules() if hasattr(m, "weight_scale")}
        assert sorted(layers) == ["block.down", "block.head", "up"], sorted(layers)
        for name, layer in layers.items():
            results[f"{bits}/{name}/weight"] = layer.weight.detach().clone()
            results[f"{bits}/{name}/scale"] = layer.weight_scale.detach().clone()
        results[f"{bits}/types"] = {n: type(m).__name__ for n, m in layers.items()}
        if mode == "original":
            results[f"{bits}/captured"] = len(captured)
            captured.clear()
            continue
        import porter.runtime.quant as porter_quant
        gen = torch.Generator().manual_seed(bits)
        for name, layer in layers.items():
            x = torch.randn(2, 5, layer.input_size, generator=gen).half().requires_grad_()
            out = layer(x)
            dequantized = porter_quant.dequantize(layer.weight, layer.weight_scale, bits)
            expected = x.detach() @ dequantized.T
            if layer.bias is not None:
                expected = expected + layer.bias
            grad = torch.randn(out.shape, generator=gen).half()
            out.backward(grad)
            results[f"{bits}/{name}/forward"] = (out.detach(), expected.detach())
            results[f"{bits}/{name}/grad"] = (x.grad.detach(), (grad @ dequantized).detach())
            results[f"{bits}/{name}/dequantized"] = dequantized.detach()
            results[f"{bits}/{name}/device"] = str(out.device)
            if bits == 4:
                results[f"4/{name}/unpacked"] = porter_quant.unpack_int4(layer.weight).detach()
    torch.save(results, out_file)
    print("PORTER-QUANTIZED", flush=True)
""")


@pytest.fixture(scope="module")
def quant_weights(tmp_path_factory) -> Path:
    """Heavy-tailed fp16 weights (Student's t, two degrees of freedom, a few outlier columns) and biases."""
    import torch

    torch.manual_seed(1234)
    t = torch.distributions.StudentT(2.0)
    shapes = {"up.weight": (96, 64), "block.down.weight": (64, 96), "block.head.weight": (32, 64)}
    weights = {}
    for name, shape in shapes.items():
        w = t.sample(shape) * 0.02
        w[:, 3] *= 25  # an outlier column, as activations' outlier features leave in LLM weights
        weights[name] = w.clamp(-60, 60).half()
    weights["up.bias"] = (torch.randn(96) * 0.1).half()
    weights["block.down.bias"] = (torch.randn(64) * 0.1).half()
    path = tmp_path_factory.mktemp("quant") / "weights.pt"
    torch.save(weights, path)
    return path


def _quantize_in(mode: str, site: Path, weights: Path, out: Path) -> tuple[dict, str]:
    import torch

    env = {**os.environ, "PORTER_DEVICE": "cpu", "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([sys.executable, "-c", QUANTIZE_SCRIPT, mode, str(site), str(weights), str(out)],
                          capture_output=True, text=True, env=env, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "PORTER-QUANTIZED" in proc.stdout, output[-3000:]
    return torch.load(out, weights_only=False), output


@pytest.fixture(scope="module")
def ported_quantized(sat_patched, quant_weights, tmp_path_factory):
    return _quantize_in("ported", sat_patched, quant_weights, tmp_path_factory.mktemp("ported") / "out.pt")


@pytest.fixture(scope="module")
def original_quantized(sat_patched, quant_weights, tmp_path_factory):
    return _quantize_in("original", sat_patched, quant_weights, tmp_path_factory.mktemp("original") / "out.pt")


def test_patched_kernels_py_has_no_cuda_site_left(sat_patched):
    from porter.scan import find_sites

    patched = (sat_patched / KERNELS).read_text()
    assert find_sites(KERNELS, patched) == []
    assert "import porter.runtime.quant as porter_quant" in patched and "kernels = None" in patched


def test_ported_module_imports_without_the_cpm_kernels_warning(ported_quantized, original_quantized):
    _, ported = ported_quantized
    _, original = original_quantized
    assert "Failed to load cpm_kernels" not in ported and "cpm_kernels" not in ported
    assert "Failed to load cpm_kernels" in original  # the warning the rule removes (cpm_kernels is not here)


@pytest.mark.parametrize("bits", [8, 4])
def test_ported_quantize_runs_on_the_cpu_as_x_times_the_dequantized_weight(ported_quantized, quant_weights, bits):
    import torch

    results, _ = ported_quantized
    weights = torch.load(quant_weights)
    assert results[f"{bits}/types"] == {"up": "QuantizedColumnParallelLinear", "block.down": "QuantizedRowParallelLinear",
                                        "block.head": "QuantizedColumnParallelLinear"}
    for name, rows, cols in (("up", 96, 64), ("block.down", 64, 96), ("block.head", 32, 64)):
        weight, scale = results[f"{bits}/{name}/weight"], results[f"{bits}/{name}/scale"]
        assert weight.dtype == torch.int8 and weight.shape == (rows, cols * bits // 8)
        assert scale.dtype == torch.half and scale.shape == (rows,)
        assert results[f"{bits}/{name}/device"] == "cpu"
        # exactly: in fp16 on the CPU the runtime takes its reference, SAT's own W8A16Linear math
        out, expected = results[f"{bits}/{name}/forward"]
        assert out.dtype == torch.half and out.shape == expected.shape and torch.equal(out, expected)
        grad, expected_grad = results[f"{bits}/{name}/grad"]
        assert grad.dtype == torch.half and torch.equal(grad, expected_grad)
        # and the dequantized weight is the fp16 weight to within half a quantization step per row (plus fp16's
        # rounding of weight / scale, which can move a value across a rounding boundary, and of the result)
        original = weights[f"{name}.weight"].float()
        step = scale.float()[:, None]
        error = (results[f"{bits}/{name}/dequantized"].float() - original).abs()
        assert bool((error <= 0.57 * step + 1e-3 * original.abs()).all()), float((error / step).max())


@pytest.mark.parametrize("bits", [8, 4])
def test_ported_and_upstream_quantize_hold_the_same_ints_and_scales(ported_quantized, original_quantized, bits):
    """Upstream's own quantize code path, its math run on the CPU (torch.cuda.current_device -> "cpu", and the
    int4 CUDA packing kernel replaced by a capture of its int8 input), against the ported one: bit for bit."""
    import torch

    ported, _ = ported_quantized
    original, _ = original_quantized
    assert original[f"{bits}/types"] == ported[f"{bits}/types"]
    assert original[f"{bits}/captured"] == (3 if bits == 4 else 0)
    for name in ("up", "block.down", "block.head"):
        assert torch.equal(original[f"{bits}/{name}/scale"], ported[f"{bits}/{name}/scale"])
        theirs = original[f"{bits}/{name}/weight"]  # for 4 bits: the int8 values the kernel would have packed
        ours = ported[f"{bits}/{name}/unpacked" if bits == 4 else f"{bits}/{name}/weight"]
        assert theirs.dtype == ours.dtype == torch.int8 and torch.equal(theirs, ours)
        if bits == 4:
            assert int(theirs.min()) >= -8 and int(theirs.max()) <= 7
