"""``python -m adadelta_fused.bench`` (also ``adadelta-fused-bench``): how fast is one Adadelta step here,
against torch's own, and how close to this device's memory bandwidth?

Defaults: the default device (CUDA if present, else CPU), fp32, 1 Mi and 32 Mi elements as one tensor and
as 4096 tensors, then the host-overhead case (4096 params of 256 elements against one param of 1 Mi: host
microseconds per param, ``host_overhead``); about two minutes on a 2-core CPU, the case alone about one.
``--full`` sweeps more sizes and tensor counts. ``--host-overhead-only`` times the host-overhead case alone.
``--traffic`` prints the byte and launch model and times nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from ..contract import LOW_PRECISION
from . import implementations as impls
from .cases import DEFAULT_SIZES, DEFAULT_TENSORS, FULL_SIZES, FULL_TENSORS, Gi, parse_count, sweep
from .environment import default_device
from .host_overhead import DEFAULT_HOST_CASE, HostCase, parse_host_case
from .report import format_table, format_traffic, results_stem, write_csv, write_host_csv, write_json, write_plot
from .sweep import SweepOptions, progress_items, run_sweep
from .traffic import DTYPES_BY_NAME, StepConfig, all_configs

DEFAULT_REPEATS = 7
DEFAULT_BANDWIDTH = 3.0e12  # an H100's measured copy bandwidth (issue 4), in bytes per second
DEFAULT_TRAFFIC_NUMEL = 1 * Gi


def _count(text: str) -> int:
    try:
        return parse_count(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _host_case(text: str) -> HostCase | None:
    if text == "off":
        return None
    try:
        return parse_host_case(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _bandwidth(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid bandwidth {text!r} (bytes per second, e.g. 3.0e12)") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"bandwidth must be a positive number of bytes per second, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m adadelta_fused.bench",
        description="Time one Adadelta step (our backends and torch's) against this device's measured memory "
        "bandwidth; write a table, CSV, JSON and a PNG plot.",
        epilog="examples:\n"
        "  python -m adadelta_fused.bench                    # the defaults: about two minutes on 2 CPU cores\n"
        "  python -m adadelta_fused.bench --sizes 32Mi --tensors 1 4096 --compile-all\n"
        "  python -m adadelta_fused.bench --full --no-compile\n"
        "  python -m adadelta_fused.bench --host-overhead-only --host-overhead 4096x256\n"
        "  python -m adadelta_fused.bench --dtype bf16 --state-dtype fp32 --master-weights\n"
        "  python -m adadelta_fused.bench --traffic --bandwidth 3.0e12 --numel 1Gi",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if available, else cpu)")
    dtypes = list(DTYPES_BY_NAME)
    parser.add_argument("--dtype", choices=dtypes, help="param and grad dtype (default fp32; --traffic: all)")
    parser.add_argument("--state-dtype", choices=dtypes, help="accumulator dtype (default: the param dtype)")
    parser.add_argument("--master-weights", action="store_true", help="fp32 master copy of bf16/fp16 params")
    parser.add_argument("--sizes", type=_count, nargs="+", metavar="N",
                        help="total elements per step, e.g. 1Mi 32Mi (default: 1Mi 32Mi; on CUDA also 256Mi)")
    parser.add_argument("--tensors", type=_positive_int, nargs="+", metavar="N",
                        help="tensor counts each size is split into (default: 1 4096)")
    parser.add_argument("--backends", nargs="+", choices=impls.IMPLEMENTATION_NAMES, metavar="NAME",
                        help=f"what to time, from: {', '.join(impls.IMPLEMENTATION_NAMES)} "
                        "(default: every available backend of ours and torch's baselines)")
    parser.add_argument("--repeats", type=_positive_int, default=DEFAULT_REPEATS,
                        help=f"timed samples per row (default {DEFAULT_REPEATS})")
    parser.add_argument("--warmup", type=_positive_int, default=1,
                        help="untimed rounds over all rotated parameter sets before timing (default 1)")
    parser.add_argument("--threads", type=_positive_int,
                        help="CPU threads for torch and our CPU kernel (default: torch's, usually one per core)")
    parser.add_argument("--out", type=Path, default=Path("bench/results"),
                        help="directory for the CSV, JSON and PNG (default: bench/results)")
    parser.add_argument("--full", action="store_true", help="sweep 64Ki..64Mi (CUDA: ..1Gi) and 1, 64, 4096 tensors")
    compile_group = parser.add_mutually_exclusive_group()
    compile_group.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    compile_group.add_argument("--compile-all", action="store_true",
                               help=f"compile cases of more than {impls.COMPILE_MAX_TENSORS} tensors too (minutes each)")
    parser.add_argument("--host-overhead", type=_host_case, default=DEFAULT_HOST_CASE, metavar="PxN",
                        help="the host-overhead case: P params of N elements against one param of P*N, reported as "
                        "host us per param; 'off' skips it (default 4096x256)")
    parser.add_argument("--host-overhead-only", action="store_true",
                        help="time the host-overhead case alone, without the bandwidth sweep")
    parser.add_argument("--host-overhead-sets", type=_positive_int, metavar="K",
                        help="parameter sets the host-overhead case rotates over (default: enough to span 4x the "
                        "last-level cache, at most 16 of 4096 params, every param's data and metadata evicted; 1: "
                        "the same params every step, each implementation timed alone, as a loop over one model "
                        "finds their metadata)")
    parser.add_argument("--traffic", action="store_true",
                        help="print bytes per element and launches per step for each configuration; time nothing")
    parser.add_argument("--bandwidth", type=_bandwidth, metavar="B/S",
                        help=f"with --traffic: bandwidth for the predicted step time (default {DEFAULT_BANDWIDTH:.1e})")
    parser.add_argument("--numel", type=_count, metavar="N",
                        help="with --traffic: elements per step for the prediction (default 1Gi)")
    return parser


def _device(parser: argparse.ArgumentParser, text: str | None) -> torch.device:
    if text is None:
        return default_device()
    try:
        device = torch.device(text)
    except RuntimeError:
        parser.error(f"--device: invalid device {text!r} (expected cpu, cuda or cuda:N)")
    if device.type not in ("cpu", "cuda"):
        parser.error(f"--device: {text!r} is not supported (expected cpu, cuda or cuda:N)")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {text}: CUDA is not available here")
    return device


def _config(parser: argparse.ArgumentParser, args: argparse.Namespace) -> StepConfig:
    param = DTYPES_BY_NAME[args.dtype or "fp32"]
    state = DTYPES_BY_NAME[args.state_dtype] if args.state_dtype else None
    try:
        return StepConfig(param, state, args.master_weights)
    except ValueError as error:
        flag = "--master-weights" if args.master_weights and state is None else "--state-dtype"
        parser.error(f"{flag}: {error}")


def _implementations(
    parser: argparse.ArgumentParser, args: argparse.Namespace, device: torch.device, config: StepConfig
) -> tuple[str, ...]:
    if args.backends:
        if args.no_compile and impls.TORCH_COMPILE in args.backends:
            parser.error("--backends names torch-compile but --no-compile is given")
        for name in args.backends:
            reason = impls.unavailable_reason(name, device)
            if reason:
                parser.error(f"--backends {name}: {reason}")
        return tuple(dict.fromkeys(args.backends))
    ours = [name for name in impls.backends.BACKEND_NAMES if impls.unavailable_reason(name, device) is None]
    torch_rows = [impls.TORCH_FORLOOP, impls.TORCH_FOREACH]
    if not args.no_compile:
        torch_rows.append(impls.TORCH_COMPILE)
    # Fused AdamW is the same-bytes yardstick on a GPU, and on a CPU for bf16 and fp16 (issue 17); a CPU's fp32
    # rows have torch's Adadelta steps for that.
    if device.type == "cuda" or config.param_dtype in LOW_PRECISION:
        torch_rows.append(impls.TORCH_FUSED_ADAMW)
    return (*ours, *torch_rows)


def _host_implementations(args: argparse.Namespace, config: StepConfig, names: tuple[str, ...]) -> tuple[str, ...]:
    """What the host-overhead case times: the names given, or else the sweep's, each of our backends with
    flatten=True too, and fused AdamW, the same-bytes peer that issue 12 measures against on every device."""
    if args.backends:
        return names
    ours = [name for name in names if name in impls.backends.BACKEND_NAMES]
    # flatten=True keeps its state in the param dtype only (``implementations._ours_flat``).
    flat = [f"{name}{impls.FLAT_SUFFIX}" for name in ours if f"{name}{impls.FLAT_SUFFIX}" in impls.FLAT_NAMES]
    others = [name for name in names if name not in ours]
    return tuple(dict.fromkeys([*ours, *(flat if config.is_torch_layout else []), *others, impls.TORCH_FUSED_ADAMW]))


def _traffic(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if args.dtype:
        _config(parser, args)  # an unsupported combination is a flag error, not an empty table
    param_dtypes = [DTYPES_BY_NAME[args.dtype]] if args.dtype else list(DTYPES_BY_NAME.values())
    configs = [
        c for c in all_configs(param_dtypes)
        if (args.state_dtype is None or c.state_dtype == DTYPES_BY_NAME[args.state_dtype])
        and (not args.master_weights or c.master_weights)
    ]
    if not configs:
        parser.error("--state-dtype/--master-weights: no supported configuration has these options")
    print(format_traffic(
        configs,
        numel=args.numel or DEFAULT_TRAFFIC_NUMEL,
        tensor_counts=args.tensors or DEFAULT_TENSORS,
        bandwidth_bytes_per_s=args.bandwidth or DEFAULT_BANDWIDTH,
    ))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.traffic:
        return _traffic(parser, args)
    for flag, value in (("--bandwidth", args.bandwidth), ("--numel", args.numel)):
        if value is not None:
            parser.error(f"{flag} applies to --traffic only")

    device = _device(parser, args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = _config(parser, args)
    sizes = args.sizes or (FULL_SIZES if args.full else DEFAULT_SIZES)[device.type]
    tensor_counts = args.tensors or (FULL_TENSORS if args.full else DEFAULT_TENSORS)
    if args.host_overhead is None:
        for flag, value in (("--host-overhead-only", args.host_overhead_only),
                            ("--host-overhead-sets", args.host_overhead_sets)):
            if value:
                parser.error(f"{flag}: the host-overhead case is off (--host-overhead off)")
    cases = [] if args.host_overhead_only else sweep(tuple(sizes), tuple(tensor_counts))
    if not cases and not args.host_overhead_only:
        parser.error("--sizes/--tensors: every size is smaller than every tensor count")
    names = _implementations(parser, args, device, config)
    options = SweepOptions(
        device=device,
        config=config,
        cases=tuple(cases),
        implementations=names,
        named=frozenset(args.backends or ()),
        repeats=args.repeats,
        warmup=args.warmup,
        compile_all=args.compile_all,
        host_overhead=args.host_overhead,
        host_implementations=_host_implementations(args, config, names) if args.host_overhead else (),
        host_sets=args.host_overhead_sets,
    )

    # The bar goes to stderr, so stdout holds only the results.
    result = run_sweep(options, tqdm(total=progress_items(options), desc="bench", file=sys.stderr))
    result.metadata["arguments"] = list(sys.argv[1:] if argv is None else argv)
    print(format_table(result))

    args.out.mkdir(parents=True, exist_ok=True)
    stem = results_stem(result, time.strftime("%Y%m%d-%H%M%S"))
    written = [write_json(result, args.out / f"{stem}.json")]
    plot, skipped_because = None, None
    if result.rows:  # a --host-overhead-only run has no sweep to tabulate or plot
        written.append(write_csv(result, args.out / f"{stem}.csv"))
        plot, skipped_because = write_plot(result, args.out / f"{stem}.png")
    if result.host_rows:
        written.append(write_host_csv(result, args.out / f"{stem}-host-overhead.csv"))
    print()
    for path in written + ([plot] if plot else []):
        print(f"wrote {path}")
    if skipped_because:
        print(f"PNG skipped: {skipped_because}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
