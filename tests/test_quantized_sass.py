"""The quantized op's CUDA kernel (csrc/cuda/quantized_cuda.cu), audited as machine code (no GPU needed).

For every 8-bit-state configuration (param dtype x master copy x grad mode) and every built target, the SASS that
``cuobjdump`` prints must show:

- the vector path of one lane (8 consecutive elements) moving exactly the byte model
  (``bench.traffic.step_traffic``): the param, grad and master runs in 128-bit words, each accumulator's 8 codes
  in one 64-bit word, and each block's two scales as one 32-bit load and one 32-bit store per accumulator;
- the block's scale reduced with warp reductions (REDUX.MAX, sm_80+), not through shared or local memory;
- no local memory (no spills, no stack), registers within __launch_bounds__(512, 1);
- IEEE square roots and divisions (MUFU.RSQ / MUFU.RCP with their slow-path calls, no MUFU.SQRT).
"""

from __future__ import annotations

import functools
import re

import pytest
import torch

from test_cuda_sass import ARCHS, _CXX_TYPES, built_functions, count

from adadelta_fused.bench.traffic import StepConfig, quantized_configs, step_traffic
from adadelta_fused.contract import GradMode

_KERNEL_NAME = re.compile(r"quantized_adadelta_kernel<([\w:]+), \(adadelta_fused::GradMode\)(\d), (true|false)>")
RUN = 8  # elements per lane: 256-element block / 32 lanes
CODE_BYTES = 1  # per element per accumulator
# __launch_bounds__(512, 1): a thread may take 128 registers (64 Ki / 512).
MAX_REGISTERS = 128


@functools.cache
def _kernels(arch: str) -> dict[StepConfig, tuple[str, dict[str, str]]]:
    kernels = {}
    for readable, sass, usage in built_functions(arch):
        match = _KERNEL_NAME.search(readable)
        if match is None:
            continue
        param, grad_mode, master = match.groups()
        config = StepConfig(_CXX_TYPES[param], torch.uint8, master == "true", GradMode(int(grad_mode)))
        kernels[config] = (sass, usage)
    return kernels


CASES = [(arch, config) for arch in ARCHS for config in quantized_configs()]


def _case_id(case) -> str:
    arch, config = case
    return f"{arch}-{config.label().replace(' ', '')}"


@pytest.mark.parametrize("arch", ARCHS)
def test_every_configuration_is_compiled(arch):
    assert set(_kernels(arch)) == set(quantized_configs())


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_vector_path_moves_the_byte_model(case, record_property):
    arch, config = case
    sass, _ = _kernels(arch)[config]
    traffic = step_traffic(config)
    # One lane's run: the 1-byte codes of both accumulators are one 64-bit word each; every other byte of the
    # model (param, grad, master) is in 16-byte words. fp32 params, grad kept: 4 + 2 loads, 2 + 2 stores.
    assert count(sass, "LDG", "128") == (traffic.read - 2 * CODE_BYTES) * RUN // 16
    assert count(sass, "STG", "128") == (traffic.written - 2 * CODE_BYTES) * RUN // 16
    # (+1: resolve_scalars reads a tensor lr as fp64, once per thread.)
    assert count(sass, "LDG", "64") == 2 + 1
    assert count(sass, "STG", "64") == 2
    if config.param_dtype != torch.float32 and not config.master_weights:
        # No fp32 buffer per element here, so every 32-bit access is a scale or a scalar: one load and one store
        # of each accumulator's scale per block (the warp's iteration), plus grad_scale and found_inf.
        assert traffic.scale_read == traffic.scale_written == 2 * 4
        assert len(re.findall(r"\bLDG\.E(?:\.STRONG\.\w+)? ", sass)) == 2 + 2
        assert len(re.findall(r"\bSTG\.E(?:\.STRONG\.\w+)? ", sass)) == 2
    record_property("ldg128", count(sass, "LDG", "128"))


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_scales_come_from_warp_reductions(case):
    arch, config = case
    sass, _ = _kernels(arch)[config]
    # (sm_100's ptxas emits CREDUX.MAX for the same reduction)
    assert re.search(r"\bC?REDUX\.MAX\b", sass), "the block's largest root: __reduce_max_sync"
    assert not re.search(r"\b(LDS|STS|BAR)\b", sass), "no shared memory or block barrier"


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_no_local_memory_and_registers_within_launch_bounds(case, record_property):
    arch, config = case
    sass, usage = _kernels(arch)[config]
    assert int(usage["STACK"]) == 0 and int(usage["LOCAL"]) == 0, usage
    assert not re.search(r"\b(LDL|STL)\b", sass), "spill code in the SASS"
    assert int(usage["REG"]) <= MAX_REGISTERS
    record_property("registers", int(usage["REG"]))


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_ieee_arithmetic(case):
    """IEEE fp32 sqrt and division take a slow path for special inputs (a CALL.REL to the fixup); an
    approximation would be a lone MUFU.SQRT, or a MUFU.RCP with no call."""
    arch, config = case
    sass, _ = _kernels(arch)[config]
    assert not re.search(r"\bMUFU\.SQRT\b", sass)
    assert re.search(r"\bMUFU\.RSQ\b", sass) and re.search(r"\bMUFU\.RCP\b", sass)
    assert "CALL.REL" in sass
