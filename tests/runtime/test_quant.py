"""porter.runtime.quant: SAT's weight-only quantization (sat/quantization/kernels.py) without its CUDA kernels.

The quantization is checked against SAT's arithmetic restated step by step; the matmul's CPU kernels against the
reference (SAT's CUDA path: dequantize, then mm). The NPU tests run on the FAKE torch_npu (tests/fakes/torch_npu.py):
they prove which kernel is chosen, with which argument layout, and when the guard refuses; not what an NPU computes.
"""
import gc

import pytest
import torch

from porter.runtime import ops, quant

INT8PACK = "weight_quant_matmul/cpu_int8pack_mm"
NPU_KERNEL = "weight_quant_matmul/npu_weight_quant_batchmatmul"
REFERENCE = "weight_quant_matmul/reference"


def heavy_tailed(n, k, dtype=torch.float16, seed=0):
    """Student's t rows (3 degrees of freedom: a few large outliers) with row scales from 1e-3 to 10, as trained
    linear weights have; plus one row made of exact ties for round-half-to-even."""
    gen = torch.Generator().manual_seed(seed)
    # t = normal / sqrt(chi2 / 3), built from normals so a seeded generator drives it
    normal = torch.randn(n, k, generator=gen, dtype=torch.float64)
    chi2 = sum(torch.randn(n, k, generator=gen, dtype=torch.float64) ** 2 for _ in range(3))
    w = normal / (chi2 / 3).sqrt() * torch.logspace(-3, 1, n, dtype=torch.float64)[:, None]
    w[0, :8] = torch.tensor([127.0, 2.5, 3.5, -0.5, -1.5, 0.5, 126.5, -126.5])  # scale 1 at 8 bits: ties
    return w.clamp(-6e4, 6e4).to(dtype)


def sat_restated(w16: torch.Tensor, bits: int) -> tuple[list[list[int]], list[float]]:
    """SAT's constructor math on a float16 weight, one row at a time in Python numbers: the scale is the row's
    largest |w| divided by 127 (or 7) and rounded to float16; each value is divided by it, the quotient rounded to
    float16 (SAT divides two float16 tensors), then rounded half to even and made an integer."""
    qmax = 2 ** (bits - 1) - 1
    rows, scales = [], []
    for row in w16.tolist():
        largest = max(abs(v) for v in row)  # float16 values: exact as Python floats
        scale = torch.tensor(largest / qmax, dtype=torch.float64).half().item()  # one rounding to float16
        quotients = [torch.tensor(v / scale, dtype=torch.float64).half().item() for v in row]
        rows.append([round(q) for q in quotients])  # Python's round: half to even
        scales.append(scale)
    return rows, scales


def packed_restated(rows: list[list[int]]) -> list[list[int]]:
    """Two int4 values per byte, the even column in the high nibble (chatglm-6b's compress_int4_weight)."""
    out = []
    for row in rows:
        data = [((a & 0xF) << 4) | (b & 0xF) for a, b in zip(row[0::2], row[1::2])]
        out.append([byte - 256 if byte >= 128 else byte for byte in data])  # as int8
    return out


def sat_expressions(w: torch.Tensor, bits: int):
    """SAT's QuantizedLinear constructor, copied (sat/quantization/kernels.py), on the whole matrix at once."""
    weight_scale = (w.abs().max(dim=-1).values / ((2 ** (bits - 1)) - 1)).half()
    weight = torch.round(w / weight_scale[:, None]).to(torch.int8)
    return weight, weight_scale


