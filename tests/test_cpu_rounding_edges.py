"""The CPU kernel's 16-bit conversions at every rounding edge, at every SIMD level (issue 17).

The vector levels run bf16 conversions inside the update (AVX2 stages a stochastically rounded all-bf16
step), and stage fp16 buffers through fp32 tiles converted in loops of their own, with F16C or AVX-512F where
the CPU has it; the baseline level runs the portable conversions of csrc/dtypes.h inside the update. Where the
AVX-512 levels run the float lanes (csrc/cpu/float_lanes.h), every configuration converts inside the lanes' loop
instead, and the avx512_bf16 level rounds bf16 with vcvtneps2bf16 (conftest's "avx512-without-lanes" level still
runs the tiles and GCC's loops).
Every level must give the same bits in every buffer, NaN payloads included, and match the reference.
"""

from __future__ import annotations

import pytest
import torch

from adadelta_fused import _extension
from adadelta_fused.backends import cpp
from adadelta_fused.contract import GradMode

from conftest import assert_groups_equal, clone_group, dtype_id, requires_extension, run_with_reference, scalars_for

pytestmark = requires_extension

BF16, F16, F32 = torch.bfloat16, torch.float16, torch.float32
# Every supported pair with a 16-bit buffer: contract.STATE_DTYPES.
PAIRS = [(BF16, BF16), (BF16, F32), (F16, F16), (F16, F32), (F16, BF16), (F32, BF16)]
CANONICAL_NAN = {BF16: 0x7FC0, F16: 0x7E00}  # bf16: torch's NaN, sign dropped; fp16: the sign is kept
_INT = {2: torch.int16, 4: torch.int32}


