"""flatten, zero_grad_in_step, state dtypes, master weights, stochastic rounding, and their state_dicts."""

from __future__ import annotations

import copy
import gc
import io

import pytest
import torch

from adadelta_fused import Adadelta

from conftest import REQUIRE_EXTENSION, TOLERANCE, assert_bitwise_equal, backends_under_test, requires_extension

BACKENDS = backends_under_test()


class Net(torch.nn.Module):
    def __init__(self, dtype=torch.float32, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = torch.nn.Conv2d(3, 5, 3).to(dtype=dtype, memory_format=torch.channels_last)
        self.fc1 = torch.nn.Linear(45, 33).to(dtype)
        self.fc2 = torch.nn.Linear(33, 7).to(dtype)

    def forward(self, image):
        x = torch.relu(self.conv(image)).flatten(1)
        return self.fc2(torch.tanh(self.fc1(x)))


def batches(n, dtype=torch.float32, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(4, 3, 5, 5, generator=g).to(dtype) for _ in range(n)]


def train(model, opt, data, zero_grad=True):
    for image in data:
        if zero_grad:
            opt.zero_grad()
        model(image).square().mean().backward()
        opt.step()


def flat_storage(opt):
    return {flat.param.untyped_storage().data_ptr() for flats in opt._flat_groups for flat in flats}


def assert_views_intact(model, opt):
    storages = flat_storage(opt)
    grad_storages = {flat.grad.untyped_storage().data_ptr() for flats in opt._flat_groups for flat in flats}
    for p in model.parameters():
        assert p.untyped_storage().data_ptr() in storages
        assert p.grad.untyped_storage().data_ptr() in grad_storages


@pytest.mark.parametrize("backend", BACKENDS)
def test_flatten_gives_the_same_trajectory_over_50_steps(backend):
    plain, flat = Net(), Net()
    opt_plain = Adadelta(plain.parameters(), lr=0.5, weight_decay=0.01, backend=backend)
    opt_flat = Adadelta(flat.parameters(), lr=0.5, weight_decay=0.01, backend=backend, flatten=True)
    assert flat.conv.weight.is_contiguous(memory_format=torch.channels_last), "layouts survive flattening"
    data = batches(50)
    train(plain, opt_plain, data)
    train(flat, opt_flat, data)
    for a, b in zip(plain.parameters(), flat.parameters()):
        assert_bitwise_equal(b.detach(), a.detach())
    assert_views_intact(flat, opt_flat)
    assert len(opt_flat._flat_groups[0]) == 1, "one buffer for the whole fp32 group"


@pytest.mark.parametrize("backend", BACKENDS)
def test_flat_steps_follow_hyperparameters_changed_between_steps(backend):
    """A flat buffer's plan is kept from one step to the next (only its scalars change): every change a
    scheduler or a user makes to a group between steps still reaches the kernel, as it reaches torch's."""
    flat, plain, reference = Net(), Net(), Net()
    opt_flat = Adadelta(flat.parameters(), lr=0.5, backend=backend, flatten=True)
    opt_plain = Adadelta(plain.parameters(), lr=0.5, backend=backend)
    opt_torch = torch.optim.Adadelta(reference.parameters(), lr=0.5)
    changes = [{}, {"lr": 0.25}, {"weight_decay": 0.1}, {"maximize": True}, {"rho": 0.5, "eps": 1e-3},
               {"lr": torch.tensor(0.125)}, {"maximize": False, "lr": 2.0}]
    for step, (image, change) in enumerate(zip(batches(len(changes)), changes)):
        for model, opt in ((flat, opt_flat), (plain, opt_plain), (reference, opt_torch)):
            opt.param_groups[0].update(change)
            opt.zero_grad()
            model(image).square().mean().backward()
            opt.step()
        for a, b, t in zip(flat.parameters(), plain.parameters(), reference.parameters()):
            assert_bitwise_equal(a.detach(), b.detach(), f"step {step} ({change})")
            torch.testing.assert_close(a, t, **TOLERANCE[torch.float32],
                                       msg=lambda m: f"step {step} ({change}): {m}")
    assert_views_intact(flat, opt_flat)


def _two_groups(model):
    return [{"params": [model.conv.weight, model.conv.bias, model.fc1.weight], "lr": 0.9},
            {"params": [model.fc1.bias, model.fc2.weight, model.fc2.bias], "lr": 0.1, "weight_decay": 0.3}]


def _edit_groups(opt, edit):
    groups = opt.param_groups
    if edit == "reverse":
        groups.reverse()
    elif edit == "pop first":
        groups.pop(0)
    elif edit == "move a param":
        groups[0]["params"].append(groups[1]["params"].pop())
    elif edit == "replace a params list":
        groups[1]["params"] = groups[1]["params"][1:]
    elif edit == "append a new group's params":
        groups[1]["params"].extend(groups.pop(0)["params"])


@pytest.mark.parametrize("edit", ["reverse", "pop first", "move a param", "replace a params list",
                                  "append a new group's params"])
def test_flat_steps_follow_param_groups_edited_between_steps(edit):
    """torch steps each param with its group of the moment, whatever was done to ``param_groups`` between
    steps; the flat buffers were built per group, so each edited group is flattened again (failed before: a
    popped group's buffer stepped the next group's params with its lr and weight decay, or none at all)."""
    flat, plain, reference = Net(), Net(), Net()
    opt_flat = Adadelta(_two_groups(flat), flatten=True)
    opt_plain = Adadelta(_two_groups(plain))
    opt_torch = torch.optim.Adadelta(_two_groups(reference))
    for step, image in enumerate(batches(4)):
        for model, opt in ((flat, opt_flat), (plain, opt_plain), (reference, opt_torch)):
            if step == 2:
                _edit_groups(opt, edit)
            opt.zero_grad()
            model(image).square().mean().backward()
            opt.step()
        for (name, a), b, t in zip(flat.named_parameters(), plain.parameters(), reference.parameters()):
            assert_bitwise_equal(a.detach(), b.detach(), f"step {step}, {name}")
            torch.testing.assert_close(a, t, **TOLERANCE[torch.float32], msg=lambda m: f"step {step}, {name}: {m}")
    stepped = [p for group in opt_flat.param_groups for p in group["params"]]
    for p in stepped:
        assert p.untyped_storage().data_ptr() in flat_storage(opt_flat)
    for p, t in zip(flat.parameters(), reference.parameters()):
        if any(p is q for q in stepped):
            assert_bitwise_equal(opt_flat.state[p]["step"], opt_torch.state[t]["step"])
    if len(stepped) == len(list(flat.parameters())):
        # (after the others, torch's state_dict itself fails on the state of params no group holds)
        saved, saved_torch = opt_flat.state_dict(), opt_torch.state_dict()
        for key, value in saved_torch["state"].items():
            for name, tensor in value.items():
                torch.testing.assert_close(saved["state"][key][name], tensor, **TOLERANCE[torch.float32])
        opt_torch.load_state_dict(copy.deepcopy(saved))


def test_a_model_flattened_by_an_optimizer_that_is_gone_flattens_again():
    """A second training phase (or an optimizer built again after a resume) on a model whose params still
    view a deleted flat optimizer's buffer: flattened again like any model (failed before: "params share
    storage"). A living flat optimizer keeps its params: a second one is refused, naming the param."""
    model, reference = Net(), Net()
    opt = Adadelta(model.parameters(), flatten=True)
    train(model, opt, batches(2))
    first_buffer = flat_storage(opt)
    with pytest.raises(ValueError, match=r"param 0 of param group 0 \(shape \(5, 3, 3, 3\)\) is in the flat buffer"):
        Adadelta(model.parameters(), flatten=True)
    with pytest.raises(ValueError, match=r"param 0 of param group 0 \(shape \(7,\)\) is in the flat buffer of another"):
        Adadelta([model.fc2.bias], flatten=True)
    train(model, opt, batches(1))  # the refused constructors took nothing from it
    del opt
    gc.collect()
    with torch.no_grad():
        for p, q in zip(reference.parameters(), model.parameters()):
            p.copy_(q)
    opt = Adadelta(model.parameters(), lr=0.5, flatten=True)
    opt_torch = torch.optim.Adadelta(reference.parameters(), lr=0.5)
    assert flat_storage(opt).isdisjoint(first_buffer)
    for image in batches(3, seed=5):
        for m, o in ((model, opt), (reference, opt_torch)):
            o.zero_grad()
            m(image).square().mean().backward()
            o.step()
    for a, t in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(a, t, **TOLERANCE[torch.float32])
    assert_views_intact(model, opt)
    # A model saved whole and loaded keeps its params views of one storage, which no flat optimizer made:
    # refused, saying what to do (deepcopy clones each param, which then flattens).
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    with pytest.raises(ValueError, match=r"p.data = p.data.clone\(\)"):
        Adadelta(loaded.parameters(), flatten=True)
    Adadelta(copy.deepcopy(model).parameters(), flatten=True)


def test_flattened_params_stay_views_through_save_and_load():
    model = Net()
    opt = Adadelta(model.parameters(), flatten=True, lr=0.3)
    train(model, opt, batches(3))
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    saved_state = copy.deepcopy(opt.state_dict()["state"])
    train(model, opt, batches(2, seed=5))
    buffer.seek(0)
    opt.load_state_dict(torch.load(buffer))
    assert_views_intact(model, opt)
    flat = opt._flat_groups[0][0]
    for index, p in enumerate(model.parameters()):
        state = opt.state[p]
        assert state["square_avg"].untyped_storage().data_ptr() == flat.square_avg.untyped_storage().data_ptr()
        assert_bitwise_equal(state["square_avg"], saved_state[index]["square_avg"])
        assert state["step"].item() == 3
    opt.zero_grad()
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters())
    train(model, opt, batches(1))
    assert_views_intact(model, opt)


