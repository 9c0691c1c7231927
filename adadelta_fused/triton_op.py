"""The Triton backend's host side: the op ``adadelta_fused::triton_adadelta_`` and how it launches the kernels.

Eager (what an optimizer step runs), per (device, dtype) group:
    - one tensor (a flattened group's buffer): one launch of ``adadelta_flat_kernel``, no metadata;
    - several tensors: one launch of ``adadelta_multi_tensor_kernel`` per alignment class, over a device
      table of buffer addresses and a table mapping each program to (tensor, first element). The tables
      are built once and cached for as long as the tensors' addresses and sizes stay the same.
Traced (torch.compile, make_fx, fake tensors): one ``wrap_triton`` launch of the flat kernel per tensor,
with every buffer passed as an argument, so the graph shows Inductor which tensors the kernel writes.

A tensor that is not dense in its param's layout is stepped through a dense copy that is written back,
as the C++ op does (csrc/op_host.cpp, DenseGroup).
"""

import contextlib
import importlib.util
import os
from collections import OrderedDict
from dataclasses import dataclass
from functools import cache
from typing import Optional

import torch
import triton
import triton.language as tl
from torch._subclasses.fake_tensor import FakeTensor
from torch.library import triton_op, wrap_triton

from .contract import GradMode, StepScalars, check_group
from .flat import is_dense

OP_NAME = "adadelta_fused::triton_adadelta_"
KERNEL_MODULE = "adadelta_fused.triton_kernel"

# Elements per program: 16 a thread over 4 warps with fp32 math, 8 with fp64: 64 bytes of each 4- or 8-byte
# buffer a thread, all loaded before the first use. fp32 keep then has 2048 x 16 B = 32 KiB of loads in flight
# per program, where H100 (3.35 TB/s, ~0.7 us latency) needs ~2.3 MB in flight, ~18 KiB per SM. The kernels
# compile to 117-161 registers and no spills (tests/test_triton_ptx.py reads the cubins), so 3-4 programs
# share an SM and one program's table loads overlap another's data. Chosen from this arithmetic, not yet
# timed on a GPU (`python -m adadelta_fused.bench` is the check). Fixed, not autotuned: the kernel writes
# its inputs, so tuning would need restore_value on all five buffers.
BLOCK = {torch.float32: 2048, torch.float64: 1024}
NUM_WARPS = 4

# The tables' least-recently-used entries beyond this many are dropped (one entry per param group and
# dtype is the steady state; the bound only matters when a caller keeps handing in new tensors).
TABLE_CACHE_SIZE = 64

_TRITON_DTYPES = {
    torch.float32: tl.float32,
    torch.float64: tl.float64,
    torch.bfloat16: tl.bfloat16,
    torch.float16: tl.float16,
}


# ---- the kernels, for the compiler or for the interpreter ----

@contextlib.contextmanager
def _interpret_knob(enabled: bool):
    runtime = triton.knobs.runtime
    saved_env = os.environ.get("TRITON_INTERPRET")
    saved_override = runtime.__dict__.get("interpret")
    runtime.interpret = enabled  # also exports TRITON_INTERPRET
    try:
        yield
    finally:
        if saved_override is None:
            del runtime.interpret
        else:
            runtime.interpret = saved_override
        if saved_env is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = saved_env


@cache
def kernels(interpret: bool):
    """``adadelta_fused.triton_kernel`` with its functions jitted for the interpreter or for the compiler.

    ``triton.jit`` picks ``InterpretedFunction`` or ``JITFunction`` when it decorates, from
    ``knobs.runtime.interpret`` (triton/runtime/jit.py, ``jit``), and a kernel calls its helpers through
    its module's globals. So each mode gets its own execution of the module, and a launch picks the mode
    that TRITON_INTERPRET names at that moment: setting it any time before a step takes effect.
    """
    spec = importlib.util.find_spec(KERNEL_MODULE)
    module = importlib.util.module_from_spec(spec)
    with _interpret_knob(interpret):
        spec.loader.exec_module(module)
    return module


def interpreting() -> bool:
    """Whether launches run in Triton's interpreter now (TRITON_INTERPRET, or triton.knobs)."""
    return bool(triton.knobs.runtime.interpret)


# ---- dense buffers ----

