"""The 8-bit-state CUDA kernel (csrc/cuda/quantized_cuda.cu) on a real GPU: bit for bit against quantized_reference
and against the CPU kernel (csrc/cpu/quantized_cpu.cpp), which run the same shared lanes (csrc/quantized_state.h).
Skipped cleanly without a GPU; nothing here needs editing the day one is present.
"""

from __future__ import annotations

import os

import pytest
import torch

import adadelta_fused  # noqa: F401  (declares the quantized op)
from adadelta_fused import _extension, quantized_reference
from adadelta_fused.contract import GradMode, quantized_op_arguments
from adadelta_fused.quantized_reference import BLOCK, CODE_NAN, quantize
from adadelta_fused.reference import rounding_key

from conftest import FEATURES, assert_bitwise_equal, scalars_for, scalars_on

CUDA_BUILD_REQUIRED = os.environ.get("ADADELTA_FUSED_BUILD_CUDA", "").lower() in ("1", "true", "yes")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
]

PARAM_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# One element, one block but one, just past one block, a tail, and past one 64 Ki chunk (16 + 1 chunks).
SIZES = (1, 255, 257, 4097, 2**20 + 3)
NAMES = ("params", "grads", "square_avgs", "acc_deltas", "master_params", "square_avg_scales", "acc_delta_scales")


@pytest.fixture(autouse=True)
def cuda_kernel():
    if not _extension.has_cuda_kernel():
        reason = _extension.load_error() or "the extension was built without its CUDA sources"
        if CUDA_BUILD_REQUIRED:
            pytest.fail(reason)
        pytest.skip(reason)


def random_group(shapes, param_dtype, generator, *, master=False):
    """(params, grads, square_avg codes, acc_delta codes, masters or None, square_avg scales, acc_delta scales) on
    the CPU, the state quantized from fp32 values over ~40 binades with some zeros (so blocks hold small codes,
    zeros and their largest, 254)."""
    params = [torch.randn(shape, generator=generator).to(param_dtype) for shape in shapes]
    grads = [(torch.randn(shape, generator=generator) * 0.1).to(param_dtype) for shape in shapes]
    square_avgs, square_avg_scales, acc_deltas, acc_delta_scales = [], [], [], []
    for param, shape in zip(params, shapes):
        for codes, scales, magnitude in ((square_avgs, square_avg_scales, 1e-2), (acc_deltas, acc_delta_scales, 1e-4)):
            numel = torch.Size(shape).numel()
            values = torch.exp2(torch.rand(numel, generator=generator) * 40 - 30) * magnitude
            values[torch.rand(numel, generator=generator) < 0.02] = 0.0
            code, scale = quantize(values.view(shape), param, 1e-6)
            codes.append(code)
            scales.append(scale)
    masters = [p.float() + torch.randn(p.shape, generator=generator) * 1e-3 for p in params] if master else None
    return params, grads, square_avgs, acc_deltas, masters, square_avg_scales, acc_delta_scales


def to_device(group, device="cuda"):
    return tuple(None if tensors is None else [t.to(device) for t in tensors] for tensors in group)


def clone_group(group):
    return tuple(None if tensors is None else [t.clone() for t in tensors] for tensors in group)


def step(group, scalars) -> None:
    """One step of the compiled op: its CUDA kernel for device tensors, its CPU kernel for CPU ones."""
    device = group[0][0].device
    torch.ops.adadelta_fused.quantized_adadelta_(*quantized_op_arguments(*group, scalars_on(scalars, device)))


def assert_groups_equal(actual, expected) -> None:
    for name, got_list, want_list in zip(NAMES, actual, expected):
        if want_list is None:
            continue
        for i, (got, want) in enumerate(zip(got_list, want_list)):
            got = got.cpu()
            if want.dtype == torch.uint8:
                differ = (got != want).nonzero()
                assert differ.numel() == 0, f"{name}[{i}]: {differ.shape[0]} codes differ, first {differ[0].tolist()}"
            else:
                assert_bitwise_equal(got, want, f"{name}[{i}]")


