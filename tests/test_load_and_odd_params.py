"""load_state_dict that fails part-way, state a load must drop, saved values torch casts, text hyperparameters,
complex params under torch.compile, and params flatten=True cannot move: each next to torch.optim.Adadelta in
the same situation (bug hunts of 2026-12-05)."""

from __future__ import annotations

import copy

import pytest
import torch

from adadelta_fused import Adadelta, adadelta_

from conftest import one_rank_process_group

OPTIONS = [{}, {"flatten": True}, {"state_dtype": torch.uint8}, {"state_dtype": torch.bfloat16}]


def trained(make, generator, steps=3):
    params = [torch.nn.Parameter(torch.randn(n, generator=generator)) for n in (5, 300)]
    opt = make(params)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=generator)
        opt.step()
    return params, opt


def snapshot(params, opt):
    return ([p.detach().clone() for p in params], copy.deepcopy(opt.state_dict()))


def assert_unchanged(before, params, opt):
    old_params, old_state = before
    for old, p in zip(old_params, params):
        assert torch.equal(old, p)
    new_state = opt.state_dict()
    assert new_state["param_groups"] == old_state["param_groups"]
    for key, saved in old_state["state"].items():
        for name, value in saved.items():
            assert torch.equal(new_state["state"][key][name], value), (key, name)


@pytest.mark.parametrize("options", OPTIONS, ids=str)
def test_a_load_that_fails_on_a_value_changes_nothing(options):
    """A saved accumulator on the meta device cannot be read: torch's load raises and leaves the optimizer as
    it was (lr and every state); so does ours, the flat buffers included."""
    outcomes = []
    for make in (lambda ps: torch.optim.Adadelta(ps, lr=0.5), lambda ps: Adadelta(ps, lr=0.5, **options)):
        params, opt = trained(make, torch.Generator().manual_seed(0))
        saved = copy.deepcopy(opt.state_dict())
        saved["param_groups"][0]["lr"] = 0.01
        saved["state"][0]["step"] = torch.tensor(40.0)
        coded = "acc_delta_scale" in saved["state"][1]
        saved["state"][1]["acc_delta"] = torch.empty(300, dtype=torch.uint8 if coded else torch.float32,
                                                     device="meta")
        before = snapshot(params, opt)
        with pytest.raises(NotImplementedError, match="meta"):
            opt.load_state_dict(saved)
        assert_unchanged(before, params, opt)
        assert opt.param_groups[0]["lr"] == 0.5
        for p in params:
            p.grad = torch.ones_like(p)
        opt.step()  # and it still steps
        outcomes.append([p.detach().clone() for p in params])
    if not options:
        for theirs, ours in zip(*outcomes):
            torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("flatten", [False, True])
def test_a_load_drops_the_state_of_a_param_the_checkpoint_lacks(flatten):
    """A param frozen when the optimizer is built (flatten=True leaves it outside the buffers), unfrozen and
    stepped, then a checkpoint from before without its state: torch drops its state, and so does ours."""
    states = []
    for make in (torch.optim.Adadelta, lambda ps: Adadelta(ps, flatten=flatten)):
        g = torch.Generator().manual_seed(1)
        params = [torch.nn.Parameter(torch.randn(4, generator=g)), torch.nn.Parameter(torch.randn(3, generator=g))]
        params[0].requires_grad_(False)
        opt = make(params)
        checkpoint = copy.deepcopy(opt.state_dict())
        params[0].requires_grad_(True)
        for _ in range(3):
            for p in params:
                p.grad = torch.full_like(p, 0.5)
            opt.step()
        opt.load_state_dict(checkpoint)
        states.append(dict(opt.state.get(params[0], {})))
    assert states[0] == {}
    assert states[1] == {}


@pytest.mark.parametrize("state_dtype", [None, torch.bfloat16, torch.uint8], ids=str)
def test_integer_accumulators_load_as_their_values(state_dtype):
    """torch casts a saved accumulator to the param's dtype (int64 ones load as 1.0); 8-bit state quantizes
    the cast values instead of copying the integers into its codes."""
    source = torch.nn.Parameter(torch.ones(300))
    torch_opt = torch.optim.Adadelta([source])
    source.grad = torch.ones(300)
    torch_opt.step()
    saved = copy.deepcopy(torch_opt.state_dict())
    saved["state"][0]["square_avg"] = torch.full((300,), 4, dtype=torch.int64)
    theirs = torch.nn.Parameter(torch.ones(300))
    torch.optim.Adadelta([theirs]).load_state_dict(copy.deepcopy(saved))
    ours = torch.nn.Parameter(torch.ones(300))
    opt = Adadelta([ours], state_dtype=state_dtype)
    opt.load_state_dict(copy.deepcopy(saved))
    loaded = opt.state_dict()
    if state_dtype is torch.uint8:
        from adadelta_fused.quantized import dequantize_state_dict

        loaded = dequantize_state_dict(loaded)
    assert torch.equal(loaded["state"][0]["square_avg"].float(), torch.full((300,), 4.0))


