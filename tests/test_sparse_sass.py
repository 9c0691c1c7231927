"""The sparse op's CUDA kernel, audited as machine code (no GPU needed): every (param, state) dtype pair is
compiled, in both modes (update, catch up only), for sm_80 and sm_90 (sm_100 when built); none uses local
memory; the catch-up kernel computes no square root or division and stores no param; the update kernel uses
IEEE square roots and divisions (no approximations: MUFU.RSQ alone would be one); and each kernel's stores
are the listed rows' param (update only), square_avg, acc_delta and the row's step record, nothing else.
"""

from __future__ import annotations

import functools
import re
from collections import Counter

import pytest
import torch

from test_cuda_sass import ARCHS, _CXX_TYPES, built_functions

from adadelta_fused.contract import STATE_DTYPES

_KERNEL_NAME = re.compile(r"sparse_adadelta_kernel<([\w:]+), ([\w:]+), (true|false)>")
PAIRS = [(param, state) for param, states in STATE_DTYPES.items() for state in states]
# __launch_bounds__(256): ptxas may give a thread up to 255 registers; the kernels use far fewer, and more
# than this many would halve the warps an SM holds (64 Ki registers / 256 threads / 2 blocks).
MAX_REGISTERS = 128


@functools.cache
def _sparse_kernels(arch: str) -> dict:
    kernels = {}
    for readable, sass, usage in built_functions(arch):
        if "sparse_adadelta_kernel" not in readable:
            continue
        match = _KERNEL_NAME.search(readable)
        assert match, readable
        param, state, update = match.groups()
        kernels[(_CXX_TYPES[param], _CXX_TYPES[state], update == "true")] = (sass, usage)
    return kernels


CASES = [(arch, param, state, update) for arch in ARCHS for param, state in PAIRS for update in (True, False)]


def _case_id(case) -> str:
    arch, param, state, update = case
    names = "-".join(str(d).removeprefix("torch.") for d in (param, state))
    return f"{arch}-{names}-{'update' if update else 'catch_up'}"


@pytest.mark.parametrize("arch", ARCHS)
def test_every_configuration_is_compiled(arch):
    assert set(_sparse_kernels(arch)) == {(param, state, update) for param, state in PAIRS for update in (True, False)}


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_no_local_memory_and_registers_bounded(case, record_property):
    arch, param, state, update = case
    sass, usage = _sparse_kernels(arch)[(param, state, update)]
    assert int(usage["STACK"]) == 0 and int(usage["LOCAL"]) == 0, usage
    assert not re.search(r"\b(LDL|STL)\b", sass), "spill code in the SASS"
    assert int(usage["REG"]) <= MAX_REGISTERS
    record_property("registers", int(usage["REG"]))


def _store_widths(sass: str) -> list[int]:
    """Bits of each global store (STG.E = 32, .U16/.64 as written)."""
    widths = []
    for modifiers in re.findall(r"\bSTG((?:\.[A-Z0-9_]+)*)\s", sass):
        parts = modifiers.split(".")
        width = 32
        for part in parts:
            if part in ("U8", "S8"):
                width = 8
            elif part in ("U16", "S16"):
                width = 16
            elif part in ("64", "128"):
                width = int(part)
        widths.append(width)
    return widths


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_stores_are_the_rows_and_their_record(case):
    """Per element the row loop stores square_avg and acc_delta (and param when updating), in each copy the
    compiler makes of the loop body, then lane 0 stores the row's 64-bit step record, last: no other store."""
    arch, param, state, update = case
    sass, _ = _sparse_kernels(arch)[(param, state, update)]
    widths = _store_widths(sass)
    assert widths[-1] == 64, "the row record, stored after the row"
    per_element = Counter([state.itemsize * 8] * 2 + [param.itemsize * 8] * update)
    copies = (len(widths) - 1) // sum(per_element.values())
    assert copies >= 1
    assert Counter(widths[:-1]) == Counter({width: n * copies for width, n in per_element.items()})


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_ieee_arithmetic(case):
    arch, param, state, update = case
    sass, _ = _sparse_kernels(arch)[(param, state, update)]
    assert "DMUL" in sass, "rho_power multiplies in fp64"
    if not update:
        # Catching up is multiplies only: no square root, no division, no store of the param.
        assert not re.search(r"\bMUFU\.(RSQ|RCP|SQRT)", sass)
        return
    if param != torch.float64:
        # IEEE fp32 sqrt and division take a slow path for special inputs (a CALL.REL to the rounding fixup);
        # an approximation would be a lone MUFU.
        assert re.search(r"\bMUFU\.RSQ\b", sass) and re.search(r"\bMUFU\.RCP\b", sass)
        assert "CALL.REL" in sass or "BSSY" in sass
