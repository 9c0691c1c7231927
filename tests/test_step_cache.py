"""The per-tensor step's cache (adadelta_fused/step_cache.py): used on every step where nothing changed,
rebuilt after every change a training loop can make, and never changing a result.

Each test runs three optimizers through the same loop and the same event: ours with its cache, ours
planning every step from scratch (the cache cleared before each step: results must be bit for bit equal),
and torch.optim.Adadelta (results within the suite's tolerance). Planning is counted through
``_init_group``, which only an uncached step calls.
"""

from __future__ import annotations

import copy
import pickle
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
import torch

from adadelta_fused import Adadelta, quantized

from conftest import TOLERANCE


class Net(torch.nn.Module):
    """An MLP plus two params that get a gradient only once they are used: ``extra`` (in the optimizer from
    the start) and ``spare`` (outside it until an event adds it)."""

    def __init__(self, generator):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(7, 13), torch.nn.Tanh(), torch.nn.Linear(13, 3))
        self.extra = torch.nn.Parameter(torch.empty(3))
        self.spare = torch.nn.Parameter(torch.empty(3))
        self.use_extra = self.use_spare = False
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=generator, dtype=torch.float64))

    def forward(self, x):
        y = self.body(x)
        y = y * self.extra if self.use_extra else y
        return y * self.spare if self.use_spare else y

    def optimized(self) -> list[torch.nn.Parameter]:
        return [*self.body.parameters(), self.extra]


def loss_backward(model, step: int) -> None:
    x = torch.randn(16, 7, generator=torch.Generator().manual_seed(step), dtype=torch.float64)
    dtype = model.body[0].weight.dtype
    model(x.to(dtype)).square().mean().backward()


@pytest.fixture
def planning(monkeypatch):
    """Counts each optimizer's calls of _init_group: planned[id(optimizer)]."""
    planned: dict[int, int] = defaultdict(int)
    original = Adadelta._init_group

    def counting(self, *args):
        planned[id(self)] += 1
        return original(self, *args)

    monkeypatch.setattr(Adadelta, "_init_group", counting)
    return planned


def _events():
    """name -> (what the event does to one (model, optimizer) pair at step 3, the steps that must plan)."""

    def gain_grad(model, opt):
        model.use_extra = True

    def lose_grad(model, opt):
        model.body[2].bias.grad = None

    def reset_state(model, opt):
        opt.state[model.body[0].weight] = {}

    def delete_state(model, opt):
        del opt.state[model.body[2].weight]

    def clear_state(model, opt):
        opt.state.clear()

    def new_state_mapping(model, opt):
        opt.state = defaultdict(dict, opt.state)

    def replace_step(model, opt):
        opt.state[model.body[0].bias]["step"] = torch.tensor(0.0)

    def replace_square_avg(model, opt):
        p = model.body[0].bias
        held = opt.state[p]["square_avg"]
        opt.state[p]["square_avg"] = torch.full_like(held, 7 if held.dtype is torch.uint8 else 0.5)

    def replace_scale(model, opt):
        state = opt.state[model.body[0].bias]
        if "square_avg_scale" in state:  # (torch's optimizer, stepped beside, keeps no scales)
            state["square_avg_scale"] = state["square_avg_scale"] * 2

    def column_major_weight(model, opt):
        weight = model.body[0].weight
        weight.data = weight.data.t().contiguous().t()

    def append_param(model, opt):
        opt.param_groups[0]["params"].append(model.spare)
        model.use_spare = True

    def reorder_params(model, opt):
        params = opt.param_groups[0]["params"]
        params[0], params[1] = params[1], params[0]

    def add_group(model, opt):
        model.use_spare = True
        opt.add_param_group({"params": [model.spare], "lr": 0.3})

    def change_lr(model, opt):
        opt.param_groups[0]["lr"] = 0.25

    # name -> (the change, the steps that plan with floating state, with 8-bit state; None: not an event there)
    return {
        "gain_grad": (gain_grad, {0, 3}, {0, 3}),
        "lose_grad": (lose_grad, {0, 3, 4}, {0, 3, 4}),  # step 4: the grad is back
        "reset_state": (reset_state, {0, 3}, {0, 3}),
        "delete_state": (delete_state, {0, 3}, {0, 3}),
        "clear_state": (clear_state, {0, 3}, {0, 3}),
        "new_state_mapping": (new_state_mapping, {0, 3, 4, 5}, {0, 3, 4, 5}),  # a mapping the cache cannot watch
        "replace_step": (replace_step, {0, 3}, {0, 3}),
        "replace_square_avg": (replace_square_avg, {0, 3}, {0, 3}),
        "replace_scale": (replace_scale, None, {0, 3}),
        # The dense kernels take any strides; 8-bit codes are re-encoded in the param's new layout once.
        "column_major_weight": (column_major_weight, {0}, {0, 3}),
        "append_param": (append_param, {0, 3}, {0, 3}),
        "reorder_params": (reorder_params, {0, 3}, {0, 3}),  # the same params, another order: other lists
        "add_group": (add_group, {0, 3}, {0, 3}),
        "change_lr": (change_lr, {0}, {0}),  # read from the group on every step, cached or not
    }


