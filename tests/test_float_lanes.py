"""The AVX-512 float lanes (csrc/cpu/float_lanes.h): their square root gives vsqrtps's bits, and their bf16 stores
give the scalar stores' bits, on every fp32 input.

The CPU kernels' lanes take square roots through rsqrt14, one Goldschmidt step and one correction on the FMA ports.
That this rounds as the IEEE square root does is checked, not derived, so the check here is exhaustive: all
2^32 bit patterns (the fast range [2^-80, 2^100) and everything that falls back to vsqrtps). The kernels run a
smaller check on the CPU they find (float_lanes_are_exact) and keep GCC's loops where it fails; the kernel tests
(test_cpu_kernel.py, test_cpu_rounding_edges.py, test_quantized.py) run the lanes at both AVX-512 levels
("avx512" and "avx512_bf16") and GCC's loops ("avx512-without-lanes" in conftest's cpu_isa), bit for bit
against the reference.
"""

from __future__ import annotations

import pytest

from adadelta_fused import _extension

from conftest import requires_extension

pytestmark = requires_extension


@pytest.fixture
def ext():
    module = _extension.module()
    if not module.float_lanes_supported():
        pytest.skip("this CPU lacks AVX-512 (avx512f, bw, vl, dq) with F16C and FMA: the float lanes never run")
    return module


def test_the_kernels_run_the_lanes_exactly_where_every_root_is_exact(ext):
    """The kernels' own check (a few binades) passes exactly where all 2^32 inputs give vsqrtps's bits: the
    lanes run only where they are exact, and are not given up where they are."""
    mismatches = ext.float_lanes_root_mismatches(0, 2**32)
    assert ext.float_lanes_are_exact() == (mismatches == 0)
    if _cpu_vendor() == "GenuineIntel":
        # Intel specifies rsqrt14's results bit for bit (its reference implementation of the approximation
        # instructions), so a root that is wrong here is wrong in the code, not in this CPU's table: the test
        # above would pass with the lanes silently given up.
        assert mismatches == 0


def _cpu_vendor() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return next((line.split(":")[1].strip() for line in cpuinfo if line.startswith("vendor_id")), "")
    except OSError:
        return ""


@pytest.mark.parametrize("first,count", [(0x7F7FFFF0, 33), (0xFFFFFFF8, 9), (0x3F800000, 1)])
def test_partial_vectors_and_vectors_mixing_fast_and_fallback_lanes(ext, first, count):
    """Vectors whose lanes straddle the largest float, inf, NaN and the wrap to +0 and subnormals, and a last
    vector of 1 lane: the count covers exactly the asked bit patterns, lane by lane, and none is wrong where the
    kernels trust the lanes."""
    one_by_one = sum(ext.float_lanes_root_mismatches((first + k) % 2**32, 1) for k in range(count))
    assert ext.float_lanes_root_mismatches(first, count) == one_by_one
    assert one_by_one == 0 or not ext.float_lanes_are_exact()


@pytest.mark.parametrize("count", [-1, 2**32 + 1])
def test_count_out_of_range_is_refused(ext, count):
    with pytest.raises(ValueError, match=f"count must be in \\[0, 2\\^32\\], got {count}"):
        ext.float_lanes_root_mismatches(0, count)


@pytest.mark.parametrize("stochastic", [False, True], ids=["vcvtneps2bf16-nearest", "stochastic"])
def test_the_bf16_lane_stores_give_the_scalar_bits_on_every_input(ext, stochastic):
    """vcvtneps2bf16 keeps a NaN's payload and treats subnormal inputs as zero, where torch writes 0x7FC0 and rounds
    the subnormal; the lanes' store patches both (every NaN, subnormal, tie, overflow to inf and +-0 is among the
    2^32 inputs). The stochastic store takes the noise as the kernel's lanes draw it (a pair hash per two elements,
    keyed once per 64 Ki run), with each pattern as its index, against the scalar rounding_noise_low."""
    if not stochastic and "avx512_bf16" not in ext.supported_cpu_isas():
        pytest.skip("this CPU lacks AVX512_BF16: the avx512_bf16 level and its instruction store never run")
    assert ext.float_lanes_bf16_mismatches(0, 2**32, stochastic) == 0


@pytest.mark.parametrize("stochastic", [False, True], ids=["vcvtneps2bf16-nearest", "stochastic"])
def test_the_bf16_check_runs_whole_blocks_and_wraps(ext, stochastic):
    """The check counts whole blocks of 4096 patterns and refuses a count that is not, so no block is half
    counted; a range that wraps past 0xFFFFFFFF continues at +0."""
    if not stochastic and "avx512_bf16" not in ext.supported_cpu_isas():
        pytest.skip("this CPU lacks AVX512_BF16: the avx512_bf16 level and its instruction store never run")
    assert ext.float_lanes_bf16_mismatches(0xFFFFF000, 2 * 4096, stochastic) == 0
    with pytest.raises(ValueError, match="count must be a multiple of 4096 in \\[0, 2\\^32\\], got 4097"):
        ext.float_lanes_bf16_mismatches(0, 4097, stochastic)
    with pytest.raises(ValueError, match="first must be a multiple of 4096, got 16"):
        ext.float_lanes_bf16_mismatches(16, 4096, stochastic)