def test_broken_views_are_detected():
    model = Net()
    opt = Adadelta(model.parameters(), flatten=True)
    train(model, opt, batches(1))
    model.fc1.weight.data = model.fc1.weight.data.clone()
    with pytest.raises(RuntimeError, match=r"param 2 of param group 0 \(shape \(33, 45\)\) no longer views the"):
        opt.step()


def view_statuses(flat, monkeypatch, native: bool) -> tuple[int, list[int], list[int]]:
    """The flat view check's (moved, missing, foreign) for ``flat``: the native pass, or the Python one (the
    extension hidden)."""
    from adadelta_fused import _extension, flat as flat_module

    with monkeypatch.context() as patch:
        if not native:
            patch.setattr(_extension, "module", lambda: None)
        moved, missing, foreign = flat_module._view_status(flat.params, flat.param, flat.grad, flat._expected,
                                                           flat._grad_views, False)
    return moved, list(missing), list(foreign)


@pytest.mark.parametrize("threads", [1, 2])
def test_the_view_check_over_thousands_of_params_finds_every_change_and_steps_like_torch(monkeypatch, threads):
    """5000 params, which the native check splits across threads where it has more than one: grads set to
    None, replaced, or re-pointed (``grad.data = x``) on both sides of every boundary between the threads'
    shares are found exactly as the Python check finds them, the step equals torch's side by side, and the
    first of several params that left the buffer is the one named, with the changes before it."""
    from adadelta_fused import _extension

    ext = _extension.module()  # None without the compiled extension: the Python check alone is compared
    n, lr = 5000, 0.5
    # at::parallel_for gives each of k threads ceil(n / k) params, k at most ceil(n / 1024) = 5.
    boundaries = sorted({share * part for k in (2, 3, 4, 5) for share in [-(-n // k)] for part in range(1, k)})
    changed = sorted({index for b in boundaries for index in (b - 1, b)} | {0, 7, n - 1})
    missing, replaced, repointed = (set(changed[kind::3]) for kind in range(3))
    params = [torch.nn.Parameter(torch.randn(3)) for _ in range(n)]
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    opt = Adadelta(params, flatten=True, lr=lr)
    torch_opt = torch.optim.Adadelta(twins, lr=lr)
    flat = opt._flat_groups[0][0]

    default_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for step in range(3):
            for index, (p, t) in enumerate(zip(params, twins)):
                grad = torch.randn(3)
                t.grad = None if index in missing else grad
                if index in missing:
                    p.grad = None
                elif index in replaced:
                    p.grad = grad.clone()
                elif index in repointed:
                    p.grad.data = grad.clone()
                else:
                    p.grad.copy_(grad)
            expected = (-1, sorted(missing), sorted(replaced | repointed))
            assert view_statuses(flat, monkeypatch, native=False) == expected
            if ext is not None:
                assert view_statuses(flat, monkeypatch, native=True) == expected
            opt.step()
            torch_opt.step()
            for index, (p, t) in enumerate(zip(params, twins)):
                torch.testing.assert_close(p, t, **TOLERANCE[torch.float32], msg=lambda m: f"step {step}, param {index}: {m}")
            assert all(params[i].grad is flat._grad_views[i] for i in replaced | repointed), "the views are back"
        moved = boundaries[-1]
        for index in (moved + 1, moved):
            params[index].data = params[index].data.clone()
        params[3].grad = None
        before = (moved, sorted({3} | {i for i in missing if i < moved}), [])
        assert view_statuses(flat, monkeypatch, native=False) == before
        if ext is not None:
            assert view_statuses(flat, monkeypatch, native=True) == before
            # An item that is not a tensor: after the moved param it changes nothing, before it it is named.
            items = list(flat.params)
            items[moved + 2] = "not a tensor"
            assert ext.flat_view_status(items, flat.param, flat.grad, flat._expected, False)[0] == moved
            items[2] = "not a tensor"
            with pytest.raises(TypeError, match=r"params\[2\] is not a tensor"):
                ext.flat_view_status(items, flat.param, flat.grad, flat._expected, False)
        with pytest.raises(RuntimeError, match=rf"param {moved} of param group 0 \(shape \(3,\)\) no longer views"):
            opt.step()
    finally:
        torch.set_num_threads(default_threads)


def test_params_swapped_with_each_other_are_named_and_step_as_torch_once_swapped_back(generator):
    """The native view check remembers each param's TensorImpl and AutogradMeta between steps (csrc/ops.cpp
    FlatViews) and reads the remembered ones only where the param's Python object still holds them: two
    params of one buffer swapped with each other (torch.utils.swap_tensors) each hold the other's slot, which
    the next step names; swapped back, every param steps as torch.optim.Adadelta's twin."""
    params = [torch.nn.Parameter(torch.randn(4, 3, generator=generator)) for _ in range(4)]
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    opt = Adadelta(params, flatten=True, lr=0.5)
    torch_opt = torch.optim.Adadelta(twins, lr=0.5)

    def step():
        for p, t in zip(params, twins):
            p.grad = torch.randn(4, 3, generator=generator)
            t.grad = p.grad.clone()
        opt.step()
        torch_opt.step()

    step()
    torch.utils.swap_tensors(params[1], params[2])
    with pytest.raises(RuntimeError, match=r"param 1 of param group 0 \(shape \(4, 3\)\) no longer views"):
        opt.step()
    torch.utils.swap_tensors(params[1], params[2])
    for _ in range(2):
        step()
    for index, (p, t) in enumerate(zip(params, twins)):
        torch.testing.assert_close(p, t, **TOLERANCE[torch.float32], msg=lambda m: f"param {index}: {m}")


@requires_extension
@pytest.mark.parametrize("threads", [1, 2])
def test_the_view_check_relearns_rows_whose_remembered_objects_are_stale(monkeypatch, generator, threads):
    """A row whose remembered TensorImpl is another param's, or whose remembered AutogradMeta no object has,
    is checked through the param's own pointers (never through the stale ones) and learned again: statuses
    equal the Python check's, the rows then hold the params' TensorImpls, and the step equals torch's. 1500
    params, which the check splits across the threads where it has two (more than 1024 params)."""
    n = 1500
    missing, replaced = {3, 749, 750}, {4, 751, n - 1}
    params = [torch.nn.Parameter(torch.randn(5, generator=generator)) for _ in range(n)]
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    opt = Adadelta(params, flatten=True, lr=0.5)
    torch_opt = torch.optim.Adadelta(twins, lr=0.5)
    default_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for p, t in zip(params, twins):
            p.grad = torch.randn(5, generator=generator)
            t.grad = p.grad.clone()
        opt.step()
        torch_opt.step()
        flat = opt._flat_groups[0][0]
        assert flat._expected[:, 2].tolist() == [p._cdata for p in params]
        for index, (p, t) in enumerate(zip(params, twins)):
            grad = torch.randn(5, generator=generator)
            t.grad = None if index in missing else grad
            if index in missing:
                p.grad = None
            elif index in replaced:
                p.grad = grad.clone()  # not the param's view: copied in by the step
            else:
                p.grad.copy_(grad)
        flat._expected[0::2, 2] = flat._expected[0::2, 2].roll(1)  # other params' TensorImpls
        flat._expected[1::2, 3] = 64  # an AutogradMeta no object has
        native = view_statuses(flat, monkeypatch, native=True)
        python = view_statuses(flat, monkeypatch, native=False)
        assert native == python == (-1, sorted(missing), sorted(replaced))
        assert flat._expected[:, 2].tolist() == [p._cdata for p in params]
        assert flat._expected[1::2, 3].ne(64).all()
        opt.step()
        torch_opt.step()
    finally:
        torch.set_num_threads(default_threads)
    for index, (p, t) in enumerate(zip(params, twins)):
        torch.testing.assert_close(p, t, **TOLERANCE[torch.float32], msg=lambda m: f"param {index}: {m}")


@pytest.mark.parametrize("options", [{}, {"state_dtype": torch.uint8}, {"master_weights": True}],
                         ids=["fp32", "8bit", "master"])
def test_flat_cpu_params_step_as_torch_under_another_default_device(options, generator):
    """Under ``torch.set_default_device`` (here meta, a device whose tensors hold no values, standing in for
    cuda) the flat buffers' own bookkeeping stays on the host: CPU params step bit for bit as outside it, the
    fp32 step as torch.optim.Adadelta's under the same default device, and the step counters follow that device
    as torch's do."""
    params = [torch.nn.Parameter(torch.randn(300, generator=generator)) for _ in range(3)]
    plain, twins = ([torch.nn.Parameter(p.detach().clone()) for p in params] for _ in range(2))
    plain_opt = Adadelta(plain, flatten=True, lr=0.5, **options)
    with torch.device("meta"):
        opt = Adadelta(params, flatten=True, lr=0.5, **options)
        torch_opt = torch.optim.Adadelta(twins, lr=0.5)
        for _ in range(3):
            for p, q, t in zip(params, plain, twins):
                p.grad = torch.randn(300, generator=generator, device="cpu")
                q.grad, t.grad = p.grad.clone(), p.grad.clone()
            opt.step()
            torch_opt.step()
            with torch.device("cpu"):
                plain_opt.step()
    for index, (p, q, t) in enumerate(zip(params, plain, twins)):
        assert_bitwise_equal(p.detach(), q.detach())
        if not options:
            torch.testing.assert_close(p, t, **TOLERANCE[torch.float32], msg=lambda m: f"param {index}: {m}")
        assert opt.state[p]["step"].device == torch_opt.state[t]["step"].device == torch.device("meta")


class Branchy(torch.nn.Module):
    """A side branch used every other step and a layer never used: their grads stay None under
    ``model.zero_grad()``, so torch skips them (weight decay would move them if they were stepped)."""

    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(13, 31)
        self.side = torch.nn.Linear(31, 7)
        self.unused = torch.nn.Linear(5, 3)
        self.fc2 = torch.nn.Linear(31, 7)

    def forward(self, x, use_side):
        h = torch.tanh(self.fc1(x))
        return self.fc2(h) + self.side(h) if use_side else self.fc2(h)


@pytest.mark.parametrize("master", [False, True], ids=["fp32", "bf16-master"])
def test_flatten_trains_like_torch_when_grads_are_set_to_none(every_backend, master):
    """The Hugging Face Trainer / Lightning loop: ``model.zero_grad()`` sets grads to None, autograd makes new
    ones, and a param the backward did not reach keeps None and is skipped.

    Three models side by side: flattened, per-tensor (the same kernel: bit for bit), and torch's (fp32 only;
    within fp32 rounding, as its single-tensor path rounds its fused multiply-adds differently)."""
    dtype = torch.bfloat16 if master else torch.float32
    flat_model, plain_model, torch_model = Branchy().to(dtype), Branchy().to(dtype), Branchy().to(dtype)
    plain_model.load_state_dict(flat_model.state_dict())
    torch_model.load_state_dict(flat_model.state_dict())
    options = dict(lr=0.7, weight_decay=0.1, master_weights=master, backend=every_backend)
    flat_opt = Adadelta(flat_model.parameters(), flatten=True, **options)
    plain_opt = Adadelta(plain_model.parameters(), **options)
    torch_opt = torch.optim.Adadelta(torch_model.parameters(), lr=0.7, weight_decay=0.1)
    storages = flat_storage(flat_opt)
    grad_storage = {flat.grad.untyped_storage().data_ptr() for flats in flat_opt._flat_groups for flat in flats}
    data = torch.randn(8, 4, 13).to(dtype)
    for step, x in enumerate(data):
        for model, optimizer in ((flat_model, flat_opt), (plain_model, plain_opt), (torch_model, torch_opt)):
            model.zero_grad(set_to_none=True)
            model(x, use_side=step % 2 == 0).square().mean().backward()
            optimizer.step()
        plain_params = dict(plain_model.named_parameters())
        torch_params = dict(torch_model.named_parameters())
        for name, p in flat_model.named_parameters():
            q, t = plain_params[name], torch_params[name]
            assert_bitwise_equal(p.detach(), q.detach(), f"step {step}: {name}")
            if not master:
                torch.testing.assert_close(p, t, **TOLERANCE[dtype], msg=lambda m: f"step {step}: {name}: {m}")
            assert p.untyped_storage().data_ptr() in storages, f"{name} left the flat buffer"
            if t.grad is None:
                assert p.grad is None, f"step {step}: {name} got a grad the backward did not give"
            else:
                assert p.grad.untyped_storage().data_ptr() in grad_storage, f"{name}'s grad is a view again"
            if t in torch_opt.state:
                assert flat_opt.state[p]["step"].item() == torch_opt.state[t]["step"].item(), f"steps of {name}"
                for key in ("square_avg", "acc_delta"):
                    assert_bitwise_equal(flat_opt.state[p][key], plain_opt.state[q][key], f"step {step}: {key} of {name}")
            else:
                assert flat_opt.state[p]["step"].item() == 0, f"{name} was never stepped by torch"
    assert torch_opt.state[torch_model.side.weight]["step"].item() == 4, "the side branch was skipped every other step"


def test_flatten_steps_grads_assigned_by_hand_and_refuses_sparse_ones():
    model = Net()
    opt = Adadelta(model.parameters(), flatten=True)
    twin = Net()
    twin_opt = torch.optim.Adadelta(twin.parameters())
    for p, q in zip(model.parameters(), twin.parameters()):
        grad = torch.randn_like(p).t().contiguous().t() if p.dim() == 2 else torch.randn_like(p)  # strided
        p.grad, q.grad = grad, grad.clone()
    opt.step()
    twin_opt.step()
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, **TOLERANCE[torch.float32])
    assert_views_intact(model, opt)
    table = torch.nn.Embedding(11, 3, sparse=True)
    opt = Adadelta(table.parameters(), flatten=True)
    table.zero_grad(set_to_none=True)  # else backward adds the sparse grad into the dense view
    table(torch.tensor([1, 4])).sum().backward()
    assert table.weight.grad.is_sparse
    before = table.weight.detach().clone()
    with pytest.raises(RuntimeError, match="Adadelta does not support sparse gradients"):
        opt.step()
    assert_bitwise_equal(table.weight.detach(), before)


def test_a_group_that_cannot_be_flattened_is_not_added():
    """add_param_group after construction: the refused group leaves no trace, and later groups step."""
    opt = Adadelta([torch.nn.Parameter(torch.randn(4))], flatten=True)
    with pytest.raises(ValueError, match=r"param 0 of param group 1 has shape \(6, 4\)"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.randn(6, 8)[:, ::2])]})
    assert len(opt.param_groups) == len(opt._flat_groups) == 1
    later = torch.nn.Parameter(torch.randn(3))
    opt.add_param_group({"params": [later], "lr": 0.5})
    for group in opt.param_groups:
        for p in group["params"]:
            p.grad.copy_(torch.randn_like(p))
    before = later.detach().clone()
    opt.step()
    assert not torch.equal(later, before) and opt.state[later]["step"].item() == 1


