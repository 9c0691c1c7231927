"""The fused CPU kernel against the reference: bit for bit, for every feature, dtype, size and SIMD level."""

from __future__ import annotations

import itertools

import pytest
import torch

from adadelta_fused import _extension
from adadelta_fused.backends import cpp
from adadelta_fused.contract import GradMode
from adadelta_fused.reference import adadelta_step_reference_, rounding_key

from conftest import (
    DTYPE_PAIRS,
    FEATURES,
    ODD_SIZES,
    clone_group,
    dtype_id,
    assert_groups_equal,
    random_group,
    requires_extension,
    run_with_reference,
    op_kwargs,
    scalars_for,
    step_with_new_gradients,
)

pytestmark = requires_extension

POISON = 12345.0  # a value no update produces: memory the kernel must not touch keeps it


def run_both(group, scalars):
    return run_with_reference(cpp.step_, group, scalars)


@pytest.mark.parametrize("feature", FEATURES)
@pytest.mark.parametrize("pair", DTYPE_PAIRS, ids=dtype_id)
def test_every_feature_and_dtype_matches_reference_bitwise(cpu_isa, feature, pair, generator):
    group = random_group((1023, 4097, 1, 0, 15), *pair, generator)
    assert_groups_equal(*run_both(group, scalars_for(feature)))


@pytest.mark.parametrize("size", ODD_SIZES)
def test_odd_sizes_over_several_steps(cpu_isa, size, generator):
    group = random_group((size,), torch.float32, torch.float32, generator)
    expected, actual = clone_group(group), clone_group(group)
    scalars = scalars_for("weight_decay")
    for _ in range(5):
        adadelta_step_reference_(*expected[:4], None, scalars)
        cpp.step_(*actual[:4], None, scalars)
    assert_groups_equal(actual, expected)


def test_fp32_matches_reference_over_100_steps(generator):
    group = random_group((4097, 1023), torch.float32, torch.float32, generator)
    expected, actual = clone_group(group), clone_group(group)
    for step in range(100):
        scalars = scalars_for("maximize_weight_decay", lr=0.5 + step / 200)
        step_with_new_gradients(cpp.step_, expected, actual, scalars, generator)
    assert_groups_equal(actual, expected)


@pytest.mark.parametrize("pair", [pair for pair in DTYPE_PAIRS if pair[0] in (torch.bfloat16, torch.float16)], ids=dtype_id)
@pytest.mark.parametrize("grad_mode", list(GradMode))
@pytest.mark.parametrize("grad_scale", [None, 3.0], ids=["unscaled", "grad-scale"])
def test_master_weights(cpu_isa, pair, grad_mode, grad_scale, generator):
    param_dtype, state_dtype = pair
    group = random_group((4097, 1023), param_dtype, state_dtype, generator, master=True)
    scale = None if grad_scale is None else torch.tensor(grad_scale)
    actual, expected = run_both(group, scalars_for("weight_decay", grad_mode=grad_mode, grad_scale=scale))
    assert_groups_equal(actual, expected)
    for param, master in zip(actual[0], actual[4]):
        assert torch.equal(param, master.to(param_dtype)), "the param must be the rounded master copy"


@pytest.mark.parametrize("state_dtype", [torch.bfloat16, torch.float32])
def test_stochastic_rounding_is_bitwise_reproducible(cpu_isa, state_dtype, generator):
    group = random_group((4097, 1023, 15), torch.bfloat16, state_dtype, generator)
    scalars = scalars_for("default", stochastic_rounding=True, rounding_key=rounding_key(seed=7, step=3))
    actual, expected = run_both(group, scalars)
    assert_groups_equal(actual, expected)
    again, _ = run_both(group, scalars)
    assert_groups_equal(again, actual)
    other_key = scalars_for("default", stochastic_rounding=True, rounding_key=rounding_key(seed=8, step=3))
    different, _ = run_both(group, other_key)
    assert not torch.equal(different[0][0], actual[0][0]), "another seed must give other roundings"


