"""The grouping of tensor lists by the param's (device, dtype) works on every supported torch, including 2.11,
which refuses state of another dtype than its param at the same index."""

from __future__ import annotations

import torch

from adadelta_fused._compat import group_by_device_and_dtype


def test_mixed_dtype_lists_group_by_the_param():
    params = [torch.zeros(3, dtype=torch.bfloat16), torch.zeros(2), torch.zeros(4, dtype=torch.bfloat16)]
    states = [torch.ones(3), torch.ones(2), torch.ones(4)]  # fp32 state for every param
    grouped = group_by_device_and_dtype([params, states])
    assert set(grouped) == {(torch.device("cpu"), torch.bfloat16), (torch.device("cpu"), torch.float32)}
    (bf16_params, bf16_states), _ = grouped[(torch.device("cpu"), torch.bfloat16)]
    assert [p is q for p, q in zip(bf16_params, (params[0], params[2]))] == [True, True]
    assert [s is t for s, t in zip(bf16_states, (states[0], states[2]))] == [True, True]
    (fp32_params, fp32_states), _ = grouped[(torch.device("cpu"), torch.float32)]
    assert fp32_params[0] is params[1] and fp32_states[0] is states[1]
