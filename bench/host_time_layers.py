"""Where a step's host time goes: each layer between ``optimizer.step()`` and the kernel, timed on its own.

    python bench/host_time_layers.py [--device cuda] [--numel 1Ki] [--calls 200] [--repeats 7] [--out bench/results]

From the bottom up: one torch op for scale, the bare Triton launch, the body of the Triton op without torch's
dispatcher, the op through it, the optimizer step; the C++ op and its steps beside them, and torch's own
optimizers. Over a small tensor (the default 1 Ki: its kernels take less time than their launches) the host
µs a call is that layer's cost to the host; over a large one (``--numel 32Mi``) the wall µs a call is the
step's steady state in a loop. Each layer also runs once under ``torch.cuda.set_sync_debug_mode("error")``,
to see whether it waits for the GPU. ``--profile LINES`` adds the Triton step's cProfile.

On an H200 (2026-12-04, bench/results/gpu-h200-20261204b/) the bench read a Triton step over one 32 Mi fp32
tensor at 0.45-0.53 ms, while its kernel alone took 0.237 ms (bench/triton_launch_sweep.py). Here the step took
0.239 ms a call in a loop, with 0.20 ms of host time, less than the kernel's: the bench's samples had timed
the host's latency to issue their first step (fixed in adadelta_fused/bench/timing.py).

Writes ``host_time_layers.md`` and ``.json`` under ``--out``. On the CPU (no GPU here) the Triton layers run in
Triton's interpreter, which checks the script, not the times; with ``--stub-kernels`` every Triton launch is a
no-op instead, so the Triton layers' host time above the launch can be read on a machine without a GPU.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import statistics
import time
import types
from pathlib import Path

import torch

from adadelta_fused import Adadelta, triton_interpreter, triton_launch
from adadelta_fused.backends import cpp as cpp_backend
from adadelta_fused.bench.cases import parse_count
from adadelta_fused.bench.environment import describe
from adadelta_fused.bench.report import write_table_and_record
from adadelta_fused.bench.timing import synchronize
from adadelta_fused.contract import StepScalars, op_arguments

SCALARS = StepScalars(lr=0.5, rho=0.9, eps=1e-6, weight_decay=0.0)


def dense_group(numel: int, device: torch.device):
    """params, grads, square_avgs, acc_deltas of one fp32 tensor, with random values."""
    return [[torch.rand(numel, device=device) + 0.5] for _ in range(4)]


def layers(numel: int, device: torch.device) -> dict[str, callable]:
    """Each layer's call, over its own tensors of ``numel`` elements."""
    interpret = device.type == "cpu"
    from adadelta_fused import triton_op  # registers the Triton op

    def triton_launch_call():
        params, grads, square_avgs, acc_deltas = dense_group(numel, device)
        (launch,) = triton_launch.planned_launches(params, grads, square_avgs, acc_deltas, [], SCALARS)
        kernel = getattr(triton_interpreter.kernels(interpret), launch.kernel)[launch.grid]

        def call():
            with triton_interpreter.launching(interpret):
                kernel(**launch.arguments)

        return call

    def op_call(op):
        arguments = op_arguments(*dense_group(numel, device), [], SCALARS)
        return lambda: op(*arguments)

    def backend_call(step_):
        group = dense_group(numel, device)
        return lambda: step_(*group, [], SCALARS)

    def optimizer_step(backend: str | None, factory=None):
        param = torch.nn.Parameter(torch.rand(numel, device=device))
        param.grad = torch.rand_like(param)
        optimizers = []

        def step():  # built on first call: a backend missing here fails its row only
            if not optimizers:
                optimizers.append(factory([param]) if factory else Adadelta([param], backend=backend, flatten=True))
            optimizers[0].step()

        return step

    x = torch.rand(numel, device=device)
    return {
        "torch add_ (one kernel, for scale)": lambda: x.add_(1.0),
        "Triton: bare launch, kernel[grid](...)": triton_launch_call(),
        "Triton: op body, no dispatcher": op_call(triton_op.triton_adadelta_._init_fn),
        "Triton: op, torch.ops...triton_adadelta_": op_call(torch.ops.adadelta_fused.triton_adadelta_.default),
        "Triton: Adadelta(flatten=True).step()": optimizer_step("triton"),
        "C++: op, torch.ops...adadelta_": op_call(torch.ops.adadelta_fused.adadelta_.default),
        "C++: backend step_ (unboxed)": backend_call(cpp_backend.step_),
        "C++: Adadelta(flatten=True).step()": optimizer_step("cpp"),
        "torch AdamW(fused=True).step()": optimizer_step(None, lambda p: torch.optim.AdamW(p, fused=True)),
        "torch Adadelta(foreach=True).step()": optimizer_step(None, lambda p: torch.optim.Adadelta(p, foreach=True)),
    }


