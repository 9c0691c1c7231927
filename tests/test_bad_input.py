"""Bad input and aliasing (issue 18): a clear error before anything is written, or torch's result.

Every error test snapshots every input tensor, forces the error, and checks that each one is bit-identical
afterwards: a step is applied whole or not at all.
"""

from __future__ import annotations

import copy
import re
import threading

import numpy as np
import pytest
import torch
from torch.optim.adadelta import adadelta as torch_adadelta

from adadelta_fused import Adadelta, adadelta_
from adadelta_fused import _extension

from conftest import REQUIRE_EXTENSION, TOLERANCE, assert_bitwise_equal

needs_validator = pytest.mark.skipif(
    _extension.module() is None and not REQUIRE_EXTENSION, reason="the validator lives in the compiled extension"
)
pytestmark = needs_validator


def group(generator, n=3, numel=37, dtype=torch.float32, state_dtype=None):
    state_dtype = state_dtype or dtype
    def randn(scale=1.0, dtype=dtype):
        return (torch.randn(numel, generator=generator, dtype=torch.float64) * scale).to(dtype)
    params = [randn() for _ in range(n)]
    grads = [randn(0.1) for _ in range(n)]
    square_avgs = [randn(0.1, state_dtype).abs() for _ in range(n)]
    acc_deltas = [randn(0.01, state_dtype).abs() for _ in range(n)]
    steps = [torch.tensor(float(i)) for i in range(n)]
    return params, grads, square_avgs, acc_deltas, steps


_BITS = {8: torch.int64, 4: torch.int32, 2: torch.int16}


def bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bits (meta tensors have none to compare: their metadata stands in)."""
    if t.is_meta:
        return torch.tensor(list(t.shape))
    return t.detach().contiguous().view(_BITS[t.element_size()]).clone()


def snapshot(*lists):
    return [[bits(t) for t in tensors] for tensors in lists]


def assert_unchanged(before, lists):
    for saved, tensors in zip(before, lists):
        assert len(saved) == len(tensors)
        for index, (a, b) in enumerate(zip(saved, tensors)):
            assert torch.equal(a, bits(b)), f"tensor {index} changed"


def assert_refused(every_backend, lists, match, error=Exception, **kwargs):
    before = snapshot(*lists)
    with pytest.raises(error, match=match):
        adadelta_(*lists, backend=every_backend, **kwargs)
    assert_unchanged(before, lists)


# 1. versions -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("grad_mode", ["keep", "unscale", "zero"])
def test_step_bumps_the_version_of_every_tensor_it_may_write(every_backend, grad_mode, generator):
    """Every list the schema marks mutable, grads in every mode, as torch's own fused ops do."""
    params, grads, square_avgs, acc_deltas, steps = group(generator)
    lists = (params, grads, square_avgs, acc_deltas, steps)
    before = [[t._version for t in tensors] for tensors in lists]
    grad_scale = torch.tensor(2.0) if grad_mode == "unscale" else None
    adadelta_(*lists, backend=every_backend, grad_mode=grad_mode, grad_scale=grad_scale)
    after = [[t._version for t in tensors] for tensors in lists]
    for name, old, new in zip(("params", "grads", "square_avgs", "acc_deltas", "steps"), before, after):
        assert all(n > o for o, n in zip(old, new)), name


def test_backward_through_stepped_weights_raises_like_torch(every_backend, generator):
    for optimizer in (torch.optim.Adadelta, lambda ps: Adadelta(ps, backend=every_backend)):
        w = torch.nn.Parameter(torch.randn(5, generator=generator))
        loss = (w * w).sum()  # saves w for backward
        w.grad = torch.randn(5, generator=generator)
        optimizer([w]).step()
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            loss.backward()


# 2. and 3. the same memory twice in one call ------------------------------------------------------------------

def test_the_same_param_twice_is_refused_at_construction(generator):
    w = torch.nn.Parameter(torch.randn(4, generator=generator))
    with pytest.raises(ValueError, match="param 1 of the new param group is the same tensor as param 0"):
        Adadelta([w, w])


@pytest.mark.parametrize("case", ["same_param_twice", "grad_overlaps_param", "params_overlap",
                                  "square_avg_is_acc_delta", "grad_is_param", "second_shared_storage"])