EVENTS = _events()
STATE_DTYPES = {"float_state": None, "8bit_state": torch.uint8}
EVENT_CASES = [
    pytest.param(event, state, id=f"{event}-{state}")
    for event, (_, *steps) in EVENTS.items() for state, planned in zip(STATE_DTYPES, steps) if planned is not None
]


def _assert_bitwise(ours: Adadelta, plain: Adadelta, model, plain_model, where: str) -> None:
    for (name, p), q in zip(model.named_parameters(), plain_model.parameters()):
        assert torch.equal(p, q), f"{where}: {name} differs from planning every step"
        a, b = ours.state.get(p, {}), plain.state.get(q, {})
        assert a.keys() == b.keys(), f"{where}: {name} state keys"
        for key in a:
            assert torch.equal(a[key], b[key]), f"{where}: {name} state[{key!r}]"


@pytest.mark.parametrize("event, state", EVENT_CASES)
def test_the_cache_follows_every_change_of_the_loop(event, state, planning, every_backend, generator):
    """With 8-bit state the cached steps are compared with planned ones only: torch keeps no such state."""
    change, *steps = EVENTS[event]
    planning_steps = steps[list(STATE_DTYPES).index(state)]
    model = Net(generator)
    plain_model, torch_model = copy.deepcopy(model), copy.deepcopy(model)
    options = dict(lr=0.9, backend=every_backend, state_dtype=STATE_DTYPES[state])
    ours = Adadelta(model.optimized(), **options)
    plain = Adadelta(plain_model.optimized(), **options)
    theirs = torch.optim.Adadelta(torch_model.optimized(), lr=0.9)
    for step in range(6):
        if step == 3:
            for m, opt in ((model, ours), (plain_model, plain), (torch_model, theirs)):
                change(m, opt)
        planned_before = planning[id(ours)]
        for m, opt in ((model, ours), (plain_model, plain), (torch_model, theirs)):
            opt.zero_grad()
            loss_backward(m, step)
            if event == "lose_grad" and step == 3:
                change(m, opt)  # after backward: this step's grad is dropped
        plain._step_caches.clear()
        for opt in (ours, plain, theirs):
            opt.step()
        planned_now = planning[id(ours)] - planned_before
        if step in planning_steps:
            assert planned_now >= 1, f"step {step}: the cache was used after {event}"
        else:
            assert planned_now == 0, f"step {step}: planned again although nothing changed"
        _assert_bitwise(ours, plain, model, plain_model, f"step {step}")
        if STATE_DTYPES[state] is None:
            for (name, p), q in zip(model.named_parameters(), torch_model.parameters()):
                torch.testing.assert_close(p, q, **TOLERANCE[p.dtype], msg=lambda m: f"step {step}: {name}: {m}")