class _DenseGroup:
    """Per tensor, its five buffers in one dense layout: the param's, or contiguous if the param is not dense.

    A buffer in another layout is replaced by a dense copy; ``finish`` writes back the copies the step wrote.
    """

    def __init__(self, params, grads, square_avgs, acc_deltas, master_params, grad_written: bool):
        self.copied = False  # staged copies live one step: their addresses must not enter the table cache
        self._write_back: list[tuple[torch.Tensor, torch.Tensor]] = []
        masters = master_params or [None] * len(params)
        self.rows = [
            row if all(t is None or t.is_contiguous() for t in row) else self._dense_row(row, grad_written)
            for row in zip(params, grads, square_avgs, acc_deltas, masters)
        ]

    def _dense_row(self, row: tuple, grad_written: bool) -> tuple:
        # The usual case, all five contiguous, never gets here: is_contiguous is one C++ call per tensor
        # where is_dense walks the strides in Python (about 1 us a tensor).
        param, grad, square_avg, acc_delta, master = row
        layout = param if param.numel() == 0 or is_dense(param) else param.contiguous()
        if layout is not param:
            self.copied = True
            self._write_back.append((param, layout))
        return (
            layout,
            self._dense(grad, layout, grad_written),
            self._dense(square_avg, layout, True),
            self._dense(acc_delta, layout, True),
            None if master is None else self._dense(master, layout, True),
        )

    def _dense(self, tensor: torch.Tensor, layout: torch.Tensor, written: bool) -> torch.Tensor:
        if tensor.numel() == 0 or (is_dense(tensor) and tensor.stride() == layout.stride()):
            return tensor
        self.copied = True
        staged = torch.empty_strided(layout.shape, layout.stride(), dtype=tensor.dtype, device=tensor.device)
        staged.copy_(tensor)
        if written:
            self._write_back.append((tensor, staged))
        return staged

    def finish(self) -> None:
        for target, staged in self._write_back:
            target.copy_(staged)


# ---- launches ----

@dataclass(frozen=True)
class _StepArguments:
    """The kernel arguments every launch of one step shares (both kernels name them alike)."""

    scalars: dict
    flags: dict


def _step_arguments(params, square_avgs, master_params, scalars: StepScalars) -> _StepArguments:
    dtype, state_dtype = params[0].dtype, square_avgs[0].dtype
    math_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    lr_ptr = None
    lr = scalars.lr
    if isinstance(lr, torch.Tensor) and lr.is_cpu and not params[0].is_cpu and not isinstance(lr, FakeTensor):
        lr = float(lr)  # a host read: copying a CPU lr to the GPU would sync with the host
    if isinstance(lr, torch.Tensor):
        # reference._resolve_lr: the lr in math precision on the params' device, read there (no host sync).
        lr_ptr = lr.to(device=params[0].device, dtype=math_dtype).reshape(())
    has_master = bool(master_params)
    arguments = dict(
        lr_ptr=lr_ptr,
        grad_scale_ptr=scalars.grad_scale,
        found_inf_ptr=scalars.found_inf,
        lr=0.0 if lr_ptr is not None else float(lr),
        rho=float(scalars.rho),
        one_minus_rho=1.0 - float(scalars.rho),  # in double, as Python computes torch's `value=1 - rho`
        eps=float(scalars.eps),
        weight_decay=float(scalars.weight_decay),
        rounding_key=int(scalars.rounding_key) & 0xFFFFFFFF,
    )
    flags = dict(
        MATH=_TRITON_DTYPES[math_dtype],
        GRAD_MODE=int(scalars.grad_mode),
        MAXIMIZE=bool(scalars.maximize),
        HAS_WEIGHT_DECAY=scalars.weight_decay != 0,  # torch skips the add when weight_decay == 0
        HAS_MASTER=has_master,
        STOCHASTIC=bool(scalars.stochastic_rounding) and dtype == torch.bfloat16 and not has_master,
        # Elements a thread moves per access: 16 bytes of the widest buffer the step writes.
        VECTOR=16 // max(dtype.itemsize, state_dtype.itemsize, 4 if has_master else 1),
        BLOCK=BLOCK[math_dtype],
    )
    return _StepArguments(arguments, flags)


def body_end(numel: int) -> int:
    """Where a tensor's vectorized body ends: numel rounded down to BODY_MULTIPLE elements."""
    return numel - numel % kernels(False).BODY_MULTIPLE.value


@dataclass(frozen=True)
class Launch:
    """One kernel launch: the kernel's name in the kernel module, its grid and its keyword arguments."""

    kernel: str
    grid: tuple[int, ...]
    arguments: dict


def _flat_launch(row: tuple, index: int, step: _StepArguments) -> Optional[Launch]:
    param, grad, square_avg, acc_delta, master = row
    numel = param.numel()
    if numel == 0:
        return None
    end = body_end(numel)
    arguments = dict(
        param_ptr=param, grad_ptr=grad, square_avg_ptr=square_avg, acc_delta_ptr=acc_delta, master_ptr=master,
        numel=numel, body_end=end, tensor_index=index, HAS_TAIL=end != numel, num_warps=NUM_WARPS,
        **step.scalars, **step.flags,
    )
    return Launch("adadelta_flat_kernel", (triton.cdiv(numel, step.flags["BLOCK"]),), arguments)