def test_overlapping_tensors_are_refused(every_backend, case, generator):
    params, grads, square_avgs, acc_deltas, steps = group(generator, n=2)
    base = torch.randn(40, generator=generator)
    if case == "same_param_twice":
        params[1] = params[0]
        match = r"params\[1\] and params\[0\] share memory"
    elif case == "grad_overlaps_param":
        params[0], grads[0] = base[1:38], base[:37]
        match = r"share memory"
    elif case == "params_overlap":
        params[0], params[1] = base[:37], base[3:40]
        match = r"share memory"
    elif case == "square_avg_is_acc_delta":
        acc_deltas[1] = square_avgs[1]
        match = r"acc_deltas\[1\] and square_avgs\[1\] share memory"
    elif case == "second_shared_storage":
        # The grads share a storage harmlessly (read only); the overlap is in the next shared storage.
        grads[0], grads[1] = base[:37], base[2:39]
        other = torch.rand(40, generator=generator)
        acc_deltas[0], acc_deltas[1] = other[:37], other[3:40]
        match = r"acc_deltas\[1\] and acc_deltas\[0\] share memory"
    else:
        grads[0] = params[0]
        match = r"share memory"
    assert_refused(every_backend, (params, grads, square_avgs, acc_deltas, steps), match, ValueError)


@pytest.mark.parametrize("case", ["column blocks", "interleaved rows", "interleaved columns", "3-d slices"])
def test_interleaved_views_that_share_no_element_step_as_torch_steps_them(every_backend, case, generator):
    """Views whose byte ranges interleave without a common element (two column blocks of one matrix) were
    refused as overlapping; torch steps them, and so does every backend now, to torch's numbers."""
    def views(base):
        if case == "column blocks":
            return [base.view(8, 10)[:, :3], base.view(8, 10)[:, 3:]]
        if case == "interleaved rows":
            return [base.view(8, 10)[::2], base.view(8, 10)[1::2]]
        if case == "interleaved columns":
            return [base.view(8, 10)[:, ::2], base.view(8, 10)[:, 1::2]]
        return [base.view(2, 4, 10)[:, :, 1:4], base.view(2, 4, 10)[:, 1:, 5:]]

    base = torch.randn(80, generator=generator)
    twin, original = base.clone(), base.clone()
    grads = [torch.randn(v.shape, generator=generator) for v in views(base)]
    ours = [torch.nn.Parameter(v) for v in views(base)]
    theirs = [torch.nn.Parameter(v) for v in views(twin)]
    for make, params in ((lambda ps: Adadelta(ps, lr=0.5, backend=every_backend), ours),
                         (lambda ps: torch.optim.Adadelta(ps, lr=0.5), theirs)):
        opt = make(params)
        for _ in range(2):
            for p, g in zip(params, grads):
                p.grad = g.clone()
            opt.step()
    torch.testing.assert_close(base, twin, rtol=1e-6, atol=1e-7)
    stepped = torch.zeros(80, dtype=torch.bool)
    for view in views(stepped):
        view.fill_(True)
    assert not torch.equal(base[stepped], original[stepped]) and torch.equal(base[~stepped], original[~stepped])


@pytest.mark.parametrize("pair", ["columns 0-3 and 3-9", "every 2nd from 0 and from 2", "every 2nd and 3rd",
                                  "a row and a column"])
def test_strided_views_that_share_an_element_are_refused(every_backend, pair, generator):
    """The exact check still refuses views that share even one element (and any pair it cannot decide)."""
    base = torch.randn(80, generator=generator)
    matrix = base.view(8, 10)
    first, second = {
        "columns 0-3 and 3-9": (matrix[:, :4], matrix[:, 3:]),
        "every 2nd from 0 and from 2": (base[0:70:2], base[2:72:2]),
        "every 2nd and 3rd": (base[::2], base[::3]),
        "a row and a column": (matrix[2], matrix[:, 5]),
    }[pair]
    params = [torch.nn.Parameter(first), torch.nn.Parameter(second)]
    for p in params:
        p.grad = torch.randn(p.shape, generator=generator)
    before = base.clone()
    with pytest.raises(ValueError, match="share memory"):
        Adadelta(params, backend=every_backend).step()
    assert torch.equal(base, before)


