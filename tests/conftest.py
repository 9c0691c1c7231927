"""Shared fixtures: fresh random data (never zeros), poisoning, the backends under test, and gloo groups."""

from __future__ import annotations

import contextlib
import datetime
import os
import socket
import zlib

import pytest
import torch
import torch.distributed as dist

from adadelta_fused import _extension
from adadelta_fused.contract import STATE_DTYPES, GradMode, StepScalars
from adadelta_fused.reference import adadelta_step_reference_

ODD_SIZES = (0, 1, 15, 1023, 4097, 2**20 + 3)

# How close a result must be to torch.optim.Adadelta's, per param dtype, the one table for every test.
# fp32/fp64: rtol/atol for trajectories that may drift by a few ulps from torch's (where the tests are not
# bit for bit against the reference). bf16/fp16: the error against an fp64 run may be at most
# `error_ratio` times eager torch's own error in the same dtype (test_precision.py).
TOLERANCE = {
    torch.float32: dict(rtol=2e-5, atol=2e-6),
    torch.float64: dict(rtol=1e-12, atol=1e-14),
    torch.bfloat16: dict(error_ratio=2.0),
    torch.float16: dict(error_ratio=2.0),
}

# Every supported (param dtype, state dtype) pair: contract.STATE_DTYPES.
DTYPE_PAIRS = [(param, state) for param, states in STATE_DTYPES.items() for state in states]


# One step configuration per contract feature, for every kernel's tests (scalars_for fills in the rest).
FEATURES = {
    "default": {},
    "maximize": dict(maximize=True),
    "weight_decay": dict(weight_decay=0.05),
    "maximize_weight_decay": dict(maximize=True, weight_decay=0.9, rho=0.95),
    "lr_tensor": dict(lr=torch.tensor(0.37, dtype=torch.float64)),
    "grad_scale_unscale": dict(grad_scale=torch.tensor(3.0), grad_mode=GradMode.UNSCALE),
    "grad_scale_keep": dict(grad_scale=torch.tensor(0.25)),
    "grad_zero": dict(grad_mode=GradMode.ZERO, weight_decay=0.01),
    "found_inf_zero": dict(found_inf=torch.tensor(0.0), grad_scale=torch.tensor(2.0)),
    "rho_edges": dict(rho=1.0, eps=0.0),
}


def scalars_on(scalars: StepScalars, device: torch.device | str) -> StepScalars:
    """The same scalars with their tensors (lr, grad_scale, found_inf) on ``device``."""
    fields = scalars.__dict__.items()
    return StepScalars(**{name: v.to(device) if isinstance(v, torch.Tensor) else v for name, v in fields})


def scalars_for(feature: str, device: torch.device | str | None = None, **extra) -> StepScalars:
    """The feature's scalars; with ``device``, its tensors live there."""
    scalars = StepScalars(**(dict(lr=0.8, rho=0.9, eps=1e-6, weight_decay=0.0) | FEATURES[feature] | extra))
    return scalars if device is None else scalars_on(scalars, device)


def dtype_id(pair) -> str:
    return "-".join(str(d).removeprefix("torch.") for d in pair)


@pytest.fixture
def generator(request) -> torch.Generator:
    """A generator seeded per test, so every test gets its own fresh data and reruns reproduce it (crc32 of
    the test's id: Python's str hash changes with every process, and a failure seen once did not return)."""
    return torch.Generator().manual_seed(zlib.crc32(request.node.nodeid.encode()))


def random_group(numels, param_dtype, state_dtype, generator, *, master=False):
    """params, grads, square_avgs, acc_deltas (and fp32 masters) with values typical of training."""
    def randn(n, dtype, scale=1.0):
        return (torch.randn(n, generator=generator, dtype=torch.float64) * scale).to(dtype)

    def positive(n, dtype, scale):
        return (torch.rand(n, generator=generator, dtype=torch.float64) * scale + scale / 10).to(dtype)

    params = [randn(n, param_dtype) for n in numels]
    grads = [randn(n, param_dtype, 0.1) for n in numels]
    square_avgs = [positive(n, state_dtype, 1e-2) for n in numels]
    acc_deltas = [positive(n, state_dtype, 1e-4) for n in numels]
    masters = [p.float() + randn(n, torch.float32, 1e-3) for p, n in zip(params, numels)] if master else None
    return params, grads, square_avgs, acc_deltas, masters


