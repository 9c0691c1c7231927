"""The optimizer on GPUs where GradScaler, several devices and CUDA graphs meet it (issue 11, items 9-11,
and the skipped step of the "zero" mode). Skipped cleanly without a GPU."""

from __future__ import annotations

import copy

import pytest
import torch

from adadelta_fused import Adadelta

from conftest import TOLERANCE

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]

BACKENDS = ["cpp", "triton"]


def model_on(device, generator):
    model = torch.nn.Sequential(torch.nn.Linear(9, 17), torch.nn.Tanh(), torch.nn.Linear(17, 5))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator))
    return model.to(device)


@pytest.mark.parametrize("backend", BACKENDS)
def test_grad_scaler_with_cpu_step_counters_counts_skipped_steps_exactly(backend, generator):
    """capturable=False keeps the counters on the CPU; found_inf lives on the GPU."""
    model = model_on("cuda", generator)
    opt = Adadelta(model.parameters(), backend=backend)
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0**10)
    for step in range(6):
        opt.zero_grad()
        loss = model(torch.randn(8, 9, device="cuda")).square().mean()
        scaler.scale(loss * (float("inf") if step in (1, 4) else 1.0)).backward()
        scaler.step(opt)
        scaler.update()
    assert {float(s["step"]) for s in opt.state.values()} == {4.0}


@pytest.mark.two_gpus
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
@pytest.mark.parametrize("backend", BACKENDS)
def test_one_grad_scaler_over_two_gpus_trains_like_torch(backend, generator):
    first, second = model_on("cuda:0", generator), model_on("cuda:1", generator)
    twins = copy.deepcopy(first), copy.deepcopy(second)
    params = list(first.parameters()) + list(second.parameters())
    ours = Adadelta(params, backend=backend)
    theirs = torch.optim.Adadelta(list(twins[0].parameters()) + list(twins[1].parameters()))
    for opt, models in ((ours, (first, second)), (theirs, twins)):
        scaler = torch.amp.GradScaler("cuda")
        for step in range(3):
            opt.zero_grad()
            x = torch.randn(4, 9, generator=torch.Generator().manual_seed(step))
            loss = models[0](x.to("cuda:0")).sum() + models[1](x.to("cuda:1")).sum().to("cuda:0")
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
    for p, q in zip(params, list(twins[0].parameters()) + list(twins[1].parameters())):
        torch.testing.assert_close(p, q, **TOLERANCE[p.dtype])


@pytest.mark.parametrize("backend", BACKENDS)
def test_cpu_lr_tensor_is_refused_under_graph_capture(backend, generator):
    model = model_on("cuda", generator)
    opt = Adadelta(model.parameters(), lr=torch.tensor(0.5), backend=backend, capturable=True)
    model(torch.randn(4, 9, device="cuda")).sum().backward()
    opt.step()  # warm-up outside capture
    graph = torch.cuda.CUDAGraph()
    with pytest.raises((ValueError, RuntimeError), match="lr is a CPU tensor"):
        with torch.cuda.graph(graph):
            opt.step()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("flatten", [False, True])
def test_skipped_step_zeroes_grads_in_zero_mode(backend, flatten, generator):
    model = model_on("cuda", generator)
    opt = Adadelta(model.parameters(), backend=backend, flatten=flatten, zero_grad_in_step=True)
    model(torch.randn(4, 9, device="cuda")).sum().backward()
    before = [p.detach().clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad[0] = float("nan")
    opt.grad_scale = torch.tensor(1.0, device="cuda")
    opt.found_inf = torch.tensor(1.0, device="cuda")
    opt.step()
    for p, old in zip(model.parameters(), before):
        assert torch.equal(p, old)
        assert torch.count_nonzero(p.grad) == 0
