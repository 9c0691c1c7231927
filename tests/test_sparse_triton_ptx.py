"""The sparse Triton kernel compiled ahead of time for sm_80 and sm_90 (no GPU needed), its PTX and SASS audited:
IEEE arithmetic, no local or shared memory, registers within budget, and per element exactly the accesses
the contract allows: param (update only), square_avg and acc_delta of the listed rows, the gradient row, and
per row its index and step record.
"""

from __future__ import annotations

import re
import subprocess
from functools import cache

import pytest
import torch

triton = pytest.importorskip("triton", reason="the Triton backend needs triton")

from triton.compiler.compiler import ASTSource, make_backend  # noqa: E402
from triton.runtime.jit import create_function_from_signature  # noqa: E402

from adadelta_fused import sparse_triton, triton_interpreter  # noqa: E402

from test_sparse_kernels import SCALARS, _op_args, make_case  # noqa: E402
from test_triton_ptx import MAX_REGISTERS, TARGETS, audit_ptx  # noqa: E402

AUDITED = {
    "fp32": (torch.float32, torch.float32),
    "bf16_fp32_state": (torch.bfloat16, torch.float32),
    "fp16": (torch.float16, torch.float16),
    "fp64": (torch.float64, torch.float64),
}
MODES = ("update", "catch_up")


@cache
def compiled(name: str, mode: str, target: str):
    case = make_case(64, (64,), *AUDITED[name], listed=32, step=100, generator=torch.Generator().manual_seed(0))
    args = _op_args(case, SCALARS["default"], 100, update=mode == "update")
    _, arguments = sparse_triton.launch_arguments(*args)
    kernel = triton_interpreter.kernels(False, sparse_triton.KERNEL_MODULE).sparse_adadelta_kernel
    backend = make_backend(TARGETS[target])
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, options = binder(**arguments)
    options, signature, constexprs, attrs = kernel._pack_args(backend, options, bound, specialization, options)
    binary = triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=TARGETS[target],
                            options=options.__dict__)
    return arguments, binary.asm["ptx"], binary.asm["cubin"]


CASES = [(name, mode, target) for name in AUDITED for mode in MODES for target in TARGETS]


@pytest.mark.parametrize("name, mode, target", CASES)
def test_bytes_per_element_are_the_contracts(name, mode, target):
    """Per element of a listed row, in 16-byte (or, for 16-bit buffers beside fp32 ones, 8-byte) vectors: the
    update reads param, gradient and both accumulators and writes param and both accumulators; catching up
    reads and writes the accumulators only. Scalar accesses are per row: its index and step record read
    (8 bytes each), the record written once."""
    arguments, ptx, _ = compiled(name, mode, target)
    param, state = AUDITED[name]
    audit = audit_ptx(ptx, arguments["num_warps"] * 32, arguments["ROWS"] * arguments["BLOCK_D"])
    update = mode == "update"
    assert audit.bytes_per_element(audit.vector_loads) == 2 * state.itemsize + 2 * param.itemsize * update
    assert audit.bytes_per_element(audit.vector_stores) == 2 * state.itemsize + param.itemsize * update
    assert set(audit.scalar_loads) == {8}
    assert audit.scalar_stores == {8: 1}, "the row record, once"


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", ["fp32", "fp64"])
def test_rounding_steps_per_element(name, target):
    """Two IEEE roots and one IEEE division per element, as the dense kernel's update."""
    arguments, ptx, _ = compiled(name, "update", target)
    per_thread = arguments["ROWS"] * arguments["BLOCK_D"] // (arguments["num_warps"] * 32)
    kind = "f64" if name == "fp64" else "f32"
    counts = {op: len(re.findall(rf"\b{op}\.rn\.{kind}\b", ptx)) / per_thread for op in ("sqrt", "div")}
    assert counts == {"sqrt": 2, "div": 1}


@pytest.mark.parametrize("name, mode, target", CASES)
def test_no_local_or_shared_memory_and_ieee_arithmetic(name, mode, target):
    _, ptx, _ = compiled(name, mode, target)
    assert not re.search(r"\.local\b|\bld\.local|\bst\.local", ptx), "register spills"
    assert not re.search(r"\.approx\b|\.ftz\b", ptx), "approximate or flush-to-zero arithmetic"
    assert re.search(r"\bmul(\.rn)?\.f64\b", ptx), "rho_power multiplies in fp64"
    kind = "f64" if name == "fp64" else "f32"
    if mode == "update":
        assert re.search(rf"\bsqrt\.rn\.{kind}\b", ptx) and re.search(rf"\bdiv\.rn\.{kind}\b", ptx)
    else:
        assert not re.search(r"\b(sqrt|div)\.", ptx), "catching up is multiplies only"


def _cuobjdump(cubin: bytes, flag: str, tmp_path) -> str:
    path = tmp_path / "kernel.cubin"
    path.write_bytes(cubin)
    return subprocess.run([triton.knobs.nvidia.cuobjdump.path, flag, str(path)], capture_output=True, text=True,
                          check=True).stdout


@pytest.mark.parametrize("name, mode, target", CASES)
def test_sass_fits_the_register_budget(name, mode, target, tmp_path):
    _, _, cubin = compiled(name, mode, target)
    usage = _cuobjdump(cubin, "--dump-resource-usage", tmp_path)
    assert re.search(r"STACK:0 SHARED:\d+ LOCAL:0", usage), usage
    assert int(re.search(r"REG:(\d+)", usage).group(1)) <= MAX_REGISTERS
    assert not re.search(r"\b(LDL|STL)\b", _cuobjdump(cubin, "-sass", tmp_path))
