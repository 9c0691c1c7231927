"""The run: measure the device's bandwidth, then time every implementation on every case, and collect rows."""

from __future__ import annotations

import gc
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from . import implementations as impls
from .bandwidth import ProbeResult, best_per_probe, measure_bandwidth, reference_bandwidth
from .cases import Case, make_param_sets, rotation_sets, set_bytes
from .environment import available_memory_bytes, describe, last_level_cache_bytes
from .timing import Measurement, synchronize, time_interleaved
from .traffic import StepConfig, step_traffic

# A case may use this share of the free memory: its rotation plus one set's worth of temporaries (torch's
# foreach step allocates two buffers per param, a compiled step one or two).
_MEMORY_SHARE = 0.75


@dataclass(frozen=True)
class SweepOptions:
    device: torch.device
    config: StepConfig
    cases: tuple[Case, ...]
    implementations: tuple[str, ...]
    named: frozenset[str]  # implementations the user asked for by name: no size limit for slow ones
    repeats: int
    warmup: int
    compile_all: bool


@dataclass
class Row:
    case: Case
    implementation: str
    description: str
    config_run: StepConfig
    measurement: Measurement
    rotation_sets: int
    rotation_bytes: int
    speedups: dict[str, float] = field(default_factory=dict)  # baseline name -> baseline time / this time

    @property
    def bytes_per_element(self) -> int:
        return step_traffic(self.config_run).total

    @property
    def gbps(self) -> float:
        return self.bytes_per_element * self.case.numel / self.measurement.median / 1e9

    @property
    def compile_seconds(self) -> float | None:
        """For a compiled step, its first call less a steady step: the time spent compiling."""
        if self.implementation != impls.TORCH_COMPILE:
            return None
        return max(0.0, self.measurement.first_call_seconds - self.measurement.median)


@dataclass(frozen=True)
class Skip:
    case: Case
    implementation: str
    reason: str


@dataclass
class SweepResult:
    options: SweepOptions
    metadata: dict[str, object]
    probes: list[ProbeResult]  # each probe's best over the run
    probe_rounds: int
    rows: list[Row]
    skipped: list[Skip]

    @property
    def reference(self) -> ProbeResult:
        return reference_bandwidth(self.probes)

    def percent_of_bandwidth(self, row: Row) -> float:
        return 100 * row.gbps / self.reference.gbps


def progress_items(options: SweepOptions) -> int:
    """What ``run_sweep`` counts on its progress bar: every case, and a probe round before each and at the end."""
    return 2 * len(options.cases) + 1


def run_sweep(options: SweepOptions, progress: tqdm) -> SweepResult:
    """Time every case; ``progress`` is a bar of ``progress_items(options)`` items, closed on return."""
    device = options.device
    metadata = describe(device)
    probe_rounds: list[list[ProbeResult]] = []

    def probe() -> None:
        progress.set_postfix_str("bandwidth probes (copy, triad, axpy)")
        probe_rounds.append(measure_bandwidth(device))
        progress.update()

    rows: list[Row] = []
    skipped: list[Skip] = []
    cache_bytes = last_level_cache_bytes(device)
    for case in options.cases:
        probe()  # before the case's data exists, so the probe's buffers have the memory
        sets_count = _fitting_sets(case, options.config, device, rotation_sets(case, options.config, cache_bytes))
        if sets_count is None:
            for name in options.implementations:
                skipped.append(Skip(case, name, "does not fit in free memory"))
            progress.update()
            continue
        progress.set_postfix_str(f"{case.label()}  {', '.join(options.implementations)}")
        sets = make_param_sets(case, options.config, device, sets_count)
        timed = []  # (implementation, its step rotation); every one steps the same sets
        for name in options.implementations:
            reason = impls.case_skip_reason(
                name, case, device, named=name in options.named, compile_all=options.compile_all
            )
            if reason:
                skipped.append(Skip(case, name, reason))
                continue
            implementation = impls.implementation(name)
            timed.append((implementation, implementation.build(sets, options.config)))
        measurements = time_interleaved(
            [steps for _, steps in timed], device, warmup_rounds=options.warmup, repeats=options.repeats
        )
        case_rows = [
            Row(
                case=case,
                implementation=implementation.name,
                description=implementation.description,
                config_run=implementation.config_run(options.config),
                measurement=measurement,
                rotation_sets=sets_count,
                rotation_bytes=sets_count * set_bytes(case, options.config),
            )
            for (implementation, _), measurement in zip(timed, measurements, strict=True)
        ]
        del timed
        _add_speedups(case_rows)
        rows.extend(case_rows)
        del sets
        _release_memory(device)
        progress.update()
    probe()
    progress.close()
    return SweepResult(options, metadata, best_per_probe(probe_rounds), len(probe_rounds), rows, skipped)


def _fitting_sets(case: Case, config: StepConfig, device: torch.device, wanted: int) -> int | None:
    """The most sets, up to ``wanted`` and at least two, that fit in memory with one set of temporaries."""
    budget = _MEMORY_SHARE * available_memory_bytes(device)
    fitting = int(budget // set_bytes(case, config)) - 1
    return min(wanted, fitting) if fitting >= 2 else None


def _add_speedups(rows: list[Row]) -> None:
    baseline_seconds = {r.implementation: r.measurement.median for r in rows if r.implementation in impls.BASELINES}
    for row in rows:
        row.speedups = {name: seconds / row.measurement.median for name, seconds in baseline_seconds.items()}


def _release_memory(device: torch.device) -> None:
    # torch.optim optimizers sit in reference cycles, and with them any state they allocated (torch's copy of
    # accumulators kept in another dtype, Adam's moments); free them before the next case allocates. Once
    # per case: a collection takes ~0.3 s here once torch._dynamo is loaded.
    gc.collect()
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.empty_cache()
