"""The byte model: what one Adadelta step must move per element, and how many kernel launches it takes.

``step_traffic`` is the one definition of the bytes a step must move. The ``--traffic`` table prints it,
and every timed row turns it into GB/s. A GB/s figure is therefore *useful* bandwidth: the minimum traffic
of the configuration divided by the measured time, whatever the implementation really moved.

torch's foreach Adadelta is not modelled by hand. ``torch_foreach_passes`` runs the installed
``torch.optim.Adadelta(foreach=True)`` on meta tensors (no kernel runs, no device is needed) and records
every ``_foreach_*`` op that touches per-element memory.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ..contract import LOW_PRECISION, STATE_DTYPES, GradMode

DTYPE_NAMES = {torch.float32: "fp32", torch.float64: "fp64", torch.bfloat16: "bf16", torch.float16: "fp16"}
DTYPES_BY_NAME = {name: dtype for dtype, name in DTYPE_NAMES.items()}
MASTER_DTYPE = torch.float32

# 8-bit state (adadelta_fused.quantized_reference): a uint8 code per element and an fp32 scale per block.
QUANTIZED_STATE = torch.uint8
QUANT_BLOCK = 256
SCALE_BYTES = 4

# The extension's multi-tensor walk (csrc/multi_tensor.h): a CUDA launch closes when it holds 2048 chunks
# of 64 Ki elements, or when its 256th tensor is complete.
CHUNK_ELEMENTS = 65536
EXTENSION_MAX_TENSORS = 256
EXTENSION_MAX_BLOCKS = 2048

# ATen's multi_tensor_apply (aten/src/ATen/native/cuda/MultiTensorApply.cuh) with the 32 KB kernel-argument
# limit of CUDA >= 12.1 on sm_70+: tensors per launch by the number of tensor lists the op takes, and
# 2240 chunks of 64 Ki elements. Builds limited to 4 KB arguments use {110, 64, 48, 36, 30} and 320.
TORCH_MAX_TENSORS_BY_LISTS = {1: 770, 2: 448, 3: 336, 4: 252, 5: 210}
TORCH_MAX_BLOCKS = 2240


@dataclass(frozen=True)
class StepConfig:
    """The dtypes and options that decide what a step reads and writes."""

    param_dtype: torch.dtype = torch.float32
    state_dtype: torch.dtype | None = None  # None: the param's dtype, as in torch.optim
    master_weights: bool = False
    grad_mode: GradMode = GradMode.KEEP

    def __post_init__(self) -> None:
        if self.state_dtype is None:
            object.__setattr__(self, "state_dtype", self.param_dtype)
        if self.param_dtype not in STATE_DTYPES:
            raise ValueError(f"unsupported param dtype {self.param_dtype}")
        if self.quantized:
            if self.param_dtype == torch.float64:
                raise ValueError("8-bit state is not supported with fp64 params (allowed: fp64)")
        elif self.state_dtype not in STATE_DTYPES[self.param_dtype]:
            allowed = ", ".join(DTYPE_NAMES[d] for d in STATE_DTYPES[self.param_dtype])
            raise ValueError(
                f"{DTYPE_NAMES[self.state_dtype]} state is not supported with "
                f"{DTYPE_NAMES[self.param_dtype]} params (allowed: {allowed})"
            )
        if self.master_weights and self.param_dtype not in LOW_PRECISION:
            raise ValueError(f"master weights are for bf16/fp16 params, not {DTYPE_NAMES[self.param_dtype]}")

    @property
    def quantized(self) -> bool:
        return self.state_dtype == QUANTIZED_STATE

    @property
    def is_torch_layout(self) -> bool:
        """True when torch.optim.Adadelta keeps the same buffers (state in the param dtype, no master)."""
        return self.state_dtype == self.param_dtype and not self.master_weights

    def label(self) -> str:
        state = "8-bit" if self.quantized else DTYPE_NAMES[self.state_dtype]
        parts = [f"{DTYPE_NAMES[self.param_dtype]} params", f"{state} state"]
        if self.master_weights:
            parts.append("fp32 master")
        parts.append(f"grad {self.grad_mode.name.lower()}")
        return ", ".join(parts)


@dataclass(frozen=True)
class Traffic:
    """Bytes per element that a step reads and writes, and for 8-bit state the scale bytes per block."""

    read: int
    written: int
    scale_read: int = 0  # per block of QUANT_BLOCK elements
    scale_written: int = 0

    @property
    def total(self) -> float:
        """Bytes per element, the scales' share included (16.0625 for fp32 params with 8-bit state)."""
        scales = (self.scale_read + self.scale_written) / QUANT_BLOCK
        return self.read + self.written + scales if scales else self.read + self.written


