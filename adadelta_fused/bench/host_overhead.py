"""The host-overhead case (issue 12): what splitting a step's elements into many params costs per param.

P params of N elements and one param of P*N elements move the same bytes, so the difference of their step
times is the work that grows with the param count: argument unboxing and checks, the optimizer's Python
loop, launches. Per param:

    host us/param = (median step of P x N  -  median step of 1 x P*N) / (P - 1) * 1e6

The divisor is P - 1 because the one-param step pays one param's overhead too. Every implementation times
both steps in the same interleaved round (``timing.time_interleaved``), so the two medians share the
machine's drift, and on the same number of rotated parameter sets, so both read their data from the same
level of memory. On a GPU the samples are CUDA-event times: the result is the host time the device could
not hide behind its own work, which is what slows a real step.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .cases import Case, format_count, parse_count
from .timing import Measurement

DEFINITION = "host us/param = (median of P x N - median of 1 x P*N) / (P - 1)"


@dataclass(frozen=True)
class HostCase:
    """``params`` params of ``param_numel`` elements each, against one param of all their elements."""

    params: int
    param_numel: int

    def __post_init__(self) -> None:
        if self.params < 2 or self.param_numel < 1:
            raise ValueError(
                f"the host-overhead case needs at least 2 params of at least 1 element, got {self.params} x "
                f"{self.param_numel}"
            )

    @property
    def many(self) -> Case:
        return Case(self.params * self.param_numel, self.params)

    @property
    def one(self) -> Case:
        return Case(self.params * self.param_numel, 1)

    def label(self) -> str:
        return f"{self.params} x {format_count(self.param_numel)}"


# Issue 12's headline: 4096 params of 256 elements (1 Mi fp32 elements, 28 MiB of traffic per step), small
# enough that the per-param host time is most of a per-tensor step.
DEFAULT_HOST_CASE = HostCase(4096, 256)


def parse_host_case(text: str) -> HostCase:
    """'4096x256' -> HostCase(4096, 256); the element count may carry a Ki/Mi/Gi suffix."""
    match = re.fullmatch(r"\s*(\d+)\s*x\s*(\S+)\s*", text)
    if not match:
        raise ValueError(f"invalid host-overhead case {text!r} (expected PARAMSxELEMENTS, e.g. 4096x256)")
    return HostCase(int(match.group(1)), parse_count(match.group(2)))


@dataclass
class HostRow:
    """One implementation's two steps of the host-overhead case, timed in the same interleaved round."""

    host_case: HostCase
    implementation: str
    description: str
    many: Measurement  # P params of N elements
    one: Measurement  # one param of P*N elements
    rotation_sets: int  # both steps rotate over this many parameter sets

    @property
    def seconds_per_param(self) -> float:
        return (self.many.median - self.one.median) / (self.host_case.params - 1)