@dataclass(frozen=True)
class _Tables:
    """The device tables of one multi-tensor launch."""

    tensor_table: torch.Tensor  # [tensors, TABLE_COLUMNS] int64
    block_table: torch.Tensor  # [programs, 2] int64: (row of tensor_table, first element)
    aligned: bool  # every address in tensor_table is a multiple of 16 bytes
    has_tail: bool  # some tensor's numel is not a multiple of BODY_MULTIPLE


def _tables(entries: list[list[int]], aligned: bool, device: torch.device, block: int) -> _Tables:
    k = kernels(False)
    tensor_table = torch.tensor(entries, dtype=torch.int64)
    numels = tensor_table[:, k.COLUMN_NUMEL.value]
    blocks = (numels + block - 1) // block
    rows = torch.repeat_interleave(torch.arange(len(entries)), blocks)
    first_block = torch.cumsum(blocks, 0) - blocks
    starts = (torch.arange(int(blocks.sum())) - first_block[rows]) * block
    has_tail = bool((tensor_table[:, k.COLUMN_BODY_END.value] != numels).any())
    block_table = torch.stack([rows, starts], dim=1)
    return _Tables(tensor_table.to(device), block_table.to(device), aligned, has_tail)


def _plan_tables(rows: list[tuple], device: torch.device, block: int) -> tuple[_Tables, ...]:
    """Tables for these dense rows: tensors whose five buffers all start on 16 bytes go to the vectorized
    (ALIGNED) launch, the others (a view from element 1, say) to a scalar one. Empty tensors to none."""
    by_alignment: dict[bool, list[list[int]]] = {True: [], False: []}
    for index, row in enumerate(rows):
        numel = row[0].numel()
        if numel == 0:
            continue
        addresses = [0 if t is None else t.data_ptr() for t in row]
        aligned = all(address % 16 == 0 for address in addresses)
        by_alignment[aligned].append(addresses + [numel, body_end(numel), index])
    return tuple(_tables(entries, aligned, device, block) for aligned, entries in by_alignment.items() if entries)


class _TableCache:
    """The tables of recent tensor lists, keyed by every buffer's address and every tensor's size.

    The tables hold nothing else, so equal keys mean equal tables, whatever tensor objects own the memory.
    Steady training hits every step and pays no host-to-device copy.
    """

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._entries: OrderedDict[tuple, tuple[_Tables, ...]] = OrderedDict()
        # Tables a captured CUDA graph reads on every replay: never freed by eviction. (A miss inside a
        # capture would copy a new table from pageable host memory, which capture forbids: warm up first.)
        self._captured: list[tuple[_Tables, ...]] = []

    def get(self, rows: list[tuple], device: torch.device, block: int) -> tuple[_Tables, ...]:
        key = [device, block, len(rows)]
        columns = list(zip(*rows))  # params, grads, square_avgs, acc_deltas, masters (all None or none)
        for column in columns:
            if column[0] is not None:
                key.extend(map(torch.Tensor.data_ptr, column))
        key.extend(map(torch.Tensor.numel, columns[0]))
        key = tuple(key)
        tables = self._entries.get(key)
        if tables is None:
            tables = self._entries[key] = _plan_tables(rows, device, block)
            if len(self._entries) > self._capacity:
                self._entries.popitem(last=False)
        else:
            self._entries.move_to_end(key)
        if device.type == "cuda":
            if torch.cuda.is_current_stream_capturing():
                self._captured.append(tables)
            else:
                # An evicted table is freed at once; tell the allocator this stream may still be reading it.
                stream = torch.cuda.current_stream(device)
                for table in tables:
                    table.tensor_table.record_stream(stream)
                    table.block_table.record_stream(stream)
        return tables

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()


TABLES = _TableCache(TABLE_CACHE_SIZE)


def _table_launch(tables: _Tables, param_dtype, state_dtype, step: _StepArguments) -> Launch:
    arguments = dict(
        tensor_table_ptr=tables.tensor_table, block_table_ptr=tables.block_table,
        PARAM_DTYPE=_TRITON_DTYPES[param_dtype], STATE_DTYPE=_TRITON_DTYPES[state_dtype],
        HAS_TAIL=tables.has_tail, ALIGNED=tables.aligned, num_warps=NUM_WARPS,
        **step.scalars, **step.flags,
    )
    return Launch("adadelta_multi_tensor_kernel", (tables.block_table.shape[0],), arguments)


