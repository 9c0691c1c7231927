"""The multi-tensor Triton kernel's device tables: which tensor and which elements each program steps.

The tables hold buffer addresses and sizes only, so they are cached by those: steady training finds its
tables every step and pays no host-to-device copy.
"""

from collections import OrderedDict
from dataclasses import dataclass

import torch

from .triton_interpreter import kernels

# The tables' least-recently-used entries beyond this many are dropped (one entry per param group and
# dtype is the steady state; the bound only matters when a caller keeps handing in new tensors).
TABLE_CACHE_SIZE = 64



def body_end(numel: int) -> int:
    """Where a tensor's vectorized body ends: numel rounded down to BODY_MULTIPLE elements."""
    return numel - numel % kernels(False).BODY_MULTIPLE.value


@dataclass(frozen=True)
class Tables:
    """The device tables of one multi-tensor launch."""

    tensor_table: torch.Tensor  # [tensors, TABLE_COLUMNS] int64
    block_table: torch.Tensor  # [programs, 2] int64: (row of tensor_table, first element)
    aligned: bool  # every address in tensor_table is a multiple of 16 bytes
    has_tail: bool  # some tensor's numel is not a multiple of BODY_MULTIPLE


def _tables(entries: list[list[int]], aligned: bool, device: torch.device, block: int) -> Tables:
    k = kernels(False)
    tensor_table = torch.tensor(entries, dtype=torch.int64)
    numels = tensor_table[:, k.COLUMN_NUMEL.value]
    blocks = (numels + block - 1) // block
    rows = torch.repeat_interleave(torch.arange(len(entries)), blocks)
    first_block = torch.cumsum(blocks, 0) - blocks
    starts = (torch.arange(int(blocks.sum())) - first_block[rows]) * block
    has_tail = bool((tensor_table[:, k.COLUMN_BODY_END.value] != numels).any())
    block_table = torch.stack([rows, starts], dim=1)
    return Tables(tensor_table.to(device), block_table.to(device), aligned, has_tail)


def plan_tables(rows: list[tuple], device: torch.device, block: int) -> tuple[Tables, ...]:
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
        self._entries: OrderedDict[tuple, tuple[Tables, ...]] = OrderedDict()
        # Tables a captured CUDA graph reads on every replay: never freed by eviction. (A miss inside a
        # capture would copy a new table from pageable host memory, which capture forbids: warm up first.)
        self._captured: list[tuple[Tables, ...]] = []

    def get(self, rows: list[tuple], device: torch.device, block: int) -> tuple[Tables, ...]:
        key = [device, block, len(rows)]
        columns = list(zip(*rows))  # params, grads, square_avgs, acc_deltas, masters (all None or none)
        for column in columns:
            if column[0] is not None:
                key.extend(map(torch.Tensor.data_ptr, column))
        key.extend(map(torch.Tensor.numel, columns[0]))
        key = tuple(key)
        tables = self._entries.get(key)
        if tables is None:
            tables = self._entries[key] = plan_tables(rows, device, block)
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
