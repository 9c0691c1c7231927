"""8-bit state: the format (quantized_reference), the CPU kernel bit for bit against it at every SIMD level, and
the validator. The optimizer's use of it is tests/test_quantized_optimizer.py; Triton's, test_quantized_triton.py.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from adadelta_fused import _extension
from adadelta_fused import quantized_reference as Q
from adadelta_fused.contract import GradMode, StepScalars, quantized_op_arguments
from adadelta_fused.quantized_ops import check_quantized_args

from conftest import FEATURES, assert_bitwise_equal, requires_extension, scalars_for

SIZES = (1, 255, 257, 4097, 2**20 + 3)
EPS = 1e-6  # scalars_for's, which the step reads the codes with


def accumulators(n: int, generator, scale: float) -> torch.Tensor:
    """Non-negative values over ~12 decades, as the mean squares of real gradients spread within a tensor."""
    exponents = torch.rand(n, generator=generator, dtype=torch.float64) * 12 - 12
    return (scale * 10.0**exponents).float()


def quantized_group(numels, dtype, generator, *, master=False):
    params = [torch.randn(n, generator=generator).to(dtype) for n in numels]
    grads = [(torch.randn(n, generator=generator) * 0.1).to(dtype) for n in numels]
    sq, sq_scales, acc, acc_scales = [], [], [], []
    for p in params:
        codes, scales = Q.quantize(accumulators(p.numel(), generator, 1e-2), p, EPS)
        sq.append(codes), sq_scales.append(scales)
        codes, scales = Q.quantize(accumulators(p.numel(), generator, 1e-4), p, EPS)
        acc.append(codes), acc_scales.append(scales)
    masters = [p.float() + torch.randn(p.shape, generator=generator) * 1e-3 for p in params] if master else None
    return [params, grads, sq, acc, masters, sq_scales, acc_scales]


def clone(group):
    return [None if tensors is None else [t.clone() for t in tensors] for tensors in group]


def run_both(group, scalars: StepScalars, *, poison_params: bool = False):
    """(the C++ kernel's result, the reference's) for one step over copies of ``group``."""
    expected, actual = clone(group), clone(group)
    if poison_params:  # with master weights the param is written, never read: an unwritten element shows up
        for p in actual[0]:
            p.fill_(math.nan)
    Q.quantized_adadelta_reference_(*expected[:5], expected[5], expected[6], scalars)
    torch.ops.adadelta_fused.quantized_adadelta_(*quantized_op_arguments(*actual[:5], actual[5], actual[6], scalars))
    return actual, expected


def assert_same(actual, expected):
    names = ("params", "grads", "square_avgs", "acc_deltas", "master_params", "square_avg_scales", "acc_delta_scales")
    for name, got_list, want_list in zip(names, actual, expected):
        for i, (got, want) in enumerate(zip(got_list or (), want_list or ())):
            if got.dtype == torch.uint8:
                assert torch.equal(got, want), f"{name}[{i}]: {(got != want).sum()} codes differ"
            else:
                assert_bitwise_equal(got, want, f"{name}[{i}]")


@requires_extension
def test_constants_match_the_kernels():
    ext = _extension.module()
    assert ext.quant_block == Q.BLOCK
    assert ext.code_levels == Q.LEVELS
    assert ext.min_scale_bits == torch.tensor(Q.MIN_SCALE, dtype=torch.float32).view(torch.int32).item()


@pytest.mark.parametrize("eps", [0.0, 1e-6, 1e-2])
def test_round_trip_error_is_half_a_step_of_the_root(eps, generator):
    """Each R = sqrt(x + eps) comes back within half a code step (s / 254 / 2), up to the rounding of the
    decode's multiplies (the floor only moves a decoded R towards the true one, which is never below it); the
    largest of a block within 0.2 % (the top codes' resolution); and the values as fma(R, R, -eps)."""
    p = torch.empty(4097)
    x = accumulators(4097, generator, 1.0)
    codes, scales = Q.quantize(x, p, eps)
    back = Q.dequantize_roots(codes, scales, p, eps).double()
    exact = (x.double() + torch.tensor(eps, dtype=torch.float32).double()).sqrt()
    step = Q._per_element(scales / Q.LEVELS, 4097)
    assert bool(((back - exact).abs() <= step.double() * (0.5 + 1e-5)).all())
    assert bool((back >= math.sqrt(torch.tensor(eps, dtype=torch.float32).item()) * (1 - 2**-23)).all())
    top = Q._per_element(scales, 4097).double()
    assert bool(((back - top).abs() <= top * 2e-3)[exact >= top].all())
    values = Q.dequantize(codes, scales, p, eps).double()
    assert bool(((values + torch.tensor(eps, dtype=torch.float32).double() - back**2).abs() <= back**2 * 2**-23).all())


def test_a_tiny_value_gives_a_finite_step():
    """A mean square far below its block's largest takes code 0, which decodes to the floor sqrt(eps) (the R of an
    accumulator of 0), and Adadelta's step from it is finite and as from fresh state: not a huge step, nor none."""
    p = torch.tensor([1.0, -1.0])
    sq_codes, sq_scales = Q.quantize(torch.tensor([1e-30, 1e4]), p, 1e-6)
    acc_codes, acc_scales = Q.quantize(torch.tensor([1e-30, 1e2]), p, 1e-6)
    assert sq_codes[0] == 0 and acc_codes[0] == 0
    group = [[p.clone()], [torch.tensor([1e-3, 5.0])], [sq_codes], [acc_codes], None, [sq_scales], [acc_scales]]
    Q.quantized_adadelta_reference_(*group[:5], group[5], group[6], StepScalars(lr=1.0, rho=0.9, eps=1e-6,
                                                                                   weight_decay=0.0))
    assert bool(torch.isfinite(group[0][0]).all())
    assert 0 < 1.0 - group[0][0][0].item() < 1e-2  # sqrt(eps) / sqrt(0.1 * g^2 + eps) * g, not a huge step


def test_every_code_decodes_and_encodes_back():
    """Codes 0..254 are fixed points of decode (without the floor: eps 0) then encode against the same scale;
    255 is NaN."""
    for scale in (Q.MIN_SCALE, 1e-3, 1.0, 3.0e18):
        scales = torch.full((256,), scale, dtype=torch.float32)
        codes = torch.arange(256, dtype=torch.uint8)
        roots = Q.decode_roots(codes, scales, 0.0)
        assert bool(roots[255].isnan())
        assert torch.equal(Q.encode(roots, scales)[:255], codes[:255])


@requires_extension
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_cpu_kernel_matches_reference(n, dtype, generator, cpu_isa):
    group = quantized_group((n,), dtype, generator)
    assert_same(*run_both(group, scalars_for("default")))


@requires_extension
@pytest.mark.parametrize("feature", sorted(FEATURES))
@pytest.mark.parametrize("dtype,master", [(torch.float32, False), (torch.bfloat16, False), (torch.bfloat16, True),
                                          (torch.float16, True)], ids=str)
def test_cpu_kernel_features_match_reference(feature, dtype, master, generator, cpu_isa):
    # 304: a last block of 48 elements, whole 16-lane vectors (the AVX-512 lanes run it); 300 and 1023: not.
    # 272 and 320: last blocks of one vector and of 64 elements (one whole 64-code group in the NaN-code check).
    group = quantized_group((0, 1, 272, 300, 304, 320, 1023), dtype, generator, master=master)
    assert_same(*run_both(group, scalars_for(feature), poison_params=master))


@requires_extension
def test_cpu_kernel_skips_on_found_inf(generator):
    group = quantized_group((1023, 5), torch.float32, generator)
    before = clone(group)
    scalars = scalars_for("default", found_inf=torch.tensor(1.0), grad_scale=torch.tensor(8.0),
                          grad_mode=GradMode.UNSCALE)
    actual, expected = run_both(group, scalars)
    assert_same(actual, expected)
    assert_same(actual, before)


@requires_extension
def test_cpu_kernel_stochastic_rounding(generator, cpu_isa):
    group = quantized_group((1023, 4097), torch.bfloat16, generator)
    assert_same(*run_both(group, scalars_for("default", stochastic_rounding=True, rounding_key=0xBEEF)))


@requires_extension
def test_cpu_kernel_non_finite_values(generator, cpu_isa):
    """NaN and inf gradients, NaN codes, a negative and an infinite accumulator, an all-zero block: the kernel
    spreads them exactly as the reference does, and the other elements of their blocks are unharmed."""
    group = quantized_group((1000,), torch.float32, generator)
    grads = group[1][0]
    grads[3], grads[300], grads[301] = math.nan, math.inf, -math.inf
    group[2][0][10] = Q.CODE_NAN
    group[3][0][700] = Q.CODE_NAN
    group[2][0][512:768] = 0
    group[5][0][2] = Q.MIN_SCALE
    sq = Q.dequantize(group[2][0], group[5][0], group[0][0], EPS)
    sq[400], sq[401] = -1.0, math.inf  # in a whole block (the AVX-512 lanes' path), as the NaN codes are
    group[2][0], group[5][0] = Q.quantize(sq, group[0][0], EPS)
    actual, expected = run_both(group, scalars_for("default"))
    assert_same(actual, expected)
    assert int(torch.isnan(actual[0][0]).sum()) >= 3


@requires_extension
@pytest.mark.parametrize("accumulator", [2, 3], ids=["square_avg", "acc_delta"])
@pytest.mark.parametrize("position", [0, 63, 64, 130, 255, 256 + 47])
def test_cpu_kernel_nan_code_anywhere_in_a_block(accumulator, position, generator, cpu_isa):
    """One NaN code at each 64-code group of a whole block and in a tensor's last block of whole vectors (48
    elements): the AVX-512 lanes check a block for NaN codes 64 at a time before decoding as they load, and every
    other block of the tensor keeps decoding that way."""
    group = quantized_group((304, 1023), torch.float32, generator)
    group[accumulator][0][position] = Q.CODE_NAN
    actual, expected = run_both(group, scalars_for("default"))
    assert_same(actual, expected)
    assert bool(torch.isnan(actual[0][0][position]))


@requires_extension
@pytest.mark.parametrize("n", [16, 64, 256])
@pytest.mark.parametrize("block", ["fresh_with_one_nan", "all_nan"])
def test_cpu_kernel_nan_code_in_a_block_without_code_254(block, n, generator, cpu_isa):
    """Blocks whose largest code is not 254, as every block of random state's is: a fresh (all-zero) block with one
    NaN code, and a block of NaN codes only (what NaN grads over a whole block leave). A check that took 254 for
    the NaN code would pass every random block and decode these NaN codes as roots."""
    group = quantized_group((n,), torch.float32, generator)
    for codes, scales in ((group[2], group[5]), (group[3], group[6])):
        codes[0].fill_(Q.CODE_NAN if block == "all_nan" else 0)
        scales[0].fill_(Q.MIN_SCALE)
    group[3 if block == "all_nan" else 2][0][n - 1] = Q.CODE_NAN
    actual, expected = run_both(group, scalars_for("default"))
    assert_same(actual, expected)
    assert bool(torch.isnan(actual[0][0][n - 1]))



@requires_extension
@pytest.mark.parametrize("feature", ["default", "grad_scale_unscale"])
@pytest.mark.parametrize("dtype,master", [(torch.float32, False), (torch.bfloat16, False), (torch.bfloat16, True),
                                          (torch.float16, True)], ids=str)
def test_cpu_kernel_specials_between_blocks(feature, dtype, master, generator, cpu_isa):
    """The AVX-512 lanes encode block k-1 inside block k's loop where block k-1's roots are finite and block k has
    no NaN code, and otherwise encode it on its own first. Two chunks (65536 elements each) of blocks with a NaN
    code, an inf or a NaN gradient, an all-zero block (the smallest scale), specials at a chunk's last and first
    blocks, one accumulator's roots infinite while the other's are finite, a last block of whole vectors (48) and
    one of 255 elements: every way in and out of that path."""
    block = Q.BLOCK
    first = 65536 + 3 * block + 48
    group = quantized_group((first, 1023), dtype, generator, master=master)
    params, grads, sq, acc, _, sq_scales, acc_scales = group
    sq[0][3 * block + 17] = Q.CODE_NAN  # block 3: k has a NaN code; block 4: k-1 is not ordinary
    acc[0][7 * block + 255] = Q.CODE_NAN
    grads[0][10 * block + 100] = math.inf  # block 10 fused with block 9, then not ordinary for block 11
    grads[0][12 * block] = math.nan
    sq[0][20 * block:21 * block] = 0  # block 20: accumulators of zero only (R = sqrt(eps), the floor, everywhere)
    grads[0][20 * block:21 * block] = 0
    sq_scales[0][20] = Q.MIN_SCALE
    # Blocks 30 and 40: one accumulator's roots not all finite, the other's are (an old square_avg or acc_delta of
    # inf, decoded from a scale whose top codes square past fp32's range: std = inf and delta = 0; delta = inf).
    sq_scales[0][30] = 3e38
    acc_scales[0][40] = 3e38
    acc[0][255 * block + 5] = Q.CODE_NAN  # chunk 0's last block, then chunk 1's first
    grads[0][256 * block + 200] = -math.inf
    acc[1][block + 40] = Q.CODE_NAN
    actual, expected = run_both(group, scalars_for(feature), poison_params=master)
    assert_same(actual, expected)
    for position in (3 * block + 17, 7 * block + 255, 10 * block + 100, 12 * block, 255 * block + 5):
        assert bool(torch.isnan(actual[0][0][position])), position
    assert float(actual[5][0][20]) == Q._sqrt(torch.tensor(1e-6)).item()


@requires_extension
@pytest.mark.parametrize("case", ["nan_tail", "rho_above_one"])
def test_cpu_kernel_partial_last_block_takes_its_scale_from_its_own_elements(case, generator, cpu_isa):
    """The scale of a tensor's partial last block comes from its elements alone (the CUDA kernel's missing lanes
    hold zeros whose R is about sqrt(eps): tests/gpu/test_quantized_cuda.py has the same cases): all codes 255
    keep MIN_SCALE; rho 1.5 (the op does not check rho) with small gradients."""
    group = quantized_group((Q.BLOCK + 7,), torch.float32, generator)
    if case == "nan_tail":
        group[2][0][Q.BLOCK:] = Q.CODE_NAN
        group[3][0][Q.BLOCK:] = Q.CODE_NAN
        scalars = scalars_for("default")
    else:
        group[1][0].mul_(1e-3)
        scalars = scalars_for("default", rho=1.5)
    actual, expected = run_both(group, scalars)
    assert_same(actual, expected)
    if case == "nan_tail":
        assert float(actual[5][0][1]) == float(actual[6][0][1]) == Q.MIN_SCALE


@requires_extension
def test_cpu_kernel_zero_block_without_eps_takes_the_smallest_scale(generator, cpu_isa):
    """With eps 0 an all-zero block's R are 0, and its scale is MIN_SCALE (block_scale's least), not 0."""
    group = quantized_group((512,), torch.float32, generator)
    group[1][0][:256] = 0
    group[2][0][:256] = 0
    group[3][0][:256] = 0
    actual, expected = run_both(group, scalars_for("default", eps=0.0))
    assert_same(actual, expected)
    assert float(actual[5][0][0]) == Q.MIN_SCALE and float(actual[6][0][0]) == Q.MIN_SCALE

_GUARDED_STEP = """
import ctypes, mmap, sys, torch
sys.path.insert(0, {tests!r})
from adadelta_fused import _extension, quantized_reference as Q
from adadelta_fused.contract import quantized_op_arguments
from conftest import scalars_for
from test_quantized import assert_same, clone, quantized_group

libc = ctypes.CDLL(None)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
PROT_READ_WRITE, MAP_PRIVATE_ANONYMOUS, PAGE = 3, 0x22, mmap.PAGESIZE


def codes_before_a_guard_page(codes):
    base = libc.mmap(None, 2 * PAGE, PROT_READ_WRITE, MAP_PRIVATE_ANONYMOUS, -1, 0)
    assert libc.mprotect(base + PAGE, PAGE, 0) == 0
    buffer = (ctypes.c_uint8 * codes.numel()).from_address(base + PAGE - codes.numel())
    return torch.frombuffer(buffer, dtype=torch.uint8).copy_(codes)


ext = _extension.module()
generator = torch.Generator().manual_seed(7)
for isa in ext.supported_cpu_isas():
    ext.select_cpu_isa(isa)
    for n in (16, 48, 64, 272, 300, 304, 512):
        group = quantized_group((n,), torch.float32, generator)
        group[2][0], group[3][0] = codes_before_a_guard_page(group[2][0]), codes_before_a_guard_page(group[3][0])
        expected = clone(group)
        Q.quantized_adadelta_reference_(*expected[:5], expected[5], expected[6], scalars_for("default"))
        torch.ops.adadelta_fused.quantized_adadelta_(
            *quantized_op_arguments(*group[:5], group[5], group[6], scalars_for("default")))
        assert_same(group, expected)
"""


@requires_extension
def test_cpu_kernel_reads_no_code_past_the_end():
    """Codes that end where an unreadable page begins, at every level and at block lengths around the 16-lane and
    64-code loads: a load past the end (an unmasked 64-byte load in the NaN-code check, say) faults. In a child
    process, so that the fault fails this test rather than the run."""
    child = subprocess.run([sys.executable, "-c", _GUARDED_STEP.format(tests=str(Path(__file__).parent))],
                           capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr[-2000:]


@requires_extension
def test_cpu_kernel_layouts(generator):
    """Blocks follow the walk: a channels_last param's memory order, a strided view's logical order."""
    p = torch.randn(3, 5, 9, 11, generator=generator).to(memory_format=torch.channels_last)
    codes = lambda: torch.empty_like(p, dtype=torch.uint8)  # noqa: E731
    base = torch.randn(40, 30, generator=generator)
    for param in (p, base[:, ::3]):
        x = accumulators(param.numel(), generator, 1e-2).view(param.shape)
        sq, sq_scales = Q.quantize(x, param, EPS)
        acc, acc_scales = Q.quantize(x / 100, param, EPS)
        layout = codes() if param is p else torch.empty(param.shape, dtype=torch.uint8)
        sq, acc = layout.copy_(sq), layout.clone().copy_(acc)
        group = [[param.clone()], [torch.randn(param.shape, generator=generator) * 0.1], [sq], [acc], None,
                 [sq_scales], [acc_scales]]
        if param is not p:
            group[0] = [base.clone()[:, ::3]]
        assert_same(*run_both(group, scalars_for("weight_decay")))


@requires_extension
def test_opcheck(generator):
    group = quantized_group((1023, 15), torch.float32, generator)
    op = torch.ops.adadelta_fused.quantized_adadelta_.default
    for scalars in (scalars_for("default"), scalars_for("grad_scale_unscale"), scalars_for("grad_zero")):
        torch.library.opcheck(op, quantized_op_arguments(*clone(group)[:5], *clone(group)[5:], scalars))
    group = quantized_group((1023,), torch.bfloat16, generator, master=True)
    torch.library.opcheck(op, quantized_op_arguments(*clone(group)[:5], *clone(group)[5:], scalars_for("default")))


def _bad(case, group):
    params, grads, sq, acc, masters, sq_scales, acc_scales = group
    if case == "short_scales":
        sq_scales = [sq_scales[0][:-1]]
    elif case == "fp64_scales":
        acc_scales = [acc_scales[0].double()]
    elif case == "float_codes":
        sq = [sq[0].float()]
    elif case == "fp64_params":
        params, grads = [params[0].double()], [grads[0].double()]
    elif case == "shared_scales":
        acc_scales = sq_scales
    elif case == "missing_scales":
        acc_scales = []
    return [params, grads, sq, acc, masters, sq_scales, acc_scales]


BAD = {
    "short_scales": (ValueError, r"square_avg_scales\[0\] has shape \[3\] but params\[0\] has 1023 elements, which need \[4\]"),
    "fp64_scales": (TypeError, r"acc_delta_scales\[0\] has dtype Double, expected float32"),
    "float_codes": (TypeError, r"square_avgs\[0\] has dtype Float; the quantized op takes uint8 codes"),
    "fp64_params": (TypeError, r"quantized \(uint8\) state is for float32, bfloat16 and float16 params, got Double"),
    "shared_scales": (ValueError, r"acc_delta_scales\[0\] and square_avg_scales\[0\] share memory"),
    "missing_scales": (ValueError, r"acc_delta_scales has 0 tensors but params has 1"),
}


@requires_extension
@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_named(case, generator):
    group = _bad(case, quantized_group((1023,), torch.float32, generator))
    before = clone(group)
    error, message = BAD[case]
    args = quantized_op_arguments(*group[:5], group[5], group[6], scalars_for("default"))
    with pytest.raises(error, match=message):
        torch.ops.adadelta_fused.quantized_adadelta_(*args)
    with pytest.raises(error, match=message):
        check_quantized_args(*args, "cpu")
    assert_same(group, before)


@requires_extension
def test_dense_op_refuses_codes(generator):
    group = quantized_group((17,), torch.float32, generator)
    with pytest.raises(TypeError, match=r"square_avgs\[0\] has dtype Byte, unsupported with Float params"):
        torch.ops.adadelta_fused.adadelta_(group[0], group[1], group[2], group[3], [], 1.0, None, 0.9, 1e-6, 0.0,
                                           False, None, None, 0, False, 0)
