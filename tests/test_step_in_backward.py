"""Adadelta(step_in_backward=True) next to the ordinary Adadelta (bit for bit) and torch.optim.Adadelta
(within TOLERANCE), in the same training loop (issue 14)."""

from __future__ import annotations

import copy
import gc
import io
import pickle
import weakref

import pytest
import torch
import torch.utils.checkpoint

from adadelta_fused import Adadelta

from conftest import TOLERANCE, assert_bitwise_equal, one_rank_process_group


class Net(torch.nn.Module):
    """Two trained layers around a frozen one, and a trainable param that backward never reaches."""

    def __init__(self, generator: torch.Generator, dtype: torch.dtype):
        super().__init__()
        self.first = torch.nn.Linear(11, 17)
        self.frozen = torch.nn.Linear(17, 17).requires_grad_(False)
        self.last = torch.nn.Linear(17, 5)
        self.unused = torch.nn.Parameter(torch.empty(9))
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=generator, dtype=torch.float64))
        self.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(torch.tanh(self.frozen(torch.tanh(self.first(x)))))

    def param_groups(self, **second_group) -> list[dict]:
        # The unused param comes last: a trainable param without a gradient shifts the stochastic-rounding
        # noise of the params after it (in_backward._places).
        return [
            {"params": list(self.first.parameters())},
            {"params": [*self.frozen.parameters(), *self.last.parameters(), self.unused], **second_group},
        ]


def loss_of(model: torch.nn.Module, step: int) -> torch.Tensor:
    """The same fresh batch for every model at a given step."""
    dtype = next(model.parameters()).dtype
    x = torch.randn(6, 11, generator=torch.Generator().manual_seed(1000 + step), dtype=torch.float64).to(dtype)
    return model(x).square().mean()


def assert_same_training(a: torch.nn.Module, opt_a, b: torch.nn.Module, opt_b) -> None:
    """Params and state_dict equal bit for bit."""
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert_bitwise_equal(p.detach(), q.detach(), name)
    state_a, state_b = opt_a.state_dict(), opt_b.state_dict()
    assert state_a["param_groups"] == state_b["param_groups"]
    assert state_a["state"].keys() == state_b["state"].keys()
    for index, saved in state_a["state"].items():
        assert saved.keys() == state_b["state"][index].keys()
        for key, value in saved.items():
            assert_bitwise_equal(value, state_b["state"][index][key], f"state[{index}][{key}]")


OPTIONS = {
    "fp32": (torch.float32, dict(weight_decay=0.03, maximize=True)),
    "fp32_state_bf16": (torch.float32, dict(state_dtype=torch.bfloat16)),
    "bf16_master_weights": (torch.bfloat16, dict(master_weights=True, weight_decay=0.01)),
    "bf16_stochastic_rounding": (torch.bfloat16, dict(stochastic_rounding=True, seed=7)),
    "bf16_state_fp32": (torch.bfloat16, dict(state_dtype=torch.float32)),
}


@pytest.mark.parametrize("option", OPTIONS)
def test_trains_bit_for_bit_like_the_ordinary_step(every_backend, option, generator):
    """Five steps with two param groups, a frozen and an unused param, an LR scheduler, and an lr edited by
    hand between steps; every gradient is None after each backward."""
    dtype, options = OPTIONS[option]
    model = Net(generator, dtype)
    twin = copy.deepcopy(model)
    ours = Adadelta(model.param_groups(lr=0.5, rho=0.8), backend=every_backend, step_in_backward=True, **options)
    theirs = Adadelta(twin.param_groups(lr=0.5, rho=0.8), backend=every_backend, **options)
    schedulers = [torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.3) for opt in (ours, theirs)]
    for step in range(5):
        if step == 3:
            for opt in (ours, theirs):
                opt.param_groups[0]["lr"] = 0.7
        loss_of(model, step).backward()
        assert all(p.grad is None for p in model.parameters()), f"step {step}: a gradient was kept"
        ours.step()
        ours.zero_grad()
        loss_of(twin, step).backward()
        theirs.step()
        theirs.zero_grad()
        for scheduler in schedulers:
            scheduler.step()
        assert_same_training(model, ours, twin, theirs)
    assert {float(s["step"]) for s in ours.state_dict()["state"].values()} == {5.0}
    assert len(ours.state_dict()["state"]) == 4  # first and last layers; never the frozen or unused params


