"""The Triton kernels compiled ahead of time for sm_80 and sm_90 (no GPU needed), and their machine code audited
per element: vector accesses of 16 bytes at most and no narrower than the layout allows, no local or shared
memory, IEEE arithmetic, and exactly the bytes that bench.traffic.step_traffic says a step must move.
"""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from dataclasses import dataclass
from functools import cache

import pytest
import torch

triton = pytest.importorskip("triton", reason="the Triton backend needs triton")

from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler.compiler import ASTSource, make_backend  # noqa: E402
from triton.runtime.jit import create_function_from_signature  # noqa: E402

from adadelta_fused import triton_interpreter, triton_launch  # noqa: E402
from adadelta_fused.bench.traffic import StepConfig, step_traffic  # noqa: E402
from adadelta_fused.contract import GradMode, StepScalars  # noqa: E402

TARGETS = {"sm_80": GPUTarget("cuda", 80, 32), "sm_90": GPUTarget("cuda", 90, 32)}

# name -> (what the step moves, extra step arguments)
AUDITED = {
    "fp32_keep": (StepConfig(torch.float32), {}),
    "fp32_unscale": (StepConfig(torch.float32, grad_mode=GradMode.UNSCALE), dict(grad_scale=torch.tensor(4.0))),
    "fp32_zero": (StepConfig(torch.float32, grad_mode=GradMode.ZERO), {}),
    "bf16_fp32_state": (StepConfig(torch.bfloat16, torch.float32), {}),
    "bf16_master": (StepConfig(torch.bfloat16, torch.float32, master_weights=True), {}),
    "fp16_fp32_state": (StepConfig(torch.float16, torch.float32), {}),
    "fp64": (StepConfig(torch.float64), {}),
    "bf16_stochastic": (StepConfig(torch.bfloat16), dict(stochastic_rounding=True, rounding_key=0x9E3779B9)),
}

# The flat kernel steps one tensor; the multi-tensor kernel reads its buffers' addresses from tables.
KERNELS = {"flat": 1, "multi_tensor": 3}

# A multiple of 16 elements and of both block sizes: the body covers every element and there is no tail.
NUMEL = 4096

# With no more registers than this a thread, three programs of 128 threads fit an SM's 64 Ki registers.
MAX_REGISTERS = 168


def _example_tensors(config: StepConfig, count: int, numel: int, *, offset: int = 0):
    """Fresh random buffers for ``count`` tensors, each starting ``offset`` elements into its allocation."""
    def buffers(dtype, scale):
        fresh = (torch.rand(numel + offset, dtype=torch.float64) * scale + scale for _ in range(count))
        return [allocation.to(dtype)[offset:] for allocation in fresh]

    params, grads = buffers(config.param_dtype, 1.0), buffers(config.param_dtype, 0.1)
    square_avgs, acc_deltas = buffers(config.state_dtype, 1e-2), buffers(config.state_dtype, 1e-4)
    masters = buffers(torch.float32, 1.0) if config.master_weights else []
    return params, grads, square_avgs, acc_deltas, masters


def compile_launch(launch: triton_launch.Launch, target: GPUTarget):
    """What launching ``launch`` would compile on ``target``, through the JIT's own binder, so the types,
    the 16-byte alignment and divisibility attributes and the constexprs are those of a real launch."""
    kernel = getattr(triton_interpreter.kernels(False), launch.kernel)
    backend = make_backend(target)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, options = binder(**launch.arguments)
    options, signature, constexprs, attrs = kernel._pack_args(backend, options, bound, specialization, options)
    return triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=target, options=options.__dict__)


# ld.global / st.global with optional cache qualifiers, an optional .v2/.v4 and the element type.
_GLOBAL_ACCESS = re.compile(r"\b(ld|st)\.global(?:\.[A-Za-z0-9_:]+)*?(?:\.v([248]))?\.[bsuf](8|16|32|64)\b")