# --- quantization ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bits", [8, 4])
def test_quantize_rows_is_sats_fp16_arithmetic(bits):
    w = heavy_tailed(24, 64)
    q, scale = quant.quantize_rows(w, bits)
    rows, scales = sat_restated(w, bits)
    assert scale.dtype == torch.float16 and scale.tolist() == scales
    expected = rows if bits == 8 else packed_restated(rows)
    assert q.dtype == torch.int8 and q.tolist() == expected
    assert q.shape == (24, 64 if bits == 8 else 32)
    if bits == 8:
        assert q[0, :8].tolist() == [127, 2, 4, 0, -2, 0, 126, -126]  # ties to even, as torch.round does


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("bits", [8, 4])
def test_chunks_give_the_whole_matrix_result_in_every_dtype(bits, dtype):
    w = heavy_tailed(50, 32, dtype=dtype, seed=1)
    whole_q, whole_scale = sat_expressions(w, bits)
    assert int(whole_q.abs().max()) <= 2 ** (bits - 1) - 1  # no overflow, even with bf16's coarse division
    if bits == 4:
        whole_q = quant.pack_int4(whole_q)
    for rows_per_chunk in (1, 7, 50, 1024):
        q, scale = quant.quantize_rows(w, bits, rows_per_chunk=rows_per_chunk)
        assert torch.equal(q, whole_q) and torch.equal(scale, whole_scale), rows_per_chunk


class LargestOutputs:
    """Records the largest tensor each operator returns (the result's own allocation, ``empty``, aside)."""

    def __enter__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        sizes = self.sizes = {}

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for t in out if isinstance(out, (tuple, list)) else [out]:
                    if isinstance(t, torch.Tensor) and func is not torch.ops.aten.empty.memory_format:
                        sizes[str(func)] = max(sizes.get(str(func), 0), t.numel())
                return out

        self.mode = Mode()
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        self.mode.__exit__(*exc)

    def largest(self):
        assert self.sizes
        return max(self.sizes.values())


def test_quantize_and_unpack_hold_one_chunk_at_a_time(monkeypatch):
    """No step materializes more than one chunk of rows (a 16384 x 4096 weight must not need full-size
    temporaries)."""
    w = heavy_tailed(64, 32)
    for bits in (8, 4):
        with LargestOutputs() as seen:
            q, _ = quant.quantize_rows(w, bits, rows_per_chunk=8)
        assert seen.largest() <= 8 * 32, seen.sizes
    monkeypatch.setattr(quant, "CHUNK_ROWS", 8)
    with LargestOutputs() as seen:
        quant.unpack_int4(q)
    assert seen.largest() <= 8 * 32, seen.sizes


def test_bits_and_shapes_are_checked():
    for bits in (3, 16, True):
        with pytest.raises(ValueError, match="4 or 8"):
            quant.check_bits(bits)
    assert quant.check_bits(4) == 4 and quant.check_bits(8) == 8 and quant.BITS == (4, 8)
    with pytest.raises(ValueError, match="even"):
        quant.quantize_rows(torch.randn(4, 5).half(), 4)
    with pytest.raises(ValueError, match="4 or 8"):
        quant.weight_quant_linear(torch.randn(2, 8), torch.zeros(4, 8, dtype=torch.int8), torch.ones(4), 2)


# --- int4 packing ------------------------------------------------------------------------------------------

def test_int4_nibble_order_on_a_hand_example():
    packed = quant.pack_int4(torch.tensor([[1, -2, 7, -8]], dtype=torch.int8))
    assert packed.dtype == torch.int8 and packed.view(torch.uint8).tolist() == [[0x1E, 0x78]]
    assert quant.pack_int4(torch.tensor([[-1, 0]], dtype=torch.int8)).view(torch.uint8).tolist() == [[0xF0]]
    assert quant.unpack_int4(packed).tolist() == [[1, -2, 7, -8]]


def test_int4_round_trip_on_every_pair():
    values = torch.arange(-8, 8, dtype=torch.int8)
    pairs = torch.stack((values.repeat_interleave(16), values.repeat(16)), dim=1)  # all 256 (even, odd) pairs
    q = pairs.reshape(2, 256)  # two rows of 128 pairs
    packed = quant.pack_int4(q)
    assert packed.shape == (2, 128)
    assert sorted(packed.view(torch.uint8).flatten().tolist()) == list(range(256))  # every byte, once
    assert packed.tolist() == packed_restated(q.tolist())
    assert torch.equal(quant.unpack_int4(packed), q)
    with pytest.raises(ValueError, match=r"\[-8, 7\]"):
        quant.pack_int4(torch.tensor([[8, 0]], dtype=torch.int8))