def test_disjoint_views_of_one_storage_are_fine(every_backend, generator):
    base = torch.randn(80, generator=generator)
    params = [base[:37], base[40:77]]
    twins = [p.clone() for p in params]
    grads = [torch.randn(37, generator=generator) for _ in params]
    square_avgs = [torch.rand(37, generator=generator) for _ in params]
    acc_deltas = [torch.rand(37, generator=generator) for _ in params]
    torch_adadelta(twins, grads, [s.clone() for s in square_avgs], [a.clone() for a in acc_deltas],
                   [torch.tensor(0.0), torch.tensor(0.0)], lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0,
                   maximize=False, foreach=False, capturable=False, differentiable=False, has_complex=False)
    adadelta_(params, grads, square_avgs, acc_deltas, backend=every_backend)
    for p, q in zip(params, twins):
        torch.testing.assert_close(p, q, rtol=2e-5, atol=2e-6)


# 4. tensors on other devices (meta) -------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["grad_scale", "found_inf", "grad", "square_avg", "lr"])
def test_a_meta_tensor_beside_cpu_params_is_refused(every_backend, where, generator):
    params, grads, square_avgs, acc_deltas, steps = group(generator)
    kwargs = dict(grad_scale=torch.tensor(2.0), found_inf=torch.tensor(0.0), lr=torch.tensor(0.5))
    if where in kwargs:
        kwargs[where] = kwargs[where].to("meta")
    elif where == "grad":
        grads[1] = grads[1].to("meta")
    else:
        square_avgs[2] = square_avgs[2].to("meta")
    assert_refused(every_backend, (params, grads, square_avgs, acc_deltas, steps), "meta", ValueError, **kwargs)


def test_the_op_refuses_meta_grad_scale_with_cpu_params(generator):
    params, grads, square_avgs, acc_deltas, _ = group(generator)
    before = snapshot(params, grads, square_avgs, acc_deltas)
    with pytest.raises(ValueError, match="grad_scale is on meta but the params are on cpu"):
        torch.ops.adadelta_fused.adadelta_(params, grads, square_avgs, acc_deltas, [], 1.0, None, 0.9, 1e-6, 0.0,
                                           False, torch.tensor(2.0, device="meta"), None, 0, False, 0)
    assert_unchanged(before, (params, grads, square_avgs, acc_deltas))


# 5. hyperparameters that overflow the param dtype -------------------------------------------------------------

@pytest.mark.parametrize("dtype, option, value", [
    (torch.float32, "lr", 1e39), (torch.float32, "weight_decay", 1e39), (torch.bfloat16, "lr", 1e39),
    (torch.float16, "lr", 1e5), (torch.float16, "weight_decay", 1e5),
])
def test_hyperparameters_that_overflow_the_dtype_raise_like_torch(every_backend, dtype, option, value, generator):
    for optimizer in (torch.optim.Adadelta, lambda ps, **kw: Adadelta(ps, backend=every_backend, **kw)):
        w = torch.nn.Parameter(torch.randn(9, generator=generator).to(dtype))
        w.grad = torch.randn(9, generator=generator).to(dtype)
        before = w.detach().clone()
        with pytest.raises(RuntimeError, match="cannot be converted to type .* without overflow"):
            optimizer([w], **{option: value}).step()
        assert torch.equal(w, before)


def test_float64_params_take_a_huge_lr_like_torch(every_backend, generator):
    w = torch.nn.Parameter(torch.randn(9, generator=generator, dtype=torch.float64))
    twin = torch.nn.Parameter(w.detach().clone())
    w.grad = torch.randn(9, generator=generator, dtype=torch.float64)
    twin.grad = w.grad.clone()
    Adadelta([w], lr=1e39, backend=every_backend).step()
    torch.optim.Adadelta([twin], lr=1e39).step()
    torch.testing.assert_close(w, twin, rtol=1e-12, atol=0)


# 6. corrupt state ------------------------------------------------------------------------------------------------

def _trained(generator):
    model = torch.nn.Linear(3, 4)
    opt = Adadelta(model.parameters())
    model(torch.randn(2, 3, generator=generator)).sum().backward()
    opt.step()
    return model, opt


