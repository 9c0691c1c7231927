"""The CUDA kernel on a real GPU, against the reference run on the CPU: bit for bit.

The kernel runs the same per-element update as the CPU kernel (csrc/adadelta_math.h, IEEE division and
square root, fmas only where torch has them, --fmad=false), so every result must equal the reference's
bits. Skipped cleanly without a GPU; nothing here needs editing the day one is present.
"""

from __future__ import annotations

import os

import pytest
import torch

from adadelta_fused import Adadelta, _extension
from adadelta_fused.backends import cpp
from adadelta_fused.contract import GradMode, StepScalars
from adadelta_fused.reference import adadelta_step_reference_, rounding_key

from conftest import (
    TOLERANCE,
    DTYPE_PAIRS,
    FEATURES,
    ODD_SIZES,
    assert_groups_equal,
    clone_group,
    dtype_id,
    random_group,
    scalars_for,
    scalars_on,
)

CUDA_BUILD_REQUIRED = os.environ.get("ADADELTA_FUSED_BUILD_CUDA", "").lower() in ("1", "true", "yes")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
]


@pytest.fixture(autouse=True)
def cuda_kernel():
    if not _extension.has_cuda_kernel():
        reason = _extension.load_error() or "the extension was built without its CUDA sources"
        if CUDA_BUILD_REQUIRED:
            pytest.fail(reason)
        pytest.skip(reason)


def to_device(group, device="cuda"):
    return tuple(None if tensors is None else [t.to(device) for t in tensors] for tensors in group)


def run_both(group, scalars: StepScalars):
    """(CUDA result copied to the CPU, reference result)."""
    expected = clone_group(group)
    adadelta_step_reference_(*expected[:4], expected[4], scalars)
    actual = to_device(group)
    cpp.step_(*actual[:4], actual[4], scalars_on(scalars, "cuda"))
    torch.cuda.synchronize()
    return to_device(actual, "cpu"), expected


@pytest.mark.parametrize("feature", FEATURES)
@pytest.mark.parametrize("pair", DTYPE_PAIRS, ids=dtype_id)
def test_every_feature_and_dtype_bitwise(feature, pair, generator):
    group = random_group((1023, 4097, 1, 0, 15), *pair, generator)
    assert_groups_equal(*run_both(group, scalars_for(feature)))


@pytest.mark.parametrize("size", ODD_SIZES)
@pytest.mark.parametrize("pair", DTYPE_PAIRS, ids=dtype_id)
def test_flat_path_odd_sizes_over_several_steps(size, pair, generator):
    """A group of one tensor takes the flat kernel; several steps compound any difference."""
    expected = random_group((size,), *pair, generator)
    actual = to_device(expected)
    scalars = scalars_for("maximize_weight_decay")
    for _ in range(5):
        adadelta_step_reference_(*expected[:4], None, scalars)
        cpp.step_(*actual[:4], None, scalars)
    assert_groups_equal(to_device(actual, "cpu"), expected)


