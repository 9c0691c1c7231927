"""The native host loops read a tensor's storage, data pointer and grad from their fields
(csrc/tensor_fields.h) instead of through torch's virtual accessors: what those accessors guaranteed still
holds, side by side with torch.optim.Adadelta where it does the same thing."""

from __future__ import annotations

import pytest
import torch

from adadelta_fused import Adadelta

from conftest import TOLERANCE, assert_bitwise_equal, op_kwargs, requires_extension

pytestmark = requires_extension


def _cow(tensor: torch.Tensor) -> torch.Tensor:
    """A copy-on-write twin of ``tensor``: one storage until either is written."""
    twin = torch._lazy_clone(tensor)
    assert torch._C._is_cow_tensor(twin)
    return twin


@pytest.mark.parametrize("flatten", [False, True])
def test_copy_on_write_params_and_grads_step_as_plain_ones_and_leave_their_twins_alone(flatten, generator):
    base = torch.randn(1023, generator=generator)
    base_before = base.clone()
    grads = [torch.randn(1023, generator=generator) for _ in range(3)]
    cow, plain, theirs = (torch.nn.Parameter(t) for t in (_cow(base), base.clone(), base.clone()))
    optimizers = [Adadelta([cow], lr=0.5, flatten=flatten), Adadelta([plain], lr=0.5, flatten=flatten),
                  torch.optim.Adadelta([theirs], lr=0.5)]
    grad_twins = []
    for grad in grads:
        cow.grad = _cow(grad)
        grad_twins.append(cow.grad)
        plain.grad, theirs.grad = grad.clone(), grad.clone()
        for optimizer in optimizers:
            optimizer.step()
    assert_bitwise_equal(cow.detach(), plain.detach())
    torch.testing.assert_close(plain.detach(), theirs.detach(), **TOLERANCE[torch.float32])
    assert torch.equal(base, base_before)  # the param's twin kept its values
    for twin, grad in zip(grad_twins, grads, strict=True):
        assert torch.equal(twin, grad)
    if not flatten:
        # The default keep mode only reads the grad: it stays shared with its twin, not copied.
        assert torch._C._is_cow_tensor(cow.grad)


@pytest.mark.parametrize("grad_mode", [1, 2], ids=["unscale", "zero"])
def test_a_copy_on_write_grad_the_step_writes_is_copied_first(grad_mode, generator):
    params = [torch.randn(1023, generator=generator)]
    grad = torch.randn(1023, generator=generator)
    twin = grad.clone()
    grads = [_cow(grad)]
    square_avgs = [torch.rand(1023, generator=generator)]
    acc_deltas = [torch.rand(1023, generator=generator)]
    torch.ops.adadelta_fused.adadelta_(**op_kwargs((params, grads, square_avgs, acc_deltas, None),
                                                   grad_scale=torch.tensor(4.0), grad_mode=grad_mode))
    assert torch.equal(grad, twin)  # the write went to the grad's own copy
    want = twin / 4.0 if grad_mode == 1 else torch.zeros_like(twin)
    assert torch.equal(grads[0], want)


def test_a_counter_whose_storage_was_resized_away_is_refused_before_any_counter_moves():
    good, freed = torch.zeros(()), torch.zeros(())
    freed.untyped_storage().resize_(0)
    with pytest.raises(RuntimeError, match="its storage has no memory"):
        torch.ops.adadelta_fused.advance_steps_([good, freed], None)
    assert good.item() == 0.0


def test_inference_counters_are_refused_before_any_counter_moves():
    with torch.inference_mode():
        counters = [torch.zeros(()), torch.zeros(())]
    with pytest.raises(RuntimeError, match=r"state_steps\[0\] is an inference tensor"):
        torch.ops.adadelta_fused.advance_steps_(counters, None)
    assert [c.item() for c in counters] == [0.0, 0.0]
    with pytest.raises(RuntimeError, match="Inplace update to inference tensor outside InferenceMode"):
        counters[0] += 1  # torch.optim.Adadelta's own `step_t += 1` raises the same (after the add)


def test_a_param_swapped_out_of_the_flat_buffer_is_detected(generator):
    params = [torch.nn.Parameter(torch.randn(5, generator=generator)) for _ in range(3)]
    optimizer = Adadelta(params, flatten=True)
    for p in params:
        p.grad = torch.randn(5, generator=generator)
    optimizer.step()
    outsider = torch.nn.Parameter(torch.randn(5, generator=generator))
    torch.utils.swap_tensors(params[1], outsider)  # params[1] now holds another TensorImpl
    with pytest.raises(RuntimeError, match=r"param 1 of param group 0 \(shape \(5,\)\) no longer views the optimizer"):
        optimizer.step()
