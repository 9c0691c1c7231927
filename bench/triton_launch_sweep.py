"""The Triton flat kernel's launch shape: elements per program (BLOCK) by warps, in one interleaved run.

    python bench/triton_launch_sweep.py [--numel 32Mi] [--blocks 512 1024 2048 4096] [--warps 2 4 8]
                                        [--repeats 15] [--out bench/results]

``adadelta_fused.triton_launch`` fixes the elements and warps of a program. Chosen first from arithmetic (2048 x 4),
the shape is now the one this sweep found fastest on an H200 with triton 3.6 (1024 x 4: 100 % of the copy
bandwidth in fp32, 97 % in bf16; bench/results/gpu-h200-20261204b/). This times the flat kernel (one tensor: a
``flatten=True`` step) at every shape, fp32 and bf16 params and state, all rows interleaved and rotating over
their own buffers, beside the bandwidth probes of the same run. Before timing, each shape's step is checked bit
for bit against the shipped shape's on two small tensors, one with a tail and one without (the timed size's
compilation), and a shape that fails to compile or to match is reported as such while the others run on. Writes
``triton_launch_sweep.json`` and ``.md`` under ``--out``. Without a GPU it runs in Triton's interpreter
(``TRITON_INTERPRET=1``), which checks the script, not the shapes.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch
import triton

from adadelta_fused import triton_interpreter, triton_launch
from adadelta_fused.bench.bandwidth import best_per_probe, measure_bandwidth, reference_bandwidth
from adadelta_fused.bench.cases import Case, format_count, make_param_sets, parse_count, rotation_sets
from adadelta_fused.bench.environment import describe, last_level_cache_bytes
from adadelta_fused.bench.report import timed_row, write_table_and_record
from adadelta_fused.bench.timing import time_interleaved
from adadelta_fused.bench.traffic import DTYPE_NAMES, StepConfig, step_traffic
from adadelta_fused.contract import StepScalars

CONFIGS = (StepConfig(torch.float32), StepConfig(torch.bfloat16))
SCALARS = StepScalars(lr=0.5, rho=0.9, eps=1e-6, weight_decay=0.0)
# Several programs of every shape swept: without a tail (a multiple of 16, compiled as the timed 32 Mi is) and with.
CHECK_NUMELS = (3 * 4096, 3 * 4096 + 17)


@dataclass(frozen=True)
class Shape:
    block: int
    warps: int


def launcher(param_set, shape: Shape, interpret: bool):
    """A step of the flat kernel over ``param_set``'s one tensor, launched at ``shape``."""
    (launch,) = triton_launch.planned_launches(
        param_set.params, param_set.grads, param_set.square_avgs, param_set.acc_deltas, [], SCALARS
    )
    kernel = getattr(triton_interpreter.kernels(interpret), launch.kernel)
    arguments = {**launch.arguments, "BLOCK": shape.block, "num_warps": shape.warps}
    grid = (triton.cdiv(param_set.params[0].numel(), shape.block),)

    def step():
        with triton_interpreter.launching(interpret):
            return kernel[grid](**arguments)

    return step