def test_complex_accumulators_do_not_load_into_eight_bit_state():
    saved = {"state": {0: {"step": torch.tensor(1.0), "square_avg": torch.ones(300, dtype=torch.complex64),
                           "acc_delta": torch.ones(300)}},
             "param_groups": [{**Adadelta([torch.zeros(1)]).defaults, "params": [0]}]}
    p = torch.nn.Parameter(torch.ones(300))
    opt = Adadelta([p], state_dtype=torch.uint8)
    with pytest.raises(ValueError, match="'square_avg' is torch.complex64; 8-bit state holds real"):
        opt.load_state_dict(saved)
    assert opt.state.get(p, {}) == {}


@pytest.mark.parametrize("options", [{}, {"flatten": True}], ids=str)
def test_a_saved_key_of_no_ones_is_cast_as_torch_casts_it(options):
    """A key the optimizer does not keep (an "ema" a user stored, nested ones too) moves to the param's dtype
    and device on load, as torch's _process_value_according_to_param_policy moves it."""
    loaded = []
    for make in (torch.optim.Adadelta, lambda ps: Adadelta(ps, **options)):
        p = torch.nn.Parameter(torch.ones(4))
        opt = make([p])
        p.grad = torch.ones(4)
        opt.step()
        saved = copy.deepcopy(opt.state_dict())
        ema = torch.arange(4, dtype=torch.float64)
        saved["state"][0]["ema"] = ema
        saved["state"][0]["history"] = {"last": [torch.ones(2, dtype=torch.float64), 3]}
        opt.load_state_dict(saved)
        state = opt.state[p]
        assert state["ema"] is not ema
        loaded.append((state["ema"], state["history"]))
    (their_ema, their_history), (our_ema, our_history) = loaded
    assert our_ema.dtype == their_ema.dtype == torch.float32
    assert torch.equal(our_ema, their_ema)
    assert our_history["last"][0].dtype == their_history["last"][0].dtype == torch.float32
    assert our_history["last"][1] == their_history["last"][1] == 3


@pytest.mark.parametrize("key, value", [("lr", "0.1"), ("lr", b"1"), ("rho", "0.9"), ("eps", "1e-6"),
                                        ("weight_decay", "0")])
def test_text_hyperparameters_raise_a_type_error_as_torch_does(key, value):
    """float() reads "0.1"; torch's step fails on it with a TypeError, and ours now refuses it with one,
    naming the hyperparameter, before anything is written."""
    for make in (torch.optim.Adadelta, Adadelta):
        p = torch.nn.Parameter(torch.ones(4))
        opt = make([p])
        opt.param_groups[0][key] = value
        p.grad = torch.ones(4)
        with pytest.raises(TypeError) as raised:
            opt.step()
        if make is Adadelta:
            assert {"lr": "learning rate"}.get(key, key) in str(raised.value)
            assert torch.equal(p, torch.ones(4))


def test_differentiable_names_the_fused_option_it_cannot_take():
    p = torch.nn.Parameter(torch.ones(4))
    with pytest.raises(ValueError, match=r"takes none of the fused options \(this optimizer has flatten=True\)"):
        Adadelta([p], flatten=True, differentiable=True)


