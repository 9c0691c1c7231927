"""The eager step's unboxed calls (csrc/python_calls.cpp, ``_extension.call_unboxed``): the same results as
the torch.ops call, still seen by dispatch modes, and torch.ops wherever only it can be right (a torch
function mode, a tensor subclass, torch.compile)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from adadelta_fused import Adadelta, _extension, adadelta_

from conftest import requires_extension

pytestmark = requires_extension

STEP_OP = torch.ops.adadelta_fused.adadelta_.default
QUANTIZED_STEP_OP = torch.ops.adadelta_fused.quantized_adadelta_.default


def _lists(generator, n=5, numel=33):
    params = [torch.randn(numel, generator=generator) for _ in range(n)]
    grads = [torch.randn(numel, generator=generator) for _ in range(n)]
    square_avgs = [torch.rand(numel, generator=generator) for _ in range(n)]
    acc_deltas = [torch.rand(numel, generator=generator) for _ in range(n)]
    steps = [torch.tensor(float(i)) for i in range(n)]
    return params, grads, square_avgs, acc_deltas, steps


@pytest.fixture
def unboxed_calls(monkeypatch):
    """Records the names of the unboxed entries called (and still runs them)."""
    called = []
    module = _extension.module()
    for name in ("step", "quantized_step", "advance_steps"):
        original = getattr(module, name)

        def spy(*args, _name=name, _original=original):
            called.append(_name)
            return _original(*args)

        monkeypatch.setattr(module, name, spy)
    return called


def test_the_unboxed_step_is_bitwise_the_torch_ops_step(unboxed_calls, generator):
    lists = _lists(generator)
    twin = copy.deepcopy(lists)
    adadelta_(*lists, lr=0.7, weight_decay=0.1, backend="cpp")
    assert unboxed_calls == ["step", "advance_steps"]
    params, grads, square_avgs, acc_deltas, steps = twin
    STEP_OP(params, grads, square_avgs, acc_deltas, [], 0.7, None, 0.9, 1e-6, 0.1, False, None, None, 0, False, 0)
    torch.ops.adadelta_fused.advance_steps_.default(steps, None)
    for ours, theirs in zip(lists, twin):
        for a, b in zip(ours, theirs):
            assert torch.equal(a, b)


def test_a_torch_function_mode_sees_the_step_through_torch_ops(unboxed_calls, generator):
    seen = []

    class Recording(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            seen.append(func)
            return func(*args, **(kwargs or {}))

    lists = _lists(generator)
    with Recording():
        adadelta_(*lists, backend="cpp")
    assert STEP_OP in seen and unboxed_calls == []


def test_a_dispatch_mode_sees_the_unboxed_step(unboxed_calls, generator):
    seen = []

    class Recording(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(func)
            return func(*args, **(kwargs or {}))

    lists = _lists(generator)
    twin = copy.deepcopy(lists)
    with Recording():
        adadelta_(*lists, backend="cpp")
    adadelta_(*twin, backend="cpp")
    assert "step" in unboxed_calls and STEP_OP in seen
    for a, b in zip(lists[0], twin[0]):
        assert torch.equal(a, b)


class _Subclass(torch.Tensor):
    """A tensor subclass with its own __torch_function__ (which torch.ops honours and the unboxed call
    cannot)."""

    calls = 0

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func is STEP_OP:
            cls.calls += 1
        return super().__torch_function__(func, types, args, kwargs or {})


def test_a_tensor_subclass_goes_through_torch_ops(unboxed_calls, generator):
    params, grads, square_avgs, acc_deltas, steps = _lists(generator)
    params = [p.as_subclass(_Subclass) for p in params]
    _Subclass.calls = 0
    assert _extension.module().step(params, grads, square_avgs, acc_deltas, [], 1.0, None, 0.9, 1e-6, 0.0, False,
                                    None, None, 0, False, 0) is False
    adadelta_(params, grads, square_avgs, acc_deltas, steps, backend="cpp")
    assert _Subclass.calls == 1


def test_the_autograd_fallthrough_changes_nothing_visible(generator):
    """Without outputs the boxed autograd fallback did nothing a user could see; neither does the
    fallthrough: a leaf that requires grad is updated in grad mode, and a non-leaf keeps its graph."""
    params, grads, square_avgs, acc_deltas, _ = _lists(generator, n=2)
    leaf = params[0].clone().requires_grad_()
    source = params[1].clone().requires_grad_()
    non_leaf = source * 2
    before = leaf.detach().clone()
    adadelta_([leaf, non_leaf], grads, square_avgs, acc_deltas, backend="cpp")
    assert not torch.equal(leaf.detach(), before) and leaf.grad_fn is None and leaf.requires_grad
    non_leaf.sum().backward()
    torch.testing.assert_close(source.grad, torch.full_like(source, 2.0))


def test_an_optimizer_step_takes_the_unboxed_calls(unboxed_calls, generator):
    model = torch.nn.Linear(4, 3)
    opt = Adadelta(model.parameters(), backend="cpp")
    for _ in range(2):
        model(torch.randn(2, 4, generator=generator)).sum().backward()
        opt.step()
    assert unboxed_calls == ["step", "advance_steps"] * 2


def test_a_default_device_context_keeps_the_unboxed_step(unboxed_calls, generator):
    """``torch.set_default_device``/``with torch.device(...)`` is a torch function mode that changes factory
    calls only: the step keeps its unboxed calls (and its results)."""
    lists = _lists(generator)
    twin = copy.deepcopy(lists)
    with torch.device("cpu"):
        adadelta_(*lists, backend="cpp")
    assert unboxed_calls == ["step", "advance_steps"]
    adadelta_(*twin, backend="cpp")
    for ours, theirs in zip(lists, twin):
        for a, b in zip(ours, theirs):
            assert torch.equal(a, b)


def _eight_bit_optimizers(generator, n=3, numel=300):
    """Two optimizers with 8-bit state over equal params, and a function giving both the same new grads."""
    params = [torch.nn.Parameter(torch.randn(numel, generator=generator)) for _ in range(n)]
    twins = copy.deepcopy(params)
    options = dict(lr=0.7, weight_decay=0.1, state_dtype=torch.uint8, backend="cpp")

    def new_grads():
        for p, q in zip(params, twins):
            p.grad = torch.randn(numel, generator=generator)
            q.grad = p.grad.clone()

    return Adadelta(params, **options), Adadelta(twins, **options), new_grads


def test_the_unboxed_8bit_step_is_bitwise_the_torch_ops_step(unboxed_calls, monkeypatch, generator):
    ours, boxed, new_grads = _eight_bit_optimizers(generator)
    for _ in range(3):
        new_grads()
        ours.step()
        with monkeypatch.context() as patch:
            patch.setattr(_extension.module(), "quantized_step", lambda *args: False)  # torch.ops instead
            boxed.step()
    assert unboxed_calls == ["quantized_step", "advance_steps", "advance_steps"] * 3  # the twin: counters only
    for p, q in zip(ours.param_groups[0]["params"], boxed.param_groups[0]["params"]):
        assert torch.equal(p, q)
        assert all(torch.equal(a, b) for a, b in zip(ours.state[p].values(), boxed.state[q].values()))


def test_modes_and_subclasses_see_the_8bit_step(unboxed_calls, generator):
    """A torch function mode gets the quantized op through torch.ops, a dispatch mode sees the unboxed call's
    op, and a tensor subclass makes the unboxed entry decline."""
    seen = []

    class FunctionRecording(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            seen.append(func)
            return func(*args, **(kwargs or {}))

    class DispatchRecording(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(func)
            return func(*args, **(kwargs or {}))

    opt, _, new_grads = _eight_bit_optimizers(generator)
    new_grads()
    with FunctionRecording():
        opt.step()
    assert QUANTIZED_STEP_OP in seen and "quantized_step" not in unboxed_calls
    seen.clear()
    new_grads()
    with DispatchRecording():
        opt.step()
    assert QUANTIZED_STEP_OP in seen and "quantized_step" in unboxed_calls
    params = opt.param_groups[0]["params"]
    states = [opt.state[p] for p in params]
    lists = [[s[key] for s in states] for key in ("square_avg", "acc_delta", "square_avg_scale", "acc_delta_scale")]
    subclassed = [p.detach().as_subclass(_Subclass) for p in params]
    assert _extension.module().quantized_step(subclassed, [p.grad for p in params], lists[0], lists[1], [], lists[2],
                                              lists[3], 1.0, None, 0.9, 1e-6, 0.0, False, None, None, 0, False,
                                              0) is False
