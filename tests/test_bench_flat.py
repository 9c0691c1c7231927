"""The benchmark's flat rows (``cpp-flat``: adadelta_fused.Adadelta with flatten=True) step the same numbers as
the per-tensor rows, and leave the parameter sets that the other implementations of a case share alone."""

from __future__ import annotations

import pytest
import torch

from adadelta_fused.bench import implementations as impls
from adadelta_fused.bench.cases import Case, make_param_sets
from adadelta_fused.bench.traffic import StepConfig

from conftest import assert_bitwise_equal, requires_extension

CPU = torch.device("cpu")


def test_flat_names_and_descriptions():
    assert impls.FLAT_NAMES == ("cpp-flat", "triton-flat")
    assert set(impls.FLAT_NAMES) <= set(impls.IMPLEMENTATION_NAMES)
    assert impls.implementation("cpp-flat").description.endswith("flatten=True")
    assert impls.implementation("cpp-flat").ours
    assert impls.unavailable_reason(impls.TORCH_FUSED_ADAMW, CPU) is None  # the CPU's bf16/fp16 yardstick


@requires_extension
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_flat_rows_step_what_per_tensor_rows_step_and_leave_the_sets_alone(dtype):
    case, config = Case(3 * 1023, 3), StepConfig(dtype)
    flat_sets = make_param_sets(case, config, CPU, 2)
    list_sets = make_param_sets(case, config, CPU, 2)  # the same seed: the same numbers
    before = [[p.clone() for p in s.params] for s in flat_sets]
    flat_steps = impls.implementation("cpp-flat").build(flat_sets, config)
    list_steps = impls.implementation("cpp").build(list_sets, config)
    for flat_step, list_step in zip(flat_steps, list_steps, strict=True):
        flat_step()
        list_step()
    for s, originals in zip(flat_sets, before, strict=True):
        for param, original in zip(s.params, originals, strict=True):
            assert_bitwise_equal(param, original, "a shared set's param")
    for flat_step, list_set in zip(flat_steps, list_sets, strict=True):
        optimizer = flat_step.__self__
        flat_params = optimizer.param_groups[0]["params"]
        # The per-tensor optimizer's state is the set's own accumulators, stepped in place.
        for i, (flat_param, param) in enumerate(zip(flat_params, list_set.params, strict=True)):
            assert_bitwise_equal(flat_param, param, f"param {i}")
            assert_bitwise_equal(optimizer.state[flat_param]["square_avg"], list_set.square_avgs[i], f"square_avg {i}")
            assert_bitwise_equal(optimizer.state[flat_param]["acc_delta"], list_set.acc_deltas[i], f"acc_delta {i}")


def test_flat_rows_time_the_param_dtype_layout_only():
    config = StepConfig(torch.bfloat16, torch.float32)
    with pytest.raises(ValueError, match="cpp-flat times the param-dtype state layout only"):
        impls.implementation("cpp-flat").build(make_param_sets(Case(16, 1), config, CPU, 1), config)