def test_dequantize_is_within_half_a_step_of_the_weight():
    w = heavy_tailed(16, 64, seed=2)
    for bits in (8, 4):
        q, scale = quant.quantize_rows(w, bits)
        dense = quant.dequantize(q, scale, bits)
        assert dense.dtype == torch.float16 and dense.shape == w.shape
        assert quant.dequantize(q, scale, bits, dtype=torch.bfloat16).dtype == torch.bfloat16
        error = (dense.double() - w.double()).abs()
        assert (error <= scale.double()[:, None] * 0.5 * 1.01 + 1e-3 * w.double().abs()).all(), bits
    q4, scale4 = quant.quantize_rows(w, 4)
    assert torch.equal(quant.dequantize(q4, scale4, 4), quant.dequantize(quant.unpack_int4(q4), scale4, 8))


# --- the matmul on the CPU: _weight_int8pack_mm for bf16, the reference otherwise ----------------------------

def quantized(n=48, k=64, bits=8, seed=3):
    q, scale = quant.quantize_rows(heavy_tailed(n, k, seed=seed), bits)
    return q, scale


def dense_result(x, q, scale, bits):
    return x.double() @ quant.dequantize(q, scale, bits, dtype=torch.float64).t()


def assert_near(y, q, scale, bits, x):
    """y is x times the dequantized weight, within the input dtype's rounding (relative to the largest output)."""
    expected = dense_result(x, q, scale, bits).reshape(y.shape)
    error = ((y.double() - expected).abs().max() / expected.abs().max()).item()
    assert error < (2e-2 if x.dtype == torch.bfloat16 else 2e-3), error


@pytest.mark.parametrize("bits", [8, 4])
def test_cpu_kernel_takes_bf16(cpu_device, bits):
    q, scale = quantized(bits=bits)
    x = torch.randn(2, 5, 64).bfloat16()  # 3-D: flattened to 2-D for the kernel
    y = quant.weight_quant_linear(x, q, scale, bits)
    assert ops.counts == {INT8PACK: 1} and y.dtype == torch.bfloat16 and y.shape == (2, 5, 48)
    assert_near(y, q, scale, bits, x)
    reference = quant._reference(x.reshape(10, 64), q, scale, bits).reshape(2, 5, 48)
    assert ((y.double() - reference.double()).abs().max() / reference.double().abs().max()) < 2e-2


def test_cpu_int4_kernel_works_in_chunks_of_rows(cpu_device, monkeypatch):
    monkeypatch.setattr(quant, "CHUNK_ROWS", 16)  # 48 rows: three chunks
    q, scale = quantized(bits=4)
    x = torch.randn(3, 64).bfloat16()
    y = quant.weight_quant_linear(x, q, scale, 4)
    assert ops.counts == {INT8PACK: 1}
    whole = torch.ops.aten._weight_int8pack_mm(x, quant.unpack_int4(q), scale.bfloat16())
    assert torch.equal(y, whole)


