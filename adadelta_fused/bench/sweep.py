"""The run: measure the device's bandwidth, time every implementation on every case, then the host-overhead
case's pair of steps, and collect rows."""

from __future__ import annotations

import gc
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from . import implementations as impls
from .bandwidth import ProbeResult, best_per_probe, measure_bandwidth, reference_bandwidth
from .cases import Case, make_param_sets, rotation_sets, set_bytes
from .environment import available_memory_bytes, describe, last_level_cache_bytes
from .host_overhead import HostCase, HostRow
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
    host_overhead: HostCase | None = None  # None: no host-overhead case
    host_implementations: tuple[str, ...] = ()
    # Parameter sets the host-overhead case asks to rotate over (capped as every rotation is, and by memory);
    # None: enough to span 4x the last-level cache, so every step finds its data and every param's metadata
    # evicted. 1: the same params every step.
    host_sets: int | None = None


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
    host_rows: list[HostRow] = field(default_factory=list)
    host_skipped: list[Skip] = field(default_factory=list)  # their case is the host-overhead case's many-param one

    @property
    def reference(self) -> ProbeResult:
        return reference_bandwidth(self.probes)

    def percent_of_bandwidth(self, row: Row) -> float:
        return 100 * row.gbps / self.reference.gbps


def progress_items(options: SweepOptions) -> int:
    """What ``run_sweep`` counts on its progress bar: every case, a probe round before each and at the end, and
    the host-overhead case if any."""
    return 2 * len(options.cases) + 1 + (options.host_overhead is not None)


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
        wanted = rotation_sets(case, options.config, cache_bytes)
        sets_count = _fitting_sets(set_bytes(case, options.config), device, wanted)
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
    host_rows: list[HostRow] = []
    host_skipped: list[Skip] = []
    if options.host_overhead is not None:
        progress.set_postfix_str(f"host overhead {options.host_overhead.label()}")
        host_rows, host_skipped = _time_host_overhead(options, options.host_overhead, cache_bytes)
        progress.update()
    probe()
    progress.close()
    return SweepResult(
        options, metadata, best_per_probe(probe_rounds), len(probe_rounds), rows, skipped, host_rows, host_skipped
    )


def _time_host_overhead(
    options: SweepOptions, host: HostCase, cache_bytes: int
) -> tuple[list[HostRow], list[Skip]]:
    """Each implementation's many-param and one-param steps, all of them interleaved in one round; over one
    set, each implementation's two in a round of their own."""
    device, config = options.device, options.config
    skipped = []
    names = []
    for name in options.host_implementations:
        many_reason, one_reason = (
            impls.case_skip_reason(name, case, device, named=name in options.named, compile_all=options.compile_all)
            for case in (host.many, host.one)
        )
        reason = many_reason or one_reason
        if reason:
            skipped.append(Skip(host.many, name, reason))
        else:
            names.append(name)
    # Both steps rotate over as many sets as the many-param case wants (it is the capped one), so their data
    # comes from the same level of memory; a set of each case is in memory at once.
    wanted = rotation_sets(host.many, config, cache_bytes, options.host_sets)
    sets_count = _fitting_sets(set_bytes(host.many, config) + set_bytes(host.one, config), device, wanted)
    if sets_count is None:
        return [], skipped + [Skip(host.many, name, "does not fit in free memory") for name in names]
    many_sets = make_param_sets(host.many, config, device, sets_count)
    one_sets = make_param_sets(host.one, config, device, sets_count)
    timed = []  # (implementation, its many-param rotation, its one-param rotation)
    for name in names:
        implementation = impls.implementation(name)
        timed.append((implementation, implementation.build(many_sets, config), implementation.build(one_sets, config)))
    if sets_count > 1:
        measurements = time_interleaved(
            [steps for _, many, one in timed for steps in (many, one)], device,
            warmup_rounds=options.warmup, repeats=options.repeats,
        )
    else:
        # The same params every step: each implementation's two steps alone in their round, each sample behind
        # a lead step, or another implementation's samples would leave the params' metadata evicted
        # (4096 x 16, two threads: ours read 0.71-0.76 us a param with all four interleaved; a separate A/B
        # of our step alone read 0.34-0.44 the same evening).
        measurements = [
            measurement
            for _, many, one in timed
            for measurement in time_interleaved(
                [many, one], device, warmup_rounds=options.warmup, repeats=options.repeats, lead_step=True)
        ]
    rows = [
        HostRow(host, implementation.name, implementation.description, many, one, sets_count)
        for (implementation, _, _), many, one in zip(timed, measurements[0::2], measurements[1::2], strict=True)
    ]
    del timed, many_sets, one_sets
    _release_memory(device)
    return rows, skipped


def _fitting_sets(bytes_per_set: int, device: torch.device, wanted: int) -> int | None:
    """The most sets, up to ``wanted`` and at least two (one where one is wanted), that fit in memory with one
    set of temporaries."""
    budget = _MEMORY_SHARE * available_memory_bytes(device)
    fitting = int(budget // bytes_per_set) - 1
    return min(wanted, fitting) if fitting >= min(wanted, 2) else None


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
