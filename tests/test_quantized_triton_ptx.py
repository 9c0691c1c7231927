"""The 8-bit-state Triton kernel compiled ahead of time for sm_80 and sm_90 (no GPU needed), its machine code audited.

Every global access of the PTX is attributed to the buffer it touches, by tracing its address register back to
the kernel parameter it is computed from. Per element: exactly the bytes bench.traffic.step_traffic models
(1-byte codes read and written for each accumulator; param, grad and master as the dense kernel), in vectors of
the dense kernel's width. Per 256-element block: each accumulator's 4-byte scale read once and written once.
Also IEEE arithmetic (per element four sqrt.rn and the update's div.rn; the scales' divisions per block), no
product that LLVM or ptxas could fuse into an add, and no local memory.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from functools import cache

import pytest
import torch

triton = pytest.importorskip("triton", reason="the Triton backend needs triton")

from triton.compiler.compiler import ASTSource, make_backend  # noqa: E402
from triton.runtime.jit import create_function_from_signature  # noqa: E402

from adadelta_fused import quantized_reference, quantized_triton, triton_interpreter, triton_launch  # noqa: E402
from adadelta_fused.bench.traffic import QUANT_BLOCK, SCALE_BYTES, StepConfig, step_traffic  # noqa: E402
from adadelta_fused.contract import GradMode, StepScalars  # noqa: E402

from test_triton_ptx import _GLOBAL_ACCESS, MAX_REGISTERS, TARGETS, _cuobjdump  # noqa: E402

AUDITED = {
    "fp32_keep": (StepConfig(torch.float32, torch.uint8), {}),
    "fp32_unscale": (
        StepConfig(torch.float32, torch.uint8, grad_mode=GradMode.UNSCALE), dict(grad_scale=torch.tensor(4.0))
    ),
    "bf16_keep": (StepConfig(torch.bfloat16, torch.uint8), {}),
    "bf16_master": (StepConfig(torch.bfloat16, torch.uint8, master_weights=True), {}),
    "fp16_keep": (StepConfig(torch.float16, torch.uint8), {}),
}
CASES = [(name, target) for name in AUDITED for target in TARGETS]

# Two programs of whole blocks, no tail: every access is the vectorized branch's.
NUMEL = 4096
ELEMENT_BUFFERS = ("param_ptr", "grad_ptr", "square_avg_ptr", "acc_delta_ptr", "master_ptr")
SCALES = ("square_avg_scale_ptr", "acc_delta_scale_ptr")


def _example_tensors(config: StepConfig, numel: int):
    """One tensor's buffers with fresh random values, the state quantized from them."""
    def fresh(dtype, scale):
        return (torch.rand(numel, dtype=torch.float64) * scale + scale).to(dtype)

    param, grad = fresh(config.param_dtype, 1.0), fresh(config.param_dtype, 0.1)
    square_avg, square_avg_scale = quantized_reference.quantize(fresh(torch.float32, 1e-2), param, 1e-6)
    acc_delta, acc_delta_scale = quantized_reference.quantize(fresh(torch.float32, 1e-4), param, 1e-6)
    masters = [fresh(torch.float32, 1.0)] if config.master_weights else []
    return [param], [grad], [square_avg], [acc_delta], masters, [square_avg_scale], [acc_delta_scale]


@dataclass(frozen=True)
class Compiled:
    launch: triton_launch.Launch
    ptx: str
    ttgir: str
    cubin: bytes
    parameters: tuple[str, ...]  # the PTX parameters' argument names, in order

    @property
    def threads(self) -> int:
        return self.launch.arguments["num_warps"] * 32