def test_an_option_in_a_param_group_must_be_the_optimizers():
    p, q = torch.nn.Parameter(torch.randn(3)), torch.nn.Parameter(torch.randn(3))
    with pytest.raises(ValueError, match="backend='reference' in a param group: backend is the optimizer's option"):
        Adadelta([{"params": [p]}, {"params": [q], "backend": "reference"}])
    opt = Adadelta([{"params": [p]}, {"params": [q], "backend": "auto"}])  # as ZeroRedundancyOptimizer passes it
    assert "backend" not in opt.param_groups[1]


def assert_counters_viewed(opt, value):
    """Each flat param's ``state["step"]`` is a 0-d view of its buffer's one counter vector."""
    for flats in opt._flat_groups:
        for flat in flats:
            assert torch.equal(flat.counters, torch.full_like(flat.counters, value))
            for index, p in enumerate(flat.params):
                step = opt.state[p]["step"]
                assert step.dim() == 0 and step.data_ptr() == flat.counters[index].data_ptr()


def test_flat_step_counters_stay_views_of_one_vector():
    """One op advances a buffer's counters (issue 12), through every way the state is rebuilt."""
    model = Net()
    opt = Adadelta(model.parameters(), flatten=True)
    train(model, opt, batches(2))
    assert_counters_viewed(opt, 2)
    saved = copy.deepcopy(opt.state_dict())
    assert {float(s["step"]) for s in saved["state"].values()} == {2.0}, "a 0-d step per param, as torch"
    train(model, opt, batches(1))
    opt.load_state_dict(saved)
    assert_counters_viewed(opt, 2)
    opt.grad_scale, opt.found_inf = torch.tensor(1.0), torch.tensor(1.0)  # GradScaler skips this step
    train(model, opt, batches(1))
    del opt.grad_scale, opt.found_inf
    assert_counters_viewed(opt, 2)
    extra = torch.nn.Parameter(torch.randn(5))
    opt.add_param_group({"params": [extra]})
    extra.grad.copy_(torch.randn(5))
    train(model, opt, batches(1))
    assert float(opt.state[extra]["step"]) == 1.0
    assert [float(s["step"]) for s in opt.state_dict()["state"].values()].count(3.0) == 6
    clone = copy.deepcopy(opt)
    for flats, clone_flats in zip(opt._flat_groups, clone._flat_groups):
        for flat, clone_flat in zip(flats, clone_flats):
            assert torch.equal(flat.counters, clone_flat.counters)
            assert clone_flat.counters.data_ptr() != flat.counters.data_ptr()
            for index, p in enumerate(clone_flat.params):
                assert clone.state[p]["step"].data_ptr() == clone_flat.counters[index].data_ptr()


