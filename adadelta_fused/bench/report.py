"""The sweep's outputs: the tables on stdout (the sweep's, then the host-overhead case's), CSV and JSON results
files, and the GB/s-vs-size plot. Also the ``--traffic`` table, which needs no run at all."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from pathlib import Path

import torch

from . import implementations as impls
from .bandwidth import PROBE_REPEATS
from .cases import format_count
from .host_overhead import DEFINITION, HostRow
from .sweep import Row, SweepResult
from .traffic import (
    DTYPE_NAMES,
    StepConfig,
    extension_launches,
    predicted_step_seconds,
    step_traffic,
    torch_foreach_launches,
    torch_foreach_passes,
    torch_foreach_traffic,
)

PNG_SKIPPED_HINT = "matplotlib is not installed (pip install 'adadelta_fused[bench]')"


def timed_row(measurement, bytes_per_element: float, elements: int, bandwidth_gbps: float) -> dict[str, float]:
    """What a bench/ script records of one timed row: median and p10/p90 ms, the bytes per element it must move,
    the GB/s that makes at the median, and that as a percent of the run's reference bandwidth."""
    gbps = bytes_per_element * elements / measurement.median / 1e9
    return dict(median_ms=measurement.median * 1e3, p10_ms=measurement.p10 * 1e3, p90_ms=measurement.p90 * 1e3,
                bytes_per_element=bytes_per_element, gbps=gbps, percent_of_bandwidth=100 * gbps / bandwidth_gbps)