@cache
def compiled(name: str, target: str, *, numel: int = NUMEL) -> Compiled:
    """What launching the op's kernel over one such tensor compiles to on ``target``, through the JIT's own
    binder (types, 16-byte alignment and divisibility attributes, constexprs as a real launch has them)."""
    config, extra = AUDITED[name]
    scalars = StepScalars(lr=0.5, rho=0.9, eps=1e-6, weight_decay=0.0, grad_mode=config.grad_mode, **extra)
    (launch,), _ = quantized_triton.launches(*_example_tensors(config, numel), scalars)
    kernel = getattr(triton_interpreter.kernels(False, quantized_triton.KERNEL_MODULE), launch.kernel)
    backend = make_backend(TARGETS[target])
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, options = binder(**launch.arguments)
    options, signature, constexprs, attrs = kernel._pack_args(backend, options, bound, specialization, options)
    binary = triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=TARGETS[target],
                            options=options.__dict__)
    # Arguments bound to None or a constexpr are no PTX parameters; Triton's scratch pointers come after the rest.
    parameters = tuple(name for name, kind in signature.items() if kind != "constexpr")
    return Compiled(launch, binary.asm["ptx"], binary.asm["ttgir"], binary.asm["cubin"], parameters)


# ---- the PTX, access by access ----

_INSTRUCTION = re.compile(r"^\s*(?:@!?%\w+\s+)?([a-z][\w.:]*)\s*(.*?);", re.M)
_PARAMETER = re.compile(r"\[\s*\w+_param_(\d+)\s*\]")
_REGISTER = re.compile(r"%\w+")
_ADDRESS = re.compile(r"\[\s*(%\w+)")


def _operands(text: str) -> list[str]:
    """An instruction's operands, split at the commas outside braces and brackets."""
    operands, depth, current = [], 0, ""
    for character in text:
        depth += character in "{["
        depth -= character in "}]"
        if character == "," and depth == 0:
            operands.append(current)
            current = ""
        else:
            current += character
    return operands + [current] if current.strip() else operands