def replace_grad_storage(p: torch.Tensor, how: str) -> None:
    if how == "grad.data":
        p.grad.data = torch.zeros_like(p)
    else:
        p.grad.set_(torch.zeros_like(p))


@pytest.mark.parametrize("set_to_none", [False, True], ids=["zeroed", "set-to-none"])
@pytest.mark.parametrize("how", ["grad.data", "grad.set_"])
def test_flatten_follows_a_grad_whose_storage_was_replaced(how, set_to_none):
    """``p.grad.data = x`` keeps the grad's TensorImpl but not its storage: backward then accumulates into
    ``x``, which the step must read (and a view of the buffer must be the param's grad again afterwards),
    also when ``model.zero_grad()`` then drops that grad for a new one from autograd."""
    results = []
    for flatten in (False, True):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
        opt = Adadelta(model.parameters(), flatten=flatten) if flatten else torch.optim.Adadelta(model.parameters())
        for step in range(4):
            if step == 1 and set_to_none:
                replace_grad_storage(model[0].weight, how)  # and model.zero_grad() drops that grad
            model.zero_grad(set_to_none=set_to_none)
            if step == 1 and not set_to_none:
                replace_grad_storage(model[0].weight, how)
            model(torch.randn(5, 4, generator=torch.Generator().manual_seed(step))).sum().backward()
            opt.step()
        results.append([p.detach().clone() for p in model.parameters()])
        if flatten:
            assert_views_intact(model, opt)
    for got, want in zip(results[1], results[0]):
        torch.testing.assert_close(got, want, **TOLERANCE[torch.float32])