@dataclass(frozen=True)
class Audit:
    """Global memory traffic of one program, from the PTX, in bytes a thread moves."""

    vector_loads: Counter  # access width in bytes -> instructions (.v2/.v4: per-element data)
    vector_stores: Counter
    scalar_loads: Counter  # per-program metadata: table entries and 1-element device scalars
    scalar_stores: Counter
    threads: int
    elements: int  # per program

    def bytes_per_element(self, accesses: Counter) -> float:
        return sum(width * count for width, count in accesses.items()) * self.threads / self.elements


def audit_ptx(ptx: str, threads: int, elements: int) -> Audit:
    counters = {key: Counter() for key in ("ld_vector", "st_vector", "ld_scalar", "st_scalar")}
    for match in _GLOBAL_ACCESS.finditer(ptx):
        op, lanes, bits = match.groups()
        width = int(lanes or 1) * int(bits) // 8
        counters[f"{op}_{'vector' if lanes else 'scalar'}"][width] += 1
    return Audit(
        counters["ld_vector"], counters["st_vector"], counters["ld_scalar"], counters["st_scalar"], threads, elements
    )


@dataclass(frozen=True)
class Compiled:
    launch: triton_launch.Launch
    ptx: str
    cubin: bytes
    audit: Audit


@cache
def compiled(name: str, kernel: str, target: str, *, numel: int = NUMEL, offset: int = 0) -> Compiled:
    config, extra = AUDITED[name]
    tensors = _example_tensors(config, KERNELS[kernel], numel, offset=offset)
    scalars = StepScalars(lr=0.5, rho=0.9, eps=1e-6, weight_decay=0.0, grad_mode=config.grad_mode, **extra)
    (launch,) = triton_launch.planned_launches(*tensors, scalars)
    assert launch.kernel == f"adadelta_{kernel}_kernel"
    binary = compile_launch(launch, TARGETS[target])
    ptx = binary.asm["ptx"]
    threads = launch.arguments["num_warps"] * 32
    return Compiled(launch, ptx, binary.asm["cubin"], audit_ptx(ptx, threads, launch.arguments["BLOCK"]))


def _itemsizes(config: StepConfig) -> set[int]:
    sizes = {config.param_dtype.itemsize, config.state_dtype.itemsize}
    return sizes | ({4} if config.master_weights else set())


parametrize_all = pytest.mark.parametrize(
    "name, kernel, target",
    [(name, kernel, target) for name in AUDITED for kernel in KERNELS for target in TARGETS],
)


@parametrize_all
def test_bytes_per_element_are_the_models(name, kernel, target):
    audit = compiled(name, kernel, target).audit
    traffic = step_traffic(AUDITED[name][0])
    assert audit.bytes_per_element(audit.vector_loads) == traffic.read
    assert audit.bytes_per_element(audit.vector_stores) == traffic.written


@parametrize_all
def test_every_element_access_is_one_vector_of_the_layout(name, kernel, target):
    """Each thread moves VECTOR elements per access: 16 bytes of the widest buffer the step writes, so
    fp32 and fp64 buffers go 128 bits at a time. 16-bit buffers beside fp32 ones go 64 bits at a time:
    Triton caps a store at 128 bits per thread, and a 128-bit bf16 load would need its values moved to
    the fp32 stores' layout through shared memory (17 shared accesses a thread when tried)."""
    result = compiled(name, kernel, target)
    vector = result.launch.arguments["VECTOR"]
    widths = set(result.audit.vector_loads) | set(result.audit.vector_stores)
    assert widths == {vector * size for size in _itemsizes(AUDITED[name][0])}
    assert max(widths) == 16
    assert not result.audit.scalar_stores