def write_table_and_record(out: Path, stem: str, table: str, record: dict) -> None:
    """A bench/ script's results: prints the markdown ``table``, and writes it to ``out``/``stem``.md and its
    ``record`` to ``stem``.json (values JSON cannot hold, such as dtypes, as their str)."""
    print(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.md").write_text(table + "\n")
    (out / f"{stem}.json").write_text(json.dumps(record, indent=1, default=str) + "\n")


def _milliseconds(seconds: float) -> str:
    return f"{seconds * 1e3:.3f}" if seconds < 1e-2 else f"{seconds * 1e3:.1f}"


def _speedup(row: Row, baseline: str) -> str:
    value = row.speedups.get(baseline)
    return "-" if value is None else f"{value:.2f}x"


def _header(result: SweepResult) -> list[str]:
    meta = result.metadata
    git = meta.get("git") or {}
    revision = f"git {str(git.get('sha', ''))[:10]}{' (dirty)' if git.get('dirty') else ''}" if git else "no git checkout"
    config = result.options.config
    useful = f"useful bytes {step_traffic(config).total} B/element"
    if not config.is_torch_layout:
        useful += f" (torch's rows: {step_traffic(StepConfig(config.param_dtype)).total}, state in the param dtype)"
    extension = ", ".join(f"{key} {value}" for key, value in dict(meta["extension"]).items())
    probes = ", ".join(f"{p.name} ({p.formula}) {p.gbps:.1f} GB/s" for p in result.probes)
    reference = result.reference
    return [
        f"device: {meta['device']} ({meta['device_name']}), {meta['cpu_cores']} cores, "
        f"{meta['torch_threads']} torch threads",
        f"versions: torch {meta['torch']}, triton {meta['triton']}, python {meta['python']}, {revision}; "
        f"extension: {extension}",
        f"step: {config.label()}; {useful}",
        f"bandwidth: {probes}; 100% = {reference.name} {reference.gbps:.1f} GB/s "
        f"(best of {result.probe_rounds} rounds of {PROBE_REPEATS} over {format_count(reference.buffer_bytes)}B buffers)",
    ]


def format_table(result: SweepResult) -> str:
    lines = _header(result)
    if result.rows or result.skipped:
        lines += _sweep_table(result)
    if result.options.host_overhead is not None:
        lines += _host_table(result)
    return "\n".join(lines)


def _aligned(columns: list[str], body: list[list[str]], left_aligned: set[int]) -> list[str]:
    widths = [max(len(c), *(len(r[i]) for r in body)) if body else len(c) for i, c in enumerate(columns)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i in left_aligned else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return [line(columns), line(["-" * w for w in widths])] + [line(r) for r in body]


def _sweep_table(result: SweepResult) -> list[str]:
    baselines = [b for b in impls.BASELINES if any(b in row.speedups for row in result.rows)]
    columns = ["size", "tensors", "implementation", "median ms", "p10-p90 ms", "GB/s", "% bw"]
    columns += [f"vs {b.removeprefix('torch-')}" for b in baselines]
    cache_bytes = int(result.metadata["last_level_cache_bytes"])
    body = []
    for row in result.rows:
        m = row.measurement
        cached = "*" if row.rotation_bytes < 2 * cache_bytes else ""
        body.append(
            [
                format_count(row.case.numel) + cached,
                str(row.case.tensors),
                row.implementation,
                _milliseconds(m.median),
                f"{_milliseconds(m.p10)}-{_milliseconds(m.p90)}",
                f"{row.gbps:.1f}",
                f"{result.percent_of_bandwidth(row):.0f}%",
                *(_speedup(row, b) for b in baselines),
            ]
        )
    return [""] + _aligned(columns, body, left_aligned={2}) + _footnotes(result, cache_bytes)


def _host_table(result: SweepResult) -> list[str]:
    host = result.options.host_overhead
    many, one = host.many.label(), host.one.label()
    columns = ["implementation", f"{many} ms", "p10-p90 ms", f"{one} ms", "p10-p90 ms", "host us/param"]
    body = [
        [
            row.implementation,
            _milliseconds(row.many.median),
            f"{_milliseconds(row.many.p10)}-{_milliseconds(row.many.p90)}",
            _milliseconds(row.one.median),
            f"{_milliseconds(row.one.p10)}-{_milliseconds(row.one.p90)}",
            f"{row.seconds_per_param * 1e6:.3f}",
        ]
        for row in result.host_rows
    ]
    sets = ""
    if result.host_rows:
        count = result.host_rows[0].rotation_sets
        sets = (", the same params every step, each implementation timed alone" if count == 1
                else f", rotating {count} parameter sets")
    lines = ["", f"host overhead: {host.label()} elements against one param of {format_count(host.one.numel)}{sets}"]
    lines += _aligned(columns, body, left_aligned={0})
    lines += [""] + [f"skipped {skip.implementation}: {skip.reason}" for skip in result.host_skipped]
    lines.append(f"{DEFINITION} = ({many} - {one}) / {host.params - 1}; the two steps of each implementation took "
                 "their samples in the same interleaved round")
    return lines


def _footnotes(result: SweepResult, cache_bytes: int) -> list[str]:
    notes = []
    compiled = [r for r in result.rows if r.compile_seconds is not None]
    if compiled:
        times = "; ".join(f"{r.case.label()}: {r.compile_seconds:.1f} s" for r in compiled)
        notes.append(
            f"compile time of torch-compile (first call less a steady step), not in its median: {times} "
            "(with inductor's on-disk caches as found: a first-ever compile takes longer)"
        )
    if any(result.percent_of_bandwidth(r) > 100 for r in result.rows):
        notes.append(
            "rows above 100% moved their useful bytes faster than the probes did: the probes may have run "
            "while the machine was busy; rerun when it is quiet"
        )
    if any(r.rotation_bytes < 2 * cache_bytes for r in result.rows):
        notes.append(
            f"* the rotation of parameter sets spans less than 2x the {format_count(cache_bytes)}B last-level cache: "
            "some data may be served from cache"
        )
    reasons: dict[tuple[str, str], list[str]] = {}
    for skip in result.skipped:
        reasons.setdefault((skip.implementation, skip.reason), []).append(skip.case.label())
    for (name, reason), cases in reasons.items():
        notes.append(f"skipped {name} at {', '.join(cases)}: {reason}")
    notes.append("GB/s = useful bytes per element x elements / median step time; speedup = baseline median / this median")
    return [""] + notes


# ---- results files ----

def _row_record(row: Row, result: SweepResult) -> dict[str, object]:
    m = row.measurement
    return {
        "numel": row.case.numel,
        "tensors": row.case.tensors,
        "tensor_numel": row.case.tensor_numel,
        "implementation": row.implementation,
        "description": row.description,
        "param_dtype": DTYPE_NAMES[row.config_run.param_dtype],
        "state_dtype": DTYPE_NAMES[row.config_run.state_dtype],
        "master_weights": row.config_run.master_weights,
        "bytes_per_element": row.bytes_per_element,
        "median_s": m.median,
        "p10_s": m.p10,
        "p90_s": m.p90,
        "samples": len(m.per_step_seconds),
        "steps_per_sample": m.steps_per_sample,
        "rotation_sets": row.rotation_sets,
        "rotation_bytes": row.rotation_bytes,
        "gbps": row.gbps,
        "percent_of_bandwidth": result.percent_of_bandwidth(row),
        "bandwidth_gbps": result.reference.gbps,
        **{f"speedup_vs_{b.replace('-', '_')}": row.speedups.get(b) for b in impls.BASELINES},
        "compile_s": row.compile_seconds,
    }


# The hardware and versions repeated on every CSV row, so a row copied elsewhere keeps its context.
_CSV_CONTEXT = ("device", "device_name", "cpu_cores", "torch_threads", "torch", "triton", "python")


def _context(result: SweepResult) -> dict[str, object]:
    meta = result.metadata
    git = meta.get("git") or {}
    return {
        **{key: meta[key] for key in _CSV_CONTEXT},
        "git_sha": git.get("sha"),
        "git_dirty": git.get("dirty"),
        "extension": json.dumps(meta["extension"], sort_keys=True),
        "bandwidth_probe": result.reference.name,
    }


def write_csv(result: SweepResult, path: Path) -> Path:
    records = [{**_row_record(row, result), **_context(result)} for row in result.rows]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(records[0]) if records else list(_context(result)))
        writer.writeheader()
        writer.writerows(records)
    return path


def _host_record(row: HostRow) -> dict[str, object]:
    return {
        "params": row.host_case.params,
        "param_numel": row.host_case.param_numel,
        "implementation": row.implementation,
        "description": row.description,
        "many_median_s": row.many.median,
        "many_p10_s": row.many.p10,
        "many_p90_s": row.many.p90,
        "one_median_s": row.one.median,
        "one_p10_s": row.one.p10,
        "one_p90_s": row.one.p90,
        "host_us_per_param": row.seconds_per_param * 1e6,
        "samples": len(row.many.per_step_seconds),
        "rotation_sets": row.rotation_sets,
    }


def write_host_csv(result: SweepResult, path: Path) -> Path:
    records = [{**_host_record(row), **_context(result)} for row in result.host_rows]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(records[0]) if records else list(_context(result)))
        writer.writeheader()
        writer.writerows(records)
    return path


