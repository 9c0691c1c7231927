"""Sparse-gradient steps on an embedding table (issue 16): ours against torch's SparseAdam and dense Adadelta.

    python bench/sparse_embedding.py [--rows 1048576 4194304] [--width 64] [--touched 16384] [--out bench/results]

A table of ``rows x width`` fp32 gets, each step, a coalesced sparse gradient of ``touched`` distinct rows drawn
afresh (``randperm``, outside the timing), so that rows miss steps as in training (a geometric gap, mean
rows / touched: 64 steps at 1 Mi rows). Timed per step, ``step()`` only:

- ``adadelta_fused`` (this package's CPU kernel) on the sparse gradient, in steady state: 4 x rows / touched
  untimed steps first (256 at 1 Mi rows), so that the rows' step records lag as they would in training;
- ``torch.optim.SparseAdam`` on the same gradients;
- ``torch.optim.Adadelta`` on the densified gradient (densified once, outside the timing).

Each implementation's time is the fastest of ``--repeats`` samples (the machine has 2 cores and other work:
noise only ever slows a sample), with the median beside it. GB/s counts the bytes a lazy step must move: per
touched row, param, square_avg and acc_delta read and written, the gradient row and index read, the row record
read and written; percent of the bandwidth measured in the same run (adadelta_fused.bench.bandwidth).

Accuracy: 100 steps of ours and of torch's dense Adadelta from the same start on the same gradients (first
size only), the largest relative difference of the params (claim: 1e-5) and the share of bit-equal elements.
The decay cost: the op alone on ``touched`` rows whose records lag by k steps, for k = 0, 32, 64 (the exact
bound: k multiplies each) and 65 (one multiply by rho^k). Writes ``sparse_embedding.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import time
from pathlib import Path

import torch

from adadelta_fused import Adadelta
from adadelta_fused.bench.bandwidth import best_per_probe, measure_bandwidth, reference_bandwidth
from adadelta_fused.bench.environment import describe
from adadelta_fused.bench.report import write_table_and_record

CLAIM_VS_DENSE = 50.0
CLAIM_VS_SPARSE_ADAM = 2.0
CLAIM_RELATIVE_ERROR = 1e-5
DECAY_GAPS = (0, 32, 64, 65)


class Gradients:
    """Fresh coalesced sparse gradients of ``touched`` distinct random rows (fixed values, new rows each call)."""

    def __init__(self, rows: int, width: int, touched: int, seed: int) -> None:
        self.rows, self.width, self.touched = rows, width, touched
        self.generator = torch.Generator().manual_seed(seed)
        self.values = torch.randn(touched, width, generator=self.generator)

    def __call__(self) -> torch.Tensor:
        index = torch.randperm(self.rows, generator=self.generator)[: self.touched].sort().values
        return torch.sparse_coo_tensor(index[None], self.values, (self.rows, self.width), is_coalesced=True,
                                       check_invariants=False)


def lazy_step_bytes(touched: int, width: int) -> int:
    """Bytes a lazy step moves: 3 fp32 rows read and written, a gradient row and index read, the int64 row
    record read and written."""
    return touched * (width * 4 * (2 * 3 + 1) + 8 + 2 * 8)


def time_steps(param, opt, grads, count: int) -> list[float]:
    """Seconds of ``count`` steps, each on a gradient made before its timing starts."""
    samples = []
    for _ in range(count):
        param.grad = grads()
        start = time.perf_counter()
        opt.step()
        samples.append(time.perf_counter() - start)
    return samples


def bench_size(rows: int, width: int, touched: int, repeats: int, dense_repeats: int) -> dict:
    grads = Gradients(rows, width, touched, seed=rows)
    results = {}
    start = torch.randn(rows, width, generator=torch.Generator().manual_seed(1))

    param = torch.nn.Parameter(start.clone())
    opt = Adadelta([param], lr=1.0)
    warmup = 4 * rows // touched
    warm = time_steps(param, opt, grads, warmup)
    results["adadelta_fused"] = dict(samples=time_steps(param, opt, grads, repeats), warmup_steps=warmup,
                                     warmup_mean_s=statistics.mean(warm))
    del param, opt
    gc.collect()

    param = torch.nn.Parameter(start.clone())
    opt = torch.optim.SparseAdam([param], lr=1e-3)
    time_steps(param, opt, grads, 3)
    results["torch_sparse_adam"] = dict(samples=time_steps(param, opt, grads, repeats))
    del param, opt
    gc.collect()

    param = torch.nn.Parameter(start.clone())
    opt = torch.optim.Adadelta([param], lr=1.0)
    dense = grads().to_dense()  # densified once: its step costs the same whichever rows are nonzero
    time_steps(param, opt, lambda: dense, 1)
    results["torch_adadelta_dense"] = dict(samples=time_steps(param, opt, lambda: dense, dense_repeats))
    del param, opt, dense
    gc.collect()
    for result in results.values():
        result["best_s"] = min(result["samples"])
        result["median_s"] = statistics.median(result["samples"])
    return results


def accuracy(rows: int, width: int, touched: int, steps: int) -> dict:
    """``steps`` steps of ours on sparse gradients, and of torch's and this package's dense steps on the
    densified ones, from the same start. The claim's relative difference is taken against each element's
    size, floored at 1e-3 (randn params: a value nearer 0 is a cancellation, whose own relative error is
    unbounded); the unfloored one and the norm-relative one are reported beside it."""
    grads = Gradients(rows, width, touched, seed=rows + 7)
    start = torch.randn(rows, width, generator=torch.Generator().manual_seed(2))
    ours, dense, own_dense = (torch.nn.Parameter(start.clone()) for _ in range(3))
    opt = Adadelta([ours], lr=1.0)
    dense_opt, own_opt = torch.optim.Adadelta([dense], lr=1.0), Adadelta([own_dense], lr=1.0)
    for _ in range(steps):
        grad = grads()
        ours.grad = grad
        dense.grad = own_dense.grad = grad.to_dense()
        for o in (opt, dense_opt, own_opt):
            o.step()
        dense.grad = own_dense.grad = None
    want = dense.detach()
    difference = (ours.detach() - want).abs()
    mine, theirs = opt.state_dict()["state"][0], dense_opt.state_dict()["state"][0]
    return dict(
        steps=steps,
        max_relative_param_difference=(difference / want.abs().clamp_min(1e-3)).max().item(),
        max_relative_param_difference_unfloored=(difference / want.abs().clamp_min(1e-30)).max().item(),
        norm_relative_param_difference=(difference.norm() / want.norm()).item(),
        max_abs_param_difference=difference.max().item(),
        bit_equal_param_share=(ours.detach() == want).double().mean().item(),
        bit_equal_to_own_dense_share=(ours.detach() == own_dense.detach()).double().mean().item(),
        max_relative_state_difference=max(
            ((mine[k] - theirs[k]).abs() / theirs[k].abs().clamp_min(1e-30)).max().item()
            for k in ("square_avg", "acc_delta")),
    )


def decay_cost(rows: int, width: int, touched: int, repeats: int) -> dict:
    """The op alone, on ``touched`` rows whose records lag by each gap of DECAY_GAPS."""
    generator = torch.Generator().manual_seed(3)
    param = torch.randn(rows, width, generator=generator)
    square_avg = torch.rand(rows, width, generator=generator)
    acc_delta = torch.rand(rows, width, generator=generator)
    grad = Gradients(rows, width, touched, seed=5)()
    index, values = grad._indices()[0], grad._values()
    step = 1000
    costs = {}
    for gap in DECAY_GAPS:
        row_step = torch.full((rows,), step - 1 - gap, dtype=torch.int64)
        samples = []
        for _ in range(repeats):
            row_step[index] = step - 1 - gap  # (outside the timing)
            start = time.perf_counter()
            torch.ops.adadelta_fused.sparse_adadelta_(param, square_avg, acc_delta, row_step, index, values, 1.0,
                                                      None, 0.9, 1e-6, False, None, None, step)
            samples.append(time.perf_counter() - start)
        costs[str(gap)] = dict(best_s=min(samples), median_s=statistics.median(samples))
    return costs


def report(sizes: dict, width: int, touched: int, bandwidth, accuracy_result: dict, costs: dict,
           environment: dict) -> tuple[str, dict]:
    lines = [
        f"# Sparse embedding step: fp32 tables x {width}, {touched} random rows a step (coalesced), "
        f"{environment['cpu_model']}, {environment['torch_threads']} threads",
        "",
        "| rows | implementation | best ms/step | median ms/step | GB/s (lazy bytes) | % of measured bandwidth | "
        "ours faster by |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    summary = {}
    step_bytes = lazy_step_bytes(touched, width)
    for rows, results in sizes.items():
        ours = results["adadelta_fused"]["best_s"]
        for name, result in results.items():
            gbps = step_bytes / result["best_s"] / 1e9
            speedup = result["best_s"] / ours
            lines.append(f"| {rows} | {name} | {1e3 * result['best_s']:.2f} | {1e3 * result['median_s']:.2f} | "
                         f"{gbps:.1f} | {100 * gbps / bandwidth.gbps:.0f} | "
                         f"{'' if name == 'adadelta_fused' else f'{speedup:.1f}x'} |")
        summary[rows] = dict(
            vs_dense=results["torch_adadelta_dense"]["best_s"] / ours,
            vs_sparse_adam=results["torch_sparse_adam"]["best_s"] / ours,
        )
    first = next(iter(summary))
    passed = dict(
        vs_dense=summary[first]["vs_dense"] >= CLAIM_VS_DENSE,
        vs_sparse_adam=summary[first]["vs_sparse_adam"] >= CLAIM_VS_SPARSE_ADAM,
        accuracy=accuracy_result["max_relative_param_difference"] <= CLAIM_RELATIVE_ERROR,
    )
    lines += [
        "",
        f"Claims at {first} rows: {summary[first]['vs_dense']:.0f}x torch's dense Adadelta (claim >= "
        f"{CLAIM_VS_DENSE:.0f}x: {'met' if passed['vs_dense'] else 'NOT met'}), "
        f"{summary[first]['vs_sparse_adam']:.1f}x SparseAdam (claim >= {CLAIM_VS_SPARSE_ADAM:.0f}x: "
        f"{'met' if passed['vs_sparse_adam'] else 'NOT met'}).",
        "",
        f"Accuracy after {accuracy_result['steps']} steps at {first} rows against torch's dense Adadelta on the "
        f"densified gradients: largest relative param difference {accuracy_result['max_relative_param_difference']:.2e}"
        f" (element by element, against max(|param|, 1e-3); claim <= {CLAIM_RELATIVE_ERROR:.0e}: "
        f"{'met' if passed['accuracy'] else 'NOT met'}; unfloored "
        f"{accuracy_result['max_relative_param_difference_unfloored']:.2e}, largest absolute "
        f"{accuracy_result['max_abs_param_difference']:.2e}, {accuracy_result['norm_relative_param_difference']:.2e} "
        f"in norm), {100 * accuracy_result['bit_equal_param_share']:.3f} % of the param elements bit for bit "
        f"torch's and {100 * accuracy_result['bit_equal_to_own_dense_share']:.3f} % this package's dense step's; "
        f"state (after state_dict's catch-up) within {accuracy_result['max_relative_state_difference']:.2e}.",
        "",
        f"Decay cost, the op alone on {touched} rows at {first} rows whose records lag by k steps "
        "(best ms): " + ", ".join(f"k={gap}: {1e3 * cost['best_s']:.2f}" for gap, cost in costs.items())
        + " (k <= 64: k exact multiplies; k = 65: one multiply by rho^k).",
        "",
        f"Bandwidth line: {bandwidth.name} ({bandwidth.formula}) {bandwidth.gbps:.1f} GB/s. "
        f"torch {environment['torch']}, triton {environment['triton']}, git {environment['git']}; "
        f"{environment['cpu_cores']} cores, 1-minute load average {environment['load_average_1min']['before']:.1f} "
        f"before and {environment['load_average_1min']['after']:.1f} after.",
    ]
    return "\n".join(lines), dict(speedups=summary, passed=passed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[2**20, 2**22])
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--touched", type=int, default=2**14)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--dense-repeats", type=int, default=5)
    parser.add_argument("--accuracy-steps", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)

    load_before = os.getloadavg()[0]
    device = torch.device("cpu")
    probes = measure_bandwidth(device)
    sizes = {rows: bench_size(rows, args.width, args.touched, args.repeats, args.dense_repeats) for rows in args.rows}
    accuracy_result = accuracy(args.rows[0], args.width, args.touched, args.accuracy_steps)
    costs = decay_cost(args.rows[0], args.width, args.touched, args.repeats)
    probes = best_per_probe([probes, measure_bandwidth(device)])  # before and after: the best of each probe
    bandwidth = reference_bandwidth(probes)
    environment = describe(device)
    environment["load_average_1min"] = dict(before=load_before, after=os.getloadavg()[0])
    table, summary = report(sizes, args.width, args.touched, bandwidth, accuracy_result, costs, environment)
    record = dict(environment=environment, width=args.width, touched=args.touched, repeats=args.repeats,
                  bandwidth=dict(name=bandwidth.name, gbps=bandwidth.gbps), sizes=sizes, accuracy=accuracy_result,
                  decay_cost=costs, **summary)
    write_table_and_record(args.out, "sparse_embedding", table, record)
    return 0 if all(summary["passed"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