def _from_bits(bits: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return bits.to(_INT[dtype.itemsize]).view(dtype)


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.contiguous().view(_INT[tensor.element_size()])


def _all_16_bit(dtype: torch.dtype) -> torch.Tensor:
    """Every bit pattern: ±0, subnormals, the largest finite values, ±inf, signalling and quiet NaNs."""
    return _from_bits(torch.arange(-(2**15), 2**15, dtype=torch.int32), dtype)


def _fp32_edges(generator) -> torch.Tensor:
    """fp32 values around every edge of a narrowing to bf16 or fp16, and random bit patterns."""
    upper = torch.arange(2**16, dtype=torch.int64) << 16
    # bf16: every upper half with the lower half just below, at and above the tie (and 0).
    bf16_edges = torch.cat([upper | low for low in (0x0000, 0x7FFF, 0x8000, 0x8001)])
    # fp16: the midpoint of every pair of neighbouring fp16 values (exact in fp32) and its fp32 neighbours;
    # this includes the subnormal ties, and 65520 (between 65504 and the next step, 2^16): it rounds to inf.
    finite = torch.arange(0, 0x7C00, dtype=torch.int32)
    lower = _from_bits(finite, F16).double()
    upper_value = _from_bits(finite + 1, F16).double()
    upper_value[-1] = 65536.0
    mid = ((lower + upper_value) / 2).float()
    fp16_edges = torch.cat([mid, mid.nextafter(torch.tensor(0.0)), mid.nextafter(torch.tensor(float("inf")))])
    fp16_edges = torch.cat([fp16_edges, -fp16_edges])
    specials = torch.tensor(
        [0x00000001, 0x007FFFFF, 0x00800000, 0x33000000, 0x33000001, 0x337FFFFF, 0x387FC000, 0x477FEFFF,
         0x477FF000, 0x7F7FFFFF, 0x7F800000, 0x7F800001, 0x7FBFFFFF, 0x7FC00000, 0x7FFFFFFF],
        dtype=torch.int64,
    )
    specials = torch.cat([specials, specials | 0x80000000])
    random_bits = torch.randint(0, 2**32, (1 << 16,), generator=generator, dtype=torch.int64)
    bits = torch.cat([bf16_edges, specials, random_bits])
    bits = torch.where(bits >= 2**31, bits - 2**32, bits).to(torch.int32)
    return torch.cat([bits.view(F32), fp16_edges])


def _edge_values(dtype: torch.dtype, n: int, generator, *, positive: bool = False) -> torch.Tensor:
    """``n`` values of ``dtype`` that cover its edges (every pattern of a 16-bit dtype), shuffled."""
    values = _all_16_bit(dtype) if dtype.itemsize == 2 else _fp32_edges(generator)
    if positive:
        values = values.abs()
    values = values.repeat(-(-n // values.numel()))[:n]
    return values[torch.randperm(n, generator=generator)]


def _at_isa(isa: str, step):
    ext = _extension.module()
    best = ext.supported_cpu_isas()[-1]
    ext.select_cpu_isa(isa)
    try:
        return step()
    finally:
        ext.select_cpu_isa(best)


def _assert_same_bits(actual, expected) -> None:
    """Every buffer equal bit for bit, the sign of zero included, and 16-bit NaNs with their payloads.

    Where two NaN operands meet, the result is the one the instruction passes on: the baseline's fma is
    glibc's fmaf, the vector levels' a vfmadd whose operand order GCC picks per ISA. So an fp32 NaN's payload
    and a NaN's sign may differ between levels (they did before issue 17's staging too, and the staged levels
    give the bits of the fused avx2 loop they replace); NaN positions and 16-bit NaN payloads may not."""
    for got_list, want_list in zip(actual, expected):
        if want_list is None:
            continue
        for got, want in zip(got_list, want_list):
            nan = got.isnan()
            assert torch.equal(nan, want.isnan())
            got_bits, want_bits = _bits(got), _bits(want)
            if got.element_size() == 4:
                got_bits, want_bits = got_bits[~nan], want_bits[~nan]
            elif got.dtype == F16:  # a bf16 NaN has no sign to forgive: torch writes 0x7FC0 (x86's default NaN
                got_bits = torch.where(nan, got_bits & 0x7FFF, got_bits)  # is negative, vcvtneps2bf16 keeps it)
                want_bits = torch.where(nan, want_bits & 0x7FFF, want_bits)
            assert torch.equal(got_bits, want_bits)


def _assert_nans_canonical(group, scalars) -> None:
    """Every NaN the step wrote into a 16-bit buffer has the canonical payload (a kept grad is not written)."""
    written = [group[0], group[2], group[3]] + ([group[1]] if scalars.grad_mode != GradMode.KEEP else [])
    for tensors in written:
        for tensor in tensors:
            if tensor.dtype in CANONICAL_NAN:
                bits = _bits(tensor)[tensor.isnan()].int() & 0xFFFF
                payloads = bits & 0x7FFF if tensor.dtype == F16 else bits
                assert (payloads == CANONICAL_NAN[tensor.dtype]).all()


def _step_at(isa: str, group, scalars):
    actual = clone_group(group)
    _at_isa(isa, lambda: cpp.step_(*actual[:4], actual[4], scalars))
    return actual


@pytest.mark.parametrize(
    "feature", ["default", "weight_decay", "grad_scale_unscale", "grad_zero", "maximize_weight_decay"]
)
@pytest.mark.parametrize("pair", PAIRS, ids=dtype_id)
def test_every_16_bit_pattern_gives_the_baseline_bits(cpu_isa, pair, feature, generator):
    """Every 16-bit pattern as param, grad and state (fp32 buffers get fp32 edges), 5 tensors that end
    mid-tile and mid-vector: the same bits at this level as at the baseline, and the reference's values."""
    param_dtype, state_dtype = pair
    numels = (2**16 + 3, 1023, 17, 8, 1)
    group = (
        [_edge_values(param_dtype, n, generator) for n in numels],
        [_edge_values(param_dtype, n, generator) for n in numels],
        [_edge_values(state_dtype, n, generator, positive=True) for n in numels],
        [_edge_values(state_dtype, n, generator, positive=True) for n in numels],
        None,
    )
    scalars = scalars_for(feature)
    actual, expected = run_with_reference(cpp.step_, group, scalars)  # at cpu_isa
    assert_groups_equal(actual, expected)
    _assert_same_bits(actual, _step_at("baseline", group, scalars))
    _assert_nans_canonical(actual, scalars)


@pytest.mark.parametrize("feature", ["weight_decay", "grad_scale_unscale", "grad_zero"])
@pytest.mark.parametrize("stochastic", [False, True], ids=["nearest", "stochastic"])
@pytest.mark.parametrize("state_dtype", [BF16, F32])
def test_bf16_rounding_modes_give_the_baseline_bits(cpu_isa, state_dtype, stochastic, feature, generator):
    """Stochastic rounding keys its noise by element index: long tensors, odd sizes, non-finite values; with
    each grad mode and with a grad_scale (the kernel's scaled instantiation), as both fused and staged."""
    numels = (3 * 65536 + 1029, 4097, 4113, 15)  # 4113 = 128 * 32 + 16 + 1: the lanes' lone 16 after pairs of 16
    group = (
        [_edge_values(BF16, n, generator) for n in numels],
        [(torch.randn(n, generator=generator) * 0.1).bfloat16() for n in numels],
        [_edge_values(state_dtype, n, generator, positive=True) for n in numels],
        [_edge_values(state_dtype, n, generator, positive=True) for n in numels],
        None,
    )
    scalars = scalars_for(feature, stochastic_rounding=stochastic, rounding_key=0x9E3779B9)
    actual, expected = run_with_reference(cpp.step_, group, scalars)  # at cpu_isa
    assert_groups_equal(actual, expected)
    _assert_same_bits(actual, _step_at("baseline", group, scalars))
    _assert_nans_canonical(actual, scalars)


@pytest.mark.parametrize("state_dtype", [F32, BF16, "param"])
@pytest.mark.parametrize("param_dtype", [BF16, F16])
def test_master_copy_rounds_like_torch_at_every_edge(cpu_isa, param_dtype, state_dtype, generator):
    """lr = 0 leaves the master as it is, so the param is exactly its rounded copy: at every tie, the
    largest finite values and overflow to inf, fp32 and fp16 subnormals, ±0, ±inf and NaNs with payloads."""
    state_dtype = param_dtype if state_dtype == "param" else state_dtype
    master = _fp32_edges(generator)
    n = master.numel()
    group = (
        [torch.zeros(n, dtype=param_dtype)],
        [torch.full((n,), 1e-3, dtype=param_dtype)],  # a positive delta: master + (-0 * delta) keeps -0
        [torch.full((n,), 1e-3, dtype=state_dtype)],
        [torch.full((n,), 1e-3, dtype=state_dtype)],
        [master],
    )
    scalars = scalars_for("default", lr=0.0, grad_mode=GradMode.ZERO)
    actual = _step_at(cpu_isa, group, scalars)
    param = actual[0][0]
    nan = master.isnan()
    expected_bits = _bits(master.to(param_dtype)).clone()
    expected_bits[nan] = CANONICAL_NAN[param_dtype]
    if param_dtype == F16:
        expected_bits[nan] |= (_bits(master)[nan] < 0).to(torch.int16) * -0x8000  # the sign stays
    assert torch.equal(_bits(param), expected_bits)
    # lr = 0: the master keeps its bits (a signalling NaN comes back quiet, from the fma)
    assert torch.equal(actual[4][0].isnan(), nan)
    assert torch.equal(_bits(actual[4][0])[~nan], _bits(master)[~nan])
    _assert_same_bits(actual, _step_at("baseline", group, scalars))
