"""The device's own memory bandwidth, measured in the same run as the steps: the 100% line.

Three probes over fp32 buffers far larger than the last-level cache, each byte counted once as read or
written, the way STREAM counts and the way the step's byte model counts:

- copy:  ``a = b``              8 bytes per element
- triad: ``a = b + s*c``       12 bytes per element
- axpy:  ``a += s*b`` in place  12 bytes per element

The step writes only buffers it has just read (param and both accumulators are updated in place), and so
does axpy. Copy and triad store into lines they never read, which a CPU first reads for ownership: traffic
they move but do not count. On this CPU copy and triad reach 43-44 GB/s and axpy 64 GB/s, and the fused
step ~50 GB/s: without axpy the step would sit above "100%". The line is the best probe.

Each probe reports its best repeat: noise only ever makes a run slower, so the fastest run is the best
estimate of what the memory system can do. The bandwidth left to us by other tenants of a shared machine
changes by 2x within a minute here, so the sweep probes before every case and at the end, and keeps each
probe's best (``best_per_probe``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .environment import available_memory_bytes, last_level_cache_bytes
from .timing import time_call

# 8x the last-level cache leaves at most 1/8 of a buffer to be served from cache; 256 MiB covers CPUs whose
# cache size cannot be read.
_MIN_BUFFER_BYTES = 256 * 2**20
_CACHE_MULTIPLE = 8
# One repeat takes ~25 ms on this CPU; each probe round runs this many.
PROBE_REPEATS = 10


@dataclass(frozen=True)
class ProbeResult:
    name: str
    formula: str
    bytes_per_element: int
    buffer_bytes: int
    best_seconds: float

    @property
    def gbps(self) -> float:
        elements = self.buffer_bytes // 4
        return self.bytes_per_element * elements / self.best_seconds / 1e9


def probe_buffer_bytes(device: torch.device) -> int:
    wanted = max(_MIN_BUFFER_BYTES, _CACHE_MULTIPLE * last_level_cache_bytes(device))
    # Three buffers live at once; leave most of the memory to everything else on the machine.
    return min(wanted, available_memory_bytes(device) // 8) // 64 * 64


def _best_seconds(fn: Callable[[], object], device: torch.device) -> float:
    fn()  # maps the output pages and warms the kernel
    return min(time_call(fn, device) for _ in range(PROBE_REPEATS))


def measure_bandwidth(device: torch.device) -> list[ProbeResult]:
    buffer_bytes = probe_buffer_bytes(device)
    elements = buffer_bytes // 4
    generator = torch.Generator(device=device).manual_seed(0)
    a, b, c = (torch.rand(elements, device=device, generator=generator) for _ in range(3))
    scalar = 3.0
    return [
        ProbeResult("copy", "a = b", 8, buffer_bytes, _best_seconds(lambda: a.copy_(b), device)),
        ProbeResult(
            "triad", "a = b + s*c", 12, buffer_bytes,
            _best_seconds(lambda: torch.add(b, c, alpha=scalar, out=a), device),
        ),
        # a grows by at most 3 per call: ~35 after the probe's 11 calls, far from any overflow
        ProbeResult("axpy", "a += s*b", 12, buffer_bytes, _best_seconds(lambda: a.add_(b, alpha=scalar), device)),
    ]


def best_per_probe(rounds: list[list[ProbeResult]]) -> list[ProbeResult]:
    best: dict[str, ProbeResult] = {}
    for results in rounds:
        for result in results:
            if result.name not in best or result.gbps > best[result.name].gbps:
                best[result.name] = result
    return list(best.values())


def reference_bandwidth(results: list[ProbeResult]) -> ProbeResult:
    """The probe that reached the most: percentages of it never flatter a step."""
    return max(results, key=lambda r: r.gbps)
