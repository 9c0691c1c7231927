"""Peak memory and step time of an MLP trained with the ordinary step and with step_in_backward (issue 14).

    python bench/step_in_backward.py [--width 3584] [--layers 16] [--steps 4] [--out bench/results]

Trains the same fp32 MLP (16 square layers of 3584 with biases: 205.5 M params, 0.82 GB of gradients) from
the same seed on the same batch, on the CPU, once with ``Adadelta(...)`` and once with
``Adadelta(..., step_in_backward=True)``, each in a fresh subprocess, so each peak is its own. A step is
forward, backward, ``step()`` and ``zero_grad()``; the first step also creates the state, so it is reported
apart from the median of the others. The peak is ``ru_maxrss``, measured with ``MALLOC_MMAP_THRESHOLD_=65536``:
glibc then gives every freed tensor back to the system at once (its adaptive threshold would otherwise keep
freed blocks of up to 32 MiB in the heap, where they still count as resident). The params are compared by a
SHA-256 of their bytes after the last step. The claim checked: the peak drops by at least 80 % of the
gradient bytes (a layer's gradient is 1/16 of them, so 94 % is the most to expect), and the params are bit
for bit the same; the script exits with 1 if not. Writes ``step_in_backward.json`` and ``.md`` under
``--out``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from adadelta_fused import Adadelta
from adadelta_fused.bench.environment import describe
from adadelta_fused.bench.report import write_table_and_record

MODES = ("ordinary", "step_in_backward")
REQUIRED_DROP = 0.80  # of the gradient bytes (issue 14)
BATCH = 8


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def train(mode: str, width: int, layers: int, steps: int) -> dict:
    """One mode's run, in this process: the numbers, and the hash of the params after the last step."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(*(torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.Tanh())
                                  for _ in range(layers)))
    x = torch.randn(BATCH, width)
    optimizer = Adadelta(model.parameters(), lr=0.5, step_in_backward=mode == "step_in_backward")
    rss_before_training = peak_rss_bytes()
    step_seconds = []
    for _ in range(steps):
        start = time.perf_counter()
        model(x).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
        step_seconds.append(time.perf_counter() - start)
    peak = peak_rss_bytes()
    digest = hashlib.sha256()
    for p in model.parameters():
        digest.update(p.detach().numpy().data)
    return dict(
        mode=mode,
        params=sum(p.numel() for p in model.parameters()),
        grad_bytes=sum(p.numel() * p.element_size() for p in model.parameters()),
        peak_rss_bytes=peak,
        peak_rss_before_training_bytes=rss_before_training,
        first_step_s=step_seconds[0],
        median_step_s=statistics.median(step_seconds[1:]),
        step_s=step_seconds,
        params_sha256=digest.hexdigest(),
    )


def run_fresh(mode: str, args) -> dict:
    """``train`` in a new interpreter, so that no earlier allocation raises this mode's peak."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    command = [sys.executable, __file__, "--child", mode, "--width", str(args.width), "--layers", str(args.layers),
               "--steps", str(args.steps)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def report(runs: dict[str, dict], environment: dict) -> tuple[str, dict]:
    ordinary, in_backward = runs["ordinary"], runs["step_in_backward"]
    grad_bytes = ordinary["grad_bytes"]
    drop = ordinary["peak_rss_bytes"] - in_backward["peak_rss_bytes"]
    summary = dict(
        grad_bytes=grad_bytes,
        peak_drop_bytes=drop,
        peak_drop_of_grad_bytes=drop / grad_bytes,
        required_drop_of_grad_bytes=REQUIRED_DROP,
        bit_identical=ordinary["params_sha256"] == in_backward["params_sha256"],
    )
    gb = 1e9
    lines = [
        f"# step_in_backward: {ordinary['params'] / 1e6:.1f} M fp32 params ({grad_bytes / gb:.2f} GB of gradients), "
        f"{len(ordinary['step_s'])} steps, batch {BATCH}, {environment['cpu_model']}, "
        f"{environment['torch_threads']} threads",
        "",
        "| mode | peak RSS GB | RSS before training GB | first step s | median later step s | params SHA-256 |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for run in (ordinary, in_backward):
        lines.append(f"| {run['mode']} | {run['peak_rss_bytes'] / gb:.3f} | "
                     f"{run['peak_rss_before_training_bytes'] / gb:.3f} | {run['first_step_s']:.2f} | "
                     f"{run['median_step_s']:.2f} | {run['params_sha256'][:16]} |")
    lines += [
        "",
        f"Peak drop: {drop / gb:.3f} GB = {100 * summary['peak_drop_of_grad_bytes']:.1f} % of the gradient bytes "
        f"(required: at least {100 * REQUIRED_DROP:.0f} %). Params bit for bit identical after the last step: "
        f"{'yes' if summary['bit_identical'] else 'NO'}.",
        "",
        f"torch {environment['torch']}, triton {environment['triton']}, git {environment['git']}; "
        f"{environment['cpu_cores']} cores, 1-minute load average {environment['load_average_1min']['before']:.1f} "
        f"before and {environment['load_average_1min']['after']:.1f} after.",
    ]
    return "\n".join(lines), summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=3584)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(train(args.child, args.width, args.layers, args.steps)))
        return 0

    load_before = os.getloadavg()[0]
    runs = {mode: run_fresh(mode, args) for mode in MODES}
    environment = describe(torch.device("cpu"))
    # The machine is shared: a 1-minute load above its core count means the step times include waiting.
    environment["load_average_1min"] = dict(before=load_before, after=os.getloadavg()[0])
    table, summary = report(runs, environment)
    record = dict(environment=environment, width=args.width, layers=args.layers, steps=args.steps, batch=BATCH,
                  malloc_mmap_threshold=65536, runs=runs, **summary)
    write_table_and_record(args.out, "step_in_backward", table, record)
    passed = summary["bit_identical"] and summary["peak_drop_of_grad_bytes"] >= REQUIRED_DROP
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
