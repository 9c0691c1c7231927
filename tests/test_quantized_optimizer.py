"""``Adadelta(state_dtype=torch.uint8)``: 8-bit state in the optimizer, side by side with the reference backend,
with the per-param step (flatten), and with torch.optim.Adadelta's fp32 state, through training-loop events:
GradScaler skips, zeroing in the step, master weights, checkpoints both ways, copies, dtype changes."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch

from adadelta_fused import Adadelta
from adadelta_fused import quantized
from adadelta_fused.quantized_reference import BLOCK, dequantize

from conftest import assert_bitwise_equal, backends_under_test


def model(dtype=torch.float32, seed=0) -> torch.nn.Module:
    torch.manual_seed(seed)
    # 37 * 300 = 11100 weights: 43 full blocks and a tail; biases of 300 and 5 are one short block each
    net = torch.nn.Sequential(torch.nn.Linear(37, 300), torch.nn.Tanh(), torch.nn.Linear(300, 5))
    return net.to(dtype)


def train(net, opt, steps, seed=1, scaler_skip_at=(), zero_in_step=False, no_step_at=()):
    generator = torch.Generator().manual_seed(seed)
    dtype = next(net.parameters()).dtype
    for step in range(steps):
        x = torch.randn(64, 37, generator=generator).to(dtype)
        if not zero_in_step:
            opt.zero_grad()
        net(x).float().square().mean().backward()
        if step in scaler_skip_at:
            opt.grad_scale, opt.found_inf = torch.tensor(1.0), torch.tensor(1.0)
        if step not in no_step_at:
            opt.step()
        opt.__dict__.pop("grad_scale", None), opt.__dict__.pop("found_inf", None)


def assert_same_training(a, b):
    for x, y in zip(a.parameters(), b.parameters()):
        assert_bitwise_equal(x.detach(), y.detach())


def assert_same_state(opt_a, net_a, opt_b, net_b):
    for p, q in zip(net_a.parameters(), net_b.parameters()):
        sa, sb = opt_a.state[p], opt_b.state[q]
        assert sorted(sa) == sorted(sb)
        for key in sa:
            if sa[key].dtype == torch.uint8:
                assert torch.equal(sa[key], sb[key]), key
            else:
                assert_bitwise_equal(sa[key], sb[key], key)


@pytest.mark.parametrize("backend", backends_under_test())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_backend_matches_reference(backend, dtype):
    nets = [model(dtype), model(dtype)]
    opts = [Adadelta(nets[0].parameters(), state_dtype=torch.uint8, backend=backend, weight_decay=0.01),
            Adadelta(nets[1].parameters(), state_dtype=torch.uint8, backend="reference", weight_decay=0.01)]
    for net, opt in zip(nets, opts):
        train(net, opt, 4)
    assert_same_training(*nets)
    assert_same_state(opts[0], nets[0], opts[1], nets[1])


def test_state_keys_dtypes_and_size():
    net = model()
    opt = Adadelta(net.parameters(), state_dtype=torch.uint8)
    train(net, opt, 1)
    weight = net[0].weight
    state = opt.state[weight]
    assert sorted(state) == ["acc_delta", "acc_delta_scale", "square_avg", "square_avg_scale", "step"]
    assert state["square_avg"].dtype == torch.uint8 and state["square_avg"].shape == weight.shape
    assert state["square_avg_scale"].shape == (-(-weight.numel() // BLOCK),)
    params = sum(p.numel() for p in net.parameters())
    state_bytes = sum(t.numel() * t.element_size() for s in opt.state.values() for k, t in s.items() if k != "step")
    assert state_bytes / params <= 2.1  # the budget: 2 bytes of codes plus 8 bytes of scales per block


def test_close_to_fp32_state():
    """8-bit state trains like fp32 state: the params after 20 steps differ by a small fraction of the distance
    they moved."""
    start, ours, fp32 = model(), model(), model()
    train(ours, Adadelta(ours.parameters(), state_dtype=torch.uint8), 20)
    train(fp32, torch.optim.Adadelta(fp32.parameters()), 20)
    for p0, p, q in zip(start.parameters(), ours.parameters(), fp32.parameters()):
        moved = (q - p0).norm()
        assert (p - q).norm() <= 0.05 * moved


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_flatten_is_the_per_param_step(dtype):
    """Flat buffers pad each param to whole blocks, so their blocks (and scales) are the per-param step's."""
    nets = [model(dtype), model(dtype)]
    opts = [Adadelta(nets[0].parameters(), state_dtype=torch.uint8, flatten=True),
            Adadelta(nets[1].parameters(), state_dtype=torch.uint8)]
    for net, opt in zip(nets, opts):
        train(net, opt, 3)
    assert_same_training(*nets)
    assert_same_state(opts[0], nets[0], opts[1], nets[1])
    nets[0][2].bias.grad = None  # a param left out: the flat step runs over ranges of the buffers
    nets[1][2].bias.grad = None
    x = torch.randn(8, 37).to(dtype)
    for net, opt in zip(nets, opts):
        net(x).float().sum().backward()
        net[2].bias.grad = None
        opt.step()
    assert_same_training(*nets)
    assert_same_state(opts[0], nets[0], opts[1], nets[1])


