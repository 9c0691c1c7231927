"""flatten=True and ``optimizer.state``: what a user does to a flat param's state through the dict is what
the next step uses and what state_dict() saves, side by side with torch.optim.Adadelta (and with our own
per-tensor optimizer, bit for bit, where torch has no counterpart)."""

from __future__ import annotations

import copy

import pytest
import torch

from adadelta_fused import Adadelta

from conftest import TOLERANCE, assert_bitwise_equal

KEYS = ("step", "square_avg", "acc_delta")


def _reset_all(optimizer, p):
    optimizer.state[p] = {}


def _delete(optimizer, p):
    del optimizer.state[p]


def _replace_tensors(optimizer, p):
    state = optimizer.state[p]
    state["square_avg"] = torch.full_like(p, 0.25)
    state["acc_delta"] = torch.full_like(p, 1e-3)
    state["step"] = torch.tensor(7.0)


def _assign_new_dict(optimizer, p):
    optimizer.state[p] = {"step": torch.tensor(3.0), "square_avg": torch.full_like(p, 0.5),
                          "acc_delta": torch.full_like(p, 2e-3)}


EDITS = {"reset": _reset_all, "delete": _delete, "replace_tensors": _replace_tensors, "new_dict": _assign_new_dict}


def _train(optimizer, params, grads, edit_at, edit):
    for step, step_grads in enumerate(grads):
        for p, grad in zip(params, step_grads, strict=True):
            p.grad = grad.clone()
        optimizer.step()
        if step == edit_at:
            edit(optimizer, params[1])


def _stepped_once(count, numel, generator):
    """``count`` params of ``numel`` elements under a flat optimizer, after one step with random grads."""
    params = [torch.nn.Parameter(torch.randn(numel, generator=generator)) for _ in range(count)]
    optimizer = Adadelta(params, flatten=True)
    for p in params:
        p.grad = torch.randn(numel, generator=generator)
    optimizer.step()
    return params, optimizer


@pytest.mark.parametrize("edit", EDITS)
def test_an_edit_of_a_flat_params_state_is_what_the_next_step_uses_and_saves(edit, generator):
    shapes = [(3, 5), (7,), (2, 2)]
    start = [torch.randn(shape, generator=generator) for shape in shapes]
    grads = [[torch.randn(shape, generator=generator) for shape in shapes] for _ in range(4)]
    runs = {}
    for name, make in (("torch", torch.optim.Adadelta), ("flat", lambda ps, **k: Adadelta(ps, flatten=True, **k))):
        params = [torch.nn.Parameter(t.clone()) for t in start]
        optimizer = make(params, lr=0.5)
        _train(optimizer, params, grads, 1, EDITS[edit])
        runs[name] = (params, optimizer.state_dict())
    (theirs, their_dict), (ours, our_dict) = runs["torch"], runs["flat"]
    for mine, twin in zip(ours, theirs, strict=True):
        torch.testing.assert_close(mine.detach(), twin.detach(), **TOLERANCE[torch.float32])
    for index in range(len(shapes)):
        for key in KEYS:
            torch.testing.assert_close(our_dict["state"][index][key], their_dict["state"][index][key],
                                       **TOLERANCE[torch.float32])


@pytest.mark.parametrize("state_dtype", [None, torch.uint8], ids=["fp32_state", "8bit_state"])
@pytest.mark.parametrize("master_weights", [False, True])
def test_a_reset_flat_param_restarts_as_a_per_tensor_one_does_bit_for_bit(state_dtype, master_weights, generator):
    dtype = torch.bfloat16 if master_weights else torch.float32
    start = [torch.randn(300, generator=generator).to(dtype) for _ in range(3)]
    grads = [[torch.randn(300, generator=generator).to(dtype) for _ in range(3)] for _ in range(4)]
    runs = []
    for flatten in (False, True):
        params = [torch.nn.Parameter(t.clone()) for t in start]
        optimizer = Adadelta(params, lr=0.5, flatten=flatten, state_dtype=state_dtype,
                             master_weights=master_weights)
        _train(optimizer, params, grads, 1, _reset_all)
        runs.append((params, optimizer))
    (plain, plain_opt), (flat, flat_opt) = runs
    for mine, twin in zip(flat, plain, strict=True):
        assert_bitwise_equal(mine.detach(), twin.detach())
        for key, value in plain_opt.state[twin].items():
            assert_bitwise_equal(flat_opt.state[mine][key], value, key)


def test_a_state_dict_saved_after_a_reset_loads_back_and_keeps_training(generator):
    params, optimizer = _stepped_once(2, 5, generator)
    optimizer.state[params[0]] = {}
    saved = optimizer.state_dict()
    assert saved["state"][0] == {}  # as torch's state_dict after the same reset
    optimizer.load_state_dict(saved)
    optimizer.step()
    assert optimizer.state[params[0]]["step"].item() == 1 and optimizer.state[params[1]]["step"].item() == 2


def test_a_replacement_that_does_not_fit_its_slot_is_refused_naming_it(generator):
    (p,), optimizer = _stepped_once(1, 4, generator)
    optimizer.state[p]["acc_delta"] = torch.zeros(5)
    with pytest.raises(ValueError, match=r"state\['acc_delta'\] of param 0 \(shape \(4,\)\) was replaced by a "
                                         r"torch.float32 tensor of shape \(5,\)"):
        optimizer.step()
    del optimizer.state[p]["acc_delta"]
    with pytest.raises(KeyError, match="acc_delta"):  # torch's step raises the same for this state
        optimizer.step()


def test_a_copied_optimizer_counts_the_edits_of_its_own_state(generator):
    _, optimizer = _stepped_once(1, 6, generator)
    twin = copy.deepcopy(optimizer)
    (p,) = twin.param_groups[0]["params"]
    twin.state[p]["square_avg"] = torch.zeros(6)
    p.grad = torch.randn(6, generator=generator)
    twin.step()
    assert twin.state[p]["step"].item() == 2
    # stepped from the zeros it was given: (1 - rho) g^2
    torch.testing.assert_close(twin.state[p]["square_avg"], 0.1 * p.grad.square(), **TOLERANCE[torch.float32])


def test_a_state_map_assigned_wholesale_is_counted_again(generator):
    import collections

    params, optimizer = _stepped_once(2, 4, generator)
    optimizer.state = collections.defaultdict(dict)  # every param's state gone, as torch reads it
    optimizer.step()
    assert [optimizer.state[p]["step"].item() for p in params] == [1.0, 1.0]
    synced = optimizer._flat_synced_writes
    optimizer.step()
    assert optimizer._flat_synced_writes == synced == optimizer.state.writes  # a step without writes: no sync


@pytest.mark.parametrize("damage", ["missing_key", "wrong_shape"])
def test_a_state_dict_loads_over_state_that_no_longer_fits(damage, generator):
    (p,), optimizer = _stepped_once(1, 4, generator)
    saved = copy.deepcopy(optimizer.state_dict())
    if damage == "missing_key":
        del optimizer.state[p]["acc_delta"]
    else:
        optimizer.state[p]["square_avg"] = torch.zeros(9)
    optimizer.load_state_dict(saved)  # as torch's load replaces whatever state was there
    for key in KEYS:
        assert_bitwise_equal(optimizer.state[p][key], saved["state"][0][key], key)
