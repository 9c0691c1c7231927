"""adadelta_fused.Adadelta as a drop-in for torch.optim.Adadelta: trajectories, errors, state, backends."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

import adadelta_fused
from adadelta_fused import Adadelta, BackendUnavailableError, FusedAdadelta, available_backends
from adadelta_fused import backends as registry

from conftest import REQUIRE_EXTENSION, TOLERANCE, backends_under_test

BACKENDS = backends_under_test()


class TinyNet(torch.nn.Module):
    """An MLP plus the awkward parameters a real model has: a conv weight in channels_last, a transposed
    (non-contiguous) matrix, a zero-size tensor, a complex vector, and one parameter that gets no grad."""

    def __init__(self, dtype: torch.dtype, generator: torch.Generator):
        super().__init__()
        def param(*shape, dtype=dtype):
            return torch.nn.Parameter(torch.randn(*shape, generator=generator, dtype=torch.float64).to(dtype))
        self.hidden = param(13, 31)
        self.out = torch.nn.Parameter(param(7, 31).detach().t())  # a transposed view: non-contiguous
        self.bias = param(7)
        self.conv = torch.nn.Parameter(param(4, 3, 3, 3).detach().to(memory_format=torch.channels_last))
        self.empty = param(0, 5)
        complex_dtype = torch.complex128 if dtype == torch.float64 else torch.complex64
        self.phase = torch.nn.Parameter(torch.randn(6, generator=generator, dtype=complex_dtype))
        self.unused = param(3)

    def forward(self, x: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        y = torch.tanh(x @ self.hidden) @ self.out + self.bias
        conv = torch.nn.functional.conv2d(image, self.conv).mean()
        return (y**2).mean() + conv + self.empty.sum() + (self.phase * self.phase.conj()).real.mean() * 0.1


CONFIGS = {
    "default": dict(),
    "lr": dict(lr=0.37),
    "lr_tensor": dict(lr=torch.tensor(0.5)),
    "weight_decay": dict(weight_decay=0.1),
    "maximize": dict(maximize=True),
    "maximize_weight_decay": dict(maximize=True, weight_decay=0.1),
    "rho_0.95_wd_0.9": dict(rho=0.95, weight_decay=0.9),
}



def make_pair(dtype, generator, **kwargs):
    model = TinyNet(dtype, generator)
    twin = copy.deepcopy(model)
    return model, twin


def train(model, optimizer, dtype, steps, generator_seed=0, lr_schedule=None):
    g = torch.Generator().manual_seed(generator_seed)
    for step in range(steps):
        if lr_schedule is not None:
            for group in optimizer.param_groups:
                group["lr"] = lr_schedule(step)
        x = torch.randn(16, 13, generator=g, dtype=torch.float64).to(dtype)
        image = torch.randn(2, 3, 5, 5, generator=g, dtype=torch.float64).to(dtype).to(memory_format=torch.channels_last)
        optimizer.zero_grad()
        model(x, image).backward()
        optimizer.step()


def assert_models_close(model, twin, dtype):
    for (name, a), b in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, **TOLERANCE[dtype], msg=lambda m: f"{name}: {m}")
        assert a.stride() == b.stride(), f"{name}: layout changed"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("config", CONFIGS)
def test_matches_torch_adadelta_over_25_steps(backend, dtype, config, generator):
    model, twin = make_pair(dtype, generator)
    kwargs = CONFIGS[config]
    theirs = torch.optim.Adadelta(model.parameters(), **kwargs)
    ours = Adadelta(twin.parameters(), backend=backend, **copy.deepcopy(kwargs))
    train(model, theirs, dtype, 25)
    train(twin, ours, dtype, 25)
    assert_models_close(model, twin, dtype)
    assert ours.state_dict()["state"][0]["step"].item() == 25
    assert twin.unused not in ours.state, "a param without grad gets no state, as in torch"


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_param_groups_and_lr_changed_between_steps(backend, generator):
    model, twin = make_pair(torch.float32, generator)
    def groups(m):
        return [
            dict(params=[m.hidden, m.bias, m.phase], lr=0.5, rho=0.8),
            dict(params=[m.out, m.conv, m.empty, m.unused], weight_decay=0.3, maximize=False, eps=1e-4),
        ]
    theirs = torch.optim.Adadelta(groups(model), lr=1.0)
    ours = Adadelta(groups(twin), lr=1.0, backend=backend)
    schedule = lambda step: 1.0 / (1 + step)
    train(model, theirs, torch.float32, 20, lr_schedule=schedule)
    train(twin, ours, torch.float32, 20, lr_schedule=schedule)
    assert_models_close(model, twin, torch.float32)


def test_fused_alias_and_defaults():
    assert FusedAdadelta is Adadelta
    opt = Adadelta([torch.nn.Parameter(torch.randn(3))])
    ref = torch.optim.Adadelta([torch.nn.Parameter(torch.randn(3))])
    ours = {k: v for k, v in opt.defaults.items() if k not in Adadelta._OPTIONS}
    assert ours == ref.defaults
    options = dict(backend="auto", flatten=False, zero_grad_in_step=False, state_dtype=None, master_weights=False,
                   stochastic_rounding=False, seed=0, step_in_backward=False)
    assert {k: opt.defaults[k] for k in Adadelta._OPTIONS} == options
    # The options are the optimizer's: no param group (nor its state_dict) carries them.
    assert not set(Adadelta._OPTIONS) & set(opt.param_groups[0]) and set(opt.param_groups[0]) <= set(opt.defaults) | {"params"}
    # So a group holds torch's keys and no others (DCP maps every group key onto the target's).
    assert set(opt.state_dict()["param_groups"][0]) == set(ref.state_dict()["param_groups"][0])


# ---- validation: the same exception types and messages as torch.optim.Adadelta ----

INVALID = {
    "negative_lr": (dict(lr=-0.1), ValueError),
    "rho_above_1": (dict(rho=1.5), ValueError),
    "rho_below_0": (dict(rho=-0.01), ValueError),
    "negative_eps": (dict(eps=-1e-8), ValueError),
    "negative_weight_decay": (dict(weight_decay=-1.0), ValueError),
    "tensor_lr_2_elements": (dict(lr=torch.tensor([0.1, 0.2])), ValueError),
}


def _error_of(factory, *args, **kwargs):
    with pytest.raises(Exception) as info:
        factory(*args, **kwargs)
    return type(info.value), str(info.value)


@pytest.mark.parametrize("case", INVALID)
def test_invalid_hyperparameters_raise_like_torch(case):
    kwargs, error = INVALID[case]
    params = [torch.nn.Parameter(torch.randn(3))]
    assert _error_of(Adadelta, params, **kwargs) == _error_of(torch.optim.Adadelta, params, **kwargs)
    assert _error_of(Adadelta, params, **kwargs)[0] is error


def test_params_as_bare_tensor_raise_like_torch():
    tensor = torch.nn.Parameter(torch.randn(3))
    assert _error_of(Adadelta, tensor) == _error_of(torch.optim.Adadelta, tensor)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sparse_gradient_is_stepped_where_torch_raises(backend):
    """torch.optim.Adadelta refuses sparse gradients; this one steps them (tests/test_sparse.py: how exactly)."""
    for cls in (Adadelta, torch.optim.Adadelta):
        embedding = torch.nn.Embedding(10, 3, sparse=True)
        opt = cls(embedding.parameters(), **({"backend": backend} if cls is Adadelta else {}))
        embedding(torch.tensor([1, 2])).sum().backward()
        before = embedding.weight.detach().clone()
        if cls is torch.optim.Adadelta:
            with pytest.raises(RuntimeError, match="^Adadelta does not support sparse gradients$"):
                opt.step()
        else:
            opt.step()
            moved = (embedding.weight.detach() != before).any(dim=1)
            assert moved.tolist() == [i in (1, 2) for i in range(10)]


@pytest.mark.parametrize("lr", [float("nan"), float("inf")])
def test_nonfinite_lr_raises_at_step(lr):
    param = torch.nn.Parameter(torch.randn(3))
    opt = Adadelta([param])
    opt.param_groups[0]["lr"] = lr
    param.grad = torch.randn(3)
    before = param.detach().clone()
    with pytest.raises(ValueError, match=f"Invalid learning rate: {lr}"):
        opt.step()
    assert torch.equal(param.detach(), before)


def test_functional_rejects_mismatched_devices_and_lists():
    params = [torch.randn(3)]
    with pytest.raises(ValueError, match="grads has 0 tensors but params has 1"):
        adadelta_fused.adadelta_(params, [], [torch.zeros(3)], [torch.zeros(3)])
    with pytest.raises(ValueError, match="Invalid grad_mode: 'sometimes'"):
        adadelta_fused.adadelta_(params, [torch.randn(3)], [torch.rand(3)], [torch.rand(3)], grad_mode="sometimes")
    with pytest.raises(ValueError, match="found_inf is on meta but the params are on cpu"):
        adadelta_fused.adadelta_(
            params, [torch.randn(3)], [torch.rand(3)], [torch.rand(3)], found_inf=torch.zeros((), device="meta"),
            backend="reference",
        )


# ---- state_dict: both directions with torch.optim.Adadelta ----

@pytest.mark.parametrize("direction", ["torch_to_ours", "ours_to_torch"])
def test_state_dict_round_trip_with_torch(direction, generator):
    model, twin = make_pair(torch.float32, generator)
    first_cls, second_cls = (
        (torch.optim.Adadelta, Adadelta) if direction == "torch_to_ours" else (Adadelta, torch.optim.Adadelta)
    )
    # Both models train 10 steps with the first class; then the twin continues with the other class,
    # loaded from the first optimizer's state_dict, and must follow the same trajectory.
    first = first_cls(model.parameters(), lr=0.7, weight_decay=0.05)
    train(model, first, torch.float32, 10)
    twin.load_state_dict(model.state_dict())
    second = second_cls(twin.parameters(), lr=0.7, weight_decay=0.05)
    second.load_state_dict(copy.deepcopy(first.state_dict()))  # as a checkpoint on disk would be
    for state in second.state.values():
        assert set(state) == {"step", "square_avg", "acc_delta"}
    train(model, first, torch.float32, 10, generator_seed=1)
    train(twin, second, torch.float32, 10, generator_seed=1)
    assert_models_close(model, twin, torch.float32)
    assert second.state_dict()["state"][0]["step"].item() == 20


# ---- backend selection ----

def test_available_backends_reports_every_backend():
    report = available_backends()
    assert set(report) == {"cpp", "triton", "reference"}
    assert report["reference"] == "available"
    if REQUIRE_EXTENSION:
        assert report["cpp"] == "available"


def _record_backend_calls(monkeypatch) -> list[str]:
    """The names of the backends whose step_ runs from now on, one entry a call."""
    used = []
    for name in registry.BACKEND_NAMES:
        module, _ = registry._load(name)
        if module is not None:
            original = module.step_
            monkeypatch.setattr(module, "step_", lambda *a, _n=name, _f=original: (used.append(_n), _f(*a)))
    return used


def _used_backend(monkeypatch, backend_arg=None, env=None):
    used = _record_backend_calls(monkeypatch)
    if env is None:
        monkeypatch.delenv(registry.ENV_VAR, raising=False)
    else:
        monkeypatch.setenv(registry.ENV_VAR, env)
    param = torch.nn.Parameter(torch.randn(5))
    param.grad = torch.randn(5)
    Adadelta([param], backend=backend_arg or "auto").step()
    return used


def test_explicit_backend_is_used(monkeypatch):
    assert _used_backend(monkeypatch, "reference") == ["reference"]


def test_environment_variable_selects_backend(monkeypatch):
    assert _used_backend(monkeypatch, env="reference") == ["reference"]


def test_argument_overrides_environment(monkeypatch):
    if "cpp" not in BACKENDS:
        pytest.skip("needs the compiled extension")
    assert _used_backend(monkeypatch, "cpp", env="reference") == ["cpp"]


def test_auto_uses_the_fused_cpu_kernel(monkeypatch):
    expected = "cpp" if "cpp" in BACKENDS else "reference"
    assert _used_backend(monkeypatch) == [expected]


@pytest.mark.parametrize("flatten", [False, True])
def test_environment_variable_changed_between_steps_takes_effect_in_the_next_step(monkeypatch, flatten):
    """Steps reuse their plans (the per-tensor cache, a flat buffer's plan): a plan made for one requested
    backend is not reused once the environment asks for another, and is again when it asks back."""
    if "cpp" not in BACKENDS:
        pytest.skip("needs the compiled extension")
    used = _record_backend_calls(monkeypatch)
    model = torch.nn.Linear(4, 3)
    opt = Adadelta(model.parameters(), flatten=flatten)
    for env in (None, None, "reference", "reference", "cpp", None):
        if env is None:
            monkeypatch.delenv(registry.ENV_VAR, raising=False)
        else:
            monkeypatch.setenv(registry.ENV_VAR, env)
        opt.zero_grad()
        model(torch.randn(2, 4)).square().sum().backward()
        opt.step()
    assert used == ["cpp", "cpp", "reference", "reference", "cpp", "cpp"]  # one (device, dtype) group: a call a step


def test_an_invalid_backend_in_the_environment_is_named(monkeypatch):
    monkeypatch.setenv(registry.ENV_VAR, "CPP")
    param = torch.nn.Parameter(torch.randn(3))
    param.grad = torch.randn(3)
    with pytest.raises(ValueError, match="Invalid ADADELTA_FUSED_BACKEND='CPP' in the environment"):
        Adadelta([param]).step()


@pytest.fixture
def reprobed():
    """The backend registry probes afresh in the test, and again after it (and after monkeypatch's undoing, when
    requested before monkeypatch)."""
    registry.reprobe()
    yield
    registry.reprobe()


def test_a_backend_that_could_not_run_is_asked_again(reprobed, monkeypatch):
    """The triton backend's error says to set TRITON_INTERPRET=1 on a machine without a GPU; set later in
    the same process, the next step runs (the failed probe was kept, with its stale reason)."""
    pytest.importorskip("triton")
    if torch.cuda.is_available():
        pytest.skip("a GPU runs the triton backend without the interpreter")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    param = torch.nn.Parameter(torch.randn(3))
    param.grad = torch.randn(3)
    with pytest.raises(BackendUnavailableError, match="TRITON_INTERPRET is not set"):
        Adadelta([param], backend="triton").step()
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    before = param.detach().clone()
    Adadelta([param], backend="triton").step()
    assert not torch.equal(param, before)
    assert available_backends()["triton"] == "available"


def test_missing_backend_raises_with_reason(reprobed, monkeypatch):
    monkeypatch.setitem(registry._MODULES, "cpp", "adadelta_fused.backends.does_not_exist")
    param = torch.nn.Parameter(torch.randn(3))
    param.grad = torch.randn(3)
    with pytest.raises(BackendUnavailableError, match="backend 'cpp' is unavailable: import failed: ModuleNotFound"):
        Adadelta([param], backend="cpp").step()
    assert "import failed" in available_backends()["cpp"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # auto falls back on CPU without a warning
        Adadelta([param]).step()


def test_triton_on_cpu_without_interpreter_raises_with_reason(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    param = torch.nn.Parameter(torch.randn(3))
    param.grad = torch.randn(3)
    with pytest.raises(BackendUnavailableError, match="backend 'triton'"):
        Adadelta([param], backend="triton").step()


def test_unknown_backend_name_and_a_seed_that_is_no_integer_are_refused_when_the_optimizer_is_built():
    param = torch.nn.Parameter(torch.randn(3))
    with pytest.raises(ValueError, match="Invalid backend: 'fastest'"):
        Adadelta([param], backend="fastest")
    with pytest.raises(TypeError, match="Invalid seed: 'x' \\(expected an integer\\)"):
        Adadelta([param], seed="x")
    with pytest.raises(TypeError, match="Invalid seed: 1.5"):
        Adadelta([param], seed=1.5)
    with pytest.raises(TypeError, match="Invalid seed: True"):
        Adadelta([param], seed=True)
    assert Adadelta([param], seed=torch.tensor(7)).defaults["seed"] == 7


def test_auto_on_a_gpu_falls_back_with_one_warning(reprobed, monkeypatch):
    """Simulated: with neither fused backend usable, a CUDA device resolves to the reference, warning once."""
    monkeypatch.setitem(registry._MODULES, "cpp", "adadelta_fused.backends.not_built")
    monkeypatch.setitem(registry._MODULES, "triton", "adadelta_fused.backends.not_installed")
    monkeypatch.delenv(registry.ENV_VAR, raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            module = registry.resolve(None, torch.device("cuda", 0))
    assert module.NAME == "reference"
    assert len(caught) == 1
    assert "'cpp' unavailable" in str(caught[0].message) and "'triton' unavailable" in str(caught[0].message)


@pytest.mark.parametrize("key", ["square_avg", "acc_delta"])
def test_one_accumulator_cast_to_another_dtype_is_cast_back_as_torch_keeps_stepping(key, generator):
    ours = torch.nn.Parameter(torch.randn(5, generator=generator))
    theirs = torch.nn.Parameter(ours.detach().clone())
    optimizers = [Adadelta([ours]), torch.optim.Adadelta([theirs])]
    for step in range(3):
        grad = torch.randn(5, generator=generator)
        ours.grad, theirs.grad = grad.clone(), grad.clone()
        for optimizer in optimizers:
            optimizer.step()
        if step == 0:
            for optimizer, p in zip(optimizers, (ours, theirs)):
                optimizer.state[p][key].data = optimizer.state[p][key].data.double()
    torch.testing.assert_close(ours, theirs, rtol=2e-5, atol=2e-6)
    assert optimizers[0].state[ours][key].dtype == torch.float32


@pytest.mark.parametrize("flatten", [False, True])
def test_a_write_to_a_param_with_a_master_copy_survives_the_next_step_after_sync_master_weights(flatten):
    p = torch.nn.Parameter(torch.full((4,), 3.0, dtype=torch.bfloat16))
    optimizer = Adadelta([p], lr=1.0, master_weights=True, flatten=flatten)
    p.grad = torch.ones(4, dtype=torch.bfloat16)
    optimizer.step()
    with torch.no_grad():
        p.clamp_(-1, 1)
    optimizer.sync_master_weights()
    p.grad = torch.zeros(4, dtype=torch.bfloat16)  # a zero gradient: the step moves nothing
    optimizer.step()
    assert torch.equal(p, torch.ones(4, dtype=torch.bfloat16))
    assert torch.equal(optimizer.state[p]["master_param"], torch.ones(4))