def _host_document(result: SweepResult) -> dict[str, object] | None:
    host = result.options.host_overhead
    if host is None:
        return None
    return {
        "params": host.params,
        "param_numel": host.param_numel,
        "definition": DEFINITION,
        "requested_sets": result.options.host_sets,  # None: the rotation spanning 4x the last-level cache
        "implementations": list(result.options.host_implementations),
        "rows": [
            {**_host_record(row), "many_per_step_s": list(row.many.per_step_seconds),
             "one_per_step_s": list(row.one.per_step_seconds)}
            for row in result.host_rows
        ],
        "skipped": [{"implementation": s.implementation, "reason": s.reason} for s in result.host_skipped],
    }


def write_json(result: SweepResult, path: Path) -> Path:
    options = result.options
    document = {
        "metadata": result.metadata,
        "options": {
            "device": str(options.device),
            "config": options.config.label(),
            "cases": [{"numel": c.numel, "tensors": c.tensors} for c in options.cases],
            "implementations": list(options.implementations),
            "repeats": options.repeats,
            "warmup_rounds": options.warmup,
            "compile_all": options.compile_all,
        },
        "bandwidth": [
            {"probe": p.name, "formula": p.formula, "bytes_per_element": p.bytes_per_element,
             "buffer_bytes": p.buffer_bytes, "best_s": p.best_seconds, "gbps": p.gbps}
            for p in result.probes
        ],
        "reference_bandwidth": result.reference.name,
        "probe_rounds": result.probe_rounds,
        "rows": [{**_row_record(row, result), "per_step_s": list(row.measurement.per_step_seconds)}
                 for row in result.rows],
        "skipped": [{"numel": s.case.numel, "tensors": s.case.tensors, "implementation": s.implementation,
                     "reason": s.reason} for s in result.skipped],
        "host_overhead": _host_document(result),
    }
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")
    return path