@pytest.mark.parametrize("dtype, rows, k, reason", [
    (torch.float32, 4, 64, "bfloat16 only"),
    (torch.float16, 4, 64, "bfloat16 only"),
    (torch.bfloat16, 4, 40, "multiple of 16"),  # the kernel would crash the process here
    (torch.bfloat16, 129, 64, "rows"),  # a long prompt: dequantizing once is faster
])
def test_cpu_refusals_take_the_reference(cpu_device, dtype, rows, k, reason):
    q, scale = quantized(k=k)
    x = torch.randn(rows, k).to(dtype)
    y = quant.weight_quant_linear(x, q, scale, 8)
    assert ops.counts == {REFERENCE: 1} and y.dtype == dtype
    assert [why for why in ops.fallbacks] and all(reason in why for why in ops.fallbacks), ops.fallbacks
    if dtype == torch.float16:  # SAT's CUDA path exactly: extract to half, then mm
        assert torch.equal(y, x @ quant.dequantize(q, scale, 8).t())
    else:
        assert torch.equal(y, quant._reference(x, q, scale, 8))
        assert_near(y, q, scale, 8, x)


def test_non_contiguous_weight_or_input_takes_the_reference(cpu_device):
    q, scale = quantized()
    x = torch.randn(64, 4).bfloat16().t()
    y = quant.weight_quant_linear(x, q, scale, 8)
    assert ops.counts == {REFERENCE: 1} and any("contiguous" in why for why in ops.fallbacks)
    assert torch.equal(y, quant._reference(x, q, scale, 8))
    wide = torch.zeros(48, 80, dtype=torch.int8)
    wide[:, :64] = q
    quant.weight_quant_linear(x.contiguous(), wide[:, :64], scale, 8)
    assert ops.counts == {REFERENCE: 2}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bits", [8, 4])
def test_gradient_is_autograd_through_the_dequantized_weight(cpu_device, bits, dtype):
    q, scale = quantized(bits=bits)
    scale = scale.clone().requires_grad_(True)  # even so: the scale is a constant
    x = torch.randn(2, 3, 64, dtype=dtype, requires_grad=True)
    bias = torch.randn(48, dtype=dtype, requires_grad=True)
    y = quant.weight_quant_linear(x, q, scale, bits, bias)
    grad = torch.randn_like(y)
    y.backward(grad)

    x2, bias2 = x.detach().clone().requires_grad_(True), bias.detach().clone().requires_grad_(True)
    dense = quant.dequantize(q, scale.detach(), bits, dtype=dtype)
    (x2 @ dense.t() + bias2).backward(grad)
    tolerance = {"rtol": 0, "atol": 0} if dtype == torch.float32 else {}
    torch.testing.assert_close(x.grad, x2.grad, **tolerance)
    torch.testing.assert_close(bias.grad, bias2.grad, **tolerance)
    assert scale.grad is None and q.grad is None


def test_grad_only_where_needed(cpu_device):
    q, scale = quantized()
    x = torch.randn(4, 64, requires_grad=True)
    with torch.no_grad():
        assert quant.weight_quant_linear(x, q, scale, 8).grad_fn is None
    bias = torch.zeros(48, requires_grad=True)
    y = quant.weight_quant_linear(x.detach(), q, scale, 8, bias)  # bias only: plain autograd, no Function
    assert "WeightQuantLinear" not in type(y.grad_fn).__name__
    y.sum().backward()
    assert torch.equal(bias.grad, torch.full((48,), 4.0))
    y = quant.weight_quant_linear(x, q, scale, 8, torch.zeros(48, dtype=torch.float64))
    assert y.dtype == torch.float32  # a bias of another dtype does not promote the output


class Layer(torch.nn.Module):
    """What a ported SAT Quantized*Linear holds: weight, weight_scale (frozen Parameters), weight_bit_width."""

    def __init__(self, n=128, k=96, bits=4, seed=3):
        super().__init__()
        q, scale = quantized(n, k, bits, seed)
        self.weight = torch.nn.Parameter(q, requires_grad=False)
        self.weight_scale = torch.nn.Parameter(scale, requires_grad=False)
        self.weight_bit_width = bits

    def forward(self, x):  # as SAT's ported QuantizedLinear.forward calls the runtime
        return quant.weight_quant_linear(x, self.weight, self.weight_scale, self.weight_bit_width)