def test_grad_scaler_skip_loses_nothing():
    nets = [model(), model()]
    opts = [Adadelta(net.parameters(), state_dtype=torch.uint8) for net in nets]
    train(nets[0], opts[0], 4, scaler_skip_at=(1, 2))
    train(nets[1], opts[1], 4, no_step_at=(1, 2))
    assert_same_training(*nets)
    assert_same_state(opts[0], nets[0], opts[1], nets[1])


def test_zero_grad_in_step_and_master_weights():
    nets = [model(torch.bfloat16), model(torch.bfloat16)]
    opts = [Adadelta(nets[0].parameters(), state_dtype=torch.uint8, master_weights=True, zero_grad_in_step=True),
            Adadelta(nets[1].parameters(), state_dtype=torch.uint8, master_weights=True, backend="reference")]
    train(nets[0], opts[0], 3, zero_in_step=True)
    train(nets[1], opts[1], 3)
    assert_same_training(*nets)
    assert all(p.grad is not None and not p.grad.any() for p in nets[0].parameters())
    assert opts[0].state[nets[0][0].weight]["master_param"].dtype == torch.float32


def test_state_dict_round_trip_is_bit_for_bit():
    nets = [model(), model()]
    opt = Adadelta(nets[0].parameters(), state_dtype=torch.uint8)
    train(nets[0], opt, 3)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    nets[1].load_state_dict(nets[0].state_dict())
    loaded = Adadelta(nets[1].parameters(), state_dtype=torch.uint8)
    loaded.load_state_dict(torch.load(io.BytesIO(buffer.getvalue())))
    assert_same_state(opt, nets[0], loaded, nets[1])
    train(nets[0], opt, 2, seed=5)
    train(nets[1], loaded, 2, seed=5)
    assert_same_training(*nets)


def test_state_dict_converts_both_ways():
    """8-bit -> fp32 (ours, and torch through dequantize_state_dict) gives the decoded values; fp32 -> 8-bit
    quantizes them, and training goes on from there as if the optimizer had quantized them itself."""
    net = model()
    opt = Adadelta(net.parameters(), state_dtype=torch.uint8)
    train(net, opt, 3)
    saved = opt.state_dict()
    weight = net[0].weight
    codes = opt.state[weight]["square_avg"]
    decoded = dequantize(codes, opt.state[weight]["square_avg_scale"], codes, 1e-6)
    for target in (Adadelta(net.parameters()), torch.optim.Adadelta(net.parameters())):
        state_dict = saved if isinstance(target, Adadelta) else quantized.dequantize_state_dict(saved)
        target.load_state_dict(state_dict)
        assert sorted(target.state[weight]) == ["acc_delta", "square_avg", "step"]
        assert_bitwise_equal(target.state[weight]["square_avg"], decoded)
    fp32 = Adadelta(net.parameters())
    fp32.load_state_dict(saved)
    back = Adadelta(net.parameters(), state_dtype=torch.uint8)
    back.load_state_dict(fp32.state_dict())
    assert quantized.is_quantized(back.state[weight])
    assert_bitwise_equal(dequantize(back.state[weight]["square_avg"], back.state[weight]["square_avg_scale"],
                                    weight, 1e-6), decoded.view_as(weight), "requantized")
    with pytest.raises(ValueError, match="'square_avg' is uint8 codes without 'square_avg_scale'"):
        broken = copy.deepcopy(saved)
        next(iter(broken["state"].values())).pop("square_avg_scale")
        Adadelta(net.parameters(), state_dtype=torch.uint8).load_state_dict(broken)