def step_traffic(config: StepConfig) -> Traffic:
    """The bytes per element one step must move: what ``AdadeltaElement::update`` loads and stores.

    Every step reads the gradient and both accumulators and writes the param and both accumulators.
    With master weights the fp32 master is the value read and updated, and the param only receives its
    rounded copy, so the param is written but never read. The ``unscale`` and ``zero`` gradient modes
    store into the gradient too. Stochastic rounding and the hyperparameters change no byte.
    With 8-bit state each accumulator is a 1-byte code per element plus a 4-byte scale per block, each read
    and written once.
    """
    param = config.param_dtype.itemsize
    state = config.state_dtype.itemsize
    read = param + 2 * state  # grad, square_avg, acc_delta
    written = param + 2 * state  # param, square_avg, acc_delta
    if config.master_weights:
        read += MASTER_DTYPE.itemsize
        written += MASTER_DTYPE.itemsize
    else:
        read += param
    if config.grad_mode != GradMode.KEEP:
        written += param
    scales = 2 * SCALE_BYTES if config.quantized else 0
    return Traffic(read, written, scales, scales)


def quantized_configs(param_dtypes: Iterable[torch.dtype] = LOW_PRECISION + (torch.float32,)) -> Iterator[StepConfig]:
    """Every 8-bit-state configuration the kernels support, for the given param dtypes (fp64 has none)."""
    for param_dtype in param_dtypes:
        if param_dtype == torch.float64:
            continue
        for master in (False, True) if param_dtype in LOW_PRECISION else (False,):
            for grad_mode in GradMode:
                yield StepConfig(param_dtype, QUANTIZED_STATE, master, grad_mode)


def all_configs(param_dtypes: Iterable[torch.dtype] = tuple(STATE_DTYPES)) -> Iterator[StepConfig]:
    """Every configuration the kernels support, for the given param dtypes."""
    for param_dtype in param_dtypes:
        for state_dtype in STATE_DTYPES[param_dtype]:
            for master in (False, True) if param_dtype in LOW_PRECISION else (False,):
                for grad_mode in GradMode:
                    yield StepConfig(param_dtype, state_dtype, master, grad_mode)


# ---- torch's foreach Adadelta, traced from the installed torch ----

@dataclass(frozen=True)
class ForeachPass:
    """One ``_foreach_*`` op of torch's step: one sweep over every element of its tensor lists."""

    op: str
    tensor_lists: int  # lists the kernel takes, outputs included (multi_tensor_apply's depth)
    buffers_read: int  # distinct per-element buffers read
    buffers_written: int
    operands_read: int  # list operands loaded; addcmul_(sq, g, g) loads g twice from the same address


# Per-element lists are told apart from the step counters (one element each) by this length.
_TRACE_NUMEL = 64


