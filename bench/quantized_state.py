"""8-bit state against fp32 (and bf16) state: memory, CPU step time in one interleaved run, and the GPU step
time the byte model predicts (issue 13).

    python bench/quantized_state.py [--numel 32Mi] [--repeats 15] [--gpu-gbps 4800] [--out bench/results]

Memory is measured from the optimizer's state tensors (``Adadelta(..., state_dtype=...)`` after one step).
Time: one step of the compiled CPU kernel over one tensor of ``--numel`` elements per configuration (the dense
op ``adadelta_``, and the quantized op ``quantized_adadelta_`` for 8-bit state), each row rotating over its own
parameter sets, together larger than the last-level cache, the rows sampled in turn so they share the drift of
this shared machine. GB/s counts the bytes each configuration must move (``bench.traffic.step_traffic``), and
100 % is the best bandwidth probe of the same run. The GPU rows are no measurement: bytes per element times
``--numel`` over ``--gpu-gbps`` (default: an H200's 4.8 TB/s), the time a step at the bandwidth limit takes.
Writes ``quantized_state.json`` and ``.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from adadelta_fused import Adadelta, adadelta_
from adadelta_fused.bench.bandwidth import best_per_probe, measure_bandwidth, reference_bandwidth
from adadelta_fused.bench.cases import Case, format_count, make_param_sets, parse_count, rotation_sets
from adadelta_fused.bench.environment import describe, last_level_cache_bytes
from adadelta_fused.bench.report import timed_row, write_table_and_record
from adadelta_fused.bench.timing import time_interleaved
from adadelta_fused.bench.traffic import StepConfig, step_traffic
from adadelta_fused.contract import StepScalars, quantized_op_arguments
from adadelta_fused.quantized_reference import quantize

F32, BF16, U8 = torch.float32, torch.bfloat16, torch.uint8
SCALARS = StepScalars(lr=1e-3, rho=0.9, eps=1e-6, weight_decay=0.0)


@dataclass(frozen=True)
class Row:
    label: str
    config: StepConfig


ROWS = (
    Row("fp32 params, fp32 state", StepConfig(F32)),
    Row("fp32 params, bf16 state", StepConfig(F32, BF16)),
    Row("fp32 params, 8-bit state", StepConfig(F32, U8)),
    Row("bf16 params, fp32 master, fp32 state", StepConfig(BF16, F32, master_weights=True)),
    Row("bf16 params, fp32 master, 8-bit state", StepConfig(BF16, U8, master_weights=True)),
)


def steps_of(row: Row, case: Case, device: torch.device, cache_bytes: int) -> list:
    config = row.config
    dense = StepConfig(config.param_dtype, F32, config.master_weights) if config.quantized else config
    sets = make_param_sets(case, dense, device, rotation_sets(case, config, cache_bytes))
    if not config.quantized:
        return [partial(adadelta_, s.params, s.grads, s.square_avgs, s.acc_deltas, s.steps,
                        master_params=s.master_params, backend="cpp") for s in sets]
    op = torch.ops.adadelta_fused.quantized_adadelta_.default
    steps = []
    for s in sets:
        sq = [quantize(x, p, SCALARS.eps) for x, p in zip(s.square_avgs, s.params)]
        acc = [quantize(x, p, SCALARS.eps) for x, p in zip(s.acc_deltas, s.params)]
        arguments = quantized_op_arguments(s.params, s.grads, [c for c, _ in sq], [c for c, _ in acc],
                                           s.master_params, [k for _, k in sq], [k for _, k in acc], SCALARS)
        steps.append(partial(op, *arguments))
    return steps


def state_bytes_per_param(state_dtype: torch.dtype | None) -> float:
    """Bytes of optimizer state per param, from the state tensors of a real optimizer (step counters aside)."""
    model = torch.nn.Sequential(torch.nn.Linear(1000, 1000), torch.nn.Linear(1000, 10))
    opt = Adadelta(model.parameters(), state_dtype=state_dtype)
    model(torch.randn(4, 1000)).sum().backward()
    opt.step()
    params = sum(p.numel() for p in model.parameters())
    held = sum(t.numel() * t.element_size() for s in opt.state.values() for k, t in s.items() if k != "step")
    return held / params


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--numel", type=parse_count, default=32 * 2**20, help="elements per step (default 32Mi)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--gpu-gbps", type=float, default=4800.0, help="GPU memory bandwidth for the prediction")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)
    device = torch.device("cpu")
    case = Case(args.numel, 1)
    cache_bytes = last_level_cache_bytes(device)

    memory = {name: state_bytes_per_param(dtype) for name, dtype in (("fp32", None), ("bf16", BF16), ("8-bit", U8))}
    probes = [measure_bandwidth(device)]
    steps = [steps_of(row, case, device, cache_bytes) for row in ROWS]
    measurements = time_interleaved(steps, device, warmup_rounds=2, repeats=args.repeats)
    del steps
    probes.append(measure_bandwidth(device))
    bandwidth = reference_bandwidth(best_per_probe(probes))

    records = []
    baseline = {}
    for row, measurement in zip(ROWS, measurements, strict=True):
        key = (row.config.param_dtype, row.config.master_weights)
        baseline.setdefault(key, measurement.median)  # each param kind's first row: its fp32 state
        bytes_per_element = step_traffic(row.config).total
        records.append(dict(
            configuration=row.label, **timed_row(measurement, bytes_per_element, args.numel, bandwidth.gbps),
            speedup_vs_fp32_state=baseline[key] / measurement.median,
            gpu_predicted_ms=bytes_per_element * args.numel / (args.gpu_gbps * 1e9) * 1e3,
        ))

    environment = describe(device)
    title = (f"one tensor of {format_count(args.numel)} elements, {environment['device_name']}, "
             f"{environment['torch_threads']} threads, torch {environment['torch']}, kernel ISA "
             f"{environment['extension'].get('cpu_isa')}; 100% = {bandwidth.name} probe, {bandwidth.gbps:.1f} GB/s")
    lines = [f"# 8-bit state: {title}", "",
             "State bytes per param (from the state tensors): "
             + ", ".join(f"{name} {value:.3f}" for name, value in memory.items()), "",
             "| configuration | median ms | p10-p90 ms | B/elem | GB/s | % of bandwidth | speed-up vs fp32 state | "
             f"GPU predicted ms at {args.gpu_gbps / 1000:.1f} TB/s |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in records:
        lines.append(
            f"| {r['configuration']} | {r['median_ms']:.2f} | {r['p10_ms']:.2f}-{r['p90_ms']:.2f} | "
            f"{r['bytes_per_element']:g} | {r['gbps']:.1f} | {r['percent_of_bandwidth']:.0f}% | "
            f"{r['speedup_vs_fp32_state']:.2f} | {r['gpu_predicted_ms']:.3f} |"
        )
    table = "\n".join(lines)
    record = dict(environment=environment, numel=args.numel, repeats=args.repeats, gpu_gbps=args.gpu_gbps,
                  state_bytes_per_param=memory, bandwidth=dict(probe=bandwidth.name, gbps=bandwidth.gbps),
                  rows=records)
    write_table_and_record(args.out, "quantized_state", table, record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
