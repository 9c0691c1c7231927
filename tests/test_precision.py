"""Low precision: exact dtype conversions, error bounds against eager torch, stochastic rounding."""

from __future__ import annotations

import pytest
import torch

import adadelta_fused
from adadelta_fused.contract import StepScalars
from adadelta_fused.reference import rounding_key, rounding_noise, round_to_bf16_stochastic

from conftest import REQUIRE_EXTENSION, TOLERANCE, assert_bitwise_equal, backends_under_test, requires_extension

BACKENDS = backends_under_test()

# Our error against an fp64 run may be at most this multiple of eager torch's own error in the same dtype.


def _all_fp16_values() -> torch.Tensor:
    return torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(torch.float16)


def _random_fp32_bit_patterns(generator, n=1 << 16) -> torch.Tensor:
    bits = torch.randint(-(2**31), 2**31 - 1, (n,), generator=generator, dtype=torch.int64).to(torch.int32)
    edge = torch.tensor([0.0, -0.0, 65504.0, 65519.996, 65520.0, 6.1e-5, 5.96e-8, 2.98e-8, 1e-45, float("inf"),
                         -float("inf"), float("nan"), 3.3895314e38, 3.4e38])
    return torch.cat([bits.view(torch.float32), edge])


@requires_extension
@pytest.mark.parametrize("param_dtype", [torch.float16, torch.bfloat16])
def test_every_16_bit_value_survives_a_zero_lr_step(param_dtype):
    """lr = 0 leaves p unchanged, so the param goes through load and store untouched: every bit pattern."""
    values = _all_fp16_values().view(torch.int16).view(param_dtype)
    finite = torch.isfinite(values.float())
    params = [values.clone()]
    grads = [torch.full_like(values, 1e-3)]
    state = [torch.full(values.shape, 1e-3), torch.full(values.shape, 1e-3)]
    adadelta_fused.adadelta_(params, grads, [state[0]], [state[1]], lr=0.0, backend="cpp")
    assert_bitwise_equal(params[0][finite], values[finite])
    assert torch.equal(params[0].isnan(), values.isnan())


@requires_extension
@pytest.mark.parametrize("param_dtype", [torch.float16, torch.bfloat16])
def test_rounding_of_the_master_copy_matches_torch(param_dtype, generator):
    """With master weights the param is round_to_nearest(master): compare with torch's cast on wild values."""
    master = _random_fp32_bit_patterns(generator)
    params = [torch.zeros_like(master, dtype=param_dtype)]
    grads = [torch.full_like(master, 1e-3, dtype=param_dtype)]
    masters = [master.clone()]
    adadelta_fused.adadelta_(
        params, grads, [torch.full_like(master, 1e-3)], [torch.full_like(master, 1e-3)],
        lr=0.0, master_params=masters, backend="cpp",
    )
    assert_bitwise_equal(params[0], master.to(param_dtype))


def _run(backend_or_torch, dtype, state_dtype, grads_fp64, param0):
    param = param0.to(dtype).clone()
    if backend_or_torch == "torch":
        opt = torch.optim.Adadelta([param], lr=1.0, weight_decay=0.01)
    else:
        opt = adadelta_fused.Adadelta([param], lr=1.0, weight_decay=0.01, backend=backend_or_torch)
    param.requires_grad_(True)
    for grad in grads_fp64:
        param.grad = grad.to(dtype)
        opt.step()
    return param.detach().double()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_error_is_bounded_by_eager_torch(backend, dtype, generator):
    n, steps = 4097, 30
    param0 = torch.randn(n, generator=generator, dtype=torch.float64)
    grads = [torch.randn(n, generator=generator, dtype=torch.float64) * 0.1 for _ in range(steps)]
    # The fp64 run starts from the same rounded values and sees the same rounded gradients.
    exact = _run("torch", torch.float64, None, [g.to(dtype).double() for g in grads], param0.to(dtype).double())
    eager_error = (_run("torch", dtype, dtype, grads, param0) - exact).abs().mean().item()
    our_error = (_run(backend, dtype, dtype, grads, param0) - exact).abs().mean().item()
    assert eager_error > 0
    assert our_error <= TOLERANCE[dtype]["error_ratio"] * eager_error, (our_error, eager_error)