def _eager_launches(dense: _DenseGroup, param_dtype, state_dtype, step: _StepArguments, interpret: bool):
    device = dense.rows[0][0].device
    # The interpreter runs on the host: it copies each kernel argument there and back, but it would read
    # the addresses inside a table as they are, which is only right for CPU memory.
    if len(dense.rows) == 1 or (interpret and device.type != "cpu"):
        launches = [_flat_launch(row, index, step) for index, row in enumerate(dense.rows)]
        return [launch for launch in launches if launch is not None]
    block = step.flags["BLOCK"]
    tables = _plan_tables(dense.rows, device, block) if dense.copied else TABLES.get(dense.rows, device, block)
    return [_table_launch(t, param_dtype, state_dtype, step) for t in tables]


def planned_launches(params, grads, square_avgs, acc_deltas, master_params, scalars: StepScalars) -> list[Launch]:
    """The launches an eager step makes over these dense tensors, without running them.

    tests/test_triton_ptx.py compiles exactly these specializations ahead of time to audit the machine code.
    """
    check_group(params, grads, square_avgs, acc_deltas, master_params, scalars)
    dense = _DenseGroup(params, grads, square_avgs, acc_deltas, master_params, scalars.grad_mode != GradMode.KEEP)
    if dense.copied:
        raise ValueError("planned_launches takes dense tensors only (a staged copy would be freed on return)")
    step = _step_arguments(params, square_avgs, master_params, scalars)
    return _eager_launches(dense, params[0].dtype, square_avgs[0].dtype, step, interpret=False)


# ---- the op ----

# The C++ op's schema (csrc/ops.cpp), with `int` where inference would say SymInt: every list is written
# (grads only in the "unscale" and "zero" modes), each with its own alias set; nothing is returned.
SCHEMA = (
    "(Tensor(a!)[] params, Tensor(b!)[] grads, Tensor(c!)[] square_avgs, Tensor(d!)[] acc_deltas, "
    "Tensor(e!)[] master_params, float lr, Tensor? lr_tensor, float rho, float eps, float weight_decay, "
    "bool maximize, Tensor? grad_scale, Tensor? found_inf, int grad_mode, bool stochastic_rounding, "
    "int rounding_key) -> ()"
)


@triton_op(OP_NAME, mutates_args={"params", "grads", "square_avgs", "acc_deltas", "master_params"}, schema=SCHEMA)
def triton_adadelta_(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    square_avgs: list[torch.Tensor],
    acc_deltas: list[torch.Tensor],
    master_params: list[torch.Tensor],
    lr: float,
    lr_tensor: Optional[torch.Tensor],
    rho: float,
    eps: float,
    weight_decay: float,
    maximize: bool,
    grad_scale: Optional[torch.Tensor],
    found_inf: Optional[torch.Tensor],
    grad_mode: int,
    stochastic_rounding: bool,
    rounding_key: int,
) -> None:
    """One Adadelta step, in place, over one (device, dtype) group: the contract of adadelta_fused.reference.

    The arguments are the C++ op's (``adadelta_fused::adadelta_``): ``lr_tensor``, when given, replaces ``lr``.
    Inputs are validated (contract.check_group) before any memory is touched.
    """
    mode = GradMode.parse(grad_mode)
    scalars = StepScalars(
        lr=lr if lr_tensor is None else lr_tensor, rho=rho, eps=eps, weight_decay=weight_decay, maximize=maximize,
        grad_scale=grad_scale, found_inf=found_inf, grad_mode=mode, stochastic_rounding=stochastic_rounding,
        rounding_key=rounding_key,
    )
    check_group(params, grads, square_avgs, acc_deltas, master_params, scalars)
    if not params:
        return
    dense = _DenseGroup(params, grads, square_avgs, acc_deltas, master_params, mode != GradMode.KEEP)
    step = _step_arguments(params, square_avgs, master_params, scalars)
    compiled = kernels(False).adadelta_flat_kernel
    traceable = wrap_triton(compiled)
    if traceable is not compiled:
        # Traced (fake tensors, torch.compile): every buffer is a kernel argument, so the graph records what
        # the kernel mutates. Always the compiled kernel: wrap_triton cannot trace an interpreted one.
        for index, row in enumerate(dense.rows):
            launch = _flat_launch(row, index, step)
            if launch is not None:
                traceable[launch.grid](**launch.arguments)
    else:
        interpret = interpreting()
        module = kernels(interpret)
        device = params[0].device
        # Triton launches on the current CUDA device, which need not be the params'.
        with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
            for launch in _eager_launches(dense, params[0].dtype, square_avgs[0].dtype, step, interpret):
                getattr(module, launch.kernel)[launch.grid](**launch.arguments)
    dense.finish()