def test_codes_stand_for_sqrt_of_x_plus_the_groups_eps():
    """The codes store sqrt(x + eps) with the group's eps: after a few steps beside fp32 state with a large eps,
    the values 8-bit state hands to torch (dequantize_state_dict, which reads the saved groups' eps) and to an
    optimizer with fp32 state are fp32 state's up to the code's resolution, which a decode with another eps
    (1e-6, torch's default) is not. A group whose eps then shrinks still steps to finite values."""
    eps = 1e-2
    nets = [model(), model()]
    ours = Adadelta(nets[0].parameters(), eps=eps, state_dtype=torch.uint8)
    exact = torch.optim.Adadelta(nets[1].parameters(), eps=eps)
    train(nets[0], ours, 3)
    train(nets[1], exact, 3)
    saved = ours.state_dict()
    for target in (torch.optim.Adadelta(nets[0].parameters()), Adadelta(nets[0].parameters())):
        target.load_state_dict(quantized.dequantize_state_dict(saved) if isinstance(target, torch.optim.Adadelta)
                               else saved)
        for p, q in zip(nets[0].parameters(), nets[1].parameters()):
            for key in ("square_avg", "acc_delta"):
                got, want = target.state[p][key], exact.state[q][key]
                # R within half a code step (s / 508, s the block's largest R; the step itself moved R a little)
                error = ((got + eps).sqrt() - (want + eps).sqrt()).abs().max()
                assert error <= (want + eps).sqrt().max() / 200, (key, error)
    weight = nets[0][0].weight
    codes = ours.state[weight]["square_avg"]
    misread = dequantize(codes, ours.state[weight]["square_avg_scale"], codes, 1e-6)
    assert (misread - exact.state[nets[1][0].weight]["square_avg"]).abs().max() > eps / 2
    ours.param_groups[0]["eps"] = 1e-6
    train(nets[0], ours, 2)
    assert all(bool(torch.isfinite(p).all()) for p in nets[0].parameters())


def test_converted_state_is_never_negative():
    """At eps 1e-8 the floor sqrt(eps) rounds down, so code 0 decodes to a value just below 0 (-4.4e-16); floating
    state made from 8-bit state (torch's, ours after model.double()) holds 0 there, as an accumulator never is
    negative, and torch then steps with eps 1e-20 without a NaN (the root of -4.4e-16 * rho + 1e-20 would be)."""
    eps = 1e-8
    net = model()
    opt = Adadelta(net.parameters(), eps=eps, state_dtype=torch.uint8)
    train(net, opt, 1)
    net[0].weight.grad = None
    codes = opt.state[net[0].bias]["square_avg"]
    assert bool((dequantize(codes, opt.state[net[0].bias]["square_avg_scale"], codes, eps) < 0).any())
    torch_opt = torch.optim.Adadelta(net.parameters(), eps=eps)
    torch_opt.load_state_dict(quantized.dequantize_state_dict(opt.state_dict()))
    for state in torch_opt.state.values():
        assert all(bool((state[key] >= 0).all()) for key in ("square_avg", "acc_delta"))
    torch_opt.param_groups[0]["eps"] = 1e-20
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    torch_opt.step()
    assert all(bool(torch.isfinite(p).all()) for p in net.parameters())
    net.double()
    train(net, opt, 1)
    for state in opt.state.values():
        assert state["square_avg"].dtype == torch.float64


@pytest.mark.parametrize("flatten", [False, True])
def test_deepcopy_and_pickle(flatten):
    net = model()
    opt = Adadelta(net.parameters(), state_dtype=torch.uint8, flatten=flatten)
    train(net, opt, 2)
    for copied in (copy.deepcopy((net, opt)), pickle.loads(pickle.dumps((net, opt)))):
        train(copied[0], copied[1], 2, seed=9)
    train(net, opt, 2, seed=9)
    assert_same_training(net, copied[0])
    assert_same_state(opt, net, copied[1], copied[0])