@pytest.mark.parametrize("flatten", [False, True])
def test_loading_its_own_live_state_dict_changes_nothing(flatten):
    """``state_dict()`` returns the live tensors; loading them back must not zero them first."""
    model = Net()
    opt = Adadelta(model.parameters(), flatten=flatten)
    train(model, opt, batches(3))
    before = copy.deepcopy(opt.state_dict())
    opt.load_state_dict(opt.state_dict())
    after = opt.state_dict()
    for key, state in before["state"].items():
        for name, value in state.items():
            assert torch.equal(after["state"][key][name], value), f"{name} of param {key}"


def test_flatten_names_a_refused_param_by_its_place_in_its_group():
    """A buffer holds one (device, dtype) of a group: its messages counted within it (a bf16 param before the
    strided fp32 one made this "param 1")."""
    params = [torch.nn.Parameter(torch.randn(3, dtype=torch.bfloat16)), torch.nn.Parameter(torch.randn(4)),
              torch.nn.Parameter(torch.randn(10, 12)[:, :4])]
    with pytest.raises(ValueError, match=r"param 2 of param group 1 has shape \(10, 4\)"):
        Adadelta([{"params": [torch.nn.Parameter(torch.randn(2))]}, {"params": params}], flatten=True)


def test_flatten_checks_every_group_before_moving_any():
    """A group that cannot be flattened raises before an earlier group's params moved into a buffer."""
    good = torch.nn.Parameter(torch.randn(5, 3))
    strided = torch.nn.Parameter(torch.randn(6, 8)[:, ::2])
    address = good.data_ptr()
    with pytest.raises(ValueError, match=r"param 0 of param group 1 has shape \(6, 4\)"):
        Adadelta([{"params": [good]}, {"params": [strided]}], flatten=True)
    assert good.data_ptr() == address and good.grad is None


def test_flatten_rejects_a_non_dense_param():
    weight = torch.nn.Parameter(torch.randn(6, 8)[:, ::2])
    with pytest.raises(ValueError, match=r"needs dense params; param 0 of param group 0 has shape \(6, 4\)"):
        Adadelta([weight], flatten=True)


@pytest.mark.parametrize("flatten", [False, True])
def test_zero_grad_in_step_equals_separate_zero_grad(flatten):
    fused, separate = Net(), Net()
    opt_fused = Adadelta(fused.parameters(), zero_grad_in_step=True, flatten=flatten, weight_decay=0.1)
    opt_separate = Adadelta(separate.parameters(), flatten=flatten, weight_decay=0.1)
    data = batches(10)
    train(separate, opt_separate, data)
    train(fused, opt_fused, data, zero_grad=False)
    for a, b in zip(separate.parameters(), fused.parameters()):
        assert_bitwise_equal(b.detach(), a.detach())
        assert b.grad is not None and not b.grad.any(), "the step leaves the gradients zero"


def _state_bytes_per_param(opt, model):
    total = sum(
        t.numel() * t.element_size() for p in model.parameters() for t in opt.state[p].values() if t.dim() > 0
    )
    return total / sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "dtype, options, expected_bytes",
    [
        (torch.float32, {}, 8),
        (torch.float32, {"state_dtype": torch.bfloat16}, 4),
        (torch.bfloat16, {}, 4),
        (torch.bfloat16, {"state_dtype": torch.float32}, 8),
        (torch.bfloat16, {"state_dtype": torch.float32, "master_weights": True}, 12),
        (torch.float16, {"master_weights": True}, 8),
    ],
)
def test_optimizer_state_bytes_per_param(dtype, options, expected_bytes):
    model = Net(dtype)
    opt = Adadelta(model.parameters(), **options)
    train(model, opt, batches(1, dtype))
    assert _state_bytes_per_param(opt, model) == expected_bytes
    state = opt.state[model.fc1.weight]
    assert state["square_avg"].dtype == options.get("state_dtype") or dtype
    if options.get("master_weights"):
        assert state["master_param"].dtype == torch.float32
        assert torch.equal(model.fc1.weight.detach(), state["master_param"].to(dtype))


