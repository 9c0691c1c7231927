"""bf16 and fp16 steps against the fp32 step and torch's fused Adam, in one interleaved run (issue 17).

    python bench/mixed_precision.py [--numel 32Mi] [--repeats 15] [--out bench/results]

Times one step of the compiled kernel (``adadelta_fused.adadelta_``, backend ``cpp``) over one tensor of
``--numel`` elements in each mixed-precision configuration, and ``torch.optim.AdamW(fused=True)`` in each
param dtype: Adam reads and writes the same bytes (p, g and two moments in the param dtype), so it is the
same-bytes yardstick. Every row rotates over its own parameter sets, together larger than the last-level
cache, and the rows take their samples in turn, so they share the drift of this shared machine. GB/s counts
the bytes each configuration must move (``adadelta_fused.bench.traffic.step_traffic``). Writes
``mixed_precision.json`` and ``.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from adadelta_fused import _extension, adadelta_
from adadelta_fused.bench.bandwidth import best_per_probe, measure_bandwidth, reference_bandwidth
from adadelta_fused.bench.cases import Case, format_count, make_param_sets, parse_count, rotation_sets
from adadelta_fused.bench.environment import describe, last_level_cache_bytes
from adadelta_fused.bench.implementations import _torch_fused_adamw
from adadelta_fused.bench.report import timed_row, write_table_and_record
from adadelta_fused.bench.timing import time_interleaved
from adadelta_fused.bench.traffic import DTYPE_NAMES, StepConfig, step_traffic
from adadelta_fused.reference import rounding_key

F32, BF16, F16 = torch.float32, torch.bfloat16, torch.float16


@dataclass(frozen=True)
class Row:
    label: str
    config: StepConfig
    adam: bool = False  # torch.optim.AdamW(fused=True) instead of our step
    stochastic_rounding: bool = False


ROWS = (
    Row("fp32 params and state", StepConfig(F32)),
    Row("bf16 params and state", StepConfig(BF16)),
    Row("bf16 params and state, stochastic rounding", StepConfig(BF16), stochastic_rounding=True),
    Row("fp16 params and state", StepConfig(F16)),
    Row("bf16 params, fp32 state", StepConfig(BF16, F32)),
    Row("bf16 params, fp32 state, stochastic rounding", StepConfig(BF16, F32), stochastic_rounding=True),
    Row("bf16 params and state, fp32 master", StepConfig(BF16, master_weights=True)),
    Row("fp16 params and state, fp32 master", StepConfig(F16, master_weights=True)),
    Row("torch AdamW(fused=True), fp32", StepConfig(F32), adam=True),
    Row("torch AdamW(fused=True), bf16", StepConfig(BF16), adam=True),
    Row("torch AdamW(fused=True), fp16", StepConfig(F16), adam=True),
)


def steps_of(row: Row, case: Case, device: torch.device, cache_bytes: int) -> list:
    sets = make_param_sets(case, row.config, device, rotation_sets(case, row.config, cache_bytes))
    if row.adam:
        return _torch_fused_adamw(sets, row.config)
    key = rounding_key(seed=1, step=1) if row.stochastic_rounding else 0
    return [
        partial(adadelta_, s.params, s.grads, s.square_avgs, s.acc_deltas, s.steps, master_params=s.master_params,
                stochastic_rounding=row.stochastic_rounding, rounding_key=key, backend="cpp")
        for s in sets
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--numel", type=parse_count, default=32 * 2**20, help="elements per step (default 32Mi)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--isa", help="run the CPU kernel at this SIMD level, one of the extension's "
                                          "supported_cpu_isas() (default: the best this CPU has)")
    args = parser.parse_args(argv)
    if args.isa is not None:
        if _extension.module() is None:
            parser.error(f"--isa needs the compiled extension: {_extension.load_error()}")
        try:
            _extension.module().select_cpu_isa(args.isa)
        except ValueError as error:  # the extension's own names and its check against this CPU
            parser.error(str(error))
    device = torch.device("cpu")
    case = Case(args.numel, 1)
    cache_bytes = last_level_cache_bytes(device)

    probes = [measure_bandwidth(device)]
    steps = [steps_of(row, case, device, cache_bytes) for row in ROWS]
    measurements = time_interleaved(steps, device, warmup_rounds=2, repeats=args.repeats)
    del steps
    probes.append(measure_bandwidth(device))
    bandwidth = reference_bandwidth(best_per_probe(probes))
    fp32_seconds = measurements[0].median
    adam_seconds = {row.config.param_dtype: m.median for row, m in zip(ROWS, measurements) if row.adam}

    records = []
    for row, measurement in zip(ROWS, measurements, strict=True):
        records.append(dict(
            configuration=row.label,
            **timed_row(measurement, step_traffic(row.config).total, args.numel, bandwidth.gbps),
            times_fp32=measurement.median / fp32_seconds,
            times_adam_same_dtype=measurement.median / adam_seconds[row.config.param_dtype],
        ))

    environment = describe(device)
    title = (f"one tensor of {format_count(args.numel)} elements, {environment['device_name']}, "
             f"{environment['torch_threads']} threads, torch {environment['torch']}, kernel ISA "
             f"{environment['extension'].get('cpu_isa')}; "
             f"100% = {bandwidth.name} probe, {bandwidth.gbps:.1f} GB/s")
    lines = [f"# mixed precision: {title}", "",
             "| configuration | median ms | p10-p90 ms | B/elem | GB/s | % of bandwidth | x fp32 | x Adam same dtype |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in records:
        lines.append(
            f"| {r['configuration']} | {r['median_ms']:.2f} | {r['p10_ms']:.2f}-{r['p90_ms']:.2f} | "
            f"{r['bytes_per_element']} | {r['gbps']:.1f} | {r['percent_of_bandwidth']:.0f}% | "
            f"{r['times_fp32']:.2f} | {r['times_adam_same_dtype']:.2f} |"
        )
    table = "\n".join(lines)
    record = dict(environment=environment, numel=args.numel, repeats=args.repeats,
                  bandwidth=dict(probe=bandwidth.name, gbps=bandwidth.gbps), rows=records,
                  dtypes={row.label: DTYPE_NAMES[row.config.param_dtype] for row in ROWS})
    write_table_and_record(args.out, "mixed_precision", table, record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