def test_model_double_gets_fp64_state():
    net = model()
    opt = Adadelta(net.parameters(), state_dtype=torch.uint8)
    train(net, opt, 2)
    codes = opt.state[net[0].weight]["square_avg"]
    decoded = dequantize(codes, opt.state[net[0].weight]["square_avg_scale"], codes, 1e-6)
    net.double()
    train(net, opt, 1)
    state = opt.state[net[0].weight]
    assert state["square_avg"].dtype == torch.float64 and "square_avg_scale" not in state
    assert decoded.abs().sum() > 0


def test_sparse_gradients_are_refused():
    embedding = torch.nn.Embedding(10, 3, sparse=True)
    opt = Adadelta(embedding.parameters(), state_dtype=torch.uint8)
    embedding(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="state_dtype=torch.uint8 is not supported with sparse gradients"):
        opt.step()


def test_invalid_state_dtype_is_named():
    with pytest.raises(ValueError, match=r"Invalid state_dtype: torch.int8 \(expected None, torch.float32, "
                                         r"torch.bfloat16 or torch.uint8\)"):
        Adadelta(model().parameters(), state_dtype=torch.int8)


@pytest.mark.usefixtures("interpreter_fma_rounds_once")
def test_every_backend_steps_like_the_reference(every_backend):
    """The optimizer's 8-bit step through each backend (Triton in its interpreter) is the reference's."""
    nets = [model(torch.bfloat16), model(torch.bfloat16)]
    opts = [Adadelta(nets[0].parameters(), state_dtype=torch.uint8, backend=every_backend, master_weights=True),
            Adadelta(nets[1].parameters(), state_dtype=torch.uint8, backend="reference", master_weights=True)]
    for net, opt in zip(nets, opts):
        train(net, opt, 2)
    assert_same_training(*nets)
    assert_same_state(opts[0], nets[0], opts[1], nets[1])


def test_memory_format_change_re_encodes_the_blocks():
    """Blocks are runs of the param's memory: after model.to(memory_format=torch.channels_last), or loading codes
    saved in another layout, the codes are re-encoded in the new one, and training stays as close to torch's as
    it was (a review found 17 % off in square_avg when the old blocks were read in the new order)."""
    def conv(memory_format):
        torch.manual_seed(3)
        return torch.nn.Conv2d(16, 32, 3).to(memory_format=memory_format)

    def run(net, opt, steps, switch_at=None):
        generator = torch.Generator().manual_seed(4)
        for step in range(steps):
            if step == switch_at:
                net.to(memory_format=torch.channels_last)
            opt.zero_grad()
            net(torch.randn(2, 16, 7, 7, generator=generator)).square().mean().backward()
            opt.step()

    ours, switched, torch_net = conv(torch.contiguous_format), conv(torch.contiguous_format), conv(torch.contiguous_format)
    run(ours, Adadelta(ours.parameters(), state_dtype=torch.uint8), 5)
    opt = Adadelta(switched.parameters(), state_dtype=torch.uint8)
    run(switched, opt, 5, switch_at=3)
    run(torch_net, torch.optim.Adadelta(torch_net.parameters()), 5)
    weight = switched.weight
    codes = opt.state[weight]["square_avg"]
    assert codes.stride() == weight.stride()
    gap = lambda a: (a.weight - torch_net.weight).abs().max().item()  # noqa: E731
    assert gap(switched) <= 2 * gap(ours) + 1e-7
    # codes saved from the channels_last model load into a contiguous one re-encoded, decoding to the same values
    fresh = conv(torch.contiguous_format)
    loaded = Adadelta(fresh.parameters(), state_dtype=torch.uint8)
    loaded.load_state_dict(opt.state_dict())
    state = loaded.state[fresh.weight]
    assert state["square_avg"].is_contiguous()
    want = dequantize(codes, opt.state[weight]["square_avg_scale"], codes, 1e-6)
    got = dequantize(state["square_avg"], state["square_avg_scale"], state["square_avg"], 1e-6)
    assert (got - want).abs().max() <= 0.02 * want.abs().max()