def test_flatten_adds_no_hidden_full_copy():
    model = Net()
    gc.collect()
    opt = Adadelta(model.parameters(), flatten=True, master_weights=False)
    gc.collect()
    storages = {}
    for p in model.parameters():
        for t in (p, p.grad, *opt.state[p].values()):
            if t.dim() > 0:
                storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    flat = opt._flat_groups[0][0]
    assert sum(storages.values()) == sum(b.untyped_storage().nbytes() for b in (flat.param, flat.grad, flat.square_avg, flat.acc_delta))
    padded = flat.param.numel()
    assert padded < sum(p.numel() for p in model.parameters()) + 4 * len(list(model.parameters()))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("param_dtype", [torch.bfloat16, torch.float16])
def test_master_weights_track_an_fp32_run_exactly(backend, param_dtype, generator):
    n = 4097
    init = torch.randn(n, generator=generator).to(param_dtype)
    low = torch.nn.Parameter(init.clone())
    full = torch.nn.Parameter(init.float())
    opt_low = Adadelta([low], lr=0.7, weight_decay=0.01, backend=backend, master_weights=True, state_dtype=torch.float32)
    opt_full = Adadelta([full], lr=0.7, weight_decay=0.01, backend=backend)
    for _ in range(20):
        grad = torch.randn(n, generator=generator).to(param_dtype)
        low.grad, full.grad = grad.clone(), grad.float()
        opt_low.step()
        opt_full.step()
    assert_bitwise_equal(opt_low.state[low]["master_param"], full.detach())
    assert_bitwise_equal(low.detach(), full.detach().to(param_dtype))


@pytest.mark.parametrize("backend", BACKENDS)
def test_stochastic_rounding_follows_tiny_updates_where_nearest_stalls(backend):
    """1000 updates far below half a bf16 spacing: round-to-nearest never moves the param, stochastic
    rounding drifts like the fp32 run (the mean over 4096 elements, whose noise is about 0.002)."""
    n, steps = 4096, 1000
    def run(dtype, **options):
        p = torch.nn.Parameter(torch.ones(n, dtype=dtype))
        opt = Adadelta([p], lr=0.02, backend=backend, state_dtype=torch.float32 if dtype != torch.float32 else None, **options)
        for _ in range(steps):
            p.grad = torch.full((n,), -1.0, dtype=dtype)
            opt.step()
        return p.detach().double().mean().item() - 1.0
    drift_fp32 = run(torch.float32)
    drift_nearest = run(torch.bfloat16)
    drift_stochastic = run(torch.bfloat16, stochastic_rounding=True, seed=3)
    assert drift_fp32 > 0.02, "the fp32 run itself moves"
    assert drift_nearest == 0.0, "round-to-nearest stalls"
    assert abs(drift_stochastic - drift_fp32) < 0.1 * drift_fp32
    assert drift_stochastic == run(torch.bfloat16, stochastic_rounding=True, seed=3), "reproducible for a seed"


@pytest.mark.parametrize(
    "options",
    [
        {"state_dtype": torch.float32},
        {"state_dtype": torch.float32, "master_weights": True},
        {"stochastic_rounding": True, "seed": 5},
        {"flatten": True, "state_dtype": torch.float32, "master_weights": True},
    ],
    ids=["fp32_state", "master", "stochastic", "flat_master"],
)
def test_state_dict_round_trip_is_lossless(options):
    model = Net(torch.bfloat16)
    opt = Adadelta(model.parameters(), lr=0.4, **options)
    train(model, opt, batches(4, torch.bfloat16))
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optim": opt.state_dict()}, buffer)

    data = batches(3, torch.bfloat16, seed=9)
    expected = copy.deepcopy(model)
    expected_opt = Adadelta(expected.parameters(), lr=0.4, **options)
    buffer.seek(0)
    saved = torch.load(buffer)
    expected_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    train(model, opt, data)

    restored = Net(torch.bfloat16, seed=42)
    restored.load_state_dict(saved["model"])
    restored_opt = Adadelta(restored.parameters(), lr=0.4, **options)
    restored_opt.load_state_dict(saved["optim"])
    for p, q in zip(expected.parameters(), restored.parameters()):
        for key, value in expected_opt.state[p].items():
            assert restored_opt.state[q][key].dtype == value.dtype, key
    train(restored, restored_opt, data)
    for a, b in zip(model.parameters(), restored.parameters()):
        assert_bitwise_equal(b.detach(), a.detach())


@pytest.mark.parametrize("flatten", [False, True])
def test_torch_loads_our_state_and_we_load_torch_state(flatten):
    ours_model, torch_model = Net(), Net()
    ours = Adadelta(ours_model.parameters(), lr=0.6, flatten=flatten)
    theirs = torch.optim.Adadelta(torch_model.parameters(), lr=0.6)
    train(ours_model, ours, batches(3))
    train(torch_model, theirs, batches(3))
    swapped_torch = torch.optim.Adadelta(ours_model.parameters(), lr=0.6)
    swapped_torch.load_state_dict(copy.deepcopy(ours.state_dict()))
    swapped_ours = Adadelta(torch_model.parameters(), lr=0.6, flatten=flatten)
    swapped_ours.load_state_dict(copy.deepcopy(theirs.state_dict()))
    for state in swapped_torch.state.values():
        assert {"step", "square_avg", "acc_delta"} <= set(state)
    train(ours_model, swapped_torch, batches(2, seed=4))
    train(torch_model, swapped_ours, batches(2, seed=4))
    for a, b in zip(ours_model.parameters(), torch_model.parameters()):
        torch.testing.assert_close(a, b, **TOLERANCE[a.dtype])


def test_invalid_options():
    params = [torch.nn.Parameter(torch.randn(3))]
    with pytest.raises(ValueError, match="Invalid state_dtype: torch.float16"):
        Adadelta(params, state_dtype=torch.float16)
    with pytest.raises(ValueError, match="differentiable=True runs torch's Adadelta"):
        Adadelta(params, differentiable=True, flatten=True)


@pytest.mark.parametrize("options", [dict(state_dtype=torch.uint8), dict(zero_grad_in_step=True),
                                     dict(master_weights=True), dict(flatten=True)], ids=lambda o: next(iter(o)))