def run_all(group, scalars, steps=1):
    """(CUDA result, reference result, CPU kernel result) after `steps` steps over copies of `group`."""
    expected, on_cpu = clone_group(group), clone_group(group)
    actual = to_device(group)
    for _ in range(steps):
        quantized_reference.quantized_adadelta_reference_(*expected, scalars)
        step(on_cpu, scalars)
        step(actual, scalars)
    torch.cuda.synchronize()
    return actual, expected, on_cpu


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("dtype", PARAM_DTYPES)
def test_sizes_match_reference_and_cpu_bitwise(dtype, size, generator):
    group = random_group([(size,)], PARAM_DTYPES[dtype], generator)
    actual, expected, on_cpu = run_all(group, scalars_for("maximize_weight_decay"), steps=3)
    assert_groups_equal(actual, expected)
    assert_groups_equal(actual, on_cpu)


@pytest.mark.parametrize("feature", FEATURES)
@pytest.mark.parametrize("dtype", PARAM_DTYPES)
def test_every_feature_bitwise(feature, dtype, generator):
    """Several tensors in one launch: tails, one block and a bit, one element, and a chunk and a bit."""
    group = random_group([(4097,), (257,), (1,), (65536 + 300,)], PARAM_DTYPES[dtype], generator)
    actual, expected, on_cpu = run_all(group, scalars_for(feature))
    assert_groups_equal(actual, expected)
    assert_groups_equal(actual, on_cpu)


@pytest.mark.parametrize("grad_mode", list(GradMode))
@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_master_weights(dtype, grad_mode, generator):
    group = random_group([(4097,), (255,)], PARAM_DTYPES[dtype], generator, master=True)
    for param in group[0]:
        param.fill_(float("nan"))  # only written under a master copy: NaN shows an element left unwritten
    scalars = scalars_for("weight_decay", grad_mode=grad_mode, grad_scale=torch.tensor(2.0))
    actual, expected, on_cpu = run_all(group, scalars, steps=2)
    assert_groups_equal(actual, expected)
    assert_groups_equal(actual, on_cpu)


@pytest.mark.parametrize("grad_mode", list(GradMode))
def test_grad_modes(grad_mode, generator):
    group = random_group([(4097,), (2**20 + 3,)], torch.float32, generator)
    scalars = scalars_for("default", grad_mode=grad_mode, grad_scale=torch.tensor(4.0))
    actual, expected, on_cpu = run_all(group, scalars)
    assert_groups_equal(actual, expected)
    assert_groups_equal(actual, on_cpu)


def test_stochastic_rounding_bitwise(generator):
    group = random_group([(4097,), (257,), (15,)], torch.bfloat16, generator)
    scalars = scalars_for("weight_decay", stochastic_rounding=True, rounding_key=rounding_key(seed=7, step=3))
    actual, expected, on_cpu = run_all(group, scalars)
    assert_groups_equal(actual, expected)
    assert_groups_equal(actual, on_cpu)


@pytest.mark.parametrize("grad_mode", list(GradMode))
def test_found_inf_changes_nothing_but_zeroes_grads_in_zero_mode(grad_mode, generator):
    group = to_device(random_group([(4097,), (2**20 + 3,)], torch.float32, generator))
    before = clone_group(group)
    step(group, scalars_for("default", grad_mode=grad_mode, found_inf=torch.tensor(1.0)))
    torch.cuda.synchronize()
    for name, got_list, want_list in zip(NAMES, group, before):
        if want_list is None:
            continue
        for got, want in zip(got_list, want_list):
            if name == "grads" and grad_mode == GradMode.ZERO:
                assert torch.equal(got, torch.zeros_like(want)) and not got.signbit().any()
            else:
                assert torch.equal(got, want), name


