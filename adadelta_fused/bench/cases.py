"""The sweep's cases (total elements x tensor count) and the data each one is timed on.

A case is timed on a rotation of independent parameter sets (params, grads, both accumulators), together
larger than the last-level cache, so that a small case is read from memory as a real step would be and
not from a cache the previous step just filled. The data is random: no zeros, no denormals.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

from .traffic import MASTER_DTYPE, StepConfig

Ki, Mi, Gi = 2**10, 2**20, 2**30
_SUFFIXES = {"Gi": Gi, "Mi": Mi, "Ki": Ki}

# Issue 3's headline: 32 Mi fp32 elements, as one tensor and as 4096 tensors of 8 Ki. A GPU gets a size
# well past its L2 too (256 Mi fp32 = 1 GiB per buffer).
DEFAULT_SIZES = {"cpu": (1 * Mi, 32 * Mi), "cuda": (1 * Mi, 32 * Mi, 256 * Mi)}
FULL_SIZES = {
    "cpu": tuple(64 * Ki * 4**k for k in range(6)),  # 64 Ki .. 64 Mi
    "cuda": tuple(64 * Ki * 4**k for k in range(8)),  # 64 Ki .. 1 Gi
}
DEFAULT_TENSORS = (1, 4096)
FULL_TENSORS = (1, 64, 4096)

# The rotation spans 4x the last-level cache: with LRU-like replacement a set is long evicted when its turn
# comes again. Every set needs its own optimizer and tensors, so their number is capped: 1024 sets, and
# 65,536 tensors per role in all (4096-tensor cases rotate at most 16 sets).
_ROTATION_CACHE_MULTIPLE = 4
_MAX_SETS = 1024
_MAX_ROTATED_TENSORS = 65536


def parse_count(text: str) -> int:
    """'32Mi' -> 33554432, '8Ki' -> 8192, '4096' -> 4096; binary suffixes Ki, Mi, Gi."""
    match = re.fullmatch(r"\s*(\d+)\s*(Ki|Mi|Gi)?\s*", text)
    if not match:
        raise ValueError(f"invalid count {text!r} (expected an integer with an optional Ki, Mi or Gi suffix, e.g. 32Mi)")
    value = int(match.group(1)) * _SUFFIXES.get(match.group(2), 1)
    if value <= 0:
        raise ValueError(f"invalid count {text!r} (must be positive)")
    return value


def format_count(value: int) -> str:
    for suffix, scale in _SUFFIXES.items():
        if value >= scale and value % scale == 0:
            return f"{value // scale}{suffix}"
    return str(value)


@dataclass(frozen=True)
class Case:
    """One point of the sweep: ``tensors`` tensors of equal size, ``numel`` elements in all."""

    numel: int
    tensors: int

    @property
    def tensor_numel(self) -> int:
        return self.numel // self.tensors

    def label(self) -> str:
        return f"{format_count(self.numel)} x {self.tensors}"


def sweep(sizes: tuple[int, ...], tensor_counts: tuple[int, ...]) -> list[Case]:
    """Every (size, tensor count) pair with at least one element per tensor; sizes round down to a
    multiple of the tensor count."""
    return [
        Case(size // count * count, count)
        for size in sizes
        for count in tensor_counts
        if size >= count
    ]


def set_bytes(case: Case, config: StepConfig) -> int:
    """Memory of one parameter set: param and grad, two accumulators, and the master copy if any."""
    per_element = 2 * config.param_dtype.itemsize + 2 * config.state_dtype.itemsize
    if config.master_weights:
        per_element += MASTER_DTYPE.itemsize
    return case.numel * per_element


def rotation_sets(case: Case, config: StepConfig, cache_bytes: int, requested: int | None = None) -> int:
    """The sets a case rotates over: enough to span 4x the cache (at least 2), or ``requested``; either capped."""
    cap = max(2, min(_MAX_SETS, _MAX_ROTATED_TENSORS // case.tensors))
    if requested is not None:
        return min(requested, cap)
    wanted = math.ceil(_ROTATION_CACHE_MULTIPLE * cache_bytes / set_bytes(case, config))
    return max(2, min(wanted, cap))


@dataclass
class ParamSet:
    """One independent set of the buffers a step touches, laid out as an optimizer's would be."""

    params: list[torch.Tensor]
    grads: list[torch.Tensor]
    square_avgs: list[torch.Tensor]
    acc_deltas: list[torch.Tensor]
    steps: list[torch.Tensor]  # one CPU scalar per param, as torch.optim keeps them by default
    master_params: list[torch.Tensor] | None


def make_param_sets(case: Case, config: StepConfig, device: torch.device, count: int, seed: int = 0) -> list[ParamSet]:
    generator = torch.Generator(device=device).manual_seed(seed)

    def normal(dtype: torch.dtype) -> torch.Tensor:
        return torch.empty(case.tensor_numel, dtype=dtype, device=device).normal_(generator=generator)

    def positive(dtype: torch.dtype) -> torch.Tensor:
        # Accumulators of a run in progress: positive and well above the fp32/bf16 denormal range.
        return torch.empty(case.tensor_numel, dtype=dtype, device=device).uniform_(0.5, 1.5, generator=generator)

    sets = []
    for _ in range(count):
        params = [normal(config.param_dtype) for _ in range(case.tensors)]
        sets.append(
            ParamSet(
                params=params,
                grads=[normal(config.param_dtype) for _ in range(case.tensors)],
                square_avgs=[positive(config.state_dtype) for _ in range(case.tensors)],
                acc_deltas=[positive(config.state_dtype) for _ in range(case.tensors)],
                steps=[torch.tensor(0.0) for _ in range(case.tensors)],
                master_params=[p.to(MASTER_DTYPE) for p in params] if config.master_weights else None,
            )
        )
    return sets