@pytest.mark.parametrize("how", ["constructor group", "add_param_group", "set before a step"])
def test_a_differentiable_group_is_refused_with_fused_options_before_any_write(options, how):
    """A param group with differentiable=True runs torch's Adadelta, which knows no 8-bit codes, flat buffers,
    master copies or zeroing in the step: refused however the group gets it (the constructor's refusal of the
    option alone was bypassed by a group's own key), and at step time before another group moved."""
    dtype = torch.bfloat16 if options.get("master_weights") else torch.float32
    first, second = (torch.nn.Parameter(torch.randn(300, dtype=dtype) + 2) for _ in range(2))
    for p in (first, second):
        p.grad = torch.randn(300, dtype=dtype)
    if how == "set before a step":
        opt = Adadelta([{"params": [first]}, {"params": [second]}], **options)
        opt.param_groups[1]["differentiable"] = True
    elif how == "add_param_group":
        opt = Adadelta([first], **options)
        with pytest.raises(ValueError, match="differentiable=True runs torch's Adadelta"):
            opt.add_param_group({"params": [second], "differentiable": True})
        assert len(opt.param_groups) == 1
        return
    else:
        with pytest.raises(ValueError, match="differentiable=True runs torch's Adadelta"):
            Adadelta([{"params": [first]}, {"params": [second], "differentiable": True}], **options)
        return
    before = [p.detach().clone() for p in (first, second)]
    with pytest.raises(ValueError, match="differentiable=True runs torch's Adadelta"):
        opt.step()
    for p, was in zip((first, second), before):
        assert_bitwise_equal(p.detach(), was)
    assert all(float(state["step"]) == 0 for state in opt.state.values())


def test_a_loaded_differentiable_group_is_refused_with_fused_options():
    """torch.optim.Adadelta(differentiable=True)'s state dict loaded into an optimizer with fused options would
    make its group differentiable: refused before anything changes."""
    p = torch.nn.Parameter(torch.randn(6))
    torch_opt = torch.optim.Adadelta([torch.nn.Parameter(p.detach().clone())], differentiable=True)
    opt = Adadelta([p], state_dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="differentiable=True runs torch's Adadelta"):
        opt.load_state_dict(torch_opt.state_dict())
    assert opt.param_groups[0]["differentiable"] is False


def test_differentiable_runs_torch_implementation():
    """With differentiable=True the update stays in the autograd graph (non-leaf params, as torch allows)."""
    base = torch.randn(5, requires_grad=True, dtype=torch.float64)
    results = []
    for cls in (Adadelta, torch.optim.Adadelta):
        p = base.clone()
        opt = cls([p], differentiable=True, lr=0.3)
        for step in range(3):
            p.grad = torch.full((5,), 0.1 * (step + 1), dtype=torch.float64)
            opt.step()
        (grad_of_base,) = torch.autograd.grad(p.sum(), base)
        results.append((p.detach(), grad_of_base))
    assert_bitwise_equal(results[0][0], results[1][0])
    assert_bitwise_equal(results[0][1], results[1][1])


@pytest.mark.parametrize("foreach", [None, False, True])
def test_differentiable_takes_foreach_as_torch_does(foreach):
    """torch's foreach ops have no autograd: differentiable=True with foreach=True raises torch's
    AssertionError at the step, and foreach=None picks the single-tensor loop."""
    outcomes = []
    for cls in (Adadelta, torch.optim.Adadelta):
        generator = torch.Generator().manual_seed(3)
        p = torch.randn(5, dtype=torch.float64, generator=generator).requires_grad_().clone()
        p.grad = torch.randn(5, dtype=torch.float64, generator=generator)
        opt = cls([p], differentiable=True, lr=0.3, foreach=foreach)
        try:
            opt.step()
            outcomes.append(p.detach().clone())
        except AssertionError as error:
            outcomes.append(str(error))
    if foreach:
        assert outcomes[0] == outcomes[1] == "_foreach ops don't support autograd"
    else:
        assert_bitwise_equal(outcomes[0], outcomes[1])