@pytest.mark.parametrize("corruption, match", [
    (lambda s: s["state"][0].__setitem__("square_avg", torch.zeros(1)), r"param 0 .*'square_avg' has shape \(1,\)"),
    (lambda s: s["state"][1].pop("acc_delta"), r"param 1 .* lacks 'acc_delta'"),
    (lambda s: s["state"][0].pop("step"), r"param 0 .* lacks 'step'"),
    (lambda s: s["state"].__setitem__(7, s["state"][0]), r"param id 7, which none of its param groups lists"),
])
def test_corrupt_state_is_refused_before_anything_changes(corruption, match, generator):
    model, opt = _trained(generator)
    saved = opt.state_dict()
    bad = copy.deepcopy(saved)
    corruption(bad)
    fresh = Adadelta(model.parameters(), lr=0.5)
    with pytest.raises(ValueError, match=match):
        fresh.load_state_dict(bad)
    assert len(fresh.state) == 0 and fresh.param_groups[0]["lr"] == 0.5
    with pytest.raises(ValueError, match=match):
        opt.load_state_dict(bad)
    for key, value in saved["state"][0].items():
        assert torch.equal(opt.state[model.weight][key], value)


# 7. flatten=True with params that share storage ------------------------------------------------------------------

def test_flatten_refuses_params_that_share_storage(generator):
    base = torch.randn(10, generator=generator)
    a, b = torch.nn.Parameter(base[:5]), torch.nn.Parameter(base[5:])
    with pytest.raises(ValueError, match="param 0 of param group 0 and param 1 of param group 0 share storage"):
        Adadelta([a, b], flatten=True)
    tied = torch.randn(6, generator=generator)
    with pytest.raises(ValueError, match="share storage"):
        Adadelta([torch.nn.Parameter(tied), torch.nn.Parameter(tied)], flatten=True)


# 8. errors after the params were written --------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["expanded_square_avg", "expanded_grad_zero", "expanded_grad_unscale",
                                  "int64_step", "fp16_step", "second_group_bad"])
def test_errors_leave_every_input_unchanged(every_backend, case, generator):
    params, grads, square_avgs, acc_deltas, steps = group(generator)
    kwargs = {}
    match = None
    if case == "expanded_square_avg":
        square_avgs[2] = torch.rand(1, generator=generator).expand(37)
        match = r"square_avgs\[2\] has elements that share memory"
    elif case.startswith("expanded_grad"):
        grads[1] = torch.randn(1, generator=generator).expand(37)
        kwargs = dict(grad_mode=case.rsplit("_", 1)[1], grad_scale=torch.tensor(2.0))
        match = r"grads\[1\] has elements that share memory"
    elif case == "int64_step":
        steps[2] = torch.tensor(3)
        match = r"state_steps\[2\] must be a 1-element float32 or float64 tensor"
    elif case == "fp16_step":
        steps[0] = torch.tensor(3.0, dtype=torch.float16)
        match = r"state_steps\[0\] must be"
    else:
        # Two (device, dtype) groups: the second one's error must come before the first one is written.
        params[2], grads[2] = params[2].double(), grads[2].double()
        square_avgs[2] = torch.rand(37, generator=generator, dtype=torch.float64)
        acc_deltas[2] = torch.rand(3, generator=generator, dtype=torch.float64)
        match = r"acc_deltas\[2\] has shape \[3\] but params\[2\] has \[37\]"  # the row as given
    assert_refused(every_backend, (params, grads, square_avgs, acc_deltas, steps), match, **kwargs)


@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_a_non_finite_weight_decay_is_refused_by_name(every_backend, value, generator):
    """torch steps it into NaN params; refused here (the project's rule for non-finite hyperparameters), with
    what is wrong with it, not as an overflow."""
    w = torch.nn.Parameter(torch.randn(9, generator=generator))
    w.grad = torch.randn(9, generator=generator)
    before = w.detach().clone()
    opt = Adadelta([w], backend=every_backend)
    opt.param_groups[0]["weight_decay"] = value
    with pytest.raises(ValueError, match=r"Invalid weight_decay value: (inf|nan) \(not finite"):
        opt.step()
    assert torch.equal(w, before)


def test_an_lr_of_none_set_in_a_group_raises_a_type_error_as_torch():
    for optimizer in (torch.optim.Adadelta, Adadelta):
        w = torch.nn.Parameter(torch.ones(3))
        w.grad = torch.ones(3)
        opt = optimizer([w])
        opt.param_groups[0]["lr"] = None
        with pytest.raises(TypeError):
            opt.step()