def test_a_mapping_that_is_not_ours_is_never_cached(planning, generator):
    """``opt.state = defaultdict(dict)``: a mapping whose writes the cache cannot see; every step plans."""
    model = Net(generator)
    opt = Adadelta(model.parameters())
    opt.state = defaultdict(dict)
    for step in range(3):
        opt.zero_grad()
        loss_backward(model, step)
        opt.step()
    assert planning[id(opt)] == 3


@pytest.mark.parametrize("state", STATE_DTYPES)
@pytest.mark.parametrize("event", ["load_state_dict", "deepcopy", "pickle", "to_bfloat16", "skipped_step"])
def test_the_cache_follows_state_loads_copies_dtypes_and_skipped_steps(event, state, planning, generator):
    model = Net(generator)
    plain_model = copy.deepcopy(model)
    ours = Adadelta(model.parameters(), lr=0.9, state_dtype=STATE_DTYPES[state])
    plain = Adadelta(plain_model.parameters(), lr=0.9, state_dtype=STATE_DTYPES[state])
    saved = {}
    for step in range(6):
        if step == 1:
            saved = {id(ours): copy.deepcopy(ours.state_dict()), id(plain): copy.deepcopy(plain.state_dict())}
        if step == 3 and event == "load_state_dict":
            ours.load_state_dict(saved[id(ours)])
            plain.load_state_dict(saved[id(plain)])
        if step == 3 and event in ("deepcopy", "pickle"):
            copier = copy.deepcopy if event == "deepcopy" else lambda x: pickle.loads(pickle.dumps(x))
            model, ours = copier((model, ours))
            plain_model, plain = copier((plain_model, plain))
        if step == 3 and event == "to_bfloat16":
            model.to(torch.bfloat16)
            plain_model.to(torch.bfloat16)
        planned_before = planning[id(ours)]
        for m, opt in ((model, ours), (plain_model, plain)):
            opt.zero_grad()
            loss_backward(m, step)
            if event == "skipped_step" and step == 3:
                opt.grad_scale, opt.found_inf = torch.tensor(1.0), torch.tensor(1.0)
            elif event == "skipped_step":
                opt.grad_scale, opt.found_inf = torch.tensor(1.0), torch.tensor(0.0)
        plain._step_caches.clear()
        ours.step()
        plain.step()
        planned_now = planning[id(ours)] - planned_before
        if step == 0 or (step == 3 and event != "skipped_step"):
            assert planned_now >= 1, f"step {step}: the cache was used after {event}"
        else:
            assert planned_now == 0, f"step {step}: planned again although nothing changed"
        _assert_bitwise(ours, plain, model, plain_model, f"step {step}")
    expected_steps = 5.0 if event == "skipped_step" else (4.0 if event == "load_state_dict" else 6.0)
    assert {float(s["step"]) for s in ours.state.values()} == {expected_steps}
    if event == "to_bfloat16":
        # fp32 state stays fp32 under bf16 params, as torch keeps it (test_torch_semantics.py)
        assert {s["square_avg"].dtype for s in ours.state.values()} == {STATE_DTYPES[state] or torch.float32}


def test_an_8bit_param_reshaped_through_data_is_planned_again(planning):
    """``p.data = p.data.view(...)``: planning re-encodes the codes in the new shape, so the cache must not
    hand the kernel the old one (the op would refuse the shapes)."""
    params = [torch.nn.Parameter(torch.randn(300, generator=torch.Generator().manual_seed(0)))]
    twins = copy.deepcopy(params)
    ours, plain = (Adadelta(ps, lr=0.9, state_dtype=torch.uint8) for ps in (params, twins))
    for step in range(4):
        if step == 2:
            for p in (params[0], twins[0]):
                p.data = p.data.view(20, 15)
        grad = torch.randn(params[0].shape, generator=torch.Generator().manual_seed(step + 1))
        params[0].grad, twins[0].grad = grad, grad.clone()
        plain._step_caches.clear()
        ours.step()
        plain.step()
        assert torch.equal(params[0], twins[0]), f"step {step}"
        assert all(torch.equal(a, b) for a, b in zip(ours.state[params[0]].values(), plain.state[twins[0]].values()))
    assert planning[id(ours)] == 2  # steps 0 and 2
    assert ours.state[params[0]]["square_avg"].shape == (20, 15)