@pytest.mark.parametrize("n, k", [(64, 32), (128, 512), (192, 96), (1088, 64)])
def test_the_cpu_int4_layout_is_torchs_own_and_converts_back(n, k):
    q = torch.randint(-8, 8, (n, k), dtype=torch.int8, generator=torch.Generator().manual_seed(n))
    sat = quant.pack_int4(q)
    ours = quant._to_cpu_int4(sat)
    torchs = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32) + 8, 2)
    assert torch.equal(ours.view(torch.uint8), torchs)
    assert torch.equal(quant._from_cpu_int4(ours), sat)


def test_int4_layers_rewritten_for_the_cpu_use_torchs_int4_kernel_and_keep_sats_state_dict(cpu_device):
    layer = Layer()
    sat = layer.weight.detach().clone()
    x = torch.randn(3, 96).bfloat16()
    before = quant.weight_quant_linear(x, layer.weight, layer.weight_scale, 4)
    assert quant.pack_for_cpu(layer) and not quant.pack_for_cpu(layer)  # once
    assert not torch.equal(layer.weight, sat) and layer.weight.shape == sat.shape  # in place, the same size
    ops.reset_counts()
    after = quant.weight_quant_linear(x, layer.weight, layer.weight_scale, 4)
    assert ops.counts == {INT8PACK: 1}
    assert_near(after, sat, layer.weight_scale, 4, x)
    assert ((after.double() - before.double()).abs().max() / before.double().abs().max()) < 2e-2
    state = layer.state_dict()
    assert torch.equal(state["weight"], sat)  # SAT's layout, as a checkpoint must hold it
    again = Layer(seed=4)
    assert quant.pack_for_cpu(again)
    again.load_state_dict(state)  # SAT's bytes in, torch's layout kept
    assert torch.equal(again.weight, layer.weight) and torch.equal(again.state_dict()["weight"], sat)
    import copy

    twin = copy.deepcopy(layer)  # loses the Parameter's mark; the layer marks it again before its forward
    assert torch.equal(twin.state_dict()["weight"], sat)
    assert torch.equal(twin(x), after)
    ops.reset_counts()
    y32 = quant.weight_quant_linear(x.float(), layer.weight, layer.weight_scale, 4)  # the reference reads it back
    assert ops.counts == {REFERENCE: 1}
    assert_near(y32, sat, layer.weight_scale, 4, x.float())


@pytest.mark.parametrize("n, k, bits", [(96, 96, 4), (128, 96, 8), (128, 20, 4)])
def test_pack_for_cpu_leaves_layers_it_cannot_serve(n, k, bits):
    layer = Layer(n, k, bits)
    sat = layer.weight.detach().clone()
    assert not quant.pack_for_cpu(layer) and torch.equal(layer.weight, sat)


# --- the FAKE NPU: npu_weight_quant_batchmatmul within its documented limits ----------------------------------

def npu_kernels(fake):
    return [c["kernel"] for c in fake.calls]


def test_npu_int8_fp16_gets_the_weight_as_a_k_by_n_view(fake_npu):
    from fakes import torch_npu as fake

    q, scale = quantized()
    x = torch.randn(2, 5, 64).half()
    y = quant.weight_quant_linear(x, q, scale, 8)
    assert ops.counts == {NPU_KERNEL: 1} and npu_kernels(fake) == ["npu_weight_quant_batchmatmul"]
    call = fake.calls[0]
    assert call["x"] == (10, 64) and call["dtype"] == torch.float16 and call["scale"] == (48,)
    assert call["weight"] == (64, 48) and call["weight_dtype"] == torch.int8
    assert call["weight_strides"] == (1, 64)  # SAT's [N, K] transposed, not copied
    assert_near(y, q, scale, 8, x)