def stub_interpreted_kernels() -> None:
    """Every interpreted launch of the dense Triton kernels does nothing (the compiled module, which the op's
    tracing branch wraps, and the other kernel modules are left alone)."""
    class Stub:
        def __getitem__(self, grid):
            return lambda **arguments: None

    kernels = triton_interpreter.kernels
    stubs = types.SimpleNamespace(adadelta_flat_kernel=Stub(), adadelta_multi_tensor_kernel=Stub())

    def stubbed(interpret: bool, name: str = triton_interpreter.KERNEL_MODULE):
        return stubs if interpret and name == triton_interpreter.KERNEL_MODULE else kernels(interpret, name)

    triton_interpreter.kernels = stubbed


def host_seconds(call, device: torch.device, calls: int, repeats: int) -> tuple[float, float]:
    """(median host seconds a call takes to return, median wall seconds a call takes including the GPU's work)."""
    for _ in range(10):
        call()
    host, wall = [], []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(calls):
            call()
        issued = time.perf_counter()
        synchronize(device)
        done = time.perf_counter()
        host.append((issued - start) / calls)
        wall.append((done - start) / calls)
    return statistics.median(host), statistics.median(wall)


def waits_for_the_gpu(call, device: torch.device) -> str:
    if device.type != "cuda":
        return "-"
    torch.cuda.set_sync_debug_mode("error")
    try:
        call()
    except RuntimeError as error:
        return f"yes ({str(error).splitlines()[0][:60]})"
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return "no"


def profile(call, calls: int, lines: int) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        call()
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(lines)
    return text.getvalue()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--numel", type=parse_count, default=1024)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--profile", type=int, default=0, metavar="LINES", help="cProfile lines of the Triton step")
    parser.add_argument("--stub-kernels", action="store_true",
                        help="CPU only: Triton launches do nothing (host time without a GPU)")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.stub_kernels and device.type != "cpu":
        parser.error("--stub-kernels is for --device cpu")
    if device.type == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"
    if args.stub_kernels:
        stub_interpreted_kernels()
    rows = []
    for name, call in layers(args.numel, device).items():
        try:
            host, wall = host_seconds(call, device, args.calls, args.repeats)
        except Exception as error:  # a backend missing here (no extension built): the other layers still run
            rows.append(dict(layer=name, host_us=float("nan"), wall_us=float("nan"), syncs=f"failed: {error}"[:80]))
            continue
        rows.append(dict(layer=name, host_us=host * 1e6, wall_us=wall * 1e6, syncs=waits_for_the_gpu(call, device)))
    meta = describe(device)
    lines = [
        f"# Host time by layer: one fp32 tensor of {args.numel} elements, {meta['device_name']}, "
        f"torch {meta['torch']}, triton {meta['triton']}, python {meta['python']}"
        + (" (Triton launches stubbed out)" if args.stub_kernels else ""),
        "",
        f"Median of {args.repeats} runs of {args.calls} calls: host = until the last call returns, "
        "wall = until the GPU is done too.",
        "",
        "| layer | host µs/call | wall µs/call | waits for the GPU |",
        "| --- | ---: | ---: | --- |",
        *(f"| {r['layer']} | {r['host_us']:.1f} | {r['wall_us']:.1f} | {r['syncs']} |" for r in rows),
    ]
    record = dict(meta=meta, numel=args.numel, calls=args.calls, repeats=args.repeats,
                  stub_kernels=args.stub_kernels, rows=rows)
    if args.profile:
        text = profile(layers(args.numel, device)["Triton: Adadelta(flatten=True).step()"], args.calls, args.profile)
        lines += ["", "## cProfile of the Triton step", "", "```", text.strip(), "```"]
        record["profile"] = text
    write_table_and_record(args.out, "host_time_layers", "\n".join(lines), record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