@pytest.mark.parametrize("first_index", [0, 2**32 - 2**16, 2**32, 2**32 + 3 * 2**16, 2**40 + 2**16])
@pytest.mark.parametrize("fp32_state", [False, True], ids=["bf16-state", "fp32-state"])
def test_stochastic_rounding_far_into_a_tensor_uses_each_elements_index(cpu_isa, first_index, fp32_state):
    """Past 2^32 elements the noise's first hash round (the index's high word, hoisted per chunk) changes: a chunk
    of a tensor too large to allocate, stepped at every level, rounds as the per-element update at each element's
    own index, full vectors and a tail alike."""
    ext = _extension.module()
    for n in (2**16, 4097, 15):
        assert ext.stochastic_params_mismatches_at(first_index, n, fp32_state) == 0


def test_stochastic_rounding_of_a_channels_last_param_follows_memory_order(generator):
    """The noise is indexed in the order the kernel walks a dense param: its memory order."""
    shape = (4, 6, 5, 7)
    param = torch.randn(shape, generator=generator).to(torch.bfloat16, memory_format=torch.channels_last)

    def like_param(scale, offset=0.0):
        return (torch.rand(shape, generator=generator) * scale + offset).to(memory_format=torch.channels_last)

    group = ([param], [like_param(0.2, -0.1).bfloat16()], [like_param(1e-2, 1e-3)], [like_param(1e-4, 1e-5)], None)
    scalars = scalars_for("default", stochastic_rounding=True, rounding_key=rounding_key(seed=5, step=2))
    actual, expected = run_both(group, scalars)
    assert_groups_equal(actual, expected)
    assert actual[0][0].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("size", [1, 15, 1023, 4097])
def test_writes_stay_inside_each_tensor(cpu_isa, size, generator):
    """Each tensor is a view between guard regions of POISON: the step must leave the guards alone."""
    numels = (size, size + 2)
    group = random_group(numels, torch.float32, torch.float32, generator)
    bases = tuple([torch.full((n + 64,), POISON) for n in numels] for _ in range(4))
    views = tuple([base[32 : 32 + n] for base, n in zip(row, numels)] for row in bases)
    for view_row, tensors in zip(views, group):
        for view, tensor in zip(view_row, tensors):
            view.copy_(tensor)
    expected = clone_group(group)
    adadelta_step_reference_(*expected[:4], None, scalars_for("grad_zero"))
    cpp.step_(*views, None, scalars_for("grad_zero"))
    assert_groups_equal(views, expected[:4])
    for row in bases:
        for base, n in zip(row, numels):
            assert (base[:32] == POISON).all() and (base[32 + n :] == POISON).all()


@pytest.mark.parametrize("grad_mode", [GradMode.KEEP, GradMode.UNSCALE, GradMode.ZERO])
def test_found_inf_changes_nothing_but_zeroes_grads_in_zero_mode(cpu_isa, grad_mode, generator):
    group = random_group((4097, 1023), torch.bfloat16, torch.float32, generator, master=True)
    group[1][0][3] = float("inf")
    before = clone_group(group)
    scalars = scalars_for("grad_zero", grad_scale=torch.tensor(4.0), found_inf=torch.tensor(1.0), grad_mode=grad_mode)
    cpp.step_(*group[:4], group[4], scalars)
    if grad_mode == GradMode.ZERO:
        before[1][:] = [torch.zeros_like(g) for g in before[1]]  # the next backward starts from zero
    assert_groups_equal(group, before)


def test_found_inf_zero_runs_the_step(generator):
    group = random_group((1023,), torch.float32, torch.float32, generator)
    actual, expected = run_both(group, scalars_for("default", found_inf=torch.tensor(0.0)))
    assert_groups_equal(actual, expected)
    assert not torch.equal(actual[0][0], group[0][0])


