"""Sparse gradients in the optimizer, side by side with dense steps on the densified gradients.

Rows idle at most 64 steps are bit for bit dense Adadelta's (the exact decays), so runs of up to 60 steps are
compared bit for bit with this package's dense step, and within the tolerance table with
torch.optim.Adadelta (whose vectorized sqrt is off by one ulp for some inputs: see reference._sqrt); longer
runs (gaps past the exact bound) within the tolerance table.
"""

from __future__ import annotations

import copy

import pytest
import torch

from adadelta_fused import Adadelta
from adadelta_fused.sparse import rows_and_values
from adadelta_fused.sparse_reference import EXACT_DECAY_STEPS

from conftest import TOLERANCE, assert_bitwise_equal, every_backend  # noqa: F401

pytestmark = pytest.mark.usefixtures("interpreter_fma_rounds_once")

NUM_ROWS, WIDTH = 53, 7  # odd sizes: no row or tile boundary lines up by chance


def random_table(generator, dtype=torch.float32, rows=NUM_ROWS, width=WIDTH) -> torch.Tensor:
    signs = torch.randint(0, 2, (rows, width), generator=generator) * 2 - 1
    return ((torch.rand(rows, width, generator=generator, dtype=torch.float64) + 0.1) * signs).to(dtype)


def sparse_grad(generator, step: int, dtype=torch.float32, rows=NUM_ROWS, width=WIDTH) -> torch.Tensor:
    """An uncoalesced gradient: row 0 every step, row 1 never, a random subset with duplicates, and every
    seventh step an empty one."""
    if step % 7 == 6:
        return torch.sparse_coo_tensor(torch.zeros(1, 0, dtype=torch.int64), torch.zeros(0, width, dtype=dtype),
                                       (rows, width))
    count = int(torch.randint(1, rows // 2, (1,), generator=generator))
    chosen = torch.randint(2, rows, (count,), generator=generator)
    duplicates = chosen[: max(1, count // 3)]
    index = torch.cat([torch.tensor([0]), chosen, duplicates])
    signs = torch.randint(0, 2, (index.numel(), width), generator=generator) * 2 - 1
    values = (torch.rand(index.numel(), width, generator=generator, dtype=torch.float64) + 0.05) * signs
    return torch.sparse_coo_tensor(index[None], values.to(dtype), (rows, width))


def dense_adadelta(params, **hyper):
    """This package's dense step (the chain's next link: tests/test_torch_semantics.py ties it to torch)."""
    return Adadelta(params, **hyper)


def run_side_by_side(generator, steps, *, backend="auto", dtype=torch.float32, twin_cls=dense_adadelta,
                     hyper=None, densify=lambda grad: grad.to_dense(), **options):
    """Our optimizer on sparse gradients and ``twin_cls`` on their densified copies; returns both."""
    hyper = hyper or dict(lr=0.9, rho=0.9, eps=1e-6)
    ours = torch.nn.Parameter(random_table(generator, dtype))
    twin = torch.nn.Parameter(ours.detach().clone())
    opt = Adadelta([ours], backend=backend, **hyper, **options)
    twin_opt = twin_cls([twin], **hyper)
    for step in range(steps):
        grad = sparse_grad(generator, step, dtype)
        ours.grad = grad
        twin.grad = densify(grad)
        opt.step()
        twin_opt.step()
    return ours, twin, opt, twin_opt


def assert_states_equal(ours_opt, twin_opt, ours, twin, bitwise=True) -> None:
    mine = ours_opt.state_dict()["state"][0]
    theirs = twin_opt.state_dict()["state"][0]
    assert set(mine) == set(theirs) == {"step", "square_avg", "acc_delta"}
    for key in ("step", "square_avg", "acc_delta"):
        if bitwise:
            assert_bitwise_equal(mine[key], theirs[key], key)
        else:
            torch.testing.assert_close(mine[key], theirs[key], **TOLERANCE[torch.float32])
    if bitwise:
        assert_bitwise_equal(ours.detach(), twin.detach(), "param")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_bit_for_bit_with_dense_steps_on_densified_gradients(every_backend, dtype, generator):  # noqa: F811
    steps = 12 if every_backend == "triton" else 60  # (the interpreter is slow)
    assert steps <= EXACT_DECAY_STEPS
    ours, twin, opt, twin_opt = run_side_by_side(generator, steps, backend=every_backend, dtype=dtype)
    assert_states_equal(opt, twin_opt, ours, twin)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_side_by_side_with_torch_adadelta(dtype, generator):
    ours, twin, opt, twin_opt = run_side_by_side(generator, 60, dtype=dtype, twin_cls=torch.optim.Adadelta)
    torch.testing.assert_close(ours.detach(), twin.detach(), **TOLERANCE[dtype])
    mine, theirs = opt.state_dict()["state"][0], twin_opt.state_dict()["state"][0]
    assert set(mine) == set(theirs)
    for key in ("step", "square_avg", "acc_delta"):
        torch.testing.assert_close(mine[key], theirs[key], **TOLERANCE[dtype])


def test_rows_touched_and_never_touched(generator):
    ours, twin, opt, twin_opt = run_side_by_side(generator, 30)
    assert int(opt.state[ours]["row_step"][0]) == 30  # touched every step
    assert int(opt.state[ours]["row_step"][1]) == 0  # never touched: never read or written
    assert_states_equal(opt, twin_opt, ours, twin)
    assert "row_step" not in opt.state[ours]  # state_dict settled every row


def test_long_runs_within_tolerance(generator):
    """Past the exact bound (gaps of more than 64 steps: row 1 is never touched, others rarely)."""
    ours, twin, opt, twin_opt = run_side_by_side(generator, 3 * EXACT_DECAY_STEPS)
    torch.testing.assert_close(ours.detach(), twin.detach(), **TOLERANCE[torch.float32])
    assert_states_equal(opt, twin_opt, ours, twin, bitwise=False)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("state_dtype", [None, torch.float32], ids=["param_state", "fp32_state"])
def test_low_precision_bit_for_bit_with_the_dense_step(dtype, state_dtype, generator):
    """bf16/fp16 (tests/test_precision.py ties the dense step to torch). Densified through coalesce(), whose
    sums of duplicate rows the sparse step uses in these dtypes (adadelta_fused.sparse.rows_and_values)."""
    def dense_twin(params, **hyper):
        return Adadelta(params, state_dtype=state_dtype, **hyper)

    ours, twin, opt, twin_opt = run_side_by_side(generator, 40, dtype=dtype, twin_cls=dense_twin,
                                                 densify=lambda grad: grad.coalesce().to_dense(),
                                                 state_dtype=state_dtype)
    assert_bitwise_equal(ours.detach(), twin.detach(), "param")
    for key in ("square_avg", "acc_delta"):
        assert_bitwise_equal(opt.state_dict()["state"][0][key], twin_opt.state[twin][key], key)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_duplicates_are_summed_as_to_dense_sums_them(dtype, generator):
    """On the CPU, bit for bit (coalesce() may not be: it sorts first)."""
    for step in range(20):
        grad = sparse_grad(generator, step, dtype)
        rows, values = rows_and_values(grad)
        assert bool((rows[1:] > rows[:-1]).all())
        dense = torch.zeros(grad.shape, dtype=dtype)
        dense[rows] = values
        assert_bitwise_equal(dense, grad.to_dense())


def test_mixed_group_of_dense_and_sparse_params(generator):
    embedding = torch.nn.Embedding(NUM_ROWS, WIDTH, sparse=True)
    linear = torch.nn.Linear(WIDTH, 3)
    twin_embedding, twin_linear = copy.deepcopy(embedding), copy.deepcopy(linear)
    twin_embedding.sparse = False
    opt = Adadelta([*embedding.parameters(), *linear.parameters()], lr=0.7)
    twin_opt = Adadelta([*twin_embedding.parameters(), *twin_linear.parameters()], lr=0.7)
    for _ in range(25):
        index = torch.randint(0, NUM_ROWS, (17,), generator=generator)
        for emb, lin, o in ((embedding, linear, opt), (twin_embedding, twin_linear, twin_opt)):
            o.zero_grad()
            lin(emb(index)).square().sum().backward()
            o.step()
    assert embedding.weight.grad.is_sparse and not twin_embedding.weight.grad.is_sparse
    for mine, theirs in zip([*embedding.parameters(), *linear.parameters()],
                            [*twin_embedding.parameters(), *twin_linear.parameters()]):
        assert_bitwise_equal(mine.detach(), theirs.detach())


def test_embedding_bag_sparse(generator):
    """EmbeddingBag's sparse gradient, stepped, against a dense step on the same gradient densified (a dense
    EmbeddingBag's own backward sums a row's bags in another order: not the sparse gradient's bits)."""
    bag = torch.nn.EmbeddingBag(NUM_ROWS, WIDTH, mode="sum", sparse=True)
    twin = torch.nn.Parameter(bag.weight.detach().clone())
    opt, twin_opt = Adadelta(bag.parameters()), Adadelta([twin])
    for _ in range(20):
        opt.zero_grad()
        bag(torch.randint(0, NUM_ROWS, (4, 5), generator=generator)).pow(3).sum().backward()
        assert bag.weight.grad.is_sparse
        twin.grad = bag.weight.grad.to_dense()
        opt.step()
        twin_opt.step()
    assert_bitwise_equal(bag.weight.detach(), twin.detach())


def test_state_dict_round_trip_mid_training(generator):
    """Save mid-training, load into a fresh optimizer (and into torch's), continue: all three agree."""
    ours, twin, opt, twin_opt = run_side_by_side(generator, 20)
    saved = copy.deepcopy(opt.state_dict())
    assert set(saved["state"][0]) == {"step", "square_avg", "acc_delta"}
    resumed = torch.nn.Parameter(ours.detach().clone())
    resumed_opt = Adadelta([resumed], lr=0.9, rho=0.9, eps=1e-6)
    resumed_opt.load_state_dict(saved)
    torch_resumed = torch.nn.Parameter(ours.detach().clone())
    torch_opt = torch.optim.Adadelta([torch_resumed], lr=0.9)
    torch_opt.load_state_dict(copy.deepcopy(saved))
    for step in range(20, 50):
        grad = sparse_grad(generator, step)
        ours.grad, resumed.grad = grad, grad.clone()
        twin.grad, torch_resumed.grad = grad.to_dense(), grad.to_dense()
        for o in (opt, resumed_opt, twin_opt, torch_opt):
            o.step()
    for p in (resumed, twin):
        assert_bitwise_equal(ours.detach(), p.detach())
    torch.testing.assert_close(torch_resumed.detach(), ours.detach(), **TOLERANCE[torch.float32])
    assert_states_equal(resumed_opt, twin_opt, resumed, twin)


def test_torch_state_dict_loads_as_every_row_current(generator):
    """torch.optim.Adadelta's state dict, loaded mid-training: every row current. Continued on sparse gradients
    it tracks torch (within tolerance) and, bit for bit, our dense step loaded from the same state dict."""
    torch_param = torch.nn.Parameter(random_table(generator))
    torch_opt = torch.optim.Adadelta([torch_param])
    for step in range(5):
        torch_param.grad = sparse_grad(generator, step).to_dense()
        torch_opt.step()
    ours, twin = (torch.nn.Parameter(torch_param.detach().clone()) for _ in range(2))
    opt, twin_opt = Adadelta([ours]), Adadelta([twin])
    opt.load_state_dict(torch_opt.state_dict())
    twin_opt.load_state_dict(torch_opt.state_dict())
    for step in range(5, 30):
        grad = sparse_grad(generator, step)
        ours.grad, twin.grad, torch_param.grad = grad, grad.to_dense(), grad.to_dense()
        for o in (opt, twin_opt, torch_opt):
            o.step()
    assert_states_equal(opt, twin_opt, ours, twin)
    torch.testing.assert_close(ours.detach(), torch_param.detach(), **TOLERANCE[torch.float32])


def test_dense_gradient_after_sparse_ones(generator):
    ours, twin, opt, twin_opt = run_side_by_side(generator, 10)
    dense = torch.randn(NUM_ROWS, WIDTH, generator=generator)
    ours.grad, twin.grad = dense, dense.clone()
    opt.step()
    twin_opt.step()
    assert "row_step" not in opt.state[ours]
    ours.grad = sparse_grad(generator, 3)
    twin.grad = ours.grad.to_dense()
    opt.step()
    twin_opt.step()
    assert_states_equal(opt, twin_opt, ours, twin)


def test_rho_and_lr_changed_between_steps(generator):
    ours = torch.nn.Parameter(random_table(generator))
    twin = torch.nn.Parameter(ours.detach().clone())
    opt, twin_opt = Adadelta([ours]), Adadelta([twin])
    for step in range(30):
        for o in (opt, twin_opt):
            o.param_groups[0]["rho"] = 0.9 if step < 12 else 0.75
            o.param_groups[0]["lr"] = 1.0 / (1 + step)
        grad = sparse_grad(generator, step)
        ours.grad, twin.grad = grad, grad.to_dense()
        opt.step()
        twin_opt.step()
    assert_states_equal(opt, twin_opt, ours, twin)


def test_maximize_and_tensor_lr(generator):
    hyper = dict(lr=torch.tensor(0.6), rho=0.95, eps=1e-5, maximize=True)
    ours, twin, opt, twin_opt = run_side_by_side(generator, 25, hyper=hyper)
    assert_states_equal(opt, twin_opt, ours, twin)


def test_grad_scaler_scalars(generator):
    """GradScaler sets grad_scale and found_inf on the optimizer: a scaled gradient steps as the unscaled one
    (and is left unscaled), and a found inf skips the step, its counter included."""
    ours = torch.nn.Parameter(random_table(generator))
    twin = torch.nn.Parameter(ours.detach().clone())
    opt, twin_opt = Adadelta([ours]), Adadelta([twin])
    for step in range(8):
        grad = sparse_grad(generator, step).coalesce()
        ours.grad = torch.sparse_coo_tensor(grad._indices(), grad._values() * 4, grad.shape).coalesce()
        twin.grad = grad
        opt.grad_scale, opt.found_inf = torch.tensor(4.0), torch.tensor(float(step == 3))
        opt.step()
        if step != 3:
            twin_opt.step()
            assert_bitwise_equal(ours.grad._values(), grad._values(), "unscaled gradient")
    assert_bitwise_equal(ours.detach(), twin.detach())
    assert int(opt.state[ours]["step"]) == 7


ERRORS = {
    "weight_decay": (dict(weight_decay=0.01), "weight_decay=0.01 moves every row every step"),
    "zero_grad_in_step": (dict(zero_grad_in_step=True), "zero_grad_in_step=True cannot zero a sparse gradient"),
    "master_weights": (dict(master_weights=True), "master_weights=True is not supported"),
    "stochastic_rounding": (dict(stochastic_rounding=True), "stochastic_rounding=True is not supported"),
    "flatten": (dict(flatten=True), "sparse gradients with flatten=True"),
    "differentiable": (dict(differentiable=True), "differentiable=True runs torch's Adadelta"),
}


@pytest.mark.parametrize("name", list(ERRORS))
def test_unsupported_combinations_raise_before_writing(name, generator):
    options, message = ERRORS[name]
    dtype = torch.bfloat16 if name in ("master_weights", "stochastic_rounding") else torch.float32
    table = torch.nn.Embedding(NUM_ROWS, WIDTH, sparse=True).to(dtype)
    opt = Adadelta(table.parameters(), **options)
    table.zero_grad(set_to_none=True)
    table(torch.tensor([1, 4])).float().sum().backward()
    before = table.weight.detach().clone()
    with pytest.raises(RuntimeError, match=message):
        opt.step()
    assert_bitwise_equal(table.weight.detach(), before)


def test_gradient_sparse_in_two_dimensions_raises(generator):
    p = torch.nn.Parameter(random_table(generator))
    opt = Adadelta([p])
    p.grad = torch.randn(NUM_ROWS, WIDTH, generator=generator).to_sparse(2)
    with pytest.raises(RuntimeError, match="param 0 of param group 0 has a sparse gradient: .*sparse_dim=2"):
        opt.step()


def test_deepcopy_keeps_row_records(generator):
    ours, twin, opt, twin_opt = run_side_by_side(generator, 10)
    copied = copy.deepcopy(opt)
    assert "row_step" in copied.state[copied.param_groups[0]["params"][0]]


def test_step_in_backward_steps_sparse_gradients(generator):
    embedding = torch.nn.Embedding(NUM_ROWS, WIDTH, sparse=True)
    twin = copy.deepcopy(embedding)
    opt, twin_opt = Adadelta(embedding.parameters(), step_in_backward=True), Adadelta(twin.parameters())
    for _ in range(12):
        index = torch.randint(0, NUM_ROWS, (9,), generator=generator)
        embedding(index).square().sum().backward()
        opt.step()
        opt.zero_grad()
        twin(index).square().sum().backward()
        twin_opt.step()
        twin_opt.zero_grad()
    assert_bitwise_equal(embedding.weight.detach(), twin.weight.detach())


def test_grad_scaler_end_to_end(generator):
    """torch.amp.GradScaler on the CPU: its found_inf check reads the sparse values, the step unscales them."""
    embedding = torch.nn.Embedding(NUM_ROWS, WIDTH, sparse=True)
    twin = copy.deepcopy(embedding)
    opt, twin_opt = Adadelta(embedding.parameters()), Adadelta(twin.parameters())
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    for step in range(10):
        index = torch.randint(0, NUM_ROWS, (9,), generator=generator)
        scale = float("inf") if step == 4 else 1.0  # one step overflows: skipped
        opt.zero_grad()
        scaler.scale(embedding(index).square().sum() * scale).backward()
        scaler.step(opt)
        scaler.update()
        if step != 4:
            twin_opt.zero_grad()
            twin(index).square().sum().backward()
            twin_opt.step()
    assert int(opt.state[embedding.weight]["step"]) == 9
    torch.testing.assert_close(embedding.weight.detach(), twin.weight.detach(), **TOLERANCE[torch.float32])