def test_stochastic_rounding_is_unbiased(generator):
    """Over 1e6 draws the mean rounding error is ~0 (in units of the bf16 spacing), and it is not for
    round-to-nearest on values that sit 1/3 of a spacing above a bf16 number."""
    draws = 1_000_000
    lower = torch.randn(1, generator=generator).abs().to(torch.bfloat16).float()
    _, exponent = torch.frexp(lower)  # |lower| lies in [2^(e-1), 2^e); bf16 keeps 8 significant bits
    spacing = 2.0 ** (exponent.item() - 8)
    value = (lower + spacing / 3).expand(draws).contiguous()
    noise = rounding_noise(rounding_key(seed=11, step=5), 0, draws)
    rounded = round_to_bf16_stochastic(value, noise).float()
    assert set(rounded.unique().tolist()) == {lower.item(), lower.item() + spacing}
    mean_error = ((rounded - value).mean() / spacing).item()
    assert abs(mean_error) < 5e-3  # the standard error of the mean is about 4.7e-4
    nearest_error = ((value.to(torch.bfloat16).float() - value).mean() / spacing).item()
    assert abs(nearest_error) > 0.3
    # Reproducible for a seed, different for another.
    assert torch.equal(noise, rounding_noise(rounding_key(seed=11, step=5), 0, draws))
    assert not torch.equal(noise, rounding_noise(rounding_key(seed=12, step=5), 0, draws))


def test_rounding_noise_has_16_uniform_bits():
    noise = rounding_noise(rounding_key(seed=0, step=1), 3, 1 << 20)
    assert int(noise.min()) >= 0 and int(noise.max()) <= 0xFFFF
    for bit in range(16):
        share = ((noise >> bit) & 1).double().mean().item()
        assert abs(share - 0.5) < 0.005, (bit, share)


def test_the_two_elements_of_a_pair_draw_unrelated_noise():
    """Elements 2k and 2k + 1 take the two halves of one hash (csrc/rounding.h rounding_pair_hash): the halves must
    not be related, neither as numbers nor bit by bit, and neighbours across pairs neither."""
    noise = rounding_noise(rounding_key(seed=2, step=9), 1, 1 << 21).double()
    even, odd = noise[0::2], noise[1::2]
    assert not torch.equal(even, odd)
    for a, b in ((even, odd), (odd[:-1], even[1:])):
        correlation = torch.corrcoef(torch.stack([a, b]))[0, 1].item()
        assert abs(correlation) < 0.005, correlation  # 2^20 pairs: the standard error is about 0.001
        for bit in range(16):
            same = (((a.long() ^ b.long()) >> bit) & 1).double().mean().item()
            assert abs(same - 0.5) < 0.005, (bit, same)


@pytest.mark.parametrize("backend", BACKENDS)
def test_grad_scaler_unscales_and_skips_inf_steps(backend, generator):
    """Under GradScaler the fused step unscales in its own pass; an inf gradient skips the step entirely."""
    def make():
        torch.manual_seed(3)
        return torch.nn.Sequential(torch.nn.Linear(9, 17), torch.nn.Tanh(), torch.nn.Linear(17, 3))

    ours, theirs = make(), make()
    opt_ours = adadelta_fused.Adadelta(ours.parameters(), lr=0.5, backend=backend)
    opt_theirs = torch.optim.Adadelta(theirs.parameters(), lr=0.5)
    scaler_ours = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler_theirs = torch.amp.GradScaler("cpu", init_scale=1024.0)
    for step in range(8):
        x = torch.randn(5, 9, generator=generator)
        if step == 4:
            x[0, 0] = float("inf")  # this step's gradients overflow
        for model, opt, scaler in ((ours, opt_ours, scaler_ours), (theirs, opt_theirs, scaler_theirs)):
            opt.zero_grad()
            scaler.scale(model(x).square().mean()).backward()
            scaler.step(opt)
            scaler.update()
    for a, b in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(a, b, **TOLERANCE[a.dtype])
    steps = {state["step"].item() for state in opt_ours.state.values()}
    assert steps == {7.0}, "the overflowing step must not count"
    assert scaler_ours.get_scale() == scaler_theirs.get_scale()
