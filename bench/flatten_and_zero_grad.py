"""Step time with and without flat buffers, and a fused zero_grad against a separate one (issue 6).

    python bench/flatten_and_zero_grad.py [--tensors 4096] [--numel 8Ki] [--out bench/results]

Times ``adadelta_fused.Adadelta`` (backend ``auto``) on the default device over one parameter group of
``--tensors`` fp32 tensors of ``--numel`` elements each, in five variants (their samples interleaved), next
to the bandwidth probes of
``python -m adadelta_fused.bench``. GB/s counts the bytes each variant must move: 28 per element for a
step, 32 when the step also zeroes the gradient, and 28 + 4 for a step followed by a separate zero_grad
(a memset writes 4 bytes per element). Writes ``flatten_zero_grad.json`` and ``.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import torch

from adadelta_fused import Adadelta
from adadelta_fused.bench.bandwidth import best_per_probe, measure_bandwidth, reference_bandwidth
from adadelta_fused.bench.cases import format_count, parse_count
from adadelta_fused.bench.environment import default_device, describe
from adadelta_fused.bench.report import timed_row, write_table_and_record
from adadelta_fused.bench.timing import time_interleaved

STEP_BYTES = 28  # fp32: read p, g, sq, acc; write p, sq, acc
ZERO_IN_STEP_BYTES = 32  # and write g = 0 in the same pass
MEMSET_BYTES = 4


def build(tensors: int, numel: int, device: torch.device, **options) -> tuple[list[torch.nn.Parameter], Adadelta]:
    generator = torch.Generator(device=device).manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(numel, device=device, generator=generator)) for _ in range(tensors)]
    for param in params:
        param.grad = torch.randn(numel, device=device, generator=generator) * 0.1
    optimizer = Adadelta(params, lr=0.5, weight_decay=0.01, **options)
    for state in (optimizer.state[p] for p in params):
        if state:  # flatten=True creates the (zero) state at construction; give it training-like values
            state["square_avg"].uniform_(1e-3, 1e-2, generator=generator)
            state["acc_delta"].uniform_(1e-5, 1e-4, generator=generator)
    return params, optimizer


def variants() -> dict[str, tuple[dict, Callable, int]]:
    """name -> (optimizer options, what one timed iteration does, bytes per element it must move)."""
    def step(optimizer):
        return optimizer.step

    def step_then_zero(optimizer):
        def run():
            optimizer.step()
            optimizer.zero_grad(set_to_none=False)
        return run

    return {
        "step, per-tensor lists": ({}, step, STEP_BYTES),
        "step, flatten=True": (dict(flatten=True), step, STEP_BYTES),
        "step + zero_grad(), per-tensor lists": ({}, step_then_zero, STEP_BYTES + MEMSET_BYTES),
        "step + zero_grad(), flatten=True": (dict(flatten=True), step_then_zero, STEP_BYTES + MEMSET_BYTES),
        "step, flatten=True, zero_grad_in_step=True": (
            dict(flatten=True, zero_grad_in_step=True), step, ZERO_IN_STEP_BYTES
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tensors", type=int, default=4096)
    parser.add_argument("--numel", type=parse_count, default=8 * 1024, help="elements per tensor (default 8Ki)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)
    device = default_device()
    total = args.tensors * args.numel

    probes = [measure_bandwidth(device)]
    chosen = variants()
    built = {name: build(args.tensors, args.numel, device, **options) for name, (options, _, _) in chosen.items()}
    # Interleaved samples: every variant sees the same drift of this shared machine's bandwidth.
    measurements = time_interleaved(
        [[iteration(built[name][1])] for name, (_, iteration, _) in chosen.items()],
        device, warmup_rounds=2, repeats=args.repeats,
    )
    probes.append(measure_bandwidth(device))
    del built
    bandwidth = reference_bandwidth(best_per_probe(probes))
    rows = [dict(variant=name, **timed_row(measurement, bytes_per_element, total, bandwidth.gbps))
            for (name, (_, _, bytes_per_element)), measurement in zip(chosen.items(), measurements, strict=True)]

    title = (f"{args.tensors} fp32 tensors of {format_count(args.numel)} ({format_count(total)} elements), "
             f"{describe(device)['device_name']}; 100% = {bandwidth.name} probe, {bandwidth.gbps:.1f} GB/s")
    lines = [f"# flatten and zero_grad: {title}", "",
             "| variant | median ms | p10-p90 ms | B/elem | GB/s | % of bandwidth |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for row in rows:
        lines.append(f"| {row['variant']} | {row['median_ms']:.2f} | {row['p10_ms']:.2f}-{row['p90_ms']:.2f} | "
                     f"{row['bytes_per_element']} | {row['gbps']:.1f} | {row['percent_of_bandwidth']:.0f}% |")
    table = "\n".join(lines)
    record = dict(environment=describe(device), tensors=args.tensors, numel=args.numel,
                  bandwidth=dict(probe=bandwidth.name, gbps=bandwidth.gbps), rows=rows)
    write_table_and_record(args.out, "flatten_zero_grad", table, record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