def test_nonfinite_values_propagate_like_reference(cpu_isa, generator):
    group = random_group((1023,), torch.float32, torch.float32, generator)
    group[1][0][:4] = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0])
    group[0][0][4:6] = torch.tensor([float("inf"), -0.0])
    for feature in ("default", "weight_decay", "maximize"):
        assert_groups_equal(*run_both(group, scalars_for(feature)))
    # A weight_decay that rounds to 0 in fp32 is still added, as 0 * param: NaN at the inf param, as in torch.
    actual, expected = run_both(group, scalars_for("default", weight_decay=1e-46))
    assert_groups_equal(actual, expected)
    assert actual[0][0][4].isnan()


def test_4096_tensors_and_many_launches(generator):
    numels = [int(n) for n in torch.randint(1, 300, (4096,), generator=generator)] + [3 * 65536 + 5]
    group = random_group(numels, torch.float32, torch.float32, generator)
    assert_groups_equal(*run_both(group, scalars_for("weight_decay")))


@pytest.mark.parametrize(
    "numels",
    [
        [2048 * 65536 + 7],  # one tensor spanning more chunks than a launch holds
        [5, 0, 3 * 65536] * 200,  # more tensors than a launch holds, with empty ones between
        [65536] * 2047 + [2 * 65536 + 1, 17],  # a tensor split exactly at the block limit
        [],
    ],
    ids=["long_tensor", "many_tensors", "split_at_block_limit", "empty"],
)
def test_walk_covers_every_chunk_once_within_capacity(numels):
    ext = _extension.module()
    plan = ext.plan_launches(numels)
    covered = [pair for launch in plan for pair in launch]
    expected = [(i, c) for i, n in enumerate(numels) for c in range(-(-n // ext.chunk_elements))]
    assert covered == expected
    for launch in plan:
        assert 0 < len(launch) <= ext.max_blocks_per_launch
        assert len({tensor for tensor, _ in launch}) <= ext.max_tensors_per_launch


@pytest.mark.parametrize("pair", [(torch.float32, torch.float32), (torch.float16, torch.float16)], ids=dtype_id)
def test_misaligned_and_strided_views(pair, generator):
    base = random_group((4098, 64 * 33, 64 * 33), *pair, generator)
    def views(group):
        # element 1 onwards (misaligned by one element), a transposed matrix, a strided slice
        return tuple(
            [tensors[0][1:], tensors[1].view(64, 33).t(), tensors[2].view(64, 33)[:, ::2]]
            for tensors in group[:4]
        )
    expected_base, actual_base = clone_group(base), clone_group(base)
    expected, actual = views(expected_base), views(actual_base)
    scalars = scalars_for("grad_zero")
    adadelta_step_reference_(*expected, None, scalars)
    cpp.step_(*actual, None, scalars)
    assert_groups_equal(actual_base, expected_base)


def test_grad_with_other_strides_than_param(generator):
    param = torch.randn(8, 3, 5, 7, generator=generator).to(memory_format=torch.channels_last)
    group = ([param], [torch.randn(8, 3, 5, 7, generator=generator)], [torch.rand_like(param)], [torch.rand_like(param)], None)
    assert_groups_equal(*run_both(group, scalars_for("grad_zero", grad_mode=GradMode.ZERO)))


# ---- bad input: a clear error naming the argument and its value, before memory is touched ----

BAD_INPUTS = {
    "unequal_lists": (dict(grads="drop_last"), ValueError, "grads has 1 tensors but params has 2"),
    "shape": (dict(square_avgs="wrong_shape"), ValueError, r"square_avgs\[1\] has shape \[3\] but params\[1\] has \[4\]"),
    "int_params": (dict(params="int"), TypeError, "params\\[0\\] has unsupported dtype Int"),
    "dtype_combo": (dict(square_avgs="double", acc_deltas="double"), TypeError, "square_avgs\\[0\\] has dtype Double, unsupported with Float params"),
    "nan_lr": (dict(lr=float("nan")), ValueError, "Invalid learning rate: nan"),
    "inf_lr": (dict(lr=float("inf")), ValueError, "Invalid learning rate: inf"),
    "lr_tensor_2": (dict(lr_tensor=torch.ones(2)), ValueError, "Tensor lr must be 1-element"),
    "grad_mode": (dict(grad_mode=7), ValueError, "Invalid grad_mode: 7"),
    "master_fp32": (dict(master_params="fp32_master"), TypeError, "master_params are for bf16/fp16 params"),
    "grad_scale_dtype": (dict(grad_scale=torch.tensor(2.0, dtype=torch.float64)), ValueError, "grad_scale must be float32"),
    "sparse": (dict(grads="sparse"), RuntimeError, "Adadelta does not support sparse gradients"),
}


def _apply(args, key, how):
    lists = args[key]
    if how == "drop_last":
        return lists[:-1]
    if how == "wrong_shape":
        return lists[:-1] + [torch.rand(3)]
    if how == "int":
        return [t.to(torch.int32) for t in lists]
    if how == "double":
        return [t.double() for t in lists]
    if how == "fp32_master":
        return [p.float() for p in args["params"]]
    if how == "sparse":
        return [lists[0].to_sparse()] + lists[1:]
    raise AssertionError(how)


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_raises_before_touching_memory(case, generator):
    group = random_group((5, 4), torch.float32, torch.float32, generator)
    before = clone_group(group)
    overrides, error, message = BAD_INPUTS[case]
    args = op_kwargs(group)
    for key, value in overrides.items():
        args[key] = _apply(args, key, value) if isinstance(value, str) else value
    with pytest.raises(error, match=message):
        _extension.op()(**args)
    assert_groups_equal(group, before)


def test_opcheck(generator):
    group = random_group((1023, 15), torch.float32, torch.float32, generator)
    for overrides in (
        dict(),
        dict(lr_tensor=torch.tensor(0.5), grad_scale=torch.tensor(2.0), found_inf=torch.tensor(0.0), grad_mode=1),
        dict(grad_mode=2, maximize=True, weight_decay=0.1),
    ):
        torch.library.opcheck(_extension.op(), (), op_kwargs(clone_group(group), **overrides))


def test_opcheck_mixed_precision(generator):
    group = random_group((1023, 15), torch.bfloat16, torch.float32, generator, master=True)
    torch.library.opcheck(_extension.op(), (), op_kwargs(clone_group(group)))
    group = random_group((1023,), torch.bfloat16, torch.bfloat16, generator)
    torch.library.opcheck(_extension.op(), (), op_kwargs(clone_group(group), stochastic_rounding=True, rounding_key=3))


def test_parallel_loop_uses_every_torch_thread():
    """The chunk loop runs on all of torch's intra-op threads (a build without -fopenmp ran on one)."""
    ext = _extension.module()
    before = torch.get_num_threads()
    try:
        for threads in sorted({1, 2, before}):
            torch.set_num_threads(threads)
            assert ext.parallel_workers() == threads
    finally:
        torch.set_num_threads(before)


def test_selected_isa_is_reported():
    ext = _extension.module()
    assert ext.cpu_isa() in ext.supported_cpu_isas()
    with pytest.raises(ValueError, match="Invalid cpu isa: 'sse9'"):
        ext.select_cpu_isa("sse9")


def test_advance_steps_op():
    op = _extension.steps_op()
    steps = [torch.full((), float(i)) for i in range(5)]
    op(steps, None)
    assert [s.item() for s in steps] == [1.0, 2.0, 3.0, 4.0, 5.0]
    op(steps, torch.tensor(1.0))
    assert [s.item() for s in steps] == [1.0, 2.0, 3.0, 4.0, 5.0], "found_inf: the counters stay"
    op(steps, torch.tensor(0.0))
    assert [s.item() for s in steps] == [2.0, 3.0, 4.0, 5.0, 6.0]
    doubles = [torch.zeros(()), torch.zeros((), dtype=torch.float64)]  # torch.set_default_dtype(torch.float64)
    op(doubles, None)
    assert [s.item() for s in doubles] == [1.0, 1.0]
    with pytest.raises(ValueError, match=r"state_steps\[1\] must be a 1-element float32 or float64 tensor, got Long"):
        op([torch.zeros(()), torch.zeros((), dtype=torch.int64)], None)
    torch.library.opcheck(op, ([torch.zeros(()), torch.ones(())], torch.tensor(0.0)))
