"""The built CUDA kernels, audited as machine code (no GPU needed).

For every configuration the extension compiles (param dtype x state dtype x master copy x grad mode), in
both kernels (multi-tensor and flat) and for every target (sm_80, sm_90, sm_100), the SASS that ``cuobjdump``
prints must show:

- a vector path of 128-bit accesses only, with exactly the loads and stores one element run needs: the
  byte model (``bench.traffic.step_traffic``) times the run length, in 16-byte words;
- no local memory (no spills, no stack);
- registers within the launch bound (64 for fp32 math on sm_80/sm_90, so two 512-thread blocks fit an SM).
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from adadelta_fused import _extension
from adadelta_fused.bench.traffic import MASTER_DTYPE, StepConfig, all_configs, step_traffic
from adadelta_fused.contract import GradMode

# sm_80 and sm_90 are always built; sm_100 is in the default TORCH_CUDA_ARCH_LIST but optional.
REQUIRED_ARCHS = ("sm_80", "sm_90")
ARCHS = (*REQUIRED_ARCHS, "sm_100")
KERNELS = ("adadelta_multi_tensor_kernel", "adadelta_flat_kernel")


def max_registers(arch: str, config: StepConfig) -> int:
    """csrc/cuda/adadelta_cuda.cu: __launch_bounds__(512, 2) for fp32 math before sm_100, else (512, 1)."""
    one_block = config.param_dtype == torch.float64 or int(arch.removeprefix("sm_")) >= 100
    return 128 if one_block else 64

CUDA_BUILD_REQUIRED = os.environ.get("ADADELTA_FUSED_BUILD_CUDA", "").lower() in ("1", "true", "yes")
_CXX_TYPES = {
    "float": torch.float32,
    "double": torch.float64,
    "adadelta_fused::bfloat16_bits": torch.bfloat16,
    "adadelta_fused::float16_bits": torch.float16,
}
_KERNEL_NAME = re.compile(
    r"(adadelta_\w+_kernel)<([\w:]+), ([\w:]+), \(adadelta_fused::GradMode\)(\d), (true|false)>"
)


def _find_tool(name: str) -> str | None:
    """The triton wheel ships cuobjdump; a CUDA toolkit may too (nvcc's 13.0 install here does not)."""
    candidates = []
    try:
        import triton

        candidates.append(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name)
    except ImportError:
        pass
    if os.environ.get("CUDA_HOME"):
        candidates.append(Path(os.environ["CUDA_HOME"]) / "bin" / name)
    found = [str(path) for path in candidates if path.is_file() and os.access(path, os.X_OK)]
    return found[0] if found else shutil.which(name)


def _extension_with_cuda():
    ext = _extension.module()
    if ext is None or not ext.compiled_with_cuda():
        reason = _extension.load_error() or "the extension was built without its CUDA sources"
        if CUDA_BUILD_REQUIRED:
            pytest.fail(f"ADADELTA_FUSED_BUILD_CUDA=1 but {reason}")
        pytest.skip(reason)
    return ext


@dataclass(frozen=True)
class Kernel:
    kind: str
    config: StepConfig
    sass: str
    registers: int
    stack: int
    local: int


@functools.cache
def built_functions(arch: str) -> list[tuple[str, str, dict[str, str]]]:
    """Every function of the built extension's code for one target: (demangled name, SASS, resource usage
    such as {"REG": "40", "STACK": "0", "LOCAL": "0"}). The sparse kernels' audit reads it too."""
    library = _extension_with_cuda().__file__
    cuobjdump = _find_tool("cuobjdump")
    if cuobjdump is None:
        pytest.fail("cuobjdump not found (it ships in the triton wheel, a test dependency)")

    built = re.findall(r"\.(sm_\d+)\.cubin", subprocess.run([cuobjdump, "--list-elf", library], check=True,
                                                             capture_output=True, text=True).stdout)
    if arch not in built:
        if arch in REQUIRED_ARCHS:
            pytest.fail(f"the extension has no {arch} code (built: {built})")
        pytest.skip(f"built without {arch} (TORCH_CUDA_ARCH_LIST)")

    def run(*args: str) -> str:
        return subprocess.run([cuobjdump, *args, "-arch", arch, library], check=True, capture_output=True,
                              text=True).stdout

    sass_of = {}
    for block in re.split(r"\n\s*Function : ", run("-sass"))[1:]:
        mangled, body = block.split("\n", 1)
        sass_of[mangled.strip()] = body
    usage_of = dict(re.findall(r"Function (\S+):\n\s*(REG:.*)", run("-res-usage")))
    mangled_names = sorted(sass_of)
    if shutil.which("c++filt") is None:
        pytest.fail("c++filt (binutils) is needed to read the kernels' template arguments")
    demangled = subprocess.run(["c++filt"], input="\n".join(mangled_names), capture_output=True, text=True,
                               check=True).stdout.splitlines()
    return [
        (readable, sass_of[mangled], dict(re.findall(r"(\w+(?:\[\d+\])?):(\d+)", usage_of[mangled])))
        for mangled, readable in zip(mangled_names, demangled)
    ]


@functools.cache
def _kernels(arch: str) -> dict[tuple[str, StepConfig], Kernel]:
    """Every adadelta kernel of the built extension for one target, by (kernel, configuration)."""
    kernels = {}
    for readable, sass, usage in built_functions(arch):
        match = _KERNEL_NAME.search(readable)
        if match is None:
            continue
        kind, param, state, grad_mode, master = match.groups()
        config = StepConfig(_CXX_TYPES[param], _CXX_TYPES[state], master == "true", GradMode(int(grad_mode)))
        kernels[(kind, config)] = Kernel(kind, config, sass, int(usage["REG"]), int(usage["STACK"]),
                                         int(usage["LOCAL"]))
    return kernels


def elements_per_thread(config: StepConfig) -> int:
    """The kernel's run length (vector_access.cuh): 16 bytes of the narrowest buffer."""
    widths = [config.param_dtype.itemsize, config.state_dtype.itemsize]
    if config.master_weights:
        widths.append(MASTER_DTYPE.itemsize)
    return 16 // min(widths)


def count(sass: str, opcode: str, width: str) -> int:
    """Instructions such as ``LDG.E.128`` (any modifiers between the opcode and the width)."""
    return len(re.findall(rf"\b{opcode}(?:\.[A-Z0-9_]+)*?\.{width}\b", sass))


CASES = [(arch, kind, config) for arch in ARCHS for kind in KERNELS for config in all_configs()]


def case_id(case) -> str:
    arch, kind, config = case
    return f"{arch}-{kind.removeprefix('adadelta_').removesuffix('_kernel')}-{config.label().replace(' ', '')}"


@pytest.mark.parametrize("arch", ARCHS)
def test_every_configuration_is_compiled(arch):
    built = set(_kernels(arch))
    assert built == {(kind, config) for kind in KERNELS for config in all_configs()}


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_vector_path_is_128_bit_and_moves_the_minimum(case, record_property):
    arch, kind, config = case
    kernel = _kernels(arch)[(kind, config)]
    traffic = step_traffic(config)
    run = elements_per_thread(config)
    # One element run of the vector loop (not unrolled) loads and stores exactly the bytes the step must
    # move, in 16-byte words: fp32 with the gradient kept is 4 loads + 3 stores.
    assert count(kernel.sass, "LDG", "128") == traffic.read * run // 16
    assert count(kernel.sass, "STG", "128") == traffic.written * run // 16
    record_property("registers", kernel.registers)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_no_local_memory_and_registers_within_launch_bounds(case, record_property):
    arch, kind, config = case
    kernel = _kernels(arch)[(kind, config)]
    assert kernel.stack == 0 and kernel.local == 0, f"{kernel.stack} bytes of stack, {kernel.local} of local"
    assert not re.search(r"\b(LDL|STL)\b", kernel.sass), "spill code in the SASS"
    assert kernel.registers <= max_registers(arch, config)
    record_property("registers", kernel.registers)


@pytest.mark.parametrize("arch", ARCHS)
def test_fp32_keep_is_4_loads_and_3_stores(arch):
    """The headline configuration spelled out, independent of the byte model."""
    sass = _kernels(arch)[("adadelta_multi_tensor_kernel", StepConfig(torch.float32))].sass
    assert (count(sass, "LDG", "128"), count(sass, "STG", "128")) == (4, 3)