def buffer_accesses(result: Compiled) -> dict[tuple[str, str], Counter]:
    """(ld or st, the argument whose address it uses) -> {access width in bytes: instructions}, one thread's.

    Each register is tagged with the kernel parameters its value is computed from (the union over its
    definitions); an access's address must come from exactly one. Values loaded from memory carry no tag.
    """
    origin: dict[str, frozenset] = defaultdict(frozenset)
    accesses: dict[tuple[str, str], Counter] = defaultdict(Counter)
    for opcode, text in _INSTRUCTION.findall(result.ptx):
        operands = _operands(text)
        parameter = _PARAMETER.search(text)
        if opcode.startswith("ld.param") and parameter:
            index = int(parameter.group(1))
            name = result.parameters[index] if index < len(result.parameters) else "scratch"
            origin[_REGISTER.search(operands[0]).group()] = frozenset({name})
            continue
        access = _GLOBAL_ACCESS.match(opcode)
        if access:
            op, lanes, bits = access.groups()
            address = _ADDRESS.search(operands[0] if op == "st" else operands[1]).group(1)
            (source,) = origin[address]
            accesses[(op, source)][int(lanes or 1) * int(bits) // 8] += 1
            continue
        if opcode.startswith(("st.", "bar.", "bra", "ret", "membar", "fence")) or not operands:
            continue
        tag = frozenset().union(*(origin[r] for operand in operands[1:] for r in _REGISTER.findall(operand)))
        for register in _REGISTER.findall(operands[0]):
            origin[register] |= tag
    return dict(accesses)


def _per_element(result: Compiled) -> dict[tuple[str, str], float]:
    """Bytes per element of each per-element buffer (the scales and device scalars left out)."""
    elements = result.launch.arguments["BLOCK"]
    return {
        key: sum(width * count for width, count in widths.items()) * result.threads / elements
        for key, widths in buffer_accesses(result).items()
        if key[1] in ELEMENT_BUFFERS
    }


def expected_bytes(config: StepConfig) -> dict[tuple[str, str], int]:
    """What each buffer moves per element: the byte model's terms, buffer by buffer."""
    param = config.param_dtype.itemsize
    expected = {("ld", "grad_ptr"): param, ("ld", "square_avg_ptr"): 1, ("ld", "acc_delta_ptr"): 1,
                ("st", "param_ptr"): param, ("st", "square_avg_ptr"): 1, ("st", "acc_delta_ptr"): 1}
    if config.master_weights:
        expected[("ld", "master_ptr")] = expected[("st", "master_ptr")] = 4
    else:
        expected[("ld", "param_ptr")] = param
    if config.grad_mode != GradMode.KEEP:
        expected[("st", "grad_ptr")] = param
    return expected


@pytest.mark.parametrize("name, target", CASES)
def test_bytes_per_element_are_the_models(name, target):
    config = AUDITED[name][0]
    expected, traffic = expected_bytes(config), step_traffic(config)
    assert sum(v for (op, _), v in expected.items() if op == "ld") == traffic.read
    assert sum(v for (op, _), v in expected.items() if op == "st") == traffic.written
    assert _per_element(compiled(name, target)) == expected


@pytest.mark.parametrize("name, target", CASES)
def test_every_element_access_is_one_vector_of_the_layout(name, target):
    """Each thread moves VECTOR elements per access, as the dense kernel: 16 bytes of the widest buffer (fp32
    master or param, or a 16-bit param without master); the codes then go 4 or 8 bytes at a time."""
    result = compiled(name, target)
    vector = result.launch.arguments["VECTOR"]
    itemsize = {"square_avg_ptr": 1, "acc_delta_ptr": 1, "master_ptr": 4}
    widest = 0
    for (op, buffer), widths in buffer_accesses(result).items():
        if buffer in ELEMENT_BUFFERS:
            size = itemsize.get(buffer, AUDITED[name][0].param_dtype.itemsize)
            assert set(widths) == {vector * size}, (op, buffer, widths)
            widest = max(widest, vector * size)
    assert widest == 16


@pytest.mark.parametrize("name, target", CASES)
def test_scales_are_read_and_written_once_per_block(name, target):
    """Per program, the TTGIR has one load and one store of BLOCKS fp32 for each accumulator's scales: 4 bytes
    read and 4 written per 256-element block each, the byte model's scale terms. In the PTX each warp reads
    the scales of the blocks it steps (its lanes at the same address, one transaction), and each scale is
    stored by one thread (Triton predicates off the copies other threads hold)."""
    result = compiled(name, target)
    blocks = result.launch.arguments["BLOCK"] // QUANT_BLOCK
    scale_type = rf"tensor<{blocks}x!tt\.ptr<f32>"
    loads = re.findall(rf"tt\.load .*: {scale_type}", result.ttgir)
    stores = re.findall(rf"tt\.store .*: {scale_type}", result.ttgir)
    traffic = step_traffic(AUDITED[name][0])
    assert len(loads) * SCALE_BYTES == traffic.scale_read and len(stores) * SCALE_BYTES == traffic.scale_written
    accesses = buffer_accesses(result)
    warps = result.launch.arguments["num_warps"]
    for scale in SCALES:
        assert accesses[("ld", scale)] == Counter({SCALE_BYTES: blocks // warps})
        assert accesses[("st", scale)] == Counter({SCALE_BYTES: 1})


@pytest.mark.parametrize("name, target", CASES)
def test_nothing_else_is_accessed(name, target):
    """Besides the buffers, one 4-byte read of grad_scale when there is one; no lr, found_inf or scratch."""
    accesses = buffer_accesses(compiled(name, target))
    others = {key: widths for key, widths in accesses.items() if key[1] not in ELEMENT_BUFFERS + SCALES}
    assert others == ({("ld", "grad_scale_ptr"): Counter({4: 1})} if "grad_scale" in AUDITED[name][1] else {})


@pytest.mark.parametrize("name, target", CASES)
def test_no_local_memory_and_ieee_arithmetic(name, target):
    """No spills, no approximate or flush-to-zero arithmetic. Shared memory holds only the two scale vectors
    on their way from the reduction's layout (each warp its own blocks) to the store's (one thread per scale):
    one st.shared each. The reduction itself stays in registers: a warp's threads each hold part of every block
    it steps, and combine it in one redux.sync a block and accumulator."""
    result = compiled(name, target)
    ptx = result.ptx
    assert not re.search(r"\.local\b|\bld\.local|\bst\.local", ptx), "register spills"
    assert not re.search(r"\.approx\b|\.ftz\b", ptx), "approximate or flush-to-zero arithmetic"
    assert len(re.findall(r"\bst\.shared", ptx)) == len(SCALES)
    blocks_per_warp = result.launch.arguments["BLOCK"] // QUANT_BLOCK // result.launch.arguments["num_warps"]
    assert len(re.findall(r"\bredux\.sync\.max\.u32\b", ptx)) == 2 * blocks_per_warp
    assert "shfl" not in ptx


@pytest.mark.parametrize("name", ["fp32_keep", "fp32_unscale"])
@pytest.mark.parametrize("target", TARGETS)
def test_rounding_steps(name, target):
    """Per element: five fma (both addcmul's and the param update, as the dense kernel, and each accumulator's
    decoded value R * R - eps), so no other multiply was contracted into one; two IEEE roots (std, which is
    square_avg's new R, and acc_delta's new R: the format stores sqrt(x + eps)); the update's IEEE division and
    grad_scale's when there is one. Per thread, one root more: the floor sqrt(eps). Per block a thread holds (its
    warp's): four IEEE divisions, each accumulator's s / 254 and 254 / s. Each encoding rounds by truncation
    (cvt.rzi) and compares."""
    result = compiled(name, target)
    per_thread = result.launch.arguments["BLOCK"] // result.threads
    blocks_per_warp = result.launch.arguments["BLOCK"] // QUANT_BLOCK // result.launch.arguments["num_warps"]
    counts = {op: len(re.findall(rf"\b{op}\.rn\.f32\b", result.ptx)) for op in ("fma", "sqrt", "div")}
    divisions = per_thread * (1 + ("grad_scale" in AUDITED[name][1])) + 4 * blocks_per_warp
    assert counts == {"fma": 5 * per_thread, "sqrt": 2 * per_thread + 1, "div": divisions}
    assert len(re.findall(r"\bcvt\.rzi\.u32\.f32\b", result.ptx)) == 2 * per_thread


@pytest.mark.parametrize("name, target", CASES)
def test_no_multiply_feeds_an_add(name, target):
    """ptxas (--fmad=true, Triton's default fp fusion) may fuse a mul.f32 into the add.f32 or sub.f32 that takes
    its result, which would round once where the reference rounds twice. No float add here takes a product: the
    decoded R reaches its fma through the floor's select, and the encoding's product is only truncated and
    compared."""
    producer: dict[str, str] = {}
    for opcode, text in _INSTRUCTION.findall(compiled(name, target).ptx):
        operands = _operands(text)
        if opcode.startswith(("add.f32", "sub.f32")):
            sources = [producer.get(r) for operand in operands[1:] for r in _REGISTER.findall(operand)]
            assert "mul.f32" not in sources, (opcode, text)
        if operands and not opcode.startswith(("st.", "bar.", "bra", "ret")):
            for register in _REGISTER.findall(operands[0]):
                producer[register] = opcode


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", AUDITED)
def test_sass_has_no_local_memory_and_fits_the_register_budget(name, target, tmp_path):
    result = compiled(name, target)
    usage = _cuobjdump(result.cubin, "--dump-resource-usage", tmp_path)
    assert re.search(r"STACK:0 SHARED:\d+ LOCAL:0", usage), usage
    assert int(re.search(r"REG:(\d+)", usage).group(1)) <= MAX_REGISTERS
    assert not re.search(r"\b(LDL|STL)\b", _cuobjdump(result.cubin, "-sass", tmp_path))


def test_a_tail_keeps_the_other_programs_vectorized():
    """4097 elements: the program holding the tail steps its tile with a per-element mask and element-wide
    accesses; the other branch keeps the vectors. Each branch moves the model's bytes per element."""
    result = compiled("fp32_keep", "sm_90", numel=NUMEL + 1)
    assert result.launch.arguments["HAS_TAIL"]
    vector = result.launch.arguments["VECTOR"]
    expected = expected_bytes(AUDITED["fp32_keep"][0])
    elements = result.launch.arguments["BLOCK"]
    for key, widths in buffer_accesses(result).items():
        if key in expected:
            size = expected[key]
            assert set(widths) == {vector * size, size}, (key, widths)
            for width in widths:
                assert width * widths[width] * result.threads / elements == size, (key, width)