def test_a_bad_param_group_leaves_the_other_groups_unchanged(every_backend, generator):
    good = torch.nn.Parameter(torch.randn(8, generator=generator))
    bad = torch.nn.Parameter(torch.randn(8, generator=generator))
    opt = Adadelta([{"params": [good]}, {"params": [bad], "lr": 1e39}], backend=every_backend)
    good.grad = torch.randn(8, generator=generator)
    bad.grad = torch.randn(8, generator=generator)
    before = good.detach().clone()
    with pytest.raises(RuntimeError, match="without overflow"):
        opt.step()
    assert torch.equal(good, before)


# 9. numpy scalars as lr ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("lr", [np.float32(0.5), np.float64(0.25), np.int64(1), np.array(0.75)])
def test_numpy_lr_trains_like_torch(every_backend, lr, generator):
    w = torch.nn.Parameter(torch.randn(9, generator=generator))
    twin = torch.nn.Parameter(w.detach().clone())
    for p in (w, twin):
        p.grad = torch.ones(9)
    Adadelta([w], lr=lr, backend=every_backend).step()
    torch.optim.Adadelta([twin], lr=lr).step()
    torch.testing.assert_close(w, twin, rtol=2e-5, atol=2e-6)


# 10. a grad with the negative bit ---------------------------------------------------------------------------------

@pytest.mark.parametrize("state_dtype", [None, torch.uint8], ids=["fp32_state", "8bit_state"])
@pytest.mark.parametrize("zero_grad_in_step", [False, True])
def test_a_negated_view_grad_trains_like_torch(every_backend, zero_grad_in_step, state_dtype, generator):
    # (one step from zero state: 8-bit state decodes its zeros exactly, so it steps as fp32 state does)
    z = torch.randn(6, generator=generator, dtype=torch.complex64)
    w = torch.nn.Parameter(torch.randn(6, generator=generator))
    twin = torch.nn.Parameter(w.detach().clone())
    w.grad = z.conj().imag
    twin.grad = z.conj().imag.clone()
    assert w.grad.is_neg()
    Adadelta([w], backend=every_backend, zero_grad_in_step=zero_grad_in_step, state_dtype=state_dtype).step()
    torch.optim.Adadelta([twin]).step()
    torch.testing.assert_close(w, twin, rtol=2e-5, atol=2e-6)
    if zero_grad_in_step:
        assert torch.count_nonzero(z.imag) == 0


# 11. empty lists ------------------------------------------------------------------------------------------------

def test_empty_lists_do_nothing(every_backend):
    adadelta_([], [], [], [], [], backend=every_backend)
    adadelta_([], [], [], [], backend=every_backend)


# 12. sparse layouts ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("where, layout", [("grads", "csr"), ("params", "coo"), ("square_avgs", "coo")])
def test_sparse_layouts_are_named(every_backend, where, layout, generator):
    params, grads, square_avgs, acc_deltas, steps = group(generator, numel=12)
    lists = dict(params=params, grads=grads, square_avgs=square_avgs, acc_deltas=acc_deltas)
    dense = lists[where][1].view(3, 4)
    for name in lists:
        lists[name][1] = lists[name][1].view(3, 4)
    lists[where][1] = dense.to_sparse_csr() if layout == "csr" else dense.to_sparse()
    with pytest.raises((ValueError, RuntimeError), match=rf"{where}\[1\] has layout torch.sparse_{layout}"):
        adadelta_(params, grads, square_avgs, acc_deltas, steps, backend=every_backend)


def test_the_op_names_a_sparse_csr_grad(generator):
    params, grads, square_avgs, acc_deltas, _ = group(generator, n=1, numel=12)
    params, square_avgs, acc_deltas = ([t[0].view(3, 4)] for t in (params, square_avgs, acc_deltas))
    grads = [grads[0].view(3, 4).to_sparse_csr()]
    with pytest.raises(ValueError, match=r"grads\[0\] has layout torch.sparse_csr"):
        torch.ops.adadelta_fused.adadelta_(params, grads, square_avgs, acc_deltas, [], 1.0, None, 0.9, 1e-6, 0.0,
                                           False, None, None, 0, False, 0)


# 13. the ops exist once the package is imported ----------------------------------------------------------------------

