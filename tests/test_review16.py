"""Review of issue 16 (sparse gradients, lazy-exact): situations a user can create where the sparse step
differed from torch.optim.Adadelta on the densified gradients, or failed unclearly. Side by side with torch,
in test_sparse.py's style and tolerances."""

from __future__ import annotations

import pytest
import torch

from adadelta_fused import Adadelta

from conftest import TOLERANCE

NUM_ROWS, WIDTH = 13, 5


def one_hot_rows(rows, dtype=torch.float32, seed=0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    index = torch.tensor(rows, dtype=torch.int64)
    values = torch.randn(index.numel(), WIDTH, generator=generator, dtype=torch.float64).to(dtype)
    return torch.sparse_coo_tensor(index[None], values, (NUM_ROWS, WIDTH))


def train_embedding(dtype, steps=4):
    table = torch.nn.Embedding(NUM_ROWS, WIDTH, sparse=True).to(dtype)
    opt = Adadelta(table.parameters())
    for step in range(steps):
        table(torch.tensor([step % 3])).float().pow(2).sum().backward()
        opt.step()
        opt.zero_grad()
    return table, opt


@pytest.mark.parametrize("before, after", [(torch.float32, torch.float64), (torch.float16, torch.float32),
                                           (torch.float64, torch.float32)], ids=str)
def test_model_to_dtype_with_pending_rows(before, after):
    """model.to(dtype) mid-training (the dense path follows it, adadelta_fused.optimizer._follow_param_dtype):
    rows with pending decays made state_dict(), and the next step (sparse or dense), raise TypeError
    ("square_avgs[0] has dtype Float, unsupported with Double params") while settling them."""
    table, opt = train_embedding(before)
    twin = torch.nn.Parameter(table.weight.detach().clone())
    twin_opt = torch.optim.Adadelta([twin])
    twin_state = {key: value.clone() for key, value in opt.state_dict()["state"][0].items()}
    twin_opt.load_state_dict({"state": {0: twin_state}, "param_groups": opt.state_dict()["param_groups"]})
    # pending rows again
    for step in range(3):
        grad = one_hot_rows([step], before, seed=step)
        table.weight.grad, twin.grad = grad, grad.to_dense()
        opt.step()
        twin_opt.step()
    assert "row_step" in opt.state[table.weight]
    table.to(after)
    twin.data = twin.data.to(after)
    saved = opt.state_dict()  # raised
    assert saved["state"][0]["square_avg"].dtype == opt.state[table.weight]["square_avg"].dtype
    grad = one_hot_rows([5], after, seed=7)
    table.weight.grad, twin.grad = grad, grad.to_dense()
    opt.step()
    twin_opt.step()
    # With fp16 on either side torch rounds each in-place op to fp16 where the kernel rounds once from fp32:
    # they may differ by one fp16 ulp, 2**-10 = 9.8e-4 relative (the bound below), never more.
    tolerance = TOLERANCE[torch.float32] if torch.float16 not in (before, after) else dict(rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(table.weight.detach(), twin.detach(), **tolerance)
    mine, theirs = opt.state_dict()["state"][0], twin_opt.state_dict()["state"][0]
    for key in ("square_avg", "acc_delta"):
        torch.testing.assert_close(mine[key].double(), theirs[key].double(), **tolerance)


def test_step_counter_past_two_to_the_24():
    """torch's step counter is an fp32 tensor: past 2**24 it stops counting (2**24 + 1 == 2**24). Dense
    Adadelta does not read it; the lazy step counted missed decays from it, so every decay after a checkpoint
    at step 2**24 (or 16.7 M steps of training) was lost: untouched rows kept their accumulators forever."""
    ours = torch.nn.Parameter(torch.randn(NUM_ROWS, WIDTH, generator=torch.Generator().manual_seed(1)))
    twin = torch.nn.Parameter(ours.detach().clone())
    state = {"step": torch.tensor(float(2**24)),
             "square_avg": torch.rand(NUM_ROWS, WIDTH, generator=torch.Generator().manual_seed(2)),
             "acc_delta": torch.rand(NUM_ROWS, WIDTH, generator=torch.Generator().manual_seed(3))}
    opt, twin_opt = Adadelta([ours]), torch.optim.Adadelta([twin])
    for o in (opt, twin_opt):
        o.load_state_dict({"state": {0: {k: v.clone() for k, v in state.items()}},
                           "param_groups": [{**twin_opt.param_groups[0], "params": [0]}]})
    for step in range(6):
        grad = one_hot_rows([0] if step < 5 else [1], seed=step)
        ours.grad, twin.grad = grad, grad.to_dense()
        opt.step()
        twin_opt.step()
    torch.testing.assert_close(ours.detach(), twin.detach(), **TOLERANCE[torch.float32])
    mine, theirs = opt.state_dict()["state"][0], twin_opt.state_dict()["state"][0]
    for key in ("square_avg", "acc_delta"):
        torch.testing.assert_close(mine[key], theirs[key], **TOLERANCE[torch.float32])


def test_non_contiguous_param_error_names_the_param():
    """A non-contiguous weight (nn.Embedding.from_pretrained(w.t()), sparse=True): the op's
    "param must be contiguous (the kernels address rows by row * row_numel)" names neither the param nor a way
    out, unlike every other refusal of adadelta_fused.sparse."""
    table = torch.nn.Embedding.from_pretrained(torch.randn(WIDTH, NUM_ROWS).t(), freeze=False, sparse=True)
    opt = Adadelta(table.parameters())
    table(torch.tensor([1, 2])).sum().backward()
    before = table.weight.detach().clone()
    with pytest.raises(RuntimeError, match="param 0 of param group 0 has a sparse gradient: .*contiguous"):
        opt.step()
    assert torch.equal(table.weight.detach(), before)
