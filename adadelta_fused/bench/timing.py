"""Timing one optimizer step: warm-up, rotation over independent inputs, and robust statistics.

Each timed sample runs several consecutive steps, each on the next parameter set of the rotation, so the
data a step touches was last touched a whole rotation ago and has left the caches. On a GPU a sample is
bracketed by CUDA events, the start event queued behind one untimed step: the GPU then works on that step
while the host issues the first timed one, as in a running loop. Queued first, the start event would time
the host's latency to issue that step as well: on an H200 (2026-12-04) that read the Triton step, whose host
path takes about 0.2 ms, at 0.34-0.64 ms in samples of 3 steps, where it takes 0.239 ms a step in a loop.
On a CPU a sample is bracketed by ``perf_counter`` after the work is done (CPU ops are synchronous).
The implementations of one case take their samples in turn (``time_interleaved``), so they share the drift
of a machine's bandwidth.
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
    return time_interleaved([steps], device, warmup_rounds=warmup_rounds, repeats=repeats)[0]


def time_interleaved(
    implementations: Sequence[Sequence[Callable[[], object]]],
    device: torch.device,
    *,
    warmup_rounds: int,
    repeats: int,
    lead_step: bool = False,
) -> list[Measurement]:
    """Time several implementations of one case (each a rotation of step callables), as ``time_steps`` does
    one, but taking their samples in turn: sample 1 of each, then sample 2 of each, and so on.

    The bandwidth a shared machine leaves us drifts by 2x within a minute here; timed one after another,
    two implementations would be compared across different drifts, while interleaved they share them.
    ``lead_step``: on the CPU too, each sample starts behind one untimed step (a GPU sample always does), so
    that over a single set its first timed step finds the caches as its own previous step left them, not as
    the other implementation's samples did.
    """
    prepared = []
    for steps in implementations:
        first_call = time_call(steps[0], device)
        rounds = max(1, warmup_rounds)

        def warm_up(steps=steps, rounds=rounds) -> None:
            for _ in range(rounds):
                for step in steps:
                    step()

        for step in steps[1:]:
            step()  # each other set's first call (lazy state, compiles): not part of the estimate
        estimate = time_call(warm_up, device) / (rounds * len(steps))
        per_sample = max(1, math.ceil(MIN_SAMPLE_SECONDS / max(estimate, 1e-9)))
        prepared.append((steps, per_sample, first_call))
    seconds: list[list[float]] = [[] for _ in prepared]
    positions = [0] * len(prepared)
    for _ in range(repeats):
        for index, (steps, per_sample, _) in enumerate(prepared):
            elapsed, stepped = _sample(steps, positions[index], per_sample, device, lead_step)
            seconds[index].append(elapsed)
            positions[index] += stepped
    return [
        Measurement(tuple(s / per_sample for s in samples), per_sample, first_call)
        for samples, (_, per_sample, first_call) in zip(seconds, prepared, strict=True)
    ]


def _sample(steps, position: int, per_sample: int, device: torch.device,
            lead_step: bool = False) -> tuple[float, int]:
    """(seconds for ``per_sample`` consecutive steps of the rotation, steps run), starting at ``position``.

    On a GPU, CUDA events bracket the work on the device, behind one untimed lead step (the module's
    docstring says why); the sync after the end event is not timed. On the CPU, behind one where
    ``lead_step`` asks for it.
    """
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        synchronize(device)
        steps[position % len(steps)]()
        start.record()
        for offset in range(1, per_sample + 1):
            steps[(position + offset) % len(steps)]()
        end.record()
        synchronize(device)
        return start.elapsed_time(end) / 1e3, per_sample + 1
    if lead_step:
        steps[position % len(steps)]()
        position += 1
    start_seconds = time.perf_counter()
    for offset in range(per_sample):
        steps[(position + offset) % len(steps)]()
    return time.perf_counter() - start_seconds, per_sample + lead_step
