"""Training loops and engines next to torch.optim.Adadelta in the same situation (bug hunts of 2026-12-05,
second stop): a batch dropped with opt.zero_grad() under flatten=True, zero_grad of view grads, and resuming
master weights from a checkpoint without them."""

from __future__ import annotations

import pytest
import torch

from adadelta_fused import Adadelta


def linear_pair(seed: int = 0) -> list[torch.nn.Linear]:
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 2)
    twin = torch.nn.Linear(3, 2)
    twin.load_state_dict(model.state_dict())
    return [model, twin]


@pytest.mark.parametrize("set_to_none", [True, False])
def test_a_batch_dropped_with_zero_grad_never_reaches_a_flat_step(set_to_none):
    """model.zero_grad() set the grads to None, so the next backward makes grads outside the flat buffer; a
    batch dropped then with opt.zero_grad() left them in place (only the buffer was zeroed), and the next
    backward added to them: the next step applied the dropped batch."""
    models = linear_pair()
    optimizers = [torch.optim.Adadelta(models[0].parameters(), lr=1.0),
                  Adadelta(models[1].parameters(), lr=1.0, flatten=True)]
    data = torch.randn(4, 5, 3, generator=torch.Generator().manual_seed(1))
    for model, opt in zip(models, optimizers):
        model.zero_grad(set_to_none=True)
        for index, x in enumerate(data):
            model(x).square().mean().backward()
            if index == 0:  # dropped
                opt.zero_grad(set_to_none=set_to_none)
                for p in model.parameters():
                    assert (p.grad is None) if set_to_none else not p.grad.any()
                continue
            opt.step()
            opt.zero_grad(set_to_none=set_to_none)
    for theirs, ours in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("flatten", [False, True])
@pytest.mark.parametrize("set_to_none", [True, False])
def test_zero_grad_treats_an_assigned_grad_as_torch_does(flatten, set_to_none):
    """A hand-assigned grad (flat buffers: not the param's view) is set to None or zeroed in place, the
    caller's tensor too, as torch's zero_grad does."""
    outcomes = []
    for make in (torch.optim.Adadelta, lambda params: Adadelta(params, flatten=flatten)):
        p = torch.nn.Parameter(torch.ones(3))
        opt = make([p])
        assigned = torch.full((3,), 5.0)
        p.grad = assigned
        opt.zero_grad(set_to_none=set_to_none)
        outcomes.append((p.grad is None, p.grad is assigned, assigned.tolist()))
    assert outcomes[0] == outcomes[1]


def test_zero_grad_keeps_a_view_grad_of_a_param_outside_the_flat_buffers():
    """A param frozen when the flat optimizer was built and unfrozen later steps outside the buffers; its grad
    a view of another tensor (DDP's gradient_as_bucket_view) made zero_grad(set_to_none=False) raise torch's
    "Can't detach views in-place": torch detaches only a grad with a grad_fn."""
    grads = []
    for make in (torch.optim.Adadelta, lambda params: Adadelta(params, flatten=True)):
        a = torch.nn.Parameter(torch.randn(4))
        b = torch.nn.Parameter(torch.randn(3), requires_grad=False)
        opt = make([a, b])
        b.requires_grad_(True)
        bucket = torch.randn(10)
        b.grad = bucket[2:5]
        opt.zero_grad(set_to_none=False)
        grads.append((b.grad.tolist(), bucket[2:5].tolist()))
    assert grads[0] == grads[1] == ([0.0] * 3, [0.0] * 3)