def _layouts(shape):
    """A param of ``shape`` in each layout a step meets: contiguous, channels_last, and a strided view."""
    base = torch.randn(shape)
    yield base
    if base.dim() == 4:
        yield base.to(memory_format=torch.channels_last)
    if base.dim() >= 1 and base.shape[-1] > 1:
        yield torch.randn(*shape[:-1], 2 * shape[-1])[..., ::2]


@pytest.mark.parametrize("shape", [(2, 1, 3, 3), (2, 3, 1, 1), (1, 1, 1, 1), (2, 3, 4, 5), (7,), (), (0, 3)])
def test_the_layout_check_agrees_with_the_stride_walk(shape):
    """laid_out_like answers contiguous pairs from torch's flags: the same answer as comparing the codes' strides
    with the walk's wherever the tensors hold elements (dims of size 1 aside)."""
    for p in _layouts(shape):
        walk = quantized.walk_layout(p)
        for codes in (*(layout.to(torch.uint8) for layout in _layouts(shape)), walk.to(torch.uint8)):
            walked = codes.shape == p.shape and all(
                a == b for size, a, b in zip(p.shape, codes.stride(), quantized._walk_strides(p)) if size > 1)
            if p.numel():
                assert quantized.laid_out_like(codes, p) == walked, (p.stride(), codes.stride())


def _states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def test_one_accumulator_replaced_by_codes_of_another_layout_is_re_encoded():
    """Codes carry their blocks in their own memory order: ``acc_delta`` alone taken from a contiguous twin of a
    channels_last param is re-encoded before the step, as ``quantized.relayout`` does (the kernel would otherwise
    read it with the param's blocks and the wrong scales)."""
    w = torch.randn(4, 8, 5, 5, generator=torch.Generator().manual_seed(3))
    param, twin_param = (torch.nn.Parameter(w.clone().to(memory_format=torch.channels_last)) for _ in range(2))
    contiguous = torch.nn.Parameter(w.clone())
    ours, twin, donor = (Adadelta([p], lr=1.0, state_dtype=torch.uint8)
                         for p in (param, twin_param, contiguous))
    for p, opt in ((param, ours), (twin_param, twin), (contiguous, donor)):
        p.grad = torch.randn(w.shape, generator=torch.Generator().manual_seed(4))
        opt.step()
    for opt, p in ((ours, param), (twin, twin_param)):
        opt.state[p]["acc_delta"] = donor.state[contiguous]["acc_delta"].clone()
        opt.state[p]["acc_delta_scale"] = donor.state[contiguous]["acc_delta_scale"].clone()
    assert not quantized.codes_laid_out(param, ours.state[param])
    quantized.relayout(twin_param, twin.state[twin_param])  # what planning must do
    grad = torch.randn(w.shape, generator=torch.Generator().manual_seed(5))
    param.grad, twin_param.grad = grad.clone(), grad.clone()
    ours.step()
    twin.step()
    assert torch.equal(param, twin_param) and _states_equal(ours.state[param], twin.state[twin_param])
    assert quantized.codes_laid_out(param, ours.state[param])


def test_a_non_dense_channels_last_view_steps_like_its_contiguous_copy():
    """The kernels walk a view with gaps in its contiguous copy's order, so its codes are laid out that way from
    the start (not in the view's suggested channels_last format)."""
    base = torch.randn(6, 8, 9, 9, generator=torch.Generator().manual_seed(6)).to(memory_format=torch.channels_last)
    view, copy_ = torch.nn.Parameter(base[::2]), torch.nn.Parameter(base[::2].contiguous())
    ours, theirs = (Adadelta([p], lr=1.0, state_dtype=torch.uint8) for p in (view, copy_))
    for step in range(3):
        grad = torch.randn(view.shape, generator=torch.Generator().manual_seed(step))
        view.grad, copy_.grad = grad.clone(), grad.clone()
        ours.step()
        theirs.step()
        assert torch.equal(view, copy_), f"step {step}"
        assert _states_equal(ours.state[view], theirs.state[copy_]), f"step {step}"
        assert ours.state[view]["square_avg"].is_contiguous()
