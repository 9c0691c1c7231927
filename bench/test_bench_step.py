"""Regression tracking with pytest-benchmark: ``pytest bench/ --benchmark-only``.

Kept out of the default test run (pyproject's ``testpaths = ["tests"]``). Each benchmark times one optimizer
step on the default device, rotating over parameter sets larger than the last-level cache as the CLI does,
and stores in ``extra_info`` the useful GB/s (byte model) and the percent of the triad/copy bandwidth
measured in the same session. ``test_one_param_step_host_time`` times ``optimizer.step()`` of one param of 16
elements instead: the host time every step pays (Python, checks, launches), next to torch's Adadelta and fused
Adam. Compare runs with ``--benchmark-autosave`` and ``pytest-benchmark compare``.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from adadelta_fused import Adadelta
from adadelta_fused.bench import implementations as impls
from adadelta_fused.bench.bandwidth import measure_bandwidth, reference_bandwidth
from adadelta_fused.bench.cases import Case, Mi, format_count, make_param_sets, rotation_sets
from adadelta_fused.bench.environment import default_device, describe, last_level_cache_bytes
from adadelta_fused.bench.timing import synchronize
from adadelta_fused.bench.traffic import StepConfig, step_traffic

DEVICE = default_device()
CONFIG = StepConfig(torch.float32)
# 4 Mi fp32 elements: 64 MiB per set, past a 32 MiB CPU cache; as one tensor and as 256 of 16 Ki.
CASES = [Case(4 * Mi, 1), Case(4 * Mi, 256)]
NAMES = [
    name
    for name in ("cpp", "triton", impls.TORCH_FOREACH, impls.TORCH_FORLOOP, impls.TORCH_FUSED_ADAMW)
    if impls.unavailable_reason(name, DEVICE) is None
]


@pytest.fixture(scope="session")
def bandwidth():
    return reference_bandwidth(measure_bandwidth(DEVICE))


@pytest.fixture(scope="session")
def machine():
    info = describe(DEVICE)
    return {key: info[key] for key in ("device", "device_name", "torch", "triton", "extension", "git")}


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{format_count(c.numel)}-{c.tensors}tensors")
@pytest.mark.parametrize("name", NAMES)
def test_step(benchmark, name, case, bandwidth, machine):
    sets = make_param_sets(case, CONFIG, DEVICE, rotation_sets(case, CONFIG, last_level_cache_bytes(DEVICE)))
    rotation = itertools.cycle(impls.implementation(name).build(sets, CONFIG))

    def step() -> None:
        next(rotation)()
        synchronize(DEVICE)

    step_bytes = step_traffic(CONFIG).total * case.numel
    benchmark.extra_info.update(machine)
    benchmark.extra_info.update(numel=case.numel, tensors=case.tensors, step_bytes=step_bytes,
                                bandwidth_probe=bandwidth.name, bandwidth_gbps=bandwidth.gbps)
    benchmark.pedantic(step, rounds=20, iterations=1, warmup_rounds=len(sets))
    # With --benchmark-disable the step runs once and there are no statistics to convert.
    if benchmark.stats is not None:
        gbps = step_bytes / benchmark.stats.stats.median / 1e9
        benchmark.extra_info.update(gbps=gbps, percent_of_bandwidth=100 * gbps / bandwidth.gbps)


# The host time a step pays whatever its size: one param of 16 elements, whose bytes take nothing.
STEP_OPTIMIZERS = {
    "adadelta_fused": lambda params: Adadelta(params),
    "adadelta_fused-flatten": lambda params: Adadelta(params, flatten=True),
    "torch-adadelta-foreach": lambda params: torch.optim.Adadelta(params, foreach=True),
    "torch-adam-fused": lambda params: torch.optim.Adam(params, fused=True),
}


@pytest.mark.parametrize("name", list(STEP_OPTIMIZERS))
def test_one_param_step_host_time(benchmark, name, machine):
    param = torch.nn.Parameter(torch.randn(16, device=DEVICE))
    param.grad = torch.randn(16, device=DEVICE)
    optimizer = STEP_OPTIMIZERS[name]([param])
    benchmark.extra_info.update(machine)
    benchmark.extra_info.update(numel=16, tensors=1)
    benchmark.pedantic(optimizer.step, rounds=200, iterations=50, warmup_rounds=20)
