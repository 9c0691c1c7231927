"""Training loops and engines next to torch.optim.Adadelta in the same situation (bug hunts of 2026-12-05,
second stop): a batch dropped with opt.zero_grad() under flatten=True, zero_grad of view grads, resuming master
weights through DCP (from torch's checkpoints and ours, sharded and full dicts), swapped and shallow-copied
params, and params another optimizer steps in backward."""

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


def bf16_mlp(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)).to(torch.bfloat16)


def train_steps(model, opt, steps: int, first: int = 0) -> None:
    for seed in range(first, first + steps):
        x = torch.randn(4, 6, generator=torch.Generator().manual_seed(seed)).to(torch.bfloat16)
        opt.zero_grad()
        model(x).float().square().mean().backward()
        opt.step()


@pytest.mark.parametrize("saved_by, full, flatten", [
    (saved_by, full, flatten) for saved_by in ("torch", "ours") for full in (False, True) for flatten in (False, True)
    if not (saved_by == "ours" and full and flatten)  # (README's limitation)
])
def test_dcp_resume_into_master_weights_takes_the_checkpoint(tmp_path, saved_by, full, flatten):
    """DCP's get_optimizer_state_dict makes state with a zero-lr step, whose master copies are copies of the
    params from before the load. A checkpoint of torch.optim.Adadelta (no master copies, loaded with
    allow_partial_load) left them so, and the next step wrote the pre-load weights back into the model: the
    copies are now made from the loaded params, as a plain load_state_dict of that checkpoint makes them. A
    checkpoint with master copies (ours) loads them. With full_state_dict=True, DCP hands back other tensor
    objects over the same memory (a torch checkpoint installed the stale copies). (Not here: our flat
    checkpoint through full_state_dict, whose master copies the state_dict() call of set_optimizer_state_dict
    refills from the params; README says so.)"""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict, set_model_state_dict,
                                                         set_optimizer_state_dict)

    source = bf16_mlp(0)
    make_source = {"torch": lambda ps: torch.optim.Adadelta(ps),
                   "ours": lambda ps: Adadelta(ps, master_weights=True)}[saved_by]
    source_opt = make_source(source.parameters())
    train_steps(source, source_opt, 3)
    dcp.save({"model": get_model_state_dict(source), "optim": get_optimizer_state_dict(source, source_opt)},
             checkpoint_id=str(tmp_path))

    resumed = bf16_mlp(1)  # other weights: the load must replace them, in the masters too
    opt = Adadelta(resumed.parameters(), master_weights=True, flatten=flatten)
    options = StateDictOptions(full_state_dict=full)
    state = {"model": get_model_state_dict(resumed, options=options),
             "optim": get_optimizer_state_dict(resumed, opt, options=options)}
    dcp.load(state, checkpoint_id=str(tmp_path), planner=DefaultLoadPlanner(allow_partial_load=True))
    set_model_state_dict(resumed, state["model"], options=options)
    set_optimizer_state_dict(resumed, opt, state["optim"], options=options)

    oracle = bf16_mlp(1)
    oracle.load_state_dict(source.state_dict())
    oracle_opt = Adadelta(oracle.parameters(), master_weights=True)
    oracle_opt.load_state_dict(source_opt.state_dict())
    for model, optimizer in ((resumed, opt), (oracle, oracle_opt)):
        train_steps(model, optimizer, 2, first=3)
    for (name, got), want in zip(resumed.named_parameters(), oracle.parameters()):
        assert torch.equal(got, want), name
        assert torch.equal(opt.state[got]["master_param"], oracle_opt.state[want]["master_param"]), name