@pytest.mark.parametrize("param_dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("grad_mode", list(GradMode))
@pytest.mark.parametrize("numels", [(4097, 1023), (2**20 + 3,)], ids=["multi", "flat"])
def test_master_weights(param_dtype, grad_mode, numels, generator):
    group = random_group(numels, param_dtype, torch.float32, generator, master=True)
    actual, expected = run_both(group, scalars_for("weight_decay", grad_mode=grad_mode))
    assert_groups_equal(actual, expected)


@pytest.mark.parametrize("state_dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("numels", [(4097, 1023, 15), (2**20 + 3,)], ids=["multi", "flat"])
def test_stochastic_rounding_matches_every_backend(state_dtype, numels, generator):
    group = random_group(numels, torch.bfloat16, state_dtype, generator)
    scalars = scalars_for("default", stochastic_rounding=True, rounding_key=rounding_key(seed=7, step=3))
    assert_groups_equal(*run_both(group, scalars))


def test_found_inf_skips_the_step_without_a_host_sync(generator):
    """A skipped step changes nothing but the grads, which the "zero" mode zeroes all the same (as the
    reference does: the next backward starts from zero), and reads found_inf on the device only."""
    group = random_group((4097, 1023), torch.bfloat16, torch.float32, generator, master=True)
    group[1][0][3] = float("inf")
    scalars = scalars_for("grad_zero", grad_scale=torch.tensor(4.0), found_inf=torch.tensor(1.0), lr=torch.tensor(0.5))
    expected, actual, on_cuda = clone_group(group), to_device(group), scalars_on(scalars, "cuda")
    adadelta_step_reference_(*expected[:4], expected[4], scalars)
    assert all(not g.any() for g in expected[1]) and torch.equal(expected[0][0], group[0][0])
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        cpp.step_(*actual[:4], actual[4], on_cuda)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert_groups_equal(to_device(actual, "cpu"), expected)


def test_misaligned_and_strided_views(generator):
    base = random_group((4098, 64 * 33, 64 * 33), torch.float32, torch.float32, generator)

    def views(group):
        return tuple(
            [tensors[0][1:], tensors[1].view(64, 33).t(), tensors[2].view(64, 33)[:, ::2]] for tensors in group[:4]
        )

    expected_base, actual_base = clone_group(base), to_device(base)
    scalars = scalars_for("grad_zero")
    adadelta_step_reference_(*views(expected_base), None, scalars)
    cpp.step_(*views(actual_base), None, scalars)
    assert_groups_equal(to_device(actual_base, "cpu"), expected_base)


def test_flat_kernel_on_a_misaligned_view(generator):
    """One tensor starting at element 1: the flat kernel's scalar path."""
    base = random_group((4098,), torch.float32, torch.float32, generator)
    expected_base, actual_base = clone_group(base), to_device(base)
    scalars = scalars_for("weight_decay")
    adadelta_step_reference_(*([t[1:] for t in tensors] for tensors in expected_base[:4]), None, scalars)
    cpp.step_(*([t[1:] for t in tensors] for tensors in actual_base[:4]), None, scalars)
    assert_groups_equal(to_device(actual_base, "cpu"), expected_base)


def test_flat_kernel_strides_over_more_chunks_than_resident_blocks(generator):
    """600 chunks of 64 Ki: more than one wave of blocks (2 per SM), so each block takes several chunks."""
    group = random_group((600 * 65536 + 5,), torch.float32, torch.float32, generator)
    assert_groups_equal(*run_both(group, scalars_for("maximize_weight_decay")))


def test_cpu_lr_tensor_is_read_on_the_host_without_a_sync(generator):
    group = to_device(random_group((4097, 1023), torch.float32, torch.float32, generator))
    expected = to_device(group, "cpu")
    adadelta_step_reference_(*expected[:4], None, scalars_for("default", lr=torch.tensor(0.3)))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        cpp.step_(*group[:4], None, scalars_for("default", lr=torch.tensor(0.3)))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert_groups_equal(to_device(group, "cpu"), expected)


def test_4096_tensors_and_many_launches(generator):
    numels = [int(n) for n in torch.randint(1, 300, (4096,), generator=generator)] + [3 * 65536 + 5]
    group = random_group(numels, torch.float32, torch.float32, generator)
    assert_groups_equal(*run_both(group, scalars_for("weight_decay")))


def test_runs_on_the_current_stream_and_device(generator):
    group = random_group((4097, 1023), torch.float32, torch.float32, generator)
    expected = clone_group(group)
    adadelta_step_reference_(*expected[:4], None, scalars_for("default"))
    device = torch.device("cuda", torch.cuda.device_count() - 1)
    actual = to_device(group, device)
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        cpp.step_(*actual[:4], None, scalars_for("default"))
    torch.cuda.current_stream(device).wait_stream(side)
    assert_groups_equal(to_device(actual, "cpu"), expected)


def test_cuda_graph_capture_and_replay(generator):
    """lr, grad_scale and found_inf live on the device: a captured step replays with new values."""
    group = random_group((4097, 1023, 2**16 + 1), torch.float32, torch.float32, generator)
    expected = clone_group(group)
    actual = to_device(group)
    lr, grad_scale, found_inf = (torch.tensor(v, device="cuda") for v in (0.5, 2.0, 0.0))
    scalars = StepScalars(lr=lr, rho=0.9, eps=1e-6, weight_decay=0.01, grad_scale=grad_scale, found_inf=found_inf)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        cpp.step_(*actual[:4], None, scalars)  # warm-up outside the graph
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        cpp.step_(*actual[:4], None, scalars)
    reference = StepScalars(lr=0.5, rho=0.9, eps=1e-6, weight_decay=0.01, grad_scale=torch.tensor(2.0))
    adadelta_step_reference_(*expected[:4], None, reference)  # the warm-up
    for lr_value, inf_value in ((0.5, 0.0), (0.25, 0.0), (0.25, 1.0)):
        lr.fill_(lr_value)
        found_inf.fill_(inf_value)
        graph.replay()
        if inf_value == 0.0:
            adadelta_step_reference_(
                *expected[:4], None, StepScalars(**{**reference.__dict__, "lr": torch.tensor(lr_value)})
            )
    torch.cuda.synchronize()
    assert_groups_equal(to_device(actual, "cpu"), expected)


def test_tensor_larger_than_2_to_the_31_elements(generator):
    """64-bit indexing: elements past 2^31 are updated, and updated correctly."""
    numel = 2**31 + 4097
    needed = numel * 2 * 4  # bf16 param, grad, square_avg, acc_delta
    if torch.cuda.mem_get_info()[0] < needed * 1.2:
        pytest.skip(f"needs {needed / 2**30:.0f} GiB of free GPU memory")
    param, grad = (torch.randn(numel, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    square_avg, acc_delta = (torch.rand(numel, device="cuda", dtype=torch.bfloat16) + 0.1 for _ in range(2))
    windows = [slice(0, 4097), slice(2**31 - 2000, 2**31 + 2000), slice(numel - 4097, numel)]
    expected = [tuple(t[w].cpu() for t in (param, grad, square_avg, acc_delta)) for w in windows]
    scalars = scalars_for("weight_decay")
    cpp.step_([param], [grad], [square_avg], [acc_delta], None, scalars)
    for window, (p, g, sq, acc) in zip(windows, expected):
        adadelta_step_reference_([p], [g], [sq], [acc], None, scalars)
        got = tuple([t[window].cpu()] for t in (param, grad, square_avg, acc_delta))
        assert_groups_equal(got, ([p], [g], [sq], [acc]))


def test_optimizer_matches_torch_on_cuda():
    model = torch.nn.Sequential(torch.nn.Linear(33, 65), torch.nn.Tanh(), torch.nn.Linear(65, 7)).cuda()
    twin = torch.nn.Sequential(torch.nn.Linear(33, 65), torch.nn.Tanh(), torch.nn.Linear(65, 7)).cuda()
    twin.load_state_dict(model.state_dict())
    ours = Adadelta(model.parameters(), lr=0.7, weight_decay=0.01, backend="cpp")
    theirs = torch.optim.Adadelta(twin.parameters(), lr=0.7, weight_decay=0.01, foreach=False)
    for _ in range(20):
        x = torch.randn(16, 33, device="cuda")
        for net, optimizer in ((model, ours), (twin, theirs)):
            optimizer.zero_grad()
            net(x).square().mean().backward()
            optimizer.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, **TOLERANCE[a.dtype])


def test_wrong_device_raises_before_touching_memory(generator):
    group = to_device(random_group((5, 4), torch.float32, torch.float32, generator))
    before = clone_group(group)
    with pytest.raises(ValueError, match=r"grad_scale is on cpu but the params are on cuda"):
        cpp.step_(*group[:4], None, scalars_for("default", grad_scale=torch.tensor(2.0)))
    mixed = ([group[0][0], group[0][1].cpu()], *group[1:4])
    with pytest.raises(ValueError, match=r"params\[1\] is on cpu but params\[0\] is on cuda"):
        cpp.step_(*mixed, None, scalars_for("default"))
    assert_groups_equal(group, before)