def test_trains_like_torch(generator):
    model = Net(generator, torch.float32)
    twin = copy.deepcopy(model)
    ours = Adadelta(model.param_groups(weight_decay=0.02), lr=0.9, step_in_backward=True)
    theirs = torch.optim.Adadelta(twin.param_groups(weight_decay=0.02), lr=0.9)
    for step in range(4):
        loss_of(model, step).backward()
        ours.step()
        loss_of(twin, step).backward()
        theirs.step()
        theirs.zero_grad()
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, **TOLERANCE[torch.float32], msg=lambda m: f"{name}: {m}")
    for ours_state, theirs_state in zip(ours.state_dict()["state"].values(), theirs.state_dict()["state"].values()):
        assert float(ours_state["step"]) == float(theirs_state["step"]) == 4.0


def test_frees_each_gradient_during_backward(generator):
    """The last layer is stepped, and its gradient gone, before backward reaches the first layer."""
    model = Net(generator, torch.float32)
    before = model.last.weight.detach().clone()
    opt = Adadelta(model.parameters(), step_in_backward=True)
    seen = []

    def when_first_layer_is_reached(grad):
        seen.append((model.last.weight.grad is None, torch.equal(model.last.weight, before)))

    model.first.weight.register_hook(when_first_layer_is_reached)
    loss_of(model, 0).backward()
    opt.step()
    assert seen == [(True, False)]


def test_step_runs_the_closure_and_steps_once(generator):
    model = Net(generator, torch.float32)
    twin = copy.deepcopy(model)
    ours = Adadelta(model.parameters(), step_in_backward=True)
    theirs = Adadelta(twin.parameters())
    for step in range(3):
        def closure(m=model, step=step):
            loss = loss_of(m, step)
            loss.backward()
            return loss
        assert torch.equal(ours.step(closure), loss_of(twin, step))
        loss_of(twin, step).backward()
        theirs.step()
        theirs.zero_grad()
    assert_same_training(model, ours, twin, theirs)


def test_step_steps_a_gradient_set_outside_backward(generator):
    """A grad set by hand (or on a param that started requiring grad after construction) has no hook: the
    step() that ends the iteration steps it, as the ordinary step would."""
    model = Net(generator, torch.float32)
    twin = copy.deepcopy(model)
    ours = Adadelta(model.param_groups(), step_in_backward=True)
    theirs = Adadelta(twin.param_groups())
    for step in range(2):
        for m, opt in ((model, ours), (twin, theirs)):
            loss_of(m, step).backward()
            m.frozen.weight.grad = torch.randn(17, 17, generator=torch.Generator().manual_seed(step))
            opt.step()
            opt.zero_grad()
    assert_same_training(model, ours, twin, theirs)
    assert float(ours.state[model.frozen.weight]["step"]) == 2.0


# ---- state_dict, copies ----

@pytest.mark.parametrize("direction", ["in_backward_to_ordinary", "ordinary_to_in_backward"])
def test_state_dict_round_trips_between_the_two_modes(direction, generator):
    """Two steps in one mode, saved; loaded into the other mode (and into torch's), two more steps: the
    same as four steps in the first mode."""
    first_in_backward = direction == "in_backward_to_ordinary"
    model = Net(generator, torch.float32)
    opt = Adadelta(model.param_groups(lr=0.4), stochastic_rounding=True, step_in_backward=first_in_backward)
    for step in range(2):
        loss_of(model, step).backward()
        opt.step()
        opt.zero_grad()
    saved = copy.deepcopy(opt.state_dict())
    loaded_model, torch_model = copy.deepcopy(model), copy.deepcopy(model)
    loaded = Adadelta(loaded_model.param_groups(), stochastic_rounding=True, step_in_backward=not first_in_backward)
    loaded.load_state_dict(saved)
    with_torch = torch.optim.Adadelta(torch_model.param_groups())
    with_torch.load_state_dict(saved)
    for step in range(2, 4):
        for m, o in ((model, opt), (loaded_model, loaded), (torch_model, with_torch)):
            loss_of(m, step).backward()
            o.step()
            o.zero_grad()
    assert_same_training(model, opt, loaded_model, loaded)
    for p, q in zip(model.parameters(), torch_model.parameters()):
        torch.testing.assert_close(p, q, **TOLERANCE[torch.float32])


@pytest.mark.parametrize("copier", ["deepcopy", "pickle", "torch.save"])
def test_a_copy_with_its_model_steps_its_own_params_in_backward(copier, generator):
    """Hooks are not copied with tensors; the copy hooks its own params, which are the copied model's when
    both are copied together. The original keeps its own hooks, once each."""
    model = Net(generator, torch.float32)
    opt = Adadelta(model.param_groups(), step_in_backward=True, state_dtype=torch.bfloat16)
    loss_of(model, 0).backward()
    opt.step()
    if copier == "deepcopy":
        clone, clone_opt = copy.deepcopy((model, opt))
    elif copier == "pickle":
        clone, clone_opt = pickle.loads(pickle.dumps((model, opt)))
    else:
        buffer = io.BytesIO()
        torch.save((model, opt), buffer)
        buffer.seek(0)
        clone, clone_opt = torch.load(buffer, weights_only=False)
    assert clone_opt.defaults == opt.defaults
    for step in range(1, 3):
        for m, o in ((model, opt), (clone, clone_opt)):
            loss_of(m, step).backward()
            assert all(p.grad is None for p in m.parameters())
            o.step()
    assert_same_training(model, opt, clone, clone_opt)