def clone_group(group):
    return tuple(None if tensors is None else [t.clone() for t in tensors] for tensors in group)


# CI builds the extension and sets this, so a broken build fails the run instead of skipping tests.
REQUIRE_EXTENSION = os.environ.get("ADADELTA_FUSED_REQUIRE_EXTENSION") == "1"

requires_extension = pytest.mark.skipif(
    _extension.module() is None and not REQUIRE_EXTENSION,
    reason=f"compiled extension unavailable: {_extension.load_error()}",
)


def backends_under_test() -> list[str]:
    """The reference always; the compiled kernel wherever it is built (and always in CI)."""
    cpp_ready = _extension.module() is not None or REQUIRE_EXTENSION
    return ["reference"] + (["cpp"] if cpp_ready else [])


def cpu_isas() -> list:
    """Every SIMD level this CPU supports; where the AVX-512 level runs the float lanes (csrc/cpu/float_lanes.h),
    that level once more without them, so GCC's AVX-512 loops, which other CPUs run, are tested here too."""
    ext = _extension.module()
    if ext is None:
        return []
    levels = [pytest.param((isa, True), id=isa) for isa in ext.supported_cpu_isas()]
    if "avx512" in ext.supported_cpu_isas() and ext.float_lanes_are_exact():
        levels.append(pytest.param(("avx512", False), id="avx512-without-lanes"))
    return levels


@pytest.fixture(params=cpu_isas() or [pytest.param(("none", True), id="none")])
def cpu_isa(request):
    """Runs a test once per SIMD level this CPU supports (the level's name is the value), restoring the best one
    afterwards."""
    ext = _extension.module()
    if ext is None:
        assert not REQUIRE_EXTENSION, _extension.load_error()
        pytest.skip(f"compiled extension unavailable: {_extension.load_error()}")
    isa, lanes = request.param
    best = ext.supported_cpu_isas()[-1]
    ext.select_cpu_isa(isa)
    ext.set_float_lanes(lanes)
    yield isa
    ext.select_cpu_isa(best)
    ext.set_float_lanes(True)


_SAME_WIDTH_INT = {8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.uint8}


def assert_bitwise_equal(got: torch.Tensor, want: torch.Tensor, what: str = "") -> None:
    """Equal bit for bit (so -0.0 differs from +0.0), with any NaN equal to any NaN."""
    assert got.dtype == want.dtype and got.shape == want.shape, what
    nan_got, nan_want = got.isnan(), want.isnan()
    assert torch.equal(nan_got, nan_want), f"{what}: NaN at different positions"
    as_int = _SAME_WIDTH_INT[got.element_size()]
    bits_got = got.masked_fill(nan_got, 0).contiguous().view(as_int)
    bits_want = want.masked_fill(nan_want, 0).contiguous().view(as_int)
    mismatches = (bits_got != bits_want).nonzero()
    assert mismatches.numel() == 0, (
        f"{what}: {mismatches.shape[0]} of {got.numel()} elements differ, first at {mismatches[0].tolist()}: "
        f"{got[tuple(mismatches[0])].item()!r} != {want[tuple(mismatches[0])].item()!r}"
    )


GROUP_NAMES = ("params", "grads", "square_avgs", "acc_deltas", "master_params")


def on_device(group, device: torch.device | str):
    """Copies of the group's tensors on ``device`` (copies also where they are there already)."""
    return tuple(None if tensors is None else [t.to(device, copy=True) for t in tensors] for tensors in group)