def test_ops_exist_right_after_import():
    import subprocess
    import sys

    code = (
        "import sys, torch, adadelta_fused\n"
        "print(torch.ops.adadelta_fused.adadelta_.default._schema)\n"
        "print(torch.ops.adadelta_fused.advance_steps_.default._schema)\n"
        "print('triton' in sys.modules, 'torch._inductor' in sys.modules)\n"
        "import adadelta_fused.triton_op\n"
        "print(torch.ops.adadelta_fused.triton_adadelta_.default._schema)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0].startswith("adadelta_fused::adadelta_(Tensor(a!)[] params")
    assert out[1].startswith("adadelta_fused::advance_steps_(Tensor(a!)[] state_steps")
    assert out[2] == "False False", "importing the package must import neither triton nor inductor (seconds)"
    assert out[3].startswith("adadelta_fused::triton_adadelta_(")
    # One schema, declared once. (torch 2.11's triton_op infers its own from the signature: the same
    # arguments and mutations, spelled with other alias-set names and SymInt for int.)
    def spelled_alike(schema: str) -> str:
        return re.sub(r"Tensor\(\w+!\)", "Tensor(!)", schema.split("(", 1)[1]).replace("SymInt", "int")

    assert spelled_alike(out[0]) == spelled_alike(out[3])


# 14. first Triton use from several threads --------------------------------------------------------------------------

def test_first_triton_use_from_three_threads(monkeypatch, generator):
    pytest.importorskip("triton")
    from adadelta_fused import triton_interpreter

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(triton_interpreter, "_MODULES", {})
    errors = []
    barrier = threading.Barrier(3)

    def first_step():
        try:
            params, grads, square_avgs, acc_deltas, steps = group(torch.Generator().manual_seed(1))
            barrier.wait()
            adadelta_(params, grads, square_avgs, acc_deltas, steps, backend="triton")
        except Exception as error:  # reported below, with the thread's error
            errors.append(error)

    threads = [threading.Thread(target=first_step) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


# 15. model.to(torch.float64) after the first step ---------------------------------------------------------------------

def test_model_to_float64_after_a_step_trains_like_torch(every_backend, generator):
    model = torch.nn.Linear(5, 3)
    twin = torch.nn.Linear(5, 3)
    twin.load_state_dict(model.state_dict())
    ours, theirs = Adadelta(model.parameters(), backend=every_backend), torch.optim.Adadelta(twin.parameters())
    for step in range(3):
        if step == 1:
            model.to(torch.float64)
            twin.to(torch.float64)
        for m, opt in ((model, ours), (twin, theirs)):
            opt.zero_grad()
            x = torch.randn(4, 5, generator=torch.Generator().manual_seed(step), dtype=torch.float64)
            m(x.to(m.weight.dtype)).square().mean().backward()
            opt.step()
    for p, q in zip(model.parameters(), twin.parameters()):
        assert p.dtype == torch.float64
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


# One validator: every backend fails with the same words -------------------------------------------------------

PARITY_CASES = {
    "lengths": lambda g: dict(grads=g["grads"][:-1]),
    "shape": lambda g: dict(square_avgs=g["square_avgs"][:-1] + [torch.rand(3)]),
    "dtype": lambda g: dict(acc_deltas=[t.double() for t in g["acc_deltas"]]),
    "nan_lr": lambda g: dict(lr=float("nan")),
    "lr_overflow": lambda g: dict(lr=1e39),
    "grad_scale_dtype": lambda g: dict(grad_scale=torch.tensor(2.0, dtype=torch.float64)),
    "meta_found_inf": lambda g: dict(found_inf=torch.tensor(0.0, device="meta")),
    "overlap": lambda g: dict(acc_deltas=g["square_avgs"]),
    "expanded": lambda g: dict(square_avgs=[torch.rand(1).expand(37)] + g["square_avgs"][1:]),
    "csr_grad": lambda g: {
        **{name: [t.view(37, 1) for t in g[name]] for name in ("params", "grads", "square_avgs", "acc_deltas")},
        "grads": [g["grads"][0].view(37, 1).to_sparse_csr()] + [t.view(37, 1) for t in g["grads"][1:]],
    },
    "step_dtype": lambda g: dict(state_steps=[torch.tensor(1)] * 3),
}


@pytest.mark.parametrize("case", PARITY_CASES)
def test_every_backend_fails_with_the_same_words(case, monkeypatch, generator):
    pytest.importorskip("triton")
    from adadelta_fused import backends as registry

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    registry.reprobe()
    messages = {}
    for backend in ("cpp", "reference", "triton"):
        params, grads, square_avgs, acc_deltas, steps = group(torch.Generator().manual_seed(3))
        arguments = dict(params=params, grads=grads, square_avgs=square_avgs, acc_deltas=acc_deltas, state_steps=steps)
        arguments.update(PARITY_CASES[case](arguments))
        with pytest.raises(Exception) as error:
            adadelta_(**arguments, backend=backend)
        messages[backend] = (type(error.value).__name__, str(error.value).split("\nException raised from")[0])
    registry.reprobe()
    assert messages["cpp"] == messages["reference"] == messages["triton"], messages


# The functional step's counters, sequences and positions (a bug hunt's findings, each refused or run whole) ---

@pytest.mark.parametrize("case", ["one_counter_short", "one_counter_long", "mixed_dtypes_name_the_given_index",
                                  "none_grad", "inference_param_in_the_second_group"])
def test_functional_step_refuses_before_writing(every_backend, case, generator):
    params, grads, square_avgs, acc_deltas, steps = group(generator)
    match, error = {
        "one_counter_short": (r"state_steps has 2 tensors but params has 3", ValueError),
        "one_counter_long": (r"state_steps has 4 tensors but params has 3", ValueError),
        "inference_param_in_the_second_group": (r"params\[2\] is an inference tensor", RuntimeError),
        "none_grad": (r"grads\[1\] is NoneType, not a tensor", TypeError),
        "mixed_dtypes_name_the_given_index": (r"square_avgs\[2\] has dtype Float, unsupported with Double", TypeError),
    }[case]
    if case == "one_counter_short":
        steps = steps[:2]
    elif case == "one_counter_long":
        steps = steps + [torch.tensor(0.0)]
    elif case == "none_grad":
        grads[1] = None
    elif case == "inference_param_in_the_second_group":
        with torch.inference_mode():
            params[2], grads[2] = params[2].double(), grads[2].double()
        square_avgs[2], acc_deltas[2] = square_avgs[2].double(), acc_deltas[2].double()
    else:  # the third row fp64 params and grads, its square_avg fp32: the validator saw it as row 0 of its group
        params[2], grads[2], acc_deltas[2] = params[2].double(), grads[2].double(), acc_deltas[2].double()
    if case == "none_grad":  # (no bits to snapshot in a None)
        before = snapshot(params, square_avgs, acc_deltas, steps)
        with pytest.raises(error, match=match):
            adadelta_(params, grads, square_avgs, acc_deltas, steps, backend=every_backend)
        return assert_unchanged(before, [params, square_avgs, acc_deltas, steps])
    assert_refused(every_backend, [params, grads, square_avgs, acc_deltas, steps], match, error)


def test_an_inference_grad_is_read_as_torch_reads_it(every_backend, generator):
    """A grad made under torch.inference_mode(), which the step only reads: torch's functional Adadelta steps
    with it, and so do we (the version bump after the kernel skipped no inference tensor and raised, half-way)."""
    params, grads, square_avgs, acc_deltas, steps = group(generator)
    with torch.inference_mode():
        grads[1] = grads[1].clone()
    twins = [[t.clone() for t in tensors] for tensors in (params, square_avgs, acc_deltas, steps)]
    adadelta_(params, grads, square_avgs, acc_deltas, steps, backend=every_backend)
    torch_adadelta(twins[0], [g.clone() for g in grads], twins[1], twins[2], twins[3], lr=1.0, rho=0.9, eps=1e-6,
                   weight_decay=0.0, maximize=False, foreach=False, capturable=False, differentiable=False,
                   has_complex=False)
    for got, want in zip(params, twins[0]):
        torch.testing.assert_close(got, want, **TOLERANCE[torch.float32])
    assert [float(s) for s in steps] == [float(s) for s in twins[3]]


def test_functional_step_takes_tuples_like_lists(every_backend, generator):
    """Tuples ran the update, then failed to advance the counters (a half-applied step)."""
    lists = group(generator)
    twins = [[t.clone() for t in tensors] for tensors in lists]
    adadelta_(*(tuple(tensors) for tensors in lists), backend=every_backend)
    adadelta_(*twins, backend=every_backend)
    for tensors, expected in zip(lists, twins):
        for got, want in zip(tensors, expected):
            assert_bitwise_equal(got, want)