def test_a_dropped_optimizer_leaves_its_params_alone(generator):
    model = Net(generator, torch.float32)
    before = [p.detach().clone() for p in model.parameters()]
    opt = Adadelta(model.parameters(), step_in_backward=True)
    del opt
    gc.collect()
    loss_of(model, 0).backward()
    for p, old in zip(model.parameters(), before):
        assert torch.equal(p, old)
    assert model.last.weight.grad is not None


# ---- what cannot work raises ----

def test_flatten_is_refused():
    with pytest.raises(ValueError, match="flatten=True and step_in_backward=True exclude each other"):
        Adadelta([torch.nn.Parameter(torch.randn(5))], flatten=True, step_in_backward=True)


def test_differentiable_is_refused():
    with pytest.raises(ValueError, match="takes none of the fused options"):
        Adadelta([torch.nn.Parameter(torch.randn(5))], differentiable=True, step_in_backward=True)


def test_differentiable_set_on_a_group_later_is_refused_before_the_hook_steps():
    p = torch.nn.Parameter(torch.randn(5) + 2)
    opt = Adadelta([p], step_in_backward=True)
    opt.param_groups[0]["differentiable"] = True
    before = p.detach().clone()
    with pytest.raises(ValueError, match="takes none of the fused options"):
        p.square().sum().backward()
    assert torch.equal(p.detach(), before) and not opt.state[p]


def test_gradient_accumulation_over_two_backwards_raises(generator):
    """The second backward raises at its first param, before stepping anything: the params are those of one
    ordinary step."""
    model = Net(generator, torch.float32)
    twin = copy.deepcopy(model)
    ours = Adadelta(model.parameters(), step_in_backward=True)
    theirs = Adadelta(twin.parameters())
    loss_of(model, 0).backward()
    with pytest.raises(RuntimeError, match=r"param \d of param group 0 got a second gradient before optimizer.step"):
        loss_of(model, 1).backward()
    loss_of(twin, 0).backward()
    theirs.step()
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)


def test_a_param_reached_twice_in_one_backward_raises(generator):
    """A reentrant checkpoint accumulates into a param it shares with the rest of the graph in a backward of
    its own, inside the outer one: the param's hook fires twice in one loss.backward()."""
    model = Net(generator, torch.float32)
    opt = Adadelta(model.parameters(), step_in_backward=True)
    x = torch.randn(6, 11, generator=generator, requires_grad=True)
    hidden = torch.utils.checkpoint.checkpoint(model.first, x, use_reentrant=True)[:, :11]
    with pytest.raises(RuntimeError, match="got a second gradient before optimizer.step.*use_reentrant=False"):
        model.first(hidden).square().mean().backward()
    del opt


def test_a_gradient_taken_by_another_hook_raises(generator):
    """A post-accumulate-grad hook registered before ours (torchtune's, say) that sets the grad to None."""
    model = Net(generator, torch.float32)
    model.last.bias.register_post_accumulate_grad_hook(lambda p: setattr(p, "grad", None))
    opt = Adadelta(model.param_groups(), step_in_backward=True)
    with pytest.raises(RuntimeError, match=r"param 3 of param group 1 has no gradient when its hook runs: "
                                           "another post-accumulate-grad hook took it"):
        loss_of(model, 0).backward()
    del opt


@pytest.mark.parametrize("unscale_first", [False, True])
def test_grad_scaler_step_raises(unscale_first, generator):
    model = Net(generator, torch.float32)
    opt = Adadelta(model.parameters(), step_in_backward=True)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler.scale(loss_of(model, 0)).backward()
    if unscale_first:
        scaler.unscale_(opt)
    with pytest.raises(RuntimeError, match="cannot work with a GradScaler.*found_inf"):
        scaler.step(opt)
    assert not hasattr(opt, "found_inf") and not hasattr(opt, "grad_scale")


# ---- review of issue 14: ownership of the hooks, references, the end of an iteration, DDP ----

def test_holds_no_reference_to_its_params(generator):
    """A backward without step() leaves the iteration's params noted as stepped; model and optimizer dropped
    then must still be freed (a strong reference would close a cycle through the tensor's hook dict, which
    lives in C++ where the garbage collector cannot see it)."""
    model = Net(generator, torch.float32)
    opt = Adadelta(model.param_groups(), step_in_backward=True)
    loss_of(model, 0).backward()
    weight, optimizer = weakref.ref(model.last.weight), weakref.ref(opt)
    del model, opt
    gc.collect()
    assert optimizer() is None
    assert weight() is None