def reference_step_on_cpu_(group, scalars: StepScalars) -> None:
    """One reference step over ``group``, which lives on the CPU, with ``scalars``' tensors brought there.

    The oracle is the reference on the CPU, whatever device the backend ran on: torch's CPU ops round where
    csrc/adadelta_math.h rounds (one rounding per op, an fma in addcmul and add(alpha=)). torch's CUDA ops
    are other kernels: on an H200 (torch 2.11) the reference run on CUDA tensors differed from it in the
    last bit of up to 22 % of a step's elements, in fp32 and fp64 alike.
    """
    assert all(t.device.type == "cpu" for tensors in group if tensors is not None for t in tensors)
    adadelta_step_reference_(*group[:4], group[4], scalars_on(scalars, "cpu"))


def run_with_reference(step_, group, scalars):
    """(the backend's result, the reference's), both on the CPU, for one step of ``step_`` over copies of
    ``group`` on its device and of the reference over copies on the CPU."""
    expected, actual = on_device(group, "cpu"), clone_group(group)
    reference_step_on_cpu_(expected, scalars)
    step_(*actual[:4], actual[4], scalars)
    return on_device(actual, "cpu"), expected


def op_kwargs(group, **overrides) -> dict:
    """Keyword arguments of the ops (adadelta_ and triton_adadelta_) over ``group``, with defaults."""
    params, grads, square_avgs, acc_deltas, masters = group
    args = dict(
        params=params, grads=grads, square_avgs=square_avgs, acc_deltas=acc_deltas, master_params=masters or [],
        lr=1.0, lr_tensor=None, rho=0.9, eps=1e-6, weight_decay=0.0, maximize=False, grad_scale=None,
        found_inf=None, grad_mode=0, stochastic_rounding=False, rounding_key=0,
    )
    return args | overrides


def step_with_new_gradients(step_, expected, actual, scalars, generator) -> None:
    """One step of the reference on ``expected`` (on the CPU) and of ``step_`` on ``actual`` (on its device),
    both with the same fresh gradients, drawn on the CPU, as in training."""
    for want, got in zip(expected[1], actual[1]):
        fresh = torch.randn(want.shape, generator=generator) * 0.1
        want.copy_(fresh)
        got.copy_(fresh)
    reference_step_on_cpu_(expected, scalars)
    step_(*actual[:4], actual[4], scalars)


def assert_groups_equal(actual, expected) -> None:
    for name, got_list, want_list in zip(GROUP_NAMES, actual, expected):
        if want_list is None:
            continue
        assert len(got_list) == len(want_list)
        for i, (got, want) in enumerate(zip(got_list, want_list)):
            assert_bitwise_equal(got, want, f"{name}[{i}]")


def _clear_backend_registry() -> None:
    from adadelta_fused import backends as registry

    registry.reprobe()


@pytest.fixture
def triton_interpreting(monkeypatch):
    """TRITON_INTERPRET set for this test only, the backend registry probing again under it and after it."""
    pytest.importorskip("triton", reason="the Triton backend needs triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    _clear_backend_registry()
    yield
    _clear_backend_registry()


@pytest.fixture(params=["reference", "cpp", "triton"])
def every_backend(request) -> str:
    """Every backend that can run on this machine's CPU: the reference, the compiled kernel, and the Triton
    kernel in Triton's interpreter (TRITON_INTERPRET set for this test only)."""
    name = request.param
    if name == "cpp" and _extension.module() is None:
        assert not REQUIRE_EXTENSION, _extension.load_error()
        pytest.skip(f"compiled extension unavailable: {_extension.load_error()}")
    if name == "triton":
        request.getfixturevalue("triton_interpreting")
    return name


@pytest.fixture
def interpreter_fma_rounds_once(monkeypatch):
    """Triton's interpreter rounds tl.fma twice, the GPU once: test_triton's one-rounding stand-in, for the
    tests that reach the interpreter through another module (the sparse ops)."""
    try:
        from test_triton import _fma_rounded_once, triton_interpreter
    except pytest.skip.Exception:
        return  # no triton: no interpreter to patch
    monkeypatch.setattr(triton_interpreter.InterpreterBuilder, "create_fma", _fma_rounded_once)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now, for a gloo process group."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def one_rank_process_group():
    """A gloo process group of this process alone, destroyed on the way out."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1,
                            timeout=datetime.timedelta(seconds=30))
    try:
        yield
    finally:
        dist.destroy_process_group()