@pytest.mark.parametrize("set_to_none", [True, False])
def test_a_layer_frozen_mid_training_is_stepped_as_torch_steps_it(set_to_none):
    """zero_grad(set_to_none=True) takes a frozen param's grad as torch's does (so it is no longer stepped,
    its weight decay and counter stop); set_to_none=False leaves it a zero grad, which torch steps too."""
    torch.manual_seed(0)
    ours, theirs = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)), None
    theirs = copy.deepcopy(ours)
    optimizers = [Adadelta(ours.parameters(), weight_decay=0.1, flatten=True),
                  torch.optim.Adadelta(theirs.parameters(), weight_decay=0.1)]
    data = torch.randn(8, 4)
    for step in range(4):
        if step == 2:
            for model in (ours, theirs):
                model[0].requires_grad_(False)
        for model, optimizer in zip((ours, theirs), optimizers):
            model(data).square().sum().backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=set_to_none)
    for mine, twin in zip(ours.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(mine, twin, **TOLERANCE[torch.float32])
        assert optimizers[0].state[mine]["step"].item() == optimizers[1].state[twin]["step"].item()
    assert optimizers[1].state[theirs[0].weight]["step"].item() == (2 if set_to_none else 4)
    # The frozen layer's grads are None, as torch's zero_grad left them (the others stay zeroed views).
    assert all((p.grad is None) == set_to_none for p in ours[0].parameters())
    assert all(p.grad is not None for p in ours[1].parameters())


def test_a_param_frozen_between_backward_and_step_is_stepped_with_its_gradient_as_torch_steps_it():
    torch.manual_seed(0)
    ours = torch.nn.Linear(4, 3)
    theirs = copy.deepcopy(ours)
    optimizers = [Adadelta(ours.parameters(), weight_decay=0.1, flatten=True),
                  torch.optim.Adadelta(theirs.parameters(), weight_decay=0.1)]
    data = torch.randn(8, 4)
    for step in range(3):
        for model, optimizer in zip((ours, theirs), optimizers):
            optimizer.zero_grad()
            model(data).square().sum().backward()
            if step == 1:
                model.bias.requires_grad_(False)  # after the backward: its gradient is still this step's
            optimizer.step()
    for mine, twin in zip(ours.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(mine, twin, **TOLERANCE[torch.float32])
        assert optimizers[0].state[mine]["step"].item() == optimizers[1].state[twin]["step"].item()
    assert optimizers[1].state[theirs.bias]["step"].item() == 2


def test_an_edited_group_flattened_anew_keeps_what_its_params_carried():
    """What a param brings into a new buffer when its group is flattened anew: a master copy still to be
    taken from a loaded checkpoint (not the stale copy: the load would be undone), keys of its own in its
    state dict, and (after zero_grad) a param frozen since stays out, unmoved by weight decay, as torch leaves
    it. A deepcopy leaves the stale master copy behind too. An add_param_group right after an edit, and a
    param listed in two groups by an edit (refused, naming both)."""
    model = Net(torch.bfloat16)
    opt = Adadelta(_two_groups(model), flatten=True, master_weights=True, weight_decay=0.1)
    train(model, opt, batches(1, torch.bfloat16))
    checkpoint = {name: torch.full_like(p, 0.5) for name, p in model.named_parameters()}
    model.load_state_dict(checkpoint)
    opt.load_state_dict(torch.optim.Adadelta(_two_groups(Net(torch.bfloat16))).state_dict())  # no masters
    opt.state[model.fc2.bias]["ema"] = torch.ones(7)  # (after the load, which drops keys it lacks, as torch's)
    copied = copy.deepcopy((model, opt))
    opt.param_groups.reverse()
    opt.zero_grad()
    model.fc1.weight.requires_grad_(False)
    frozen = model.fc1.weight.detach().clone()
    for m, o in ((model, opt), copied):
        o.zero_grad()
        for p in m.parameters():
            if p.requires_grad:
                p.grad = torch.zeros_like(p)
        o.step()
        for name, p in m.named_parameters():
            # a zero gradient moves a param only by weight decay: 0.5 * (1 - lr * decay * ...), never back
            assert (p.float() - 0.5).abs().max() < 0.05, name
    assert_bitwise_equal(model.fc1.weight.detach(), frozen)
    assert model.fc1.weight.grad is None
    assert torch.equal(opt.state[model.fc2.bias]["ema"], torch.ones(7))
    groups = opt.param_groups
    groups[0]["params"] = groups[0]["params"][1:]
    opt.add_param_group({"params": [model.fc1.bias], "lr": 0.1})
    opt.step()
    groups[1]["params"].append(groups[0]["params"][0])
    with pytest.raises(ValueError, match=r"a param of shape \(7, 33\) is in param groups 0 and 1"):
        opt.step()


@pytest.mark.parametrize("flatten", [False, True])
def test_a_checkpoint_loaded_before_the_first_step_survives_a_state_dict_round_trip(flatten):
    """With master weights, a model checkpoint and a torch state dict (no master copies) loaded into a built
    optimizer: its state_dict saves the master copy the next step will take from the param (failed before with
    flatten: the buffer's old copy was saved, and a load of it stepped from the weights before the checkpoint).
    A master copy the user assigns since is current, and a deepcopy keeps it."""
    model = Net(torch.bfloat16)
    opt = Adadelta(model.parameters(), flatten=flatten, master_weights=True)
    before_any_step = opt.state_dict()
    model.load_state_dict({name: torch.full_like(p, 0.25) for name, p in model.named_parameters()})
    opt.load_state_dict(before_any_step)  # taken before the model load: its master copies are not current
    train(model, opt, batches(1, torch.bfloat16))
    assert all((p.float() - 0.25).abs().max() < 0.05 for p in model.parameters())
    model.load_state_dict({name: torch.full_like(p, 0.5) for name, p in model.named_parameters()})
    torch_model = Net(torch.bfloat16)
    torch_opt = torch.optim.Adadelta(torch_model.parameters())
    train(torch_model, torch_opt, batches(1, torch.bfloat16))
    opt.load_state_dict(torch_opt.state_dict())
    saved = opt.state_dict()
    for index, p in enumerate(model.parameters()):
        # with flatten, the copy the next step takes from the param (a distributed checkpoint loads into this
        # key); a per-tensor optimizer has none yet
        if flatten:
            assert_bitwise_equal(saved["state"][index]["master_param"], p.detach().float())
        else:
            assert "master_param" not in saved["state"][index]
    fresh_model = copy.deepcopy(model)
    fresh = Adadelta(fresh_model.parameters(), flatten=flatten, master_weights=True)
    fresh.load_state_dict(copy.deepcopy(saved))
    opt.load_state_dict(saved)
    chosen = model.fc2.bias
    opt.state[chosen]["master_param"] = torch.full((7,), 0.25)
    copied_model, copied = copy.deepcopy((model, opt))
    for m, o in ((model, opt), (fresh_model, fresh), (copied_model, copied)):
        for p in m.parameters():
            p.grad = torch.zeros_like(p)
        o.step()
    for m in (model, fresh_model, copied_model):
        for name, p in m.named_parameters():
            expected = 0.25 if m is not fresh_model and name == "fc2.bias" else 0.5
            assert torch.equal(p.float(), torch.full(p.shape, expected)), name


def test_an_edit_cannot_take_back_a_param_another_flat_optimizer_steps():
    model = Net()
    first = Adadelta(_two_groups(model), flatten=True)
    head = first.param_groups[1]["params"].pop()
    second = Adadelta([head], flatten=True)  # taken out of the first optimizer's groups: the second may take it
    first.param_groups[0]["params"].append(head)
    with pytest.raises(ValueError, match=r"param 3 \(shape \(7,\)\) of an edited param group is in the flat buffer "
                                         r"of another optimizer"):
        first.step()
    first.param_groups[0]["params"].pop()
    train(model, first, batches(1))
    second.step()


@pytest.mark.parametrize("flatten", [False, True])
def test_a_distributed_checkpoint_resumes_master_weights_bit_for_bit(flatten, tmp_path):
    """get_state_dict / dcp.save, then a fresh model and optimizer: get_state_dict / dcp.load / set_state_dict.
    DCP loads the keys of the fresh optimizer's state dict, which with flatten has state (and master copies
    still to be taken from the params) from the constructor: they must be saved under their key, or the
    checkpoint's fp32 copies are never read (failed so once: the resumed run drifted by a bf16 ulp)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    data = batches(6, torch.bfloat16)
    model = Net(torch.bfloat16)
    opt = Adadelta(model.parameters(), master_weights=True, flatten=flatten)
    train(model, opt, data[:3])
    model_state, optim_state = get_state_dict(model, opt)
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(tmp_path))
    masters = [opt.state[p]["master_param"].clone() for p in model.parameters()]
    train(model, opt, data[3:])

    resumed = Net(torch.bfloat16, seed=1)
    resumed_opt = Adadelta(resumed.parameters(), master_weights=True, flatten=flatten)
    model_state, optim_state = get_state_dict(resumed, resumed_opt)
    loaded = {"model": model_state, "optim": optim_state}
    dcp.load(loaded, checkpoint_id=str(tmp_path))
    set_state_dict(resumed, resumed_opt, model_state_dict=loaded["model"], optim_state_dict=loaded["optim"])
    for p, master in zip(resumed.parameters(), masters):
        assert_bitwise_equal(resumed_opt.state[p]["master_param"], master)
    train(resumed, resumed_opt, data[3:])
    for (name, p), q in zip(resumed.named_parameters(), model.parameters()):
        assert_bitwise_equal(p.detach(), q.detach(), name)