@pytest.mark.parametrize("kernel, start, switch, planned", [
    # A 3x3 conv weight in channels_last: its codes keep its strides and the cache holds; moved back to the
    # contiguous format its codes are re-encoded once (step 3), then cached again.
    pytest.param(3, torch.channels_last, torch.contiguous_format, 2, id="3x3_channels_last_and_back"),
    # A 1x1 conv moved to channels_last changes only its size-1 dims' strides: the same walk, the cache holds.
    pytest.param(1, torch.contiguous_format, torch.channels_last, 1, id="1x1_to_channels_last"),
])
def test_8bit_state_of_a_conv_follows_its_memory_format(kernel, start, switch, planned, planning, generator):
    model = torch.nn.Conv2d(3, 5, kernel).to(memory_format=start)
    twin = copy.deepcopy(model)
    ours, plain = (Adadelta(m.parameters(), lr=0.9, state_dtype=torch.uint8) for m in (model, twin))
    for step in range(5):
        if step == 3:
            for m in (model, twin):
                m.to(memory_format=switch)
        x = torch.randn(2, 3, 6, 6, generator=generator)
        for m, opt in ((model, ours), (twin, plain)):
            opt.zero_grad()
            m(x).square().mean().backward()
        plain._step_caches.clear()
        ours.step()
        plain.step()
        for p, q in zip(model.parameters(), twin.parameters()):
            assert torch.equal(p, q) and p.stride() == q.stride(), f"step {step}"
            assert all(torch.equal(a, b) for a, b in zip(ours.state[p].values(), plain.state[q].values()))
            assert quantized.laid_out_like(ours.state[p]["square_avg"], p)
        if kernel == 1 and step >= 3:  # the case under test: strides that differ in size-1 dims only
            assert ours.state[model.weight]["square_avg"].stride() != model.weight.stride()
    assert planning[id(ours)] == planned


def test_cached_steps_read_this_steps_grads_in_place(planning, generator):
    """A loop that zeroes grads in place (set_to_none=False) keeps the same grad tensors: the cached step
    reads their new values, not a copy."""
    model = Net(generator)
    twin = copy.deepcopy(model)
    ours = Adadelta(model.parameters())
    theirs = torch.optim.Adadelta(twin.parameters())
    for step in range(4):
        for m, opt in ((model, ours), (twin, theirs)):
            opt.zero_grad(set_to_none=False)
            loss_backward(m, step)
            opt.step()
    assert planning[id(ours)] == 1
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, **TOLERANCE[torch.float32])


_WITHOUT_EXTENSION = """
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "adadelta_fused._C":
            raise ImportError("blocked by the test")
sys.meta_path.insert(0, Block())
import torch, adadelta_fused
from adadelta_fused import _extension
assert _extension.module() is None
torch.manual_seed(0)
weights = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(4))]
frozen = torch.nn.Parameter(torch.randn(2))
twins = [torch.nn.Parameter(w.detach().clone()) for w in weights]
ours = adadelta_fused.Adadelta([{"params": weights}, {"params": [frozen]}], lr=0.5)
torch_opt = torch.optim.Adadelta([{"params": twins}, {"params": [torch.nn.Parameter(frozen.detach().clone())]}], lr=0.5)
for step in range(4):
    for w, t in zip(weights, twins):
        w.grad = torch.randn_like(w)
        t.grad = w.grad.clone()
    ours.step()
    torch_opt.step()
for w, t in zip(weights, twins):
    torch.testing.assert_close(w, t, rtol=1e-6, atol=1e-7)
print("ok")
"""


def test_steps_run_and_match_torch_without_the_extension():
    """A missing extension never breaks a step: the step cache's per-step check is native, so without it
    every step plans afresh (on the reference backend), a group of frozen params included."""
    completed = subprocess.run([sys.executable, "-c", _WITHOUT_EXTENSION], capture_output=True, text=True,
                               timeout=300, cwd=Path(__file__).resolve().parent.parent)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.strip().endswith("ok")