def check_shape(config: StepConfig, shape: Shape, shipped: Shape, device: torch.device, interpret: bool) -> None:
    """Raises unless one step at ``shape`` gives the bits of one step at the shipped shape."""
    for numel in CHECK_NUMELS:
        results = []
        for each in (shape, shipped):
            (param_set,) = make_param_sets(Case(numel, 1), config, device, 1, seed=7)
            launcher(param_set, each, interpret)()
            results.append([t[0] for t in (param_set.params, param_set.square_avgs, param_set.acc_deltas)])
        for name, got, want in zip(("params", "square_avgs", "acc_deltas"), *results):
            if not torch.equal(got, want):
                raise RuntimeError(f"BLOCK={shape.block}, {shape.warps} warps: {name} differ from the shipped "
                                   f"shape's at {numel} elements")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--numel", type=parse_count, default=32 * 2**20, help="elements per step (default 32Mi)")
    parser.add_argument("--blocks", type=int, nargs="+", default=[512, 1024, 2048, 4096],
                        help="elements per program, powers of two")
    parser.add_argument("--warps", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)
    for block in args.blocks:
        if block < 16 or block & (block - 1):
            parser.error(f"--blocks: {block} is not a power of two of at least 16 (tl.arange needs one)")
    for warps in args.warps:
        if warps < 1 or warps & (warps - 1):
            parser.error(f"--warps: {warps} is not a power of two")
    interpret = triton_interpreter.interpreting()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and not interpret:
        parser.error("no CUDA device: set TRITON_INTERPRET=1 to run the sweep in Triton's interpreter")
    shipped = Shape(triton_launch.BLOCK, triton_launch.NUM_WARPS)
    shapes = [Shape(block, warps) for block in args.blocks for warps in args.warps]
    case = Case(args.numel, 1)
    cache_bytes = last_level_cache_bytes(device)

    rows, steps, failures = [], [], []
    for config in CONFIGS:
        for shape in shapes:
            label = f"{DTYPE_NAMES[config.param_dtype]} BLOCK={shape.block} warps={shape.warps}"
            try:
                check_shape(config, shape, shipped, device, interpret)
                # Interpreted, the times mean nothing: two sets keep the rotation without thousands of slow steps.
                count = 2 if interpret else rotation_sets(case, config, cache_bytes)
                sets = make_param_sets(case, config, device, count)
                row_steps = [launcher(param_set, shape, interpret) for param_set in sets]
                compiled = row_steps[0]()  # compiled: the CompiledKernel, with the cubin's registers and spills
            except Exception as error:  # a shape that cannot compile, launch or match is a result: the rest run on
                failures.append(dict(dtype=DTYPE_NAMES[config.param_dtype], block=shape.block, warps=shape.warps,
                                     error=f"{type(error).__name__}: {error}"))
                print(f"{label}: {failures[-1]['error']}", flush=True)
                continue
            usage = (getattr(compiled, "n_regs", None), getattr(compiled, "n_spills", None))
            rows.append((config, shape, usage))
            steps.append(row_steps)
            print(f"{label}: matches the shipped shape; registers, spills: {usage}", flush=True)
    probes = [measure_bandwidth(device)]
    measurements = time_interleaved(steps, device, warmup_rounds=2, repeats=args.repeats)
    del steps
    probes.append(measure_bandwidth(device))
    best = best_per_probe(probes)
    bandwidth = reference_bandwidth(best)
    copy = next(p for p in best if p.name == "copy")

    records = []
    for (config, shape, (registers, spills)), measurement in zip(rows, measurements, strict=True):
        timed = timed_row(measurement, step_traffic(config).total, args.numel, bandwidth.gbps)
        records.append(dict(
            dtype=DTYPE_NAMES[config.param_dtype], block=shape.block, warps=shape.warps, shipped=shape == shipped,
            registers=registers, spills=spills, **timed, percent_of_copy=100 * timed["gbps"] / copy.gbps,
        ))

    environment = describe(device)
    title = (f"one tensor of {format_count(args.numel)} elements, {environment['device_name']}, triton "
             f"{triton.__version__}, torch {environment['torch']}{', interpreted' if interpret else ''}; "
             f"copy {copy.gbps:.0f} GB/s, 100% = {bandwidth.name} probe, {bandwidth.gbps:.0f} GB/s")
    lines = [f"# Triton flat kernel launch shapes: {title}", "",
             "| params and state | BLOCK | warps | registers | spills | median ms | p10-p90 ms | GB/s | % of copy | "
             "% of bandwidth |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in records:
        mark = " (shipped)" if r["shipped"] else ""
        registers, spills = ("-" if r[key] is None else r[key] for key in ("registers", "spills"))
        lines.append(
            f"| {r['dtype']}{mark} | {r['block']} | {r['warps']} | {registers} | {spills} | {r['median_ms']:.3f} | "
            f"{r['p10_ms']:.3f}-{r['p90_ms']:.3f} | {r['gbps']:.0f} | {r['percent_of_copy']:.0f}% | "
            f"{r['percent_of_bandwidth']:.0f}% |"
        )
    for f in failures:
        lines.append(f"- {f['dtype']} BLOCK={f['block']} warps={f['warps']} not timed: {f['error']}")
    table = "\n".join(lines)
    record = dict(environment=environment, numel=args.numel, repeats=args.repeats, interpreted=interpret,
                  copy_gbps=copy.gbps, bandwidth=dict(probe=bandwidth.name, gbps=bandwidth.gbps), rows=records,
                  failures=failures)
    write_table_and_record(args.out, "triton_launch_sweep", table, record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