@pytest.mark.parametrize("compiled", [False, True])
def test_master_copies_are_kept_by_a_round_trip_once_a_step_moved_them(compiled):
    """Only copies nothing but the zero-lr step touched are made again from the params: after real steps, a
    state dict loaded back keeps its master copies (the bits the bf16 params lack). Compiled steps too: a
    first version cleared its bookkeeping with a write inside the step, which Dynamo does not keep."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    model = bf16_mlp(0)
    opt = Adadelta(model.parameters(), master_weights=True, lr=torch.tensor(1.0))
    get_optimizer_state_dict(model, opt)  # its zero-lr step makes the state
    if compiled:
        torch._dynamo.reset()
        opt.step = torch.compile(opt.step, backend="aot_eager")
    train_steps(model, opt, 2)
    masters = [opt.state[p]["master_param"].clone() for p in model.parameters()]
    assert any(not torch.equal(m, p.float()) for m, p in zip(masters, model.parameters()))
    opt.load_state_dict(opt.state_dict())
    for master, p in zip(masters, model.parameters()):
        assert torch.equal(opt.state[p]["master_param"], master)


@pytest.mark.parametrize("step_in_backward", [False, True])
def test_params_of_a_step_in_backward_optimizer_can_be_swapped(step_in_backward):
    """torch.utils.swap_tensors refuses a tensor with a weak reference; step_in_backward kept one to every
    hooked param (a table of owners), so model.double() and load_state_dict failed under
    set_swap_module_params_on_conversion(True), even after the optimizer was gone. torch's optimizer keeps none."""
    results = []
    for make in (lambda ps: torch.optim.Adadelta(ps), lambda ps: Adadelta(ps, step_in_backward=step_in_backward)):
        model = torch.nn.Linear(3, 2)
        opt = make(model.parameters())
        model(torch.randn(4, 3)).square().sum().backward()
        opt.step()
        saved = {name: t.detach().clone() + 1 for name, t in model.state_dict().items()}
        previous = torch.__future__.get_swap_module_params_on_conversion()
        torch.__future__.set_swap_module_params_on_conversion(True)
        try:
            model.load_state_dict(saved)
            model.double()
        finally:
            torch.__future__.set_swap_module_params_on_conversion(previous)
        results.append({name: t.dtype for name, t in model.state_dict().items()})
    assert results[0] == results[1] == {"weight": torch.float64, "bias": torch.float64}


def test_a_shallow_copy_of_a_flat_optimizer_is_refused_and_leaves_the_original_stepping():
    """copy.copy shares the original's params; building the copy's buffers around them took them out of the
    original's, whose next step raised as if param.data had been reassigned. Refused, with the way out."""
    import copy

    model = torch.nn.Linear(4, 3)
    opt = Adadelta(model.parameters(), flatten=True)
    model(torch.randn(6, 4)).square().mean().backward()
    opt.step()
    with pytest.raises(TypeError, match=r"shallow copy \(copy.copy\) of an Adadelta with flatten=True"):
        copy.copy(opt)
    before = model.weight.detach().clone()
    opt.step()
    assert not torch.equal(model.weight, before)
    twin = copy.deepcopy(opt)  # a deep copy has params of its own
    twin.step()


def test_a_new_group_of_params_another_optimizer_steps_in_backward_is_refused_as_in_the_constructor():
    model = torch.nn.Linear(3, 2)
    hooked = Adadelta(model.parameters(), step_in_backward=True)
    other = Adadelta([torch.nn.Parameter(torch.randn(2))])
    with pytest.raises(ValueError, match="is stepped in backward by another live Adadelta"):
        Adadelta(model.parameters())
    with pytest.raises(ValueError, match="is stepped in backward by another live Adadelta"):
        other.add_param_group({"params": list(model.parameters())})
    assert len(other.param_groups) == 1
    del hooked
    other.add_param_group({"params": list(model.parameters())})  # its hooks went with it


def test_a_shallow_copy_of_a_step_in_backward_optimizer_is_refused_as_a_shallow_copy():
    """It would hook the original's params a second time; the error said "the new param group"."""
    import copy

    model = torch.nn.Linear(3, 2)
    opt = Adadelta(model.parameters(), step_in_backward=True)
    with pytest.raises(TypeError, match=r"shallow copy \(copy.copy\) of an Adadelta with step_in_backward=True"):
        copy.copy(opt)
    twin_model, twin = copy.deepcopy((model, opt))
    twin_model(torch.randn(4, 3)).square().sum().backward()  # the copy's hooks step the copied params
    assert all(p.grad is None for p in twin_model.parameters())
