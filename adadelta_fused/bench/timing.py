"""Timing one optimizer step: warm-up, rotation over independent inputs, and robust statistics.

Each timed sample runs several consecutive steps, each on the next parameter set of the rotation, so the
data a step touches was last touched a whole rotation ago and has left the caches. On a GPU a sample is
bracketed by CUDA events; on a CPU by ``perf_counter`` after the work is done (CPU ops are synchronous).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy
import torch

# A sample shorter than this is dominated by timer and loop overhead (perf_counter and CUDA events both
# resolve about a microsecond), so fast steps are grouped until a sample lasts at least this long.
MIN_SAMPLE_SECONDS = 2e-3


@dataclass(frozen=True)
class Measurement:
    """Seconds per step, one value per timed sample, plus the first call (compilation shows up there)."""

    per_step_seconds: tuple[float, ...]
    steps_per_sample: int
    first_call_seconds: float

    @property
    def median(self) -> float:
        return float(numpy.median(self.per_step_seconds))

    @property
    def p10(self) -> float:
        return float(numpy.percentile(self.per_step_seconds, 10))

    @property
    def p90(self) -> float:
        return float(numpy.percentile(self.per_step_seconds, 90))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device) -> float:
    """Wall seconds of one call, including the device work it queued."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def time_steps(
    steps: Sequence[Callable[[], object]],
    device: torch.device,
    *,
    warmup_rounds: int,
    repeats: int,
) -> Measurement:
    """Time ``steps`` (one callable per rotation set), used round-robin.

    The first call is timed alone; then ``warmup_rounds`` untimed passes over every set (at least one, so
    each set's pages are mapped and its lazy state exists); then ``repeats`` samples.
    """
    first_call = time_call(steps[0], device)
    rounds = max(1, warmup_rounds)

    def warm_up() -> None:
        for _ in range(rounds):
            for step in steps:
                step()

    estimate = time_call(warm_up, device) / (rounds * len(steps))
    per_sample = max(1, math.ceil(MIN_SAMPLE_SECONDS / max(estimate, 1e-9)))
    if device.type == "cuda":
        seconds = _cuda_samples(steps, device, repeats, per_sample)
    else:
        seconds = _host_samples(steps, repeats, per_sample)
    return Measurement(tuple(s / per_sample for s in seconds), per_sample, first_call)


def _host_samples(steps, repeats: int, per_sample: int) -> list[float]:
    seconds = []
    position = 0
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(per_sample):
            steps[position % len(steps)]()
            position += 1
        seconds.append(time.perf_counter() - start)
    return seconds


def _cuda_samples(steps, device, repeats: int, per_sample: int) -> list[float]:
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repeats)]
    position = 0
    synchronize(device)
    for start, end in events:
        start.record()
        for _ in range(per_sample):
            steps[position % len(steps)]()
            position += 1
        end.record()
    synchronize(device)
    return [start.elapsed_time(end) / 1e3 for start, end in events]