@pytest.mark.parametrize("backend", ["auto", "cpp", "reference"])
@pytest.mark.parametrize("flatten", [False, True])
def test_complex_params_step_under_torch_compile_as_torch_steps_them(backend, flatten):
    """Inductor's auto_functionalized_v2 rebuilt the view_as_real views a fused op took without their dtype
    change, and the compile failed in the fake kernel; a compiled step now hands the op real dtype views, and
    steps as torch's compiled step and our eager one do."""
    results = []
    for make, compiled in ((torch.optim.Adadelta, True),
                           (lambda ps, **kw: Adadelta(ps, backend=backend, flatten=flatten, **kw), True),
                           (lambda ps, **kw: Adadelta(ps, backend=backend, flatten=flatten, **kw), False)):
        torch._dynamo.reset()
        g = torch.Generator().manual_seed(3)
        params = [torch.nn.Parameter(torch.randn(4, 3, dtype=torch.complex64, generator=g)),
                  torch.nn.Parameter(torch.randn(5, dtype=torch.complex128, generator=g))]
        opt = make(params, lr=0.5, weight_decay=0.1)
        step = torch.compile(opt.step, backend="aot_eager") if compiled else opt.step
        for _ in range(3):
            for p in params:
                p.grad = torch.randn(p.shape, dtype=p.dtype, generator=g)
            step()
        results.append([t.detach().clone() for p in params for t in (p, opt.state[p]["acc_delta"])])
    theirs, compiled, eager = results
    for ours_compiled, ours_eager, torch_compiled in zip(compiled, eager, theirs):
        torch.testing.assert_close(ours_compiled, torch_compiled, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(ours_eager, torch_compiled, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("layout", ["zero_d", "transposed", "grad_strided"])
def test_complex_params_of_any_layout_step_under_torch_compile(layout):
    """A 0-d complex param, a transposed one and a grad with other strides than its param: a compiled step
    (real dtype views need a unit last stride: contiguous copies, written back) steps as torch's does."""
    results = []
    for make, compiled in ((torch.optim.Adadelta, True), (Adadelta, True), (Adadelta, False)):
        torch._dynamo.reset()
        g = torch.Generator().manual_seed(5)
        if layout == "zero_d":
            p = torch.nn.Parameter(torch.randn((), dtype=torch.complex64, generator=g))
        elif layout == "transposed":
            p = torch.nn.Parameter(torch.randn(3, 4, dtype=torch.complex64, generator=g).t())
        else:
            p = torch.nn.Parameter(torch.randn(4, 3, dtype=torch.complex64, generator=g))
        opt = make([p], lr=0.5, weight_decay=0.1)
        step = torch.compile(opt.step, backend="aot_eager") if compiled else opt.step
        for _ in range(3):
            grad = torch.randn(p.shape[::-1], dtype=p.dtype, generator=g)
            p.grad = grad.t() if layout != "zero_d" else grad
            step()
        results.append((p.detach().clone(), opt.state[p]["square_avg"].clone()))
    (theirs, their_sq), (compiled, compiled_sq), (eager, eager_sq) = results
    for ours, our_sq in ((compiled, compiled_sq), (eager, eager_sq)):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(our_sq, their_sq, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("grad_mode", ["keep", "unscale", "zero"])
def test_a_compiled_complex_step_writes_non_contiguous_tensors_back_bit_for_bit(grad_mode):
    """The contiguous copies of a compiled complex step go back into the caller's tensors (params, state, and
    the grads where the step writes them): compiled equals eager bit for bit."""
    def run(compiled):
        torch._dynamo.reset()
        g = torch.Generator().manual_seed(6)
        lists = [[torch.randn(3, 4, dtype=torch.complex64, generator=g).t(),
                  torch.randn((), dtype=torch.complex64, generator=g)] for _ in range(2)]
        lists += [[torch.rand(3, 4, generator=g).to(torch.complex64).t(),
                   torch.rand((), generator=g).to(torch.complex64)] for _ in range(2)]
        scale = torch.tensor(4.0)

        def step():
            adadelta_(*lists, lr=0.5, grad_scale=scale, grad_mode=grad_mode)

        (torch.compile(step, backend="aot_eager") if compiled else step)()
        return [t.clone() for tensors in lists for t in tensors]

    for eager, compiled in zip(run(False), run(True)):
        assert torch.equal(compiled, eager)


def test_a_half_eight_bit_state_is_refused():
    """One accumulator as codes with its scale, the other floating: it loaded as if both were codes (a saved
    0.25 came back 0.0); refused by name."""
    p = torch.nn.Parameter(torch.ones(300))
    opt = Adadelta([p], state_dtype=torch.uint8)
    p.grad = torch.ones(300)
    opt.step()
    saved = copy.deepcopy(opt.state_dict())
    saved["state"][0]["acc_delta"] = torch.full((300,), 0.25)
    del saved["state"][0]["acc_delta_scale"]
    with pytest.raises(ValueError, match="only 'square_avg' is uint8 codes"):
        opt.load_state_dict(saved)


@pytest.mark.parametrize("flatten", [False, True])
def test_a_sparse_accumulator_is_refused_before_anything_changes(flatten):
    params, opt = trained(lambda ps: Adadelta(ps, lr=0.5, flatten=flatten), torch.Generator().manual_seed(4))
    saved = copy.deepcopy(opt.state_dict())
    saved["param_groups"][0]["lr"] = 0.01
    saved["state"][1]["square_avg"] = saved["state"][1]["square_avg"].to_sparse()
    before = snapshot(params, opt)
    with pytest.raises(ValueError, match="'square_avg' has layout torch.sparse_coo"):
        opt.load_state_dict(saved)
    assert_unchanged(before, params, opt)


def test_a_flat_params_own_keys_follow_the_checkpoint_as_torch_s_do():
    """Keys a user stored in a param's state: torch's load drops one the checkpoint lacks and takes the
    checkpoint's value (cast) for one it has, whatever shape or kind the old one was; so does a flat one."""
    states = []
    for make in (torch.optim.Adadelta, lambda ps: Adadelta(ps, flatten=True)):
        p = torch.nn.Parameter(torch.ones(4))
        opt = make([p])
        p.grad = torch.ones(4)
        opt.step()
        saved = copy.deepcopy(opt.state_dict())
        saved["state"][0]["ema"] = torch.arange(6, dtype=torch.float64)
        saved["state"][0]["count"] = 7
        opt.state[p]["ema"] = torch.zeros(4)
        opt.state[p]["count"] = 3
        opt.state[p]["stale"] = torch.ones(1)
        opt.load_state_dict(saved)
        states.append(opt.state[p])
    theirs, ours = states
    assert set(ours) == set(theirs) == {"step", "square_avg", "acc_delta", "ema", "count"}
    assert torch.equal(ours["ema"], theirs["ema"]) and ours["ema"].dtype == theirs["ema"].dtype == torch.float32
    assert ours["count"] == theirs["count"] == 7


def test_flatten_refuses_meta_params_naming_the_device():
    """torch (and ours per tensor) build over meta params; flatten=True cannot move them into a buffer and says
    so, where it used to say they share storage (every meta tensor's data_ptr is 0)."""
    with torch.device("meta"):
        model = torch.nn.Linear(4, 3)
    torch.optim.Adadelta(model.parameters())
    Adadelta(model.parameters())
    with pytest.raises(ValueError, match="param 0 .* is on the meta device"):
        Adadelta(model.parameters(), flatten=True)


def test_flatten_refuses_a_non_leaf_param_clearly():
    """torch optimizes a non-leaf that retains its grad; flatten=True refuses it by name, where it raised
    torch's internal "grad_dtype can only be accessed on leaf tensors"."""
    leaf = torch.nn.Parameter(torch.ones(4))
    non_leaf = leaf * 2
    non_leaf.retain_grad()
    torch.optim.Adadelta([non_leaf])
    Adadelta([non_leaf])
    with pytest.raises(ValueError, match="param 0 .* is not a leaf tensor"):
        Adadelta([non_leaf], flatten=True)


def test_an_optimizer_over_meta_params_loads_its_own_meta_state():
    """Deferred initialization: built and stepped over meta params, its state is meta too, and loads back as
    torch's does (meta values are refused only for params that hold memory)."""
    for make in (torch.optim.Adadelta, Adadelta):
        with torch.device("meta"):
            model = torch.nn.Linear(4, 3)
        opt = make(model.parameters())
        for p in model.parameters():
            p.grad = torch.ones_like(p)
        opt.step()
        opt.load_state_dict(opt.state_dict())
        assert len(opt.state) == 2 and all(state["square_avg"].is_meta for state in opt.state.values())


@pytest.mark.parametrize("flatten", [False, True])
def test_a_dtensor_step_is_refused_before_anything_changes(flatten):
    """A DTensor 'step' (torch keeps a plain one beside DTensor accumulators) failed at the next step, or
    half way through a flat load; refused by name now, the optimizer unchanged."""
    from torch.distributed.tensor import DTensor, Replicate, init_device_mesh

    with one_rank_process_group():
        mesh = init_device_mesh("cpu", (1,))
        params, opt = trained(lambda ps: Adadelta(ps, lr=0.5, flatten=flatten), torch.Generator().manual_seed(7))
        saved = copy.deepcopy(opt.state_dict())
        saved["param_groups"][0]["lr"] = 0.01
        saved["state"][1]["step"] = DTensor.from_local(torch.tensor(5.0), mesh, [Replicate()])
        before = snapshot(params, opt)
        with pytest.raises(ValueError, match="'step' is a DTensor"):
            opt.load_state_dict(saved)
        assert_unchanged(before, params, opt)