def write_plot(result: SweepResult, path: Path) -> tuple[Path | None, str | None]:
    """The GB/s-vs-size plot, or (None, why it was skipped)."""
    try:
        import matplotlib
        import matplotlib.ticker

        matplotlib.use("Agg")  # files only: no display needed
        from matplotlib import pyplot
    except ImportError:
        return None, PNG_SKIPPED_HINT

    figure, axes = pyplot.subplots(figsize=(9, 5.5), dpi=110)
    lines: dict[tuple[str, int], list[Row]] = {}
    for row in result.rows:
        lines.setdefault((row.implementation, row.case.tensors), []).append(row)
    names = list(dict.fromkeys(row.implementation for row in result.rows))
    colors = {name: f"C{i % 10}" for i, name in enumerate(names)}
    counts = sorted({row.case.tensors for row in result.rows})
    styles = ["-", "--", ":", "-."]
    markers = ["o", "s", "^", "D"]
    for (name, tensors), rows in lines.items():
        rows = sorted(rows, key=lambda r: r.case.numel)
        kind = counts.index(tensors) % len(styles)
        axes.plot(
            [r.case.numel for r in rows], [r.gbps for r in rows], styles[kind], marker=markers[kind],
            color=colors[name], label=f"{name}, {tensors} tensor{'s' if tensors > 1 else ''}",
        )
    other_styles = iter([":", "-.", (0, (1, 3))])
    for probe in result.probes:
        is_reference = probe is result.reference
        axes.axhline(
            probe.gbps, color="black" if is_reference else "gray", linestyle="-" if is_reference else next(other_styles),
            linewidth=1.2 if is_reference else 0.9,
            label=f"measured {probe.name} {probe.gbps:.1f} GB/s" + (" (100%)" if is_reference else ""),
        )
    axes.set_xscale("log", base=2)
    axes.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: format_count(int(x)) if x >= 1 else ""))
    axes.set_xlabel("elements per step")
    axes.set_ylabel(f"useful GB/s ({step_traffic(result.options.config).total} B/element)")
    meta = result.metadata
    axes.set_title(f"Adadelta step, {result.options.config.label()}\n{meta['device']}: {meta['device_name']}", fontsize=10)
    axes.set_ylim(bottom=0)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=7, loc="best")
    figure.tight_layout()
    figure.savefig(path)
    pyplot.close(figure)
    return path, None


# ---- --traffic ----

def format_traffic(
    configs: Iterable[StepConfig], numel: int, tensor_counts: Iterable[int], bandwidth_bytes_per_s: float
) -> str:
    """Bytes and CUDA launches per step for each configuration of ours and for torch's foreach step."""
    configs = list(configs)
    tensor_counts = [t for t in tensor_counts if t <= numel]
    columns = ["configuration", "read", "written", "B/elem", "vs torch"]
    columns += [f"launches @{t}" for t in tensor_counts] + ["predicted"]

    def layout(tensors: int) -> list[int]:
        return [numel // tensors] * tensors

    rows = []
    for config in configs:
        traffic = step_traffic(config)
        torch_bytes = torch_foreach_traffic(config.param_dtype).total
        rows.append(
            [config.label(), str(traffic.read), str(traffic.written), str(traffic.total),
             f"{torch_bytes / traffic.total:.2f}x less",
             *(str(extension_launches(layout(t))) for t in tensor_counts),
             _milliseconds(predicted_step_seconds(traffic, numel, bandwidth_bytes_per_s)) + " ms"]
        )
    for dtype in dict.fromkeys(c.param_dtype for c in configs):
        traffic = torch_foreach_traffic(dtype)
        passes = len(torch_foreach_passes(dtype))
        rows.append(
            [f"torch.optim.Adadelta foreach, {DTYPE_NAMES[dtype]} ({passes} passes)", str(traffic.read),
             str(traffic.written), str(traffic.total), "",
             *(str(torch_foreach_launches(layout(t), dtype)) for t in tensor_counts),
             _milliseconds(predicted_step_seconds(traffic, numel, bandwidth_bytes_per_s)) + " ms"]
        )
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    fp32_passes = torch_foreach_passes(torch.float32)
    operand_bytes = 4 * sum(p.operands_read + p.buffers_written for p in fp32_passes)
    header = [
        f"Bytes per element one Adadelta step must move, CUDA launches per step for {format_count(numel)} elements "
        f"split into the given tensor counts, and the predicted step time at {bandwidth_bytes_per_s:.3g} B/s.",
        "",
    ]
    notes = [
        "",
        "predicted = bytes / bandwidth: a floor that ignores launch overhead.",
        "Ours: the extension's multi-tensor walk (256 tensors or 2048 chunks of 64 Ki elements per launch); a group of",
        "one tensor (flatten=True) is one launch of the flat kernel. On a CPU it is one parallel region per (device,",
        "dtype) group. Stochastic rounding and the hyperparameters change no byte.",
        f"torch: traced from the installed torch {torch.__version__} on meta tensors; each pass reads its distinct buffers",
        f"once (counting the repeated operand of the two addcmul_ passes gives {operand_bytes} B/elem in fp32).",
        "Its launches assume CUDA >= 12.1 on sm_70+ (32 KB kernel arguments); its step counters stay on the CPU.",
    ]
    return "\n".join(header + [line(columns), line(["-" * w for w in widths])] + [line(r) for r in rows] + notes)


def results_stem(result: SweepResult, timestamp: str) -> str:
    return f"adadelta-{result.options.device.type}-{DTYPE_NAMES[result.options.config.param_dtype]}-{timestamp}"