def misaligned(tensor: torch.Tensor) -> torch.Tensor:
    """A dense copy on the GPU that starts one element into its storage: no 16-byte (codes: 8-byte) alignment."""
    storage = torch.empty(tensor.numel() + 1, dtype=tensor.dtype, device="cuda")
    view = storage[1:].view(tensor.shape)
    view.copy_(tensor)
    return view


@pytest.mark.parametrize("dtype", PARAM_DTYPES)
def test_misaligned_tensors_take_the_scalar_path(dtype, generator):
    group = random_group([(4097,), (300,)], PARAM_DTYPES[dtype], generator, master=dtype != "fp32")
    expected = clone_group(group)
    # Every per-element buffer misaligned (the scales stay whole tensors: the validator wants them contiguous).
    actual = tuple(None if ts is None else [misaligned(t) if i < 5 else t.cuda() for t in ts]
                   for i, ts in enumerate(group))
    scalars = scalars_for("weight_decay", grad_mode=GradMode.UNSCALE, grad_scale=torch.tensor(2.0))
    quantized_reference.quantized_adadelta_reference_(*expected, scalars)
    step(actual, scalars)
    torch.cuda.synchronize()
    assert_groups_equal(actual, expected)


def test_nonfinite_codes_and_gradients(generator):
    """NaN codes decode to NaN and an overflowing gradient makes an infinite accumulator, stored as NaN: blocks
    that take the special path, next to ordinary ones."""
    group = random_group([(4 * BLOCK + 7,)], torch.float32, generator)
    group[2][0][3] = CODE_NAN
    group[1][0][BLOCK + 5] = float("inf")
    group[1][0][2 * BLOCK + 9] = float("nan")
    actual, expected, on_cpu = run_all(group, scalars_for("default"))
    assert_groups_equal(actual, expected)
    assert_groups_equal(actual, on_cpu)


@pytest.mark.parametrize("case", ["nan_tail", "rho_above_one"])
def test_a_partial_last_block_takes_its_scale_from_its_own_elements(case, generator):
    """A tensor's last run holds zeros past its end (the lanes always run all 8), whose new R is about sqrt(eps):
    it must not reach the block's scale where no real R is finite (all codes 255: the scale stays MIN_SCALE) or
    where real R are smaller (rho 1.5, which the op does not check, with small gradients)."""
    group = random_group([(BLOCK + 7,)], torch.float32, generator)
    if case == "nan_tail":
        group[2][0][BLOCK:] = CODE_NAN
        group[3][0][BLOCK:] = CODE_NAN
        scalars = scalars_for("default")
    else:
        group[1][0].mul_(1e-3)
        scalars = scalars_for("default", rho=1.5)
    actual, expected, on_cpu = run_all(group, scalars)
    assert_groups_equal(actual, expected)
    assert_groups_equal(actual, on_cpu)
    if case == "nan_tail":
        assert expected[5][0][1].item() == expected[6][0][1].item() == quantized_reference.MIN_SCALE


def test_cuda_graph_replay_matches_eager_steps(generator):
    """Captured with lr, grad_scale and found_inf on the device: replays read their new values, no host sync."""
    group = random_group([(4097,), (2**20 + 3,)], torch.bfloat16, generator, master=True)
    eager, captured = to_device(group), to_device(group)
    lr = torch.tensor(0.5, dtype=torch.float64, device="cuda")
    found_inf = torch.zeros((), device="cuda")
    scalars = scalars_for("weight_decay", lr=lr, grad_scale=torch.tensor(2.0, device="cuda"), found_inf=found_inf,
                          grad_mode=GradMode.UNSCALE)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step(clone_group(captured), scalars)  # warm-up outside the capture (the op's first call loads kernels)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step(captured, scalars)
    for new_lr, skip in ((0.5, 0.0), (0.25, 1.0), (0.125, 0.0)):
        lr.fill_(new_lr)
        found_inf.fill_(skip)
        graph.replay()
        step(eager, scalars)
        torch.cuda.synchronize()
        assert_groups_equal(captured, to_device(eager, "cpu"))