class _ForeachRecorder(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.passes: list[ForeachPass] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func.name().removeprefix("aten::")
        values = dict(zip((a.name for a in func._schema.arguments), args)) | kwargs
        lists = {}  # argument name -> (buffer key, written)
        for argument in func._schema.arguments:
            value = values.get(argument.name)
            if _is_element_list(value):
                written = argument.alias_info is not None and argument.alias_info.is_write
                lists[argument.name] = (id(value[0]), written)
        if name.startswith("_foreach_") and lists:
            returns_list = _is_element_list(out)
            self.passes.append(
                ForeachPass(
                    op=name,
                    tensor_lists=len(lists) + returns_list,
                    buffers_read=len({key for key, _ in lists.values()}),
                    buffers_written=sum(written for _, written in lists.values()) + returns_list,
                    operands_read=len(lists),
                )
            )
        return out


def _is_element_list(value) -> bool:
    return (
        isinstance(value, (list, tuple))
        and len(value) > 0
        and all(isinstance(t, torch.Tensor) and t.numel() == _TRACE_NUMEL for t in value)
    )


@cache
def torch_foreach_passes(param_dtype: torch.dtype = torch.float32) -> tuple[ForeachPass, ...]:
    """The per-element passes of one steady-state step of the installed ``torch.optim.Adadelta``
    (foreach=True, default hyperparameters), recorded on meta tensors."""
    params = [torch.empty(_TRACE_NUMEL, dtype=param_dtype, device="meta") for _ in range(2)]
    for param in params:
        param.grad = torch.empty_like(param)
    optimizer = torch.optim.Adadelta(params, foreach=True)
    optimizer.step()  # creates the state; the traced step is the second, as in training
    recorder = _ForeachRecorder()
    with recorder:
        optimizer.step()
    return tuple(recorder.passes)


def torch_foreach_traffic(param_dtype: torch.dtype = torch.float32) -> Traffic:
    """Bytes per element torch's foreach step moves: each pass reads its distinct buffers once and
    writes its outputs (a tensor loaded twice by one kernel hits the cache the second time)."""
    size = param_dtype.itemsize
    passes = torch_foreach_passes(param_dtype)
    return Traffic(size * sum(p.buffers_read for p in passes), size * sum(p.buffers_written for p in passes))


# ---- launches on CUDA ----

def multi_tensor_launches(numels: Iterable[int], max_tensors: int, max_blocks: int) -> int:
    """Kernel launches of a multi-tensor apply over tensors of these sizes.

    Both the extension and ATen cut the tensors into 64 Ki-element chunks, one block each, and launch
    when the blocks are full or when a launch's last tensor slot holds a finished tensor; a tensor whose
    chunks overflow a launch continues in the next one. Empty tensors take no slot.
    """
    launches = blocks = slots = 0
    for numel in numels:
        if numel == 0:
            continue
        slots += 1
        chunks = -(-numel // CHUNK_ELEMENTS)
        for chunk in range(chunks):
            blocks += 1
            last_chunk = chunk == chunks - 1
            if blocks == max_blocks or (last_chunk and slots == max_tensors):
                launches += 1
                blocks = 0
                slots = 0 if last_chunk else 1
    return launches + (blocks > 0)


def extension_launches(numels: Iterable[int]) -> int:
    """CUDA launches of one step of our extension kernel over one (device, dtype) group.

    A group of one tensor (a flattened optimizer's buffer) takes the flat kernel: one launch of any size.
    """
    numels = list(numels)
    if len(numels) == 1:
        return int(numels[0] > 0)
    return multi_tensor_launches(numels, EXTENSION_MAX_TENSORS, EXTENSION_MAX_BLOCKS)


def torch_foreach_launches(numels: Iterable[int], param_dtype: torch.dtype = torch.float32) -> int:
    """CUDA launches of one step of torch's foreach Adadelta (its step counters live on the CPU)."""
    numels = list(numels)
    return sum(
        multi_tensor_launches(numels, TORCH_MAX_TENSORS_BY_LISTS[p.tensor_lists], TORCH_MAX_BLOCKS)
        for p in torch_foreach_passes(param_dtype)
    )


def predicted_step_seconds(traffic: Traffic, numel: int, bandwidth_bytes_per_s: float) -> float:
    """The step time if memory bandwidth were the only cost: a floor, not a forecast of launch overhead."""
    return traffic.total * numel / bandwidth_bytes_per_s