@parametrize_all
def test_scalar_loads_are_per_program_metadata_only(name, kernel, target):
    config, extra = AUDITED[name]
    expected = Counter()
    if "grad_scale" in extra:
        expected[4] += 1  # the fp32 grad_scale
    if kernel == "multi_tensor":
        # block table (row, start); tensor table: body_end and four addresses, a fifth with a master copy,
        # and the tensor's index when stochastic rounding keys the noise with it. numel is for the tail only.
        expected[8] += 2 + 1 + 4 + config.master_weights + bool(extra.get("stochastic_rounding"))
    assert compiled(name, kernel, target).audit.scalar_loads == expected


@parametrize_all
def test_no_local_or_shared_memory_and_ieee_arithmetic(name, kernel, target):
    ptx = compiled(name, kernel, target).ptx
    assert not re.search(r"\.local\b|\bld\.local|\bst\.local", ptx), "register spills"
    assert ".shared" not in ptx, "a layout conversion through shared memory"
    assert not re.search(r"\.approx\b|\.ftz\b", ptx), "approximate or flush-to-zero arithmetic"


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", ["fp32_unscale", "fp64"])
def test_rounding_steps_per_element(name, target):
    """Three fma (both addcmul's and the param update; weight decay is off), two IEEE roots and one IEEE
    division, plus the grad_scale division: the reference's operations, each rounded once."""
    result = compiled(name, "flat", target)
    kind = "f64" if name == "fp64" else "f32"
    per_thread = result.launch.arguments["BLOCK"] // result.audit.threads
    counts = {op: len(re.findall(rf"\b{op}\.rn\.{kind}\b", result.ptx)) / per_thread for op in ("fma", "sqrt", "div")}
    assert counts == {"fma": 3, "sqrt": 2, "div": 1 + ("grad_scale" in AUDITED[name][1])}


def _cuobjdump(cubin: bytes, flag: str, tmp_path) -> str:
    path = tmp_path / "kernel.cubin"
    path.write_bytes(cubin)
    tool = triton.knobs.nvidia.cuobjdump.path
    return subprocess.run([tool, flag, str(path)], capture_output=True, text=True, check=True).stdout


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("name", AUDITED)
def test_sass_keeps_the_vectors_and_fits_the_register_budget(name, kernel, target, tmp_path):
    result = compiled(name, kernel, target)
    usage = _cuobjdump(result.cubin, "--dump-resource-usage", tmp_path)
    registers = int(re.search(r"REG:(\d+)", usage).group(1))
    assert re.search(r"STACK:0 SHARED:0 LOCAL:0", usage), usage
    assert registers <= MAX_REGISTERS
    sass = _cuobjdump(result.cubin, "-sass", tmp_path)
    assert not re.search(r"\b(LDL|STL|LDS|STS)\b", sass)
    audit = result.audit
    for op, ptx_accesses in (("LDG", audit.vector_loads), ("STG", audit.vector_stores)):
        assert len(re.findall(rf"\b{op}\.E\.128\b", sass)) == ptx_accesses[16], f"{op}.E.128"


@pytest.mark.parametrize("kernel", KERNELS)
def test_a_tail_keeps_the_body_vectorized(kernel):
    """4097 elements: the last one goes through the 16-lane tail pass, whose accesses are scalar."""
    result = compiled("fp32_keep", kernel, "sm_90", numel=NUMEL + 1)
    assert result.launch.arguments["HAS_TAIL"]
    audit, traffic = result.audit, step_traffic(AUDITED["fp32_keep"][0])
    assert audit.bytes_per_element(audit.vector_loads) == traffic.read
    assert audit.bytes_per_element(audit.vector_stores) == traffic.written
    assert audit.scalar_stores == Counter({4: 3}), "param, square_avg and acc_delta of the tail element"


def test_misaligned_tensors_compile_without_vectors():
    """A view starting one element into its allocation: 4-byte aligned only, so no vector access is legal."""
    result = compiled("fp32_keep", "multi_tensor", "sm_90", offset=1)
    assert not result.launch.arguments["ALIGNED"]
    assert not result.audit.vector_loads and not result.audit.vector_stores