def test_a_second_live_optimizer_on_the_same_params_raises(generator):
    """The hooks of a live optimizer would keep stepping its params: a second one (in either mode) raises,
    naming the param, until the first is dropped; then its hooks go with it and the new one steps alone."""
    model = Net(generator, torch.float32)
    twin = copy.deepcopy(model)
    first = Adadelta(model.param_groups(), lr=5.0, step_in_backward=True)
    for step_in_backward in (True, False):
        with pytest.raises(ValueError, match=r"param 0 of (the new param group|param group 0) \(shape \(17, 11\)\) is stepped "
                                             r"in backward by another live Adadelta.*drop it first"):
            Adadelta(model.param_groups(), step_in_backward=step_in_backward)
    del first
    gc.collect()
    ours = Adadelta(model.param_groups(), step_in_backward=True)
    theirs = Adadelta(twin.param_groups())
    assert all(len(p._post_accumulate_grad_hooks) == 1 for p in model.parameters() if p.requires_grad)
    for step in range(2):
        for m, opt in ((model, ours), (twin, theirs)):
            loss_of(m, step).backward()
            opt.step()
            opt.zero_grad()
    assert_same_training(model, ours, twin, theirs)


@pytest.mark.parametrize("option", ["fp32", "bf16_stochastic_rounding"])
def test_zero_grad_ends_the_iteration(option, generator):
    """The skip-the-step pattern (backward; on a bad loss, zero_grad() and no step()) goes on without an
    error; the skipped iteration's gradients were already applied in backward, as two steps would apply
    them, and with stochastic rounding the next iteration draws new noise, as after a step (failed before:
    the iteration after the skipped one rounded with the skipped one's noise)."""
    dtype, options = OPTIONS[option]
    model = Net(generator, dtype)
    twin = copy.deepcopy(model)
    ours = Adadelta(model.param_groups(), step_in_backward=True, **options)
    theirs = Adadelta(twin.param_groups(), **options)
    for step in range(3):
        loss_of(model, step).backward()
        if step == 1:
            ours.zero_grad()
            continue
        ours.step()
        ours.zero_grad()
    for step in range(3):
        loss_of(twin, step).backward()
        theirs.step()
        theirs.zero_grad()
    assert_same_training(model, ours, twin, theirs)


def test_the_second_gradient_error_names_the_skip_pattern(generator):
    """After it, step() names the refused gradient (not a reducer that wrote one after the hooks: failed
    before) and steps nothing; zero_grad() drops it and the loop goes on."""
    model = Net(generator, torch.float32)
    opt = Adadelta(model.parameters(), step_in_backward=True)
    loss_of(model, 0).backward()
    with pytest.raises(RuntimeError, match=r"optimizer.zero_grad\(\) to skip a step"):
        loss_of(model, 1).backward()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(RuntimeError, match=r"holds the second gradient its hook refused in backward.*"
                                           r"Call optimizer.zero_grad\(\) to drop it"):
        opt.step()
    for p, q in zip(model.parameters(), before):
        assert_bitwise_equal(p.detach(), q)
    opt.zero_grad()
    loss_of(model, 2).backward()
    opt.step()
    assert all(p.grad is None for p in model.parameters())
    del opt


def test_ddp_raises_in_step_before_stepping_twice():
    """DDP's reducer writes the averaged gradient into p.grad after backward, when the hook has already
    stepped the param with its local gradient: step() refuses to step it a second time, and writes
    nothing."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    twin = copy.deepcopy(model)
    x = torch.randn(5, 3)
    with one_rank_process_group():
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        opt = Adadelta(model.parameters(), step_in_backward=True)
        ddp(x).square().mean().backward()
        assert model[0].weight.grad is not None  # the reducer's write, after the hook
        with pytest.raises(RuntimeError, match=r"param 0 of param group 0 \(shape \(4, 3\)\) was stepped in "
                                               r"backward.*gradient again.*DistributedDataParallel"):
            opt.step()
    theirs = Adadelta(twin.parameters())
    twin(x).square().mean().backward()
    theirs.step()
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)


def test_a_refused_fp32_gradient_names_its_place_in_the_group(generator):
    model = Net(generator, torch.bfloat16)
    model.last.bias.grad_dtype = torch.float32
    opt = Adadelta(model.param_groups(), step_in_backward=True, master_weights=True)
    with pytest.raises(TypeError, match=r"param 3 of param group 1 has a torch.float32 gradient"):
        loss_of(model, 0).backward()
    del opt