def test_npu_int4_bf16_on_an_a2_chip_is_repacked_once_per_weight(fake_npu):
    from fakes import torch_npu as fake

    assert fake.chip == "Ascend910B2"
    q, scale = quantized(bits=4)
    x = torch.randn(3, 64).bfloat16()
    y = quant.weight_quant_linear(x, q, scale, 4)
    quant.weight_quant_linear(x.requires_grad_(), q, scale, 4)  # through the autograd Function: the same weight
    assert npu_kernels(fake) == ["npu_convert_weight_to_int4pack", "npu_weight_quant_batchmatmul",
                                 "npu_weight_quant_batchmatmul"]
    x = x.detach()
    assert fake.calls[0]["weight"] == (64, 48)  # the int32 (k, n) values it packs
    assert fake.calls[1]["weight"] == (64, 6) and fake.calls[1]["weight_dtype"] == torch.int32
    assert_near(y, q, scale, 4, x)

    new_q, new_scale = quantized(bits=4, seed=9)
    with torch.no_grad():
        q.copy_(new_q)  # as load_state_dict copies a checkpoint into the weight
    y = quant.weight_quant_linear(x, q, new_scale, 4)
    assert npu_kernels(fake).count("npu_convert_weight_to_int4pack") == 2
    assert_near(y, new_q, new_scale, 4, x)  # the new weight's numbers, not the stale repack's

    cached = len(quant._int4_packs)
    other = new_q.clone()
    quant.weight_quant_linear(x, other, new_scale, 4)
    assert len(quant._int4_packs) == cached + 1
    del other
    gc.collect()
    assert len(quant._int4_packs) == cached  # the repack goes with its weight


def test_npu_int8_fp16_on_a_310p_chip(fake_npu, monkeypatch):
    from fakes import torch_npu as fake

    monkeypatch.setattr(fake, "chip", "Ascend310P3")
    q, scale = quantized()
    quant.weight_quant_linear(torch.randn(3, 64).half(), q, scale, 8)
    assert ops.counts == {NPU_KERNEL: 1}


@pytest.mark.parametrize("chip, dtype, bits, reason", [
    ("Ascend910B2", torch.float32, 8, "float16 or bfloat16"),
    ("Ascend310P3", torch.float16, 4, "Atlas A2/A3"),
    ("Ascend310P3", torch.bfloat16, 8, "float16 only"),
])
def test_npu_refusals_take_the_reference(fake_npu, monkeypatch, chip, dtype, bits, reason):
    from fakes import torch_npu as fake

    monkeypatch.setattr(fake, "chip", chip)
    q, scale = quantized(bits=bits)
    x = torch.randn(3, 64).to(dtype)
    y = quant.weight_quant_linear(x, q, scale, bits)
    assert ops.counts == {REFERENCE: 1} and fake.calls == []
    assert len(ops.fallbacks) == 1 and reason in next(iter(ops.fallbacks)), ops.fallbacks
    assert torch.equal(y, quant._reference(x, q, scale, bits))


def test_the_fake_enforces_the_documented_limits(fake_npu, monkeypatch):
    """The fake refuses what the docs rule out, so a guard that let it through would fail the tests above."""
    from fakes import torch_npu as fake

    q = torch.zeros(64, 48, dtype=torch.int8)
    with pytest.raises(fake.PreconditionError, match="antiquant_scale"):
        fake.npu_weight_quant_batchmatmul(torch.randn(3, 64).half(), q, torch.ones(48))
    with pytest.raises(fake.PreconditionError, match="k=64"):
        fake.npu_weight_quant_batchmatmul(torch.randn(3, 64).half(), q.t(), torch.ones(64).half())
    with pytest.raises(fake.PreconditionError, match="not a multiple of 8"):
        fake.npu_convert_weight_to_int4pack(torch.zeros(64, 12, dtype=torch.int32))
    monkeypatch.setattr(fake, "chip", "Ascend310P3")
    with pytest.raises(fake.PreconditionError, match="A2/A3"):
        fake.npu_convert_weight_to_int4pack(torch.zeros(64, 8, dtype=torch.int32))
    assert torch.npu.get_device_name() == "Ascend310P3"
